"""Where photos are read from: a local folder, or a bucket through a ``pyarrow.fs`` URI.

:class:`PhotoSource` lists a folder in ImageFolder layout (``ROOT/CLASS/.../photo.jpg``)
and reads its files, the same way for a local folder, ``file://``, ``s3://`` (AWS, or
any S3-compatible server with ``?endpoint_override=HOST:PORT&scheme=http``) and
``gs://``. Credentials come the usual way (environment, ``~/.aws``, instance roles); a
URI that carries them is refused. A source pickles as its location, so it can be
shipped to workers on other nodes, which open the file system themselves.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> for rel in ("b/1.jpg", "a/2.png", "a/deep/3.jpg", "a/notes.txt", "a/.x.jpg"):
...     (root / rel).parent.mkdir(parents=True, exist_ok=True)
...     _ = (root / rel).write_bytes(b"pixels")
>>> source = PhotoSource.parse(root)
>>> classes, files, skipped = source.walk()
>>> classes, files
(['a', 'b'], [('a/2.png', 0), ('a/deep/3.jpg', 0), ('b/1.jpg', 1)])
>>> skipped
[('a/.x.jpg', 'hidden file'), ('a/notes.txt', 'not an image file extension')]
>>> source.read("b/1.jpg", limit=100), source.is_local
(b'pixels', True)
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

from trainables.data._photos import (
    BROKEN_LINK,
    IMAGE_EXTENSIONS,
    MAX_FILE_BYTES,
    NOT_REGULAR,
    PhotoResult,
    decode_bytes,
    unreadable,
)

# Query keys pyarrow would read credentials from: never accepted in a URI.
_SECRET_KEYS = {"access_key", "secret_key", "session_token"}
HIDDEN = "hidden file"
NOT_IMAGE = "not an image file extension"
LEAVES = "link leaves the data folder (--follow-links follows it)"
BROKEN = BROKEN_LINK

Listing = tuple[list[str], list[tuple[str, int]], list[tuple[str, str]]]


class SourceError(ValueError):
    """The data location cannot be used, or a file in it is refused (message says why)."""


def _order(rel: str) -> tuple[tuple[int, str], ...]:
    """Walk order: a folder's files (by name) before its sub-folders (by name), depth first."""
    *folders, name = rel.split("/")
    return (*((1, f) for f in folders), (0, name))


def _file_reason(name: str) -> str | None:
    if name.startswith("."):
        return HIDDEN
    if posixpath.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        return NOT_IMAGE
    return None


class PhotoSource:
    """Where photos are read from: a local folder or a pyarrow file system URI.

    ``location`` is what the user gave (kept for display and records); ``root`` is the
    resolved local folder, or the bucket path inside the file system.
    """

    def __init__(
        self, location: str, root: str, is_local: bool, fs: Any = None, follow_links: bool = False
    ) -> None:
        self.location = location
        self.root = root
        self.is_local = is_local
        self.follow_links = follow_links
        self._fs = fs

    @classmethod
    def parse(cls, location: str | os.PathLike[str], follow_links: bool = False) -> PhotoSource:
        """A local path (``~`` expanded, resolved) or a URI; SourceError if unusable.

        ``follow_links``: folder links that leave a local folder are followed too (each
        folder is still visited once)."""
        given = os.fspath(location)
        if "://" not in given:
            return cls(given, str(Path(given).expanduser().resolve()), True, None, follow_links)
        parts = urlsplit(given)
        query = parse_qsl(parts.query)
        keys = {k.lower() for k, _ in query}
        if (
            parts.username
            or parts.password
            or keys & _SECRET_KEYS
            or any("@" in v for _, v in query)
        ):
            raise SourceError(
                "data URI must not carry credentials (they would be recorded with the "
                "experiment); give them the usual way: AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
            )
        try:
            fs, path = pafs.FileSystem.from_uri(given)
        except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise SourceError(f"data {parts.scheme}://{parts.netloc}{parts.path}: {exc}") from None
        if isinstance(fs, pafs.LocalFileSystem):
            return cls(given, str(Path(path).resolve()), True, None, follow_links)
        return cls(given, path.rstrip("/"), False, fs)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "root": self.root,
            "is_local": self.is_local,
            "follow_links": self.follow_links,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.location, self.root = state["location"], state["root"]
        self.is_local, self._fs = state["is_local"], None
        self.follow_links = bool(state.get("follow_links", False))

    def __repr__(self) -> str:
        return f"PhotoSource({self.location!r})"

    @property
    def fs(self) -> Any:
        """The pyarrow file system of a URI (opened on first use after unpickling)."""
        if self._fs is None and not self.is_local:
            self._fs = pafs.FileSystem.from_uri(self.location)[0]
        return self._fs

    def record(self) -> str:
        """What an experiment records to open this source again: the resolved folder, or
        the URI as given (it carries no credentials)."""
        return self.root if self.is_local else self.location

    def __str__(self) -> str:
        return self.display()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhotoSource) and other.record() == self.record()

    def __hash__(self) -> int:
        return hash(self.record())

    def local_path(self, rel: str) -> Path:
        """The local path of ``rel`` (a local source only)."""
        if not self.is_local:
            raise SourceError(f"{self.display()} is not a local folder")
        return Path(self._path(rel))

    def decode(self, rel: str, size: int) -> PhotoResult:
        """(CHW uint8 array, None, sha1) of photo ``rel`` at ``size`` px, or (None, reason, None):
        never raises for a bad file."""
        try:
            path = self._path(rel)
            if self.is_local and os.path.islink(path) and not os.path.exists(path):
                return None, BROKEN, None
            data = self.read(rel, MAX_FILE_BYTES)
        except SourceError as exc:
            return None, str(exc), None
        except OSError as exc:
            return None, unreadable(exc), None
        return decode_bytes(data, size)

    def display(self) -> str:
        """The folder as a user names it: a local path, or ``scheme://bucket/prefix``."""
        if self.is_local:
            return self.root
        return f"{urlsplit(self.location).scheme}://{self.root}"

    def _path(self, rel: str) -> str:
        parts = rel.split("/")
        if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise SourceError(f"{rel!r} is not a path inside the data folder")
        if self.is_local:
            return os.path.join(self.root, *parts)
        return posixpath.join(self.root, rel)

    # Listing ---------------------------------------------------------------

    def walk(self) -> Listing:
        """(class names sorted, [(relative posix path, class index)], [(path, reason skipped)])."""
        classes, files, skipped = self._walk_local() if self.is_local else self._walk_uri()
        return (
            classes,
            sorted(files, key=lambda f: _order(f[0])),
            sorted(skipped, key=lambda s: _order(s[0])),
        )

    def _kind_error(self, kind: str) -> NoReturn:
        where = self.display()
        if kind == "missing":
            raise SourceError(f"data folder {where} does not exist")
        if kind == "file":
            raise SourceError(f"data path {where} is a file, not a folder of class folders")
        raise SourceError(
            f"{where} has no class folders; expected ImageFolder layout ROOT/CLASS/photo.jpg"
        )

    def _walk_uri(self) -> Listing:
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            self._kind_error("missing")
        if info.type != pafs.FileType.Directory:
            self._kind_error("file")
        prefix = f"{self.root}/" if self.root else ""
        found: list[tuple[str, Any]] = []
        for entry in self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True)):
            if entry.path.startswith(prefix) and entry.path != prefix:
                found.append((entry.path[len(prefix) :].strip("/"), entry.type))
        tops = {
            rel.split("/")[0]
            for rel, kind in found
            if "/" in rel or kind == pafs.FileType.Directory
        }
        classes = sorted(c for c in tops if not c.startswith((".", "_")))
        if not classes:
            self._kind_error("empty")
        label = {name: i for i, name in enumerate(classes)}
        files: list[tuple[str, int]] = []
        skipped: list[tuple[str, str]] = []
        for rel, kind in found:
            *folders, name = rel.split("/")
            if kind == pafs.FileType.Directory or not folders or folders[0] not in label:
                continue
            if any(f.startswith(".") for f in folders[1:]):
                continue  # inside a hidden folder, as a local walk prunes it
            reason = _file_reason(name) or (NOT_REGULAR if kind != pafs.FileType.File else None)
            if reason:
                skipped.append((rel, reason))
            else:
                files.append((rel, label[folders[0]]))
        return classes, files, skipped

    def _inside(self, path: str) -> bool:
        if self.follow_links:
            return True
        target = os.path.realpath(path)
        return os.path.commonpath([self.root, target]) == self.root

    def _walk_local(self) -> Listing:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            self._kind_error("missing")
        except OSError as exc:
            raise SourceError(f"data folder {self.root}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            self._kind_error("file")
        files: list[tuple[str, int]] = []
        skipped: list[tuple[str, str]] = []
        classes: list[str] = []
        real: list[tuple[str, int]] = []  # folders to visit, real ones before linked ones
        linked: deque[tuple[str, int]] = deque()
        with os.scandir(self.root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith((".", "_")) or not _is_dir(entry):
                continue
            if entry.is_symlink() and not self._inside(entry.path):
                skipped.append((entry.name, LEAVES))
                continue
            (linked.append if entry.is_symlink() else real.append)((entry.name, len(classes)))
            classes.append(entry.name)
        if not classes:
            self._kind_error("empty")
        seen = {(st.st_dev, st.st_ino)}
        real.reverse()  # a stack: folders in walk order; the first name of a folder wins
        while real or linked:
            rel, label = real.pop() if real else linked.popleft()
            path = os.path.join(self.root, *rel.split("/"))
            try:
                here = os.stat(path)
                if (here.st_dev, here.st_ino) in seen:
                    continue  # a loop, or a folder already listed under another name
                seen.add((here.st_dev, here.st_ino))
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                skipped.append((rel, f"cannot list folder: {exc.strerror}"))
                continue
            subs: list[tuple[str, int]] = []
            for entry in entries:
                sub = f"{rel}/{entry.name}"
                if _is_dir(entry):
                    if entry.name.startswith("."):
                        continue
                    if not entry.is_symlink():
                        subs.append((sub, label))
                    elif self._inside(entry.path):
                        linked.append((sub, label))
                    else:
                        skipped.append((sub, LEAVES))
                    continue
                reason = _file_reason(entry.name) or _local_file_reason(entry)
                if reason:
                    skipped.append((sub, reason))
                else:
                    files.append((sub, label))
            real.extend(reversed(subs))
        return classes, files, skipped

    # Reading ---------------------------------------------------------------

    def read(self, rel: str, limit: int) -> bytes:
        """The bytes of ``rel``: OSError as ``open`` raises it; SourceError for a file that is
        not regular or larger than ``limit`` bytes (refused before it is read)."""
        path = self._path(rel)
        too_large = SourceError(f"larger than {limit} bytes")
        if not self.is_local:
            with self.fs.open_input_file(path) as f:
                if f.size() > limit:
                    raise too_large
                data = bytes(f.read(limit + 1))
        else:  # O_NONBLOCK: opening a FIFO returns at once, and fstat refuses it
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            with open(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise SourceError(NOT_REGULAR)
                if st.st_size > limit:
                    raise too_large
                data = f.read(limit + 1)
        if len(data) > limit:
            raise too_large  # it grew after its size was checked
        return data

    def fingerprint(self, rels: Sequence[str]) -> list[tuple[int, int]]:
        """(size, mtime_ns) of each file, (-1, -1) if missing; one batched call for a URI."""
        paths = [self._path(rel) for rel in rels]
        out: list[tuple[int, int]] = []
        if self.is_local:
            for path in paths:
                try:
                    st = os.stat(path)
                    out.append((st.st_size, st.st_mtime_ns))
                except OSError:
                    out.append((-1, -1))
            return out
        for info in self.fs.get_file_info(paths) if paths else []:
            if info.type == pafs.FileType.NotFound:
                out.append((-1, -1))
            else:
                mtime = info.mtime_ns
                out.append((int(info.size or 0), -1 if mtime is None else int(mtime)))
        return out


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _local_file_reason(entry: os.DirEntry[str]) -> str | None:
    """Why a local file with a photo's name cannot be read as one, or None."""
    if not entry.is_symlink():
        return None if entry.is_file(follow_symlinks=False) else NOT_REGULAR
    try:
        st = os.stat(entry.path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return BROKEN
        return f"cannot read file: {exc.strerror}"
    return None if stat.S_ISREG(st.st_mode) else NOT_REGULAR
