"""IDX parsing and verification of the bundled MNIST and of corrupt copies."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from cnnpar import data
from cnnpar.cli import main
from cnnpar.data import MnistError, load_mnist


@pytest.fixture(scope="module")
def test_split() -> data.Mnist:
    return load_mnist("test")


def test_bundled_label_counts_match_known_counts() -> None:
    counts = data.verify("bundled")
    assert counts["train"] == list(data.LABEL_COUNTS["train"])
    assert counts["test"] == list(data.LABEL_COUNTS["test"])


def test_bundled_shapes_and_dtypes(test_split: data.Mnist) -> None:
    assert test_split.images.shape == (10_000, 28, 28)
    assert test_split.images.dtype == np.uint8
    assert test_split.labels.shape == (10_000,)
    assert test_split.labels.dtype == np.uint8
    # Real digits: background zero, strokes near 255.
    assert test_split.images.max() == 255
    assert 0.05 < (test_split.images > 0).mean() < 0.35


def _raw(name: str) -> bytes:
    with gzip.open(Path(data.resolve_source("bundled")) / f"{name}.gz", "rb") as fh:
        return fh.read()


@pytest.fixture
def raw_test_dir(tmp_path: Path) -> Path:
    """A directory with the test split as raw (uncompressed) IDX files."""
    for name in data.FILES["test"].values():
        (tmp_path / name).write_bytes(_raw(name))
    return tmp_path


def test_directory_source_raw_and_gz(raw_test_dir: Path, test_split: data.Mnist) -> None:
    from_raw = load_mnist("test", raw_test_dir)
    np.testing.assert_array_equal(from_raw.images, test_split.images)
    np.testing.assert_array_equal(from_raw.labels, test_split.labels)
    gz_dir = raw_test_dir / "gz"
    gz_dir.mkdir()
    for name in data.FILES["test"].values():
        with gzip.open(gz_dir / f"{name}.gz", "wb") as fh:
            fh.write((raw_test_dir / name).read_bytes())
    np.testing.assert_array_equal(load_mnist("test", gz_dir).labels, test_split.labels)


LABELS = data.FILES["test"]["labels"]
IMAGES = data.FILES["test"]["images"]


def _corrupt(raw: bytes, how: str) -> bytes:
    if how == "bad magic":
        return b"\x00\x00\x08\x04" + raw[4:]
    if how == "truncated":
        return raw[: len(raw) - 100]
    if how == "wrong count":
        return raw[:4] + (9_999).to_bytes(4, "big") + raw[8:]
    if how == "flipped byte":
        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 0xFF
        return bytes(flipped)
    raise AssertionError(how)


@pytest.mark.parametrize(
    ("name", "how", "message"),
    [
        (LABELS, "bad magic", "magic number 0x00000804, expected 0x00000801"),
        (IMAGES, "bad magic", "expected 0x00000803"),
        (IMAGES, "truncated", "expected 7840016"),
        (LABELS, "truncated", "truncated or padded"),
        (LABELS, "wrong count", "header says 9999 items, expected 10000"),
        (IMAGES, "flipped byte", "sha256"),
        (LABELS, "flipped byte", "expected ff7bcfd416de3373"),
    ],
)
def test_corrupt_files_raise_clear_errors(
    raw_test_dir: Path, name: str, how: str, message: str
) -> None:
    path = raw_test_dir / name
    path.write_bytes(_corrupt(path.read_bytes(), how))
    with pytest.raises(MnistError) as info:
        load_mnist("test", raw_test_dir)
    assert message in str(info.value)
    assert name in str(info.value), "the error names the file"


def test_tiny_file_and_missing_file(raw_test_dir: Path) -> None:
    (raw_test_dir / LABELS).write_bytes(b"\x00\x00")
    with pytest.raises(MnistError, match="too short for an IDX header"):
        load_mnist("test", raw_test_dir)
    (raw_test_dir / LABELS).unlink()
    with pytest.raises(MnistError, match="not found"):
        load_mnist("test", raw_test_dir)


def test_broken_gzip_is_a_clear_error(tmp_path: Path) -> None:
    for name in data.FILES["test"].values():
        shutil.copy(Path(data.resolve_source("bundled")) / f"{name}.gz", tmp_path)
    gz = tmp_path / f"{LABELS}.gz"
    gz.write_bytes(gz.read_bytes()[:50])
    with pytest.raises(MnistError, match="cannot read"):
        load_mnist("test", tmp_path)


def test_unknown_source_and_split() -> None:
    with pytest.raises(MnistError, match="neither 'bundled', 'download' nor a directory"):
        load_mnist("test", "/no/such/dir")
    with pytest.raises(MnistError, match="unknown split"):
        load_mnist("validation")  # type: ignore[arg-type]


def test_cli_data_verify(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["data", "verify"]) == 0
    out = capsys.readouterr().out
    assert "980 1135 1032 1010 982 892 958 1028 974 1009" in out
    assert "5923 6742 5958 6131 5842 5421 5918 6265 5851 5949" in out
    # A directory lacking the files: one-line error, exit 2.
    assert main(["data", "verify", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not found" in err


def test_atomic_writes_leave_no_temp_files_and_normal_permissions(tmp_path: Path) -> None:
    from cnnpar import io

    io.write_csv(tmp_path / "a.csv", [{"x": 1, "y": 2}])
    io.write_npz(tmp_path / "a.npz", x=np.arange(3))
    with pytest.raises(RuntimeError), io.atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.npz"]
    assert (tmp_path / "a.csv").read_text().splitlines() == ["x,y", "1,2"]
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["x"], np.arange(3))
    assert (tmp_path / "a.csv").stat().st_mode & 0o644 == 0o644


# --- files from elsewhere: named, packed or filled differently ---------------------------


def _cli_error(capsys: pytest.CaptureFixture[str], directory: Path) -> str:
    assert main(["data", "verify", "--data-source", str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def _both_splits(directory: Path) -> Path:
    for names in data.FILES.values():
        for name in names.values():
            (directory / name).write_bytes(_raw(name))
    return directory


def test_gzip_data_under_a_raw_name_says_so_and_how_to_fix_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _both_splits(tmp_path)
    path = tmp_path / data.FILES["train"]["images"]
    shutil.copy(Path(data.resolve_source("bundled")) / f"{path.name}.gz", path)
    assert _cli_error(capsys, tmp_path) == (
        f"cnnpar data: error: {path} holds gzip data under a raw IDX name; rename it to "
        f"{path.name}.gz or decompress it (gunzip < {path.name}.gz > {path.name})"
    )
    path.rename(tmp_path / f"{path.name}.gz")  # the fix it names
    assert main(["data", "verify", "--data-source", str(tmp_path)]) == 0


def test_raw_or_html_data_under_a_gz_name_says_so(
    raw_test_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = raw_test_dir / LABELS
    gz = raw.rename(raw_test_dir / f"{LABELS}.gz")
    with pytest.raises(MnistError) as info:
        load_mnist("test", raw_test_dir)
    assert str(info.value) == (
        f"{gz} is an uncompressed IDX file under a .gz name; rename it to {LABELS}"
    )
    gz.write_bytes(b"<!DOCTYPE html>\n<html><body>Please log in</body></html>")
    with pytest.raises(MnistError) as info:
        load_mnist("test", raw_test_dir)
    assert str(info.value) == (
        f"{gz} is an HTML page, not gzip data (a proxy's or a login page?); replace it with "
        "the original file"
    )


def test_dotted_names_as_some_unpackers_write_them_are_read(
    raw_test_dir: Path, test_split: data.Mnist
) -> None:
    for name in data.FILES["test"].values():
        stem, _, kind = name.rpartition("-idx")
        (raw_test_dir / name).rename(raw_test_dir / f"{stem}.idx{kind}")
    assert sorted(p.name for p in raw_test_dir.iterdir()) == [
        "t10k-images.idx3-ubyte",
        "t10k-labels.idx1-ubyte",
    ]
    np.testing.assert_array_equal(load_mnist("test", raw_test_dir).labels, test_split.labels)


def test_other_names_are_named_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _both_splits(tmp_path)
    path = tmp_path / data.FILES["train"]["labels"]
    path.rename(tmp_path / "train_labels_idx1_ubyte.bin")
    assert _cli_error(capsys, tmp_path) == (
        f"cnnpar data: error: {path}[.gz] not found, but {tmp_path} holds "
        f"train_labels_idx1_ubyte.bin; rename it to {path.name} (raw) or {path.name}.gz "
        "(gzipped), or unpack the archive it is in"
    )


@pytest.mark.parametrize("kind", ["labels", "images"])
def test_intact_idx_files_of_other_content_are_not_called_corrupt(
    raw_test_dir: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Fashion-MNIST has MNIST's names, magic numbers and shapes: a valid IDX file whose bytes
    differ is another data set (or altered), and the message says so."""
    path = raw_test_dir / data.FILES["test"][kind]
    raw = bytearray(path.read_bytes())
    header = 8 if kind == "labels" else 16
    body = np.frombuffer(bytes(raw[header:]), np.uint8)
    raw[header:] = ((body + 1) % 10 if kind == "labels" else 255 - body).tobytes()
    path.write_bytes(bytes(raw))
    with pytest.raises(MnistError) as info:
        load_mnist("test", raw_test_dir)
    message = str(info.value)
    assert message.startswith(
        f"{path}: an intact IDX file of MNIST's shape, but not the original MNIST (sha256 "
    )
    assert message.endswith(
        "another data set under MNIST's names (Fashion-MNIST has the same ones) or altered "
        "bytes; use the original MNIST files or --data-source bundled"
    )
    assert "corrupt" not in message
