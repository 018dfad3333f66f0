"""Where experiments live: a local folder or an object-store URI, through one file system.

Every file of ours (and, through ``storage_filesystem``, every file Ray Tune
writes) goes through a ``pyarrow.fs`` file system, the layer Ray itself uses,
so a local folder, ``file://``, ``s3://`` (AWS, or any S3-compatible server
with ``?endpoint_override=HOST:PORT&scheme=http``) and ``gs://`` take one code
path. Credentials come the usual way (the environment, ``~/.aws``, instance
roles); a URI that carries them is refused, so they never reach
``tuner.json``, a log or the leaderboard.

>>> import tempfile
>>> store = Storage.parse(tempfile.mkdtemp())
>>> store.write_text("exp/hello.txt", "hi")
>>> store.read_text("exp/hello.txt"), store.is_local
('hi', True)
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

from trainables import MIB, FileRefused, read_bounded, refuse_links, settings, write_replacing
from tuner._errors import UsageError

DEFAULT_STORAGE = "results"
# The most of any one file of an experiment that is read, unless its reader says otherwise
# (a leaderboard, a trial's results, the experiment state are far smaller).
READ_LIMIT = 64 * MIB
REACH_S = 20.0  # how long an object store may take to answer its first request
_REACHED: set[str] = set()
# Query keys pyarrow would read credentials from: never accepted in a URI.
_SECRET_KEYS = {"access_key", "secret_key", "session_token"}
_AWS_ERROR = re.compile(r"AWS Error ([A-Z_]+)")
_DENIED = {"ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH"}


def scrub(text: str) -> str:
    """``text`` without the value of any secret found in the environment."""
    for value in settings().secrets:
        text = text.replace(value, "***")
    return text


def object_store_error(text: str) -> str | None:
    """The object store's error code named in ``text`` (``NO_SUCH_BUCKET``, ...), if any."""
    match = _AWS_ERROR.search(text)
    return match.group(1) if match else None


def read_limited(fs: Any, path: str, limit: int, shown: str | None = None) -> bytes:
    """The file ``path`` of ``fs``, at most ``limit`` bytes: FileRefused (naming it as
    ``shown``) if it is larger or not a regular file (a link, a FIFO, a device: refused at
    once on a local disk, never followed or waited on), FileNotFoundError if absent."""
    if isinstance(fs, pafs.LocalFileSystem):
        return read_bounded(path, limit)
    shown = shown or path
    # One HEAD (the size) and one ranged GET on an object store; a key that is no object
    # (absent, or only a prefix of others) is FileNotFoundError.
    with fs.open_input_file(path) as f:
        size = f.size()
        if size > limit:
            raise FileRefused(
                f"{shown} is {size / 2**20:.1f} MiB, over the {limit / 2**20:.1f} MiB such a "
                "file may be"
            )
        data = bytes(f.read(limit + 1))
    if len(data) > limit:
        raise FileRefused(f"{shown} is over the {limit} bytes it may be")
    return data


def write_whole(fs: Any, path: str, data: bytes) -> None:
    """Write ``path``: readers see the old file or the new one, never a part of it. On a
    local disk through a temporary file created exclusively (never through a file
    planted under a predictable name) and renamed over ``path``."""
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as f:  # an object is replaced by one PUT
            f.write(data)
        return
    write_replacing(path, data)


@dataclass(frozen=True)
class Storage:
    """A file system and the root path of the experiments in it.

    ``uri`` is what the user gave (an absolute folder, or the URI with its
    query), which is what ``tuner.json`` records and commands print.
    """

    uri: str
    fs: Any  # pyarrow.fs.FileSystem
    root: str

    @classmethod
    def parse(cls, given: str | None = None) -> Storage:
        """``--storage``, else ``$TUNER_STORAGE``, else ``./results``; UsageError if unusable."""
        chosen = given or settings().storage or DEFAULT_STORAGE
        if "://" not in chosen:
            path = str(Path(chosen).expanduser().resolve())
            return cls(path, pafs.LocalFileSystem(), path)
        _refuse_credentials(chosen)
        try:
            fs, root = pafs.FileSystem.from_uri(chosen)
        except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise UsageError(f"storage {chosen}: {scrub(str(exc))}") from None
        if isinstance(fs, pafs.LocalFileSystem):
            return cls(root, fs, root)
        storage = cls(chosen, fs, root.rstrip("/"))
        storage._reach()
        return storage

    def _reach(self) -> None:
        """UsageError if the object store does not answer within :data:`REACH_S` seconds
        (once per URI and process): without a network, a client retries for many minutes
        without a word."""
        if self.uri in _REACHED:
            return
        bucket = self.root.split("/", 1)[0]
        answered = threading.Event()

        def probe() -> None:
            with contextlib.suppress(Exception):  # errors are reported by the real call
                self.fs.get_file_info(bucket)
            answered.set()

        threading.Thread(target=probe, name="storage-probe", daemon=True).start()
        limit = float(os.environ.get("TUNER_REACH_TIMEOUT_S") or REACH_S)
        if not answered.wait(limit):
            raise UsageError(
                f"storage {self.display()}: no answer from the object store in {limit:.0f} s "
                "(no network, a wrong endpoint, or credentials the client keeps retrying); "
                "check the URI and the network"
            )
        _REACHED.add(self.uri)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The file system path of ``parts`` under the root."""
        return posixpath.join(self.root, *parts) if parts else self.root

    def display(self, *parts: str) -> str:
        """How a user names ``parts``: a local path, or ``scheme://bucket/...`` (no query)."""
        if self.is_local:
            return self.path(*parts)
        return f"{urlsplit(self.uri).scheme}://{self.path(*parts)}"

    def relative(self, fs_path: str) -> str:
        """``fs_path`` (or its :meth:`display` form) relative to the root."""
        if "://" in fs_path:
            fs_path = fs_path.split("://", 1)[1]
        return posixpath.relpath(fs_path, self.root)

    # Reading and writing -------------------------------------------------

    def exists(self, rel: str) -> bool:
        return bool(self._info(rel).type != pafs.FileType.NotFound)

    def is_dir(self, rel: str) -> bool:
        return bool(self._info(rel).type == pafs.FileType.Directory)

    def list(self, rel: str = "", pattern: str = "*", dirs: bool | None = None) -> list[str]:
        """Names directly under ``rel`` matching the glob ``pattern`` (only folders if
        ``dirs``, only files if ``dirs`` is False), sorted."""
        import fnmatch

        selector = pafs.FileSelector(self.path(rel), allow_not_found=True)
        names = []
        for info in self._call(lambda: self.fs.get_file_info(selector), rel):
            if dirs is not None and (info.type == pafs.FileType.Directory) != dirs:
                continue
            if fnmatch.fnmatch(info.base_name, pattern):
                names.append(info.base_name)
        return sorted(names)

    def read_bytes(self, rel: str, limit: int = READ_LIMIT) -> bytes:
        """The file ``rel``, at most ``limit`` bytes: FileRefused if it is larger, or not a
        regular file (a link, a FIFO, a device: refused at once on a local disk, never
        followed or waited on), FileNotFoundError if it is absent."""
        path, shown = self.path(rel), self.display(rel)
        return self._call(lambda: read_limited(self.fs, path, limit, shown), rel)

    def read_text(self, rel: str, limit: int = READ_LIMIT) -> str:
        data = self.read_bytes(rel, limit)
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise FileRefused(f"{self.display(rel)} is not UTF-8 text; not reading it") from None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``rel`` whole: readers see the old file or the new one, never half of it
        (a temporary file renamed on a local disk; one PUT on an object store)."""
        target = self.path(rel)

        def write() -> None:
            if self.is_local:
                self.refuse_links(posixpath.dirname(rel))
            self.fs.create_dir(posixpath.dirname(target), recursive=True)
            write_whole(self.fs, target, data)

        self._call(write, rel)

    def refuse_links(self, rel: str) -> None:
        """FileRefused if a folder on the way from the root to ``rel`` (a local folder) is
        a link: what is written there would land wherever the link points."""
        refuse_links(self.root, rel)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def delete(self, rel: str) -> None:
        """Delete a file or a folder; nothing if it does not exist."""
        info = self._info(rel)
        if info.type == pafs.FileType.Directory:
            self._call(lambda: self.fs.delete_dir(self.path(rel)), rel)
        elif info.type != pafs.FileType.NotFound:
            self._call(lambda: self.fs.delete_file(self.path(rel)), rel)

    def download(self, rel: str, local: Path) -> None:
        """Copy the file ``rel`` to the local file ``local``."""
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(self.read_bytes(rel))

    def upload(self, local: Path, rel: str) -> None:
        """Copy the local file ``local`` to ``rel`` (nothing if they are the same file)."""
        if self.is_local and Path(self.path(rel)).resolve() == local.resolve():
            return
        self.write_bytes(rel, local.read_bytes())

    # Checks ----------------------------------------------------------------

    def check_writable(self) -> None:
        """Create the root if needed and write, read back and delete a probe file.

        UsageError with one message if the folder or bucket cannot take files:
        a bucket that does not exist, credentials the server refuses, a
        read-only folder.
        """
        if not self.is_local:
            bucket = self.root.split("/", 1)[0]
            info = self._call(lambda: self.fs.get_file_info(bucket), "")
            if info.type == pafs.FileType.NotFound:
                raise UsageError(
                    f"storage {self.display()}: bucket {bucket!r} does not exist; create it "
                    "first (or check the endpoint)"
                )
        probe = f".write-test-{os.getpid()}"
        try:
            self.write_bytes(probe, b"probe")
            self.delete(probe)
        except UsageError as exc:
            if not self.is_local:
                raise
            reason = str(exc).rsplit(": ", 1)[-1]
            raise UsageError(f"storage {self.display()} is not writable: {reason}") from None

    def _info(self, rel: str) -> Any:
        return self._call(lambda: self.fs.get_file_info(self.path(rel)), rel)

    def _call(self, operation: Any, rel: str) -> Any:
        """Run ``operation``; an error the user can fix becomes one UsageError naming the URI."""
        try:
            return operation()
        except OSError as exc:
            where = self.display(rel) if rel else self.display()
            code = object_store_error(str(exc))
            if code in _DENIED:
                raise UsageError(
                    f"storage {where}: access denied ({code}); check the credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws) and the "
                    "bucket's permissions"
                ) from None
            if code == "NO_SUCH_BUCKET":
                raise UsageError(f"storage {where}: the bucket does not exist") from None
            if isinstance(exc, FileNotFoundError):
                raise
            if self.is_local and exc.errno:
                reason = os.strerror(exc.errno)
            elif code == "NETWORK_CONNECTION":
                reason = f"cannot reach the object store ({scrub(str(exc)).splitlines()[0]})"
            else:
                reason = scrub(str(exc))
            raise UsageError(f"storage {where}: {reason}") from None


def _refuse_credentials(uri: str) -> None:
    parts = urlsplit(uri)
    query = parse_qsl(parts.query)
    keys = {k.lower() for k, _ in query}
    # A user:password@ in the URI, or in a value such as endpoint_override=user:pw@host.
    if parts.password or parts.username or keys & _SECRET_KEYS or any("@" in v for _, v in query):
        raise UsageError(
            "storage URI must not carry credentials (they would be recorded with the "
            "experiment); give them the usual way: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or ~/.aws/credentials"
        )
