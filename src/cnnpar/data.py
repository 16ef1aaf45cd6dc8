"""MNIST from IDX files: parse, verify against the known sha256 digests, and load.

Sources:
- ``"bundled"``: the four gzipped IDX files shipped inside this package (offline, the default);
- a directory path: IDX files named as the originals, raw or ``.gz``;
- ``"download"``: fetch from public mirrors into a cache directory (never used by tests).

Every source is checked against the sha256 of the *uncompressed* original file, so a copy from
any mirror, compressed or not, verifies the same way.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from cnnpar.errors import CnnparError

Split = Literal["train", "test"]

IMAGE_MAGIC = 0x00000803  # ubyte, 3 dimensions
LABEL_MAGIC = 0x00000801  # ubyte, 1 dimension
ROWS = COLS = 28

FILES: dict[str, dict[str, str]] = {
    "train": {"images": "train-images-idx3-ubyte", "labels": "train-labels-idx1-ubyte"},
    "test": {"images": "t10k-images-idx3-ubyte", "labels": "t10k-labels-idx1-ubyte"},
}
COUNTS = {"train": 60_000, "test": 10_000}
LABEL_COUNTS = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
# Mirrors in the order torchvision tries them.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


class MnistError(CnnparError):
    """A data file is missing, malformed or does not match its known checksum."""


@dataclass(frozen=True)
class Mnist:
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) uint8


def _bundled_dir() -> Path:
    return Path(str(resources.files("cnnpar") / "data"))


def expected_sha256() -> dict[str, str]:
    """The sha256 of each uncompressed original IDX file, keyed by file name."""
    text = (_bundled_dir() / "SHA256SUMS").read_text()
    digests = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split()
            digests[name] = digest
    return digests


def _find(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise MnistError(
        f"{directory / name}[.gz] not found; put the original MNIST IDX files in {directory} "
        "or use the bundled data"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise MnistError(
            f"{path}: cannot read ({err}); replace the file with a good copy"
        ) from None


def parse_idx(
    raw: bytes, name: str, magic: int, count: int | None = None, sha256: str | None = None
) -> np.ndarray:
    """Parse one IDX file's bytes into a uint8 array, checking magic, size, count and digest."""
    if len(raw) < 8:
        raise MnistError(f"{name}: file is {len(raw)} bytes, too short for an IDX header")
    found_magic = int.from_bytes(raw[0:4], "big")
    if found_magic != magic:
        raise MnistError(f"{name}: magic number 0x{found_magic:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MnistError(f"{name}: truncated header ({len(raw)} bytes, expected {header})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if count is not None and dims[0] != count:
        raise MnistError(f"{name}: header says {dims[0]} items, expected {count}")
    if ndim == 3 and dims[1:] != [ROWS, COLS]:
        raise MnistError(f"{name}: images are {dims[1]}x{dims[2]}, expected {ROWS}x{COLS}")
    expected_len = header + int(np.prod(dims))
    if len(raw) != expected_len:
        raise MnistError(
            f"{name}: {len(raw)} bytes, expected {expected_len} for shape {tuple(dims)} "
            "(truncated or padded file)"
        )
    if sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != sha256:
            raise MnistError(f"{name}: sha256 {digest[:16]}…, expected {sha256[:16]}… (corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _download(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    for names in FILES.values():
        for name in names.values():
            if (cache_dir / name).is_file() or (cache_dir / f"{name}.gz").is_file():
                continue
            last_error: Exception | None = None
            for mirror in MIRRORS:
                try:
                    with urllib.request.urlopen(f"{mirror}{name}.gz", timeout=60) as resp:
                        payload = resp.read()
                    tmp = cache_dir / f".{name}.gz.part"
                    tmp.write_bytes(payload)
                    os.replace(tmp, cache_dir / f"{name}.gz")
                    break
                except OSError as err:
                    last_error = err
            else:
                raise MnistError(f"could not download {name}.gz from any mirror: {last_error}")
    return cache_dir


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "cnnpar" / "mnist"


def resolve_source(source: str | os.PathLike[str] = "bundled") -> Path:
    """The directory holding the IDX files for `source` (downloading first for "download")."""
    if source == "bundled":
        return _bundled_dir()
    if source == "download":
        return _download(default_cache_dir())
    directory = Path(source)
    if not directory.is_dir():
        raise MnistError(f"data source {source!r} is neither 'bundled', 'download' nor a directory")
    return directory


def load_mnist(split: Split, source: str | os.PathLike[str] = "bundled") -> Mnist:
    """Load and verify one split: images (N, 28, 28) uint8 and labels (N,) uint8."""
    if split not in FILES:
        raise MnistError(f"unknown split {split!r}; use 'train' or 'test'")
    directory = resolve_source(source)
    digests = expected_sha256()
    arrays = {}
    for kind, magic in (("images", IMAGE_MAGIC), ("labels", LABEL_MAGIC)):
        name = FILES[split][kind]
        path = _find(directory, name)
        arrays[kind] = parse_idx(
            _read_bytes(path), str(path), magic, count=COUNTS[split], sha256=digests[name]
        )
    if arrays["labels"].max(initial=0) > 9:
        raise MnistError(f"{FILES[split]['labels']}: labels outside 0..9")
    return Mnist(images=arrays["images"], labels=arrays["labels"])


def label_counts(labels: np.ndarray) -> list[int]:
    return np.bincount(labels, minlength=10).tolist()


def verify(source: str | os.PathLike[str] = "bundled") -> dict[str, list[int]]:
    """Load both splits (all checks run) and return the per-label counts of each."""
    return {split: label_counts(load_mnist(split, source).labels) for split in ("train", "test")}
