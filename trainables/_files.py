"""Reading and writing files that someone else may have planted.

An experiment folder, an export or a photo list can be shared, so any file in it
may be a link, a FIFO, a device, a sparse giant or deeply nested JSON. Every
read of such a file goes through :func:`read_bounded` (regular files only,
opened non-blocking, a size cap stated by the caller) and every JSON document
through :func:`parse_json` (a depth cap); a refusal is :class:`FileRefused`,
one line naming the file. Every name that comes from a file is checked with
:func:`safe_name` before it is joined to a path, and every file the tool
creates is created with :func:`create_new` or :func:`write_replacing`, which
never write through a link.

>>> import tempfile, os
>>> folder = tempfile.mkdtemp()
>>> write_replacing(os.path.join(folder, "a.json"), b'{"x": [1, 2]}')
>>> parse_json(read_bounded(os.path.join(folder, "a.json"), KIB), "a.json")
{'x': [1, 2]}
>>> os.symlink("/dev/zero", os.path.join(folder, "z.json"))
>>> try:
...     read_bounded(os.path.join(folder, "z.json"), KIB)
... except FileRefused as exc:
...     print(str(exc).endswith("is a link; not following it"))
True
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

KIB = 2**10
MIB = 2**20
JSON_DEPTH = 32  # deeper JSON than any file the tool writes is refused
# A name read from a file (a trial id, a checkpoint folder, a member id) before it is joined
# to a path: one path component, no leading dot, nothing but these characters.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+,-]{0,199}")
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class FileRefused(Exception):
    """A file that is not what the tool reads (a link, a FIFO, too large, malformed):
    reported as one line, exit code 2."""


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n / KIB:.0f} KiB" if n >= KIB else f"{n} B"


def open_regular(path: str | os.PathLike[str], limit: int, follow: bool = False) -> int:
    """A file descriptor of the regular file ``path`` of at most ``limit`` bytes: opened
    non-blocking (a FIFO cannot hang it), not through a link unless ``follow``, its type
    and size checked on the open file. FileRefused otherwise; FileNotFoundError as is."""
    flags = _OPEN_FLAGS | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused(f"{path} is a link; not following it") from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise FileRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"{path} is {_describe(info.st_mode)}, not a file; not reading it")
        if info.st_size > limit:
            raise FileRefused(
                f"{path} is {_size(info.st_size)}, over the {_size(limit)} such a file may be"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: str | os.PathLike[str], limit: int, follow: bool = False) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (see
    :func:`open_regular`); a file that grows past ``limit`` while read is refused too."""
    fd = open_regular(path, limit, follow)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"{path} is over the {_size(limit)} such a file may be")
    return data


def _depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"the number {text[:20]}... is too large")
    return value


def parse_json(data: bytes | str, what: object, depth: int = JSON_DEPTH, nan: bool = False) -> Any:
    """``data`` parsed as JSON; FileRefused naming ``what`` if it is not JSON, nests deeper
    than ``depth``, holds an integer beyond 64 bits or (unless ``nan``) NaN or Infinity."""
    try:
        value = json.loads(data, parse_constant=None if nan else _no_constant, parse_int=_int64)
    except RecursionError:
        raise FileRefused(f"{what} nests deeper than {depth} levels; not reading it") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileRefused(f"{what} is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not _depth_ok(value, depth):
        raise FileRefused(f"{what} nests deeper than {depth} levels; not reading it")
    return value


def safe_name(name: object, what: str) -> str:
    """``name`` (read from a file) if it is one harmless path component, else FileRefused."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        shown = repr(name)[:80]
        raise FileRefused(f"{what} {shown} is not a name the tool writes; not using it")
    return name


def inside(root: str | os.PathLike[str], *names: str) -> Path:
    """``root / names``, FileRefused unless it stays inside ``root`` once resolved."""
    base = Path(root).resolve()
    target = base.joinpath(*names).resolve()
    if target != base and base not in target.parents:
        raise FileRefused(f"{Path(root).joinpath(*names)} leads outside {base}; not using it")
    return target


def write_replacing(
    path: str | os.PathLike[str], data: bytes | memoryview, mode: int = 0o644
) -> None:
    """Write ``path`` whole through a temporary file created exclusively in its folder and
    renamed over it: readers see the old file or the new one, and a link planted at
    ``path`` is replaced, never written through."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_new(path: str | os.PathLike[str], mode: int = 0o644, replace: bool = True) -> int:
    """A descriptor of a new, empty file at ``path``, created exclusively and not through
    a link. Whatever is at ``path`` already (a stale file, a planted link) is removed
    first if ``replace``, else FileExistsError."""
    if replace:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise FileRefused(f"{path} is a folder; not replacing it") from None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)


def refuse_links(root: str | os.PathLike[str], rel: str, replace_last: bool = False) -> None:
    """FileRefused if a component of ``rel`` under ``root`` is a link, so that nothing is
    written through one; a link as the last component is removed instead (written anew,
    never through) if ``replace_last``. Stops at the first component that does not exist
    (it will be created as a real one)."""
    where = os.fspath(root)
    parts = [p for p in rel.split("/") if p and p != "."]
    for i, part in enumerate(parts):
        where = os.path.join(where, part)
        try:
            mode = os.lstat(where).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            if replace_last and i == len(parts) - 1:
                os.unlink(where)
                return
            raise FileRefused(f"{where} is a link; the tool writes nothing through it")


def open_lock(path: str | os.PathLike[str], mode: int = 0o644) -> int:
    """A descriptor of the lock file ``path`` (created if absent) for ``flock``: never
    through a link planted at its name, and only a regular file (a FIFO is refused at once,
    not waited on)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused(f"{path} is a link; not following it") from None
        raise FileRefused(f"cannot open {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileRefused(f"{path} is not a regular file; not using it")
    return fd


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (another user's counts), for files a
    process owns by name or lock: those of a process that is gone may be taken or removed.

    >>> process_alive(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
