"""`--data-source download` against mirrors that fail the ways real ones do.

A local HTTP server on 127.0.0.1 (never the network) serves the bundled .gz files under one
path prefix per behaviour: whole, cut off mid-transfer (with and without a Content-Length),
an HTML page instead (a proxy's), 404, 500, a stall longer than the read timeout, and a gzip
file of other content. Every failure moves on to the next mirror; when all fail, one line
names each mirror's failure and the fix, exit 2; the cache only ever holds verified files.
"""

from __future__ import annotations

import collections
import gzip
import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from cnnpar import data
from cnnpar.cli import main

BUNDLED = data.resolve_source("bundled")
GZ_NAMES = [f"{name}.gz" for names in data.FILES.values() for name in names.values()]
HTML = b"<!DOCTYPE html><html><body>Access denied by proxy policy</body></html>\n"
STALL_S = 3.0  # longer than the read timeout the tests set
TIMEOUT_S = 0.5


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /<behaviour>/<name>.gz"""

    hits: ClassVar[collections.Counter] = collections.Counter()
    lock = threading.Lock()

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        behaviour, _, name = self.path.strip("/").partition("/")
        with self.lock:
            self.hits[(behaviour, name)] += 1
        if behaviour in ("404", "500") or name not in GZ_NAMES:
            code = 500 if behaviour == "500" else 404
            self.send_error(code)
            return
        body = (BUNDLED / name).read_bytes()
        if behaviour == "html":
            self._send(HTML, "text/html")
        elif behaviour == "cut":  # promises the whole file, closes after a third of it
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.close_connection = True
        elif behaviour == "cut-nolength":  # no Content-Length: only gzip sees the cut
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[: len(body) // 3])
            self.close_connection = True
        elif behaviour == "stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(STALL_S)
            self.close_connection = True
        elif behaviour == "other":  # a well-formed gzip file of other content
            self._send(OTHER[name], "application/gzip")
        elif behaviour == "slow":  # whole, in pieces: widens the window concurrent runs race in
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for lo in range(0, len(body), len(body) // 4 + 1):
                self.wfile.write(body[lo : lo + len(body) // 4 + 1])
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self._send(body, "application/gzip")

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


OTHER: dict[str, bytes] = {}  # name -> gzip of the original with its last byte changed


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The base URL of a local HTTP server; mirror URLs are f"{server}/<behaviour>/"."""
    for name in GZ_NAMES:  # made before serving: compressing takes longer than the timeout
        raw = bytearray(gzip.decompress((BUNDLED / name).read_bytes()))
        raw[-1] ^= 0xFF
        OTHER[name] = gzip.compress(bytes(raw), compresslevel=1)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The download cache, under a fresh XDG_CACHE_HOME, and a short read timeout."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", TIMEOUT_S)
    _Handler.hits.clear()
    return tmp_path / "xdg" / "cnnpar" / "mnist"


def _verify(capsys: pytest.CaptureFixture[str], *mirrors: str) -> tuple[int, str]:
    argv = ["data", "verify", "--data-source", "download"]
    for mirror in mirrors:
        argv += ["--mirror", mirror]
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip()


def _cache_files(cache: Path) -> list[str]:
    """What the cache holds besides its lock file: never a partial download."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.iterdir() if p.name != ".download.lock")


@pytest.mark.parametrize("failing", ["cut", "cut-nolength", "html", "404", "500", "other"])
def test_a_failing_mirror_moves_on_to_the_next(
    server: str, cache: Path, capsys: pytest.CaptureFixture[str], failing: str
) -> None:
    code, err = _verify(capsys, f"{server}/{failing}", f"{server}/good/")
    assert (code, err) == (0, "")
    assert _cache_files(cache) == sorted(GZ_NAMES)
    for name in GZ_NAMES:
        assert _Handler.hits[(failing, name)] == 1 and _Handler.hits[("good", name)] == 1
    # The next run reads the verified cache and downloads nothing.
    assert _verify(capsys, f"{server}/unused/")[0] == 0
    assert all(_Handler.hits[("unused", name)] == 0 for name in GZ_NAMES)


def test_when_every_mirror_fails_one_line_names_each_failure_and_the_fix(
    server: str, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    behaviours = ["cut", "cut-nolength", "html", "404", "500", "stall", "other"]
    closed = "http://127.0.0.1:1/mnist/"  # nothing listens on port 1
    start = time.monotonic()
    code, err = _verify(capsys, *(f"{server}/{b}/" for b in behaviours), closed)
    assert time.monotonic() - start < 30
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith(
        "cnnpar data: error: could not download train-images-idx3-ubyte.gz "
        f"({server}/cut/: transfer cut off after "
    )
    for reason in (
        f"{server}/cut-nolength/: broken gzip data (Compressed file ended",
        f"{server}/html/: served an HTML page, not gzip data (a proxy's or a login page?)",
        f"{server}/404/: HTTP 404 Not Found",
        f"{server}/500/: HTTP 500 Internal Server Error",
        f"{server}/stall/: no data for {TIMEOUT_S:g} s (timed out)",
        f"{server}/other/: train-images-idx3-ubyte has the wrong sha256 (not the original MNIST)",
        f"{closed}: Connection refused",
    ):
        assert reason in err
    assert err.endswith(
        "); name a mirror that serves the MNIST .gz files with --mirror URL (data.mirror in the "
        "workflow config), or use --data-source bundled"
    )
    assert _cache_files(cache) == []


@pytest.mark.parametrize(
    "bad",
    [HTML, b""],  # a proxy's page kept by an older cnnpar; a file cut short on a full disk
    ids=["html", "empty"],
)
def test_a_bad_cached_file_is_moved_aside_and_fetched_again(
    server: str, cache: Path, capsys: pytest.CaptureFixture[str], bad: bytes
) -> None:
    assert _verify(capsys, f"{server}/good/")[0] == 0
    name = GZ_NAMES[1]
    (cache / name).write_bytes(bad)  # a later run finds it bad, however it got there
    code, err = _verify(capsys, f"{server}/html/", f"{server}/good/")
    assert (code, err) == (0, "")
    assert (cache / f"{name}.bad").read_bytes() == bad, "moved aside, not deleted"
    assert _cache_files(cache) == sorted([*GZ_NAMES, f"{name}.bad"])
    assert _Handler.hits[("good", name)] == 2


@pytest.mark.slow  # seconds: spawns processes or trains
def test_concurrent_downloads_into_one_cache_all_succeed(server: str, tmp_path: Path) -> None:
    """Array jobs or several ranks on one node: each command downloads or waits, none sees or
    removes another's partial file, and each file is downloaded once."""
    _Handler.hits.clear()
    cache = tmp_path / "xdg" / "cnnpar" / "mnist"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    argv = ["data", "verify", "--data-source=download", f"--mirror={server}/slow/"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cnnpar", *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    ends = [(proc.communicate(timeout=120), proc.returncode) for proc in procs]
    waiting = f"cnnpar: waiting for another command's download into {cache}"
    for (out, err), code in ends:
        assert code == 0 and "sha256 ok" in out, err
        assert set(err.splitlines()) <= {waiting}, err
    assert _cache_files(cache) == sorted(GZ_NAMES)
    assert [_Handler.hits[("slow", name)] for name in GZ_NAMES] == [1, 1, 1, 1]


def test_a_partial_file_left_by_a_killed_download_is_removed(
    server: str, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache.mkdir(parents=True)
    stale = cache / f".{GZ_NAMES[0]}.x1y2z3.part"
    stale.write_bytes(b"\x1f\x8b half")
    other = cache / "notes.txt"  # not cnnpar's: left alone
    other.write_text("mine")
    assert _verify(capsys, f"{server}/good/") == (0, "")
    assert _cache_files(cache) == sorted([*GZ_NAMES, "notes.txt"])
    assert other.read_text() == "mine"


def test_a_file_url_mirror(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A copy on a shared file system is a mirror too (file://)."""
    assert _verify(capsys, BUNDLED.as_uri()) == (0, "")
    assert _cache_files(cache) == sorted(GZ_NAMES)


@pytest.mark.slow  # seconds: spawns processes or trains
def test_train_downloads_through_the_mirror(
    server: str, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--engine=numpy", "--filters=2", "--train-size=64", "--test-size=64"]
    argv += ["--epochs=1", "--data-source=download", f"--mirror={server}/good"]
    argv += [f"--timing-lock={tmp_path / 'lock'}", f"--out={tmp_path / 'run'}"]
    assert main(argv) == 0
    assert _cache_files(cache) == sorted(GZ_NAMES)
    assert (tmp_path / "run" / "run.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--mirror", "mirror.example.org/mnist"],
            "--mirror 'mirror.example.org/mnist' is not a URL; give the address of a directory "
            "serving the MNIST .gz files, such as https://mirror.example.org/mnist/",
        ),
        (
            ["--data-source", "bundled", "--mirror", "https://mirror.example.org/mnist/"],
            "--mirror is used only by --data-source download (got --data-source bundled); "
            "add --data-source download or drop --mirror",
        ),
    ],
)
@pytest.mark.parametrize("command", ["data", "train", "classify"])
def test_bad_mirror_options_are_refused_before_any_work(
    command: str,
    args: list[str],
    message: str,
    tmp_path: Path,
    weights: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if "--data-source" not in args:
        args = ["--data-source", "download", *args]
    out = f"--out={tmp_path / 'run'}"
    argv = {
        "data": ["data", "verify"],
        "train": ["train", out],
        "classify": ["classify", f"--weights={weights}", "--rows=2", "--cols=2", out],
    }[command]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()
