"""MNIST from IDX files: parse, verify against the known sha256 digests, and load.

Sources:
- ``"bundled"``: the four gzipped IDX files shipped inside this package (offline, the default);
- a directory path: IDX files named as the originals, raw or ``.gz``;
- ``"download"``: fetch from mirrors (public ones, or those given with ``--mirror``) into a
  cache directory; tests serve the bundled files from a local HTTP server.

Every source is checked against the sha256 of the *uncompressed* original file, so a copy from
any mirror, compressed or not, verifies the same way. A download is checked before it enters
the cache, so the cache only ever holds verified files; one that went bad later is moved aside
(``NAME.gz.bad``) and fetched again.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from filelock import FileLock, Timeout

from cnnpar.errors import CnnparError, WriteError

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
# Mirrors in the order torchvision tries them; `--mirror URL` (data.mirror) replaces them.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MIRROR_SCHEMES = ("http", "https", "ftp", "file")
# Seconds a connection or a read may stall before that mirror is given up for the next one.
DOWNLOAD_TIMEOUT_S = 30.0
GZIP_MAGIC = b"\x1f\x8b"
MIRROR_FIX = (
    "name a mirror that serves the MNIST .gz files with --mirror URL (data.mirror in the "
    "workflow config), or use --data-source bundled"
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


def _dotted(name: str) -> str:
    """The name some unpackers write: ``train-images.idx3-ubyte`` for train-images-idx3-ubyte."""
    stem, _, kind = name.rpartition("-idx")
    return f"{stem}.idx{kind}"


def _find(directory: Path, name: str) -> Path:
    """The file holding IDX file `name` in `directory`: its original name, raw or ``.gz``, or the
    dotted variant (``train-images.idx3-ubyte``); the sha256 check makes any name safe."""
    for base in (name, _dotted(name)):
        for candidate in (directory / base, directory / f"{base}.gz"):
            if candidate.is_file():
                return candidate
    # Name what is there instead: files whose name starts like the one sought ("train-images").
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(name.split("-")[:2]))
    try:
        found = sorted(
            entry.name
            for entry in directory.iterdir()
            if re.sub(r"[^a-z0-9]+", "-", entry.name.lower()).startswith(key)
        )
    except OSError:
        found = []
    if found:
        listed = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise MnistError(
            f"{directory / name}[.gz] not found, but {directory} holds {listed}; rename it to "
            f"{name} (raw) or {name}.gz (gzipped), or unpack the archive it is in"
        )
    raise MnistError(
        f"{directory / name}[.gz] not found; put the original MNIST IDX files in {directory} "
        "or use the bundled data"
    )


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip()[:64].lower()
    return text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body"))


def _not_gzip_reason(head: bytes) -> str | None:
    """Why data beginning with `head` cannot be a gzip file, or None if it may be one."""
    if head.startswith(GZIP_MAGIC):
        return None
    if _looks_like_html(head):
        return "an HTML page, not gzip data (a proxy's or a login page?)"
    return f"not gzip data (it starts with {head[:4].hex()})"


def _read_bytes(path: Path) -> bytes:
    """The uncompressed bytes of the IDX file at `path`, raw or gzipped; a file whose content
    does not match its name (gzip under a raw name, raw IDX or a web page under a .gz name) is
    refused with the rename or replacement that fixes it."""
    try:
        stored = path.read_bytes()
    except OSError as err:
        raise MnistError(
            f"{path}: cannot read ({err.strerror or err}); replace the file with a good copy"
        ) from None
    gzipped = stored.startswith(GZIP_MAGIC)
    if path.suffix != ".gz":
        if gzipped:
            raise MnistError(
                f"{path} holds gzip data under a raw IDX name; rename it to {path.name}.gz "
                f"or decompress it (gunzip < {path.name}.gz > {path.name})"
            )
        if _looks_like_html(stored[:64]):
            raise MnistError(
                f"{path} is an HTML page, not an IDX file (saved from a web page or a proxy?); "
                "replace it with the original file"
            )
        return stored
    if not gzipped:
        magic = int.from_bytes(stored[:4], "big")
        if magic in (IMAGE_MAGIC, LABEL_MAGIC):
            raise MnistError(
                f"{path} is an uncompressed IDX file under a .gz name; rename it to {path.stem}"
            )
        raise MnistError(
            f"{path} is {_not_gzip_reason(stored[:64])}; replace it with the original file"
        )
    try:
        return gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as err:
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
            # Magic, shape and size all fit: an intact IDX file, but not the original MNIST.
            raise MnistError(
                f"{name}: an intact IDX file of MNIST's shape, but not the original MNIST "
                f"(sha256 {digest[:16]}…, expected {sha256[:16]}…): another data set under "
                "MNIST's names (Fashion-MNIST has the same ones) or altered bytes; use the "
                "original MNIST files or --data-source bundled"
            )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def check_mirrors(
    mirrors: Sequence[str] | None, source: str | os.PathLike[str] = "download"
) -> tuple[str, ...]:
    """The mirrors to download from: `mirrors` as base URLs ending in "/", or `MIRRORS` when none
    are given. Raises MnistError for a mirror that is not an http(s), ftp or file URL, or for
    mirrors given with a source that downloads nothing (they would be silently ignored)."""
    if not mirrors:
        return MIRRORS
    if source != "download":
        raise MnistError(
            f"--mirror is used only by --data-source download (got --data-source {source}); "
            "add --data-source download or drop --mirror"
        )
    checked = []
    for mirror in mirrors:
        parts = urllib.parse.urlsplit(mirror)
        if parts.scheme not in MIRROR_SCHEMES or not (parts.netloc or parts.scheme == "file"):
            raise MnistError(
                f"--mirror {mirror!r} is not a URL; give the address of a directory serving "
                "the MNIST .gz files, such as https://mirror.example.org/mnist/ "
                f"({', '.join(MIRROR_SCHEMES)})"
            )
        checked.append(mirror if mirror.endswith("/") else f"{mirror}/")
    return tuple(checked)


class _MirrorFailed(Exception):
    """One mirror could not deliver one file; the message says why in a few words."""


def _http_reason(err: BaseException) -> str:
    """A few words on why a download failed."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        if isinstance(err.reason, BaseException):
            return _http_reason(err.reason)
        return str(err.reason)
    if isinstance(err, http.client.IncompleteRead):
        return f"transfer cut off after {len(err.partial):,} bytes"
    if isinstance(err, TimeoutError):
        return f"no data for {DOWNLOAD_TIMEOUT_S:g} s (timed out)"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return " ".join(str(err).split()) or type(err).__name__


def _fetch(url: str, part: Path) -> None:
    """Download `url` into the file `part`; raise _MirrorFailed with the reason it failed
    (HTTP error, refused or reset connection, timeout, transfer cut short). Writing `part`
    failing is not the mirror's fault: that raises WriteError."""
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            with part.open("wb") as fh:
                while chunk := resp.read(1 << 16):
                    received += len(chunk)
                    try:
                        fh.write(chunk)
                    except OSError as err:
                        raise WriteError(err.errno, err.strerror or str(err), str(part)) from err
    except WriteError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise _MirrorFailed(_http_reason(err)) from None
    # A connection closed early ends a chunked read quietly: compare with the promised length.
    if length is not None and length.isdigit() and received != int(length):
        raise _MirrorFailed(f"transfer cut off after {received:,} of {int(length):,} bytes")


def _verified_gz(path: Path, name: str) -> bytes:
    """The uncompressed bytes of the cached or downloaded `path` (``NAME.gz``), if it is gzip
    data whose content has the sha256 of the original IDX file `name`; else _MirrorFailed."""
    stored = path.read_bytes()
    reason = _not_gzip_reason(stored[:64])
    if reason is not None:
        raise _MirrorFailed(f"served {reason}")
    try:
        raw = gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as err:
        raise _MirrorFailed(f"broken gzip data ({err})") from None
    if hashlib.sha256(raw).hexdigest() != expected_sha256()[name]:
        raise _MirrorFailed(f"{name} has the wrong sha256 (not the original MNIST)")
    return raw


def _mode_bits() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fetch(name: str, mirrors: Sequence[str] | None = None, cache_dir: Path | None = None) -> bytes:
    """The verified, uncompressed bytes of the original IDX file `name`, from the download cache,
    downloading ``NAME.gz`` into it first if it is missing or fails its checksum.

    Concurrent commands (array jobs, several ranks on one node) share one cache: downloads take
    a file lock in the cache directory, each writes its own temporary file and renames it into
    place only once verified, so no command sees or removes another's partial file. Mirrors
    are tried in order; any failure (HTTP error, connection refused or reset, timeout, transfer
    cut short, an HTML page or wrong checksum instead of the file) moves on to the next.

    Raises MnistError naming each mirror's failure when none delivers; WriteError (an OSError)
    when the cache cannot be written.
    """
    mirrors = check_mirrors(mirrors)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    path = cache_dir / f"{name}.gz"
    if path.is_file():
        with contextlib.suppress(_MirrorFailed):
            return _verified_gz(path, name)  # the usual case: verified, no lock taken
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(cache_dir / ".download.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(
                f"cnnpar: waiting for another command's download into {cache_dir}",
                file=sys.stderr,
            )
            lock.acquire()
    except OSError as err:
        raise WriteError(err.errno, err.strerror or str(err), str(cache_dir)) from None
    try:
        # Every download runs under this lock: a partial file seen now was left by a command
        # that was killed mid-download.
        for stale in cache_dir.glob(f".{path.name}.*.part"):
            stale.unlink(missing_ok=True)
        if path.is_file():  # fetched by another command while this one waited for the lock
            with contextlib.suppress(_MirrorFailed):
                return _verified_gz(path, name)
            # Only cnnpar writes NAME.gz here, and only verified: moved aside, not deleted.
            os.replace(path, path.with_name(f"{path.name}.bad"))
        failures = []
        for mirror in mirrors:
            fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{path.name}.", suffix=".part")
            os.close(fd)
            part = Path(tmp)
            try:
                _fetch(f"{mirror}{name}.gz", part)
                raw = _verified_gz(part, name)
                os.chmod(part, _mode_bits())  # mkstemp makes it owner-only
                os.replace(part, path)
                return raw
            except _MirrorFailed as err:
                failures.append(f"{mirror}: {err}")
            finally:
                part.unlink(missing_ok=True)
        raise MnistError(f"could not download {name}.gz ({'; '.join(failures)}); {MIRROR_FIX}")
    finally:
        lock.release()


def cache_root() -> Path:
    """cnnpar's per-user cache directory: $XDG_CACHE_HOME/cnnpar, else ~/.cache/cnnpar."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "cnnpar"


def default_cache_dir() -> Path:
    return cache_root() / "mnist"


def resolve_source(
    source: str | os.PathLike[str] = "bundled", mirrors: Sequence[str] | None = None
) -> Path:
    """The directory holding the IDX files for `source` (downloading first for "download")."""
    check_mirrors(mirrors, source)
    if source == "bundled":
        return _bundled_dir()
    if source == "download":
        for names in FILES.values():
            for name in names.values():
                fetch(name, mirrors)
        return default_cache_dir()
    directory = Path(source)
    if not directory.is_dir():
        raise MnistError(f"data source {source!r} is neither 'bundled', 'download' nor a directory")
    return directory


def load_mnist(
    split: Split, source: str | os.PathLike[str] = "bundled", mirrors: Sequence[str] | None = None
) -> Mnist:
    """Load and verify one split: images (N, 28, 28) uint8 and labels (N,) uint8.

    `mirrors` (base URLs) replace the public mirrors for source "download"; with any other
    source they are refused (MnistError), since they would be ignored."""
    if split not in FILES:
        raise MnistError(f"unknown split {split!r}; use 'train' or 'test'")
    check_mirrors(mirrors, source)
    digests = expected_sha256()
    directory = None if source == "download" else resolve_source(source)
    arrays = {}
    for kind, magic in (("images", IMAGE_MAGIC), ("labels", LABEL_MAGIC)):
        name = FILES[split][kind]
        if directory is None:
            shown, raw, digest = name, fetch(name, mirrors), None  # verified by fetch
        else:
            path = _find(directory, name)
            shown, raw, digest = str(path), _read_bytes(path), digests[name]
        arrays[kind] = parse_idx(raw, shown, magic, count=COUNTS[split], sha256=digest)
    if arrays["labels"].max(initial=0) > 9:
        raise MnistError(f"{FILES[split]['labels']}: labels outside 0..9")
    return Mnist(images=arrays["images"], labels=arrays["labels"])


def label_counts(labels: np.ndarray) -> list[int]:
    return np.bincount(labels, minlength=10).tolist()


def verify(
    source: str | os.PathLike[str] = "bundled", mirrors: Sequence[str] | None = None
) -> dict[str, list[int]]:
    """Load both splits (all checks run) and return the per-label counts of each."""
    return {
        split: label_counts(load_mnist(split, source, mirrors).labels)
        for split in ("train", "test")
    }
