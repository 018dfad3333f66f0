"""The default photo set: downloaded over HTTP from a local server here, accepted only
with the published size and SHA-256, and checked again on every later use."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest

from tuner._errors import UsageError
from tuner.cli import _datasets


def archive_bytes() -> bytes:
    """A small flower_photos.tgz: one photo file in each of two class folders."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("flower_photos/daisy/1.jpg", "flower_photos/roses/2.jpg"):
            data = name.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(set the served bytes, the cache folder): a local HTTP server stands in for the
    archive's host; the published size and digest are those of archive_bytes()."""
    body = {"data": archive_bytes()}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body["data"])))
            self.end_headers()
            self.wfile.write(body["data"])

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    good = body["data"]
    monkeypatch.setattr(_datasets, "FLOWERS_URL", f"http://127.0.0.1:{server.server_port}/a.tgz")
    monkeypatch.setattr(_datasets, "FLOWERS_BYTES", len(good))
    monkeypatch.setattr(_datasets, "FLOWERS_SHA256", hashlib.sha256(good).hexdigest())
    monkeypatch.setattr(_datasets, "settings", lambda: _Settings(tmp_path / "cache"))
    monkeypatch.setattr(_datasets, "cache_root", lambda: tmp_path / "cache")
    try:
        yield body, tmp_path / "cache"
    finally:
        server.shutdown()


class _Settings:
    def __init__(self, cache: Path) -> None:
        self.data, self.cache_dir = None, cache


def test_the_published_archive_is_unpacked_once_then_checked_on_every_use(served):
    _, cache = served
    folder = Path(_datasets.resolve_data_dir(None))
    assert folder == cache / "flower_photos"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg")) == [
        "daisy/1.jpg", "roses/2.jpg"]  # fmt: skip
    assert _datasets.resolve_data_dir(None) == str(folder)  # cached: no second download
    # The kept archive changed since: refused, with what to do.
    archive = cache / "flower_photos.tgz"
    data = archive.read_bytes()
    archive.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(UsageError, match="no longer matches the published archive's SHA-256"):
        _datasets.resolve_data_dir(None)


def test_an_archive_of_the_right_size_but_other_bytes_is_refused_and_nothing_unpacked(served):
    body, cache = served
    good = body["data"]
    body["data"] = bytes(b ^ 0xFF for b in good[:8]) + good[8:]  # same size, other bytes
    with pytest.raises(UsageError, match="expected " + hashlib.sha256(good).hexdigest()):
        _datasets.resolve_data_dir(None)
    assert not (cache / "flower_photos").exists()
    assert not (cache / "flower_photos.tgz").exists()


def test_a_short_download_is_refused_by_its_size(served):
    body, cache = served
    body["data"] = body["data"][:100]
    with pytest.raises(UsageError, match="the download is damaged"):
        _datasets.resolve_data_dir(None)
    assert not (cache / "flower_photos").exists()
