"""The state ``resume`` loads is signed by the user who wrote it, and checked before it loads.

``ray.tune.Tuner.restore`` unpickles ``tuner.pkl``, ``searcher-state-*.pkl``,
``callback-states-*.pkl``, ``search_gen_state-*.json``,
``basic-variant-state-*.json`` and the cloudpickled fields of
``experiment_state-*.json``, and ``resume`` joins the Ray cluster and reads the
photos ``tuner.json`` names: whoever can write them can run code on the machine
of whoever resumes. These files (:func:`is_signed`, directly in the experiment
folder) are signed:

- Every file Ray writes goes through :func:`signing_filesystem`, a pyarrow file
  system that hands everything to the real one except the writes of those
  files: their bytes are buffered and, on close, HMAC-SHA256(key, name + bytes)
  is first added to ``NAME/.state-signatures`` (which keeps the last
  :data:`KEEP` digests of each file), and only then is the file written whole
  (a temporary file renamed on a local disk; one PUT on an object store). At
  every moment each signed file is an earlier signed version or the new one,
  so a driver killed -9 at any point leaves a state that verifies.
- The key is 32 random bytes in ``$XDG_CONFIG_HOME/flower-tune/state.key``
  (else ``~/.config/flower-tune/state.key``), created 0600 on first use. It
  never enters the experiment: the file system Ray pickles into its state and
  ships to trial workers holds only the key's path, and only a signed write or
  a checked read (the driver) loads it.
- ``resume`` checks every signed file (:func:`check_signed`) before anything is
  loaded, and the file system it hands Ray checks them again as Ray reads them.
  ``resume --trust-state`` skips both.

The signatures file's name ends in neither ``.json`` nor ``.pkl``: Ray copies
those from the experiment folder to its staging folder on restore and back at
every save, which would put an old copy over the current one.

>>> is_signed("tuner.pkl"), is_signed("experiment_state-2025.json"), is_signed("split.json")
(True, True, False)
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import hmac
import io
import json
import os
import posixpath
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from trainables import settings
from tuner._errors import UsageError
from tuner.storage._experiment import SIGNATURES_FILE, Experiment
from tuner.storage._storage import write_whole

SIGNED = (
    "tuner.json",
    "*.pkl",
    "experiment_state-*.json",
    "search_gen_state-*.json",
    "basic-variant-state-*.json",
)
KEEP = 3  # digests kept per file: the version being replaced stays valid
_LOCK = threading.Lock()  # one read-modify-write of a signatures file at a time
_KEYS: dict[str, bytes] = {}


def is_signed(name: str) -> bool:
    """Whether the file ``name`` of an experiment folder is signed and checked."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SIGNED)


# The key: its path comes from the settings; its bytes are read here only ----------


def key_path() -> Path:
    """``$XDG_CONFIG_HOME/flower-tune/state.key``, else ``~/.config/flower-tune/state.key``."""
    return settings().config_dir / "state.key"


def load_key(path: str | None = None) -> bytes:
    """The key at ``path`` (default :func:`key_path`), created 0600 if there is none."""
    path = path or str(key_path())
    if path not in _KEYS:
        _KEYS[path] = _read_or_create(Path(path))
    return _KEYS[path]


def _read_or_create(path: Path) -> bytes:
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state.key.", dir=path.parent)  # mode 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(secrets.token_bytes(32))
                # Whole or not at all; a process that created it first wins.
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        key = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read or create the state key {path}: {exc.strerror or exc} "
            "(set XDG_CONFIG_HOME to a folder you can write)"
        ) from None
    if len(key) < 32:
        raise UsageError(f"the state key {path} is damaged (under 32 bytes)")
    return key


def _digest(key: bytes, name: str, data: bytes) -> str:
    return hmac.new(key, name.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _valid(key: bytes, name: str, data: bytes, signatures: dict[str, list[str]]) -> bool:
    digest = _digest(key, name, data)
    return any(hmac.compare_digest(digest, known) for known in signatures.get(name, []))


def _parse(raw: bytes | None) -> dict[str, list[str]]:
    """The signatures file's digests by file name ({} if absent or unreadable)."""
    try:
        files = json.loads(raw or b"{}").get("files", {})
        return {str(k): [str(d) for d in v] for k, v in files.items() if isinstance(v, list)}
    except (ValueError, AttributeError):
        return {}


# Writing and reading through the real file system ---------------------------------


def _read(fs: Any, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path) as f:
            return bytes(f.read())
    except FileNotFoundError:
        return None


def _direct(fs: Any) -> Any:
    """``fs``, uploading in the calling thread. A signed file is written while pyarrow's
    ``copy_files`` holds an IO thread; with background writes (S3's default) each such
    write waits for another IO thread, and ten at once (8 IO threads) never finish."""
    if isinstance(fs, pafs.S3FileSystem):
        rebuild, (options,) = fs.__reduce__()
        if options.get("background_writes"):
            return rebuild({**options, "background_writes": False})
    return fs


class SigningHandler(pafs.FileSystemHandler):
    """The real file system ``fs``, signing (and, if ``verify``, checking on read) the
    :func:`is_signed` files directly in ``folder``. Pickles without the key."""

    def __init__(self, fs: Any, folder: str, key_file: str, verify: bool = True) -> None:
        self.fs, self.folder, self.key_file, self.verify = fs, folder, key_file, verify
        self._writer: Any = None  # ``_direct(fs)``, made on the first signed write
        # path -> digest of what this object last wrote there. Ray uploads every state file
        # of every session at each save; one unchanged since is not written again.
        self._written: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_writer": None, "_written": {}}

    def _name(self, path: str) -> str | None:
        """``path``'s name if it is a signed file of the experiment folder."""
        head, name = posixpath.split(path.rstrip("/"))
        return name if head == self.folder and is_signed(name) else None

    def write_signed(self, path: str, data: bytes) -> None:
        name = self._name(path) or posixpath.basename(path)
        signatures_path = posixpath.join(self.folder, SIGNATURES_FILE)
        digest = _digest(load_key(self.key_file), name, data)
        with _LOCK:
            if self._written.get(path) == digest:
                return
            if self._writer is None:
                self._writer = _direct(self.fs)
            signatures = _parse(_read(self.fs, signatures_path))
            kept = [d for d in signatures.get(name, []) if d != digest]
            signatures[name] = [*kept[-(KEEP - 1) :], digest]
            record = json.dumps({"version": 1, "files": signatures}, indent=1).encode()
            write_whole(self._writer, signatures_path, record)  # the signature first,
            write_whole(self._writer, path, data)  # then the file it signs
            self._written[path] = digest

    def _checked(self, path: str) -> bytes:
        data = _read(self.fs, path)
        if data is None:
            raise FileNotFoundError(path)
        name = posixpath.basename(path)
        signatures = _parse(_read(self.fs, posixpath.join(self.folder, SIGNATURES_FILE)))
        if not _valid(load_key(self.key_file), name, data, signatures):
            raise UsageError(
                f"{path} changed after it was checked and no longer carries a signature of "
                f"your state key; it was not loaded (resume --trust-state loads it anyway)"
            )
        return data

    # pyarrow.fs.FileSystemHandler ----------------------------------------------

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SigningHandler)
            and (self.folder, self.key_file, self.verify)
            == (other.folder, other.key_file, other.verify)
            and bool(self.fs.equals(other.fs))
        )

    def __hash__(self) -> int:
        return hash((self.folder, self.key_file, self.verify))

    def get_type_name(self) -> str:
        return f"signing+{self.fs.type_name}"

    def normalize_path(self, path: str) -> str:
        return str(self.fs.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> list[Any]:
        return list(self.fs.get_file_info(paths))

    def get_file_info_selector(self, selector: Any) -> list[Any]:
        return list(self.fs.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        if self._name(dest):
            self.copy_file(src, dest)
            self.fs.delete_file(src)
        else:
            self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        if self._name(dest):
            self.write_signed(dest, _read(self.fs, src) or b"")
        else:
            self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        if self.verify and self._name(path):
            return pa.BufferReader(self._checked(path))
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        if self.verify and self._name(path):
            return pa.BufferReader(self._checked(path))
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        if self._name(path):
            return pa.PythonFile(_SignedWrite(self, path), mode="w")
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        if self._name(path):
            stream = _SignedWrite(self, path)
            stream.write(_read(self.fs, path) or b"")
            return pa.PythonFile(stream, mode="w")
        return self.fs.open_append_stream(path, metadata=metadata)


class _SignedWrite(io.BytesIO):
    """The bytes of a signed file, signed and written when closed."""

    def __init__(self, handler: SigningHandler, path: str) -> None:
        super().__init__()
        self.handler, self.path = handler, path

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            super().close()
            self.handler.write_signed(self.path, data)


def signing_filesystem(exp: Experiment, verify: bool = True) -> Any:
    """``exp``'s file system for Ray (``storage_filesystem``): it signs the state files
    Ray writes and, if ``verify``, refuses to hand Ray one that does not verify."""
    handler = SigningHandler(exp.storage.fs, exp.path(), str(key_path()), verify)
    return pafs.PyFileSystem(handler)


def write_signed(exp: Experiment, name: str, data: bytes) -> None:
    """Write the signed file ``name`` of ``exp`` whole, its signature first."""
    exp.storage.fs.create_dir(exp.path(), recursive=True)
    SigningHandler(exp.storage.fs, exp.path(), str(key_path())).write_signed(exp.path(name), data)


def read_checked(exp: Experiment, name: str) -> bytes:
    """The signed file ``name`` of ``exp``, read once and checked (UsageError if not)."""
    return SigningHandler(exp.storage.fs, exp.path(), str(key_path()))._checked(exp.path(name))


def unverified(exp: Experiment) -> list[str]:
    """The signed files of ``exp`` that do not carry a signature of this user's key."""
    storage = exp.storage
    names = [name for name in storage.list(exp.name, dirs=False) if is_signed(name)]
    contents = {name: storage.read_bytes(exp.rel(name)) for name in names}
    try:  # read after the files: a version written meanwhile was signed before it was written
        raw: bytes | None = storage.read_bytes(exp.rel(SIGNATURES_FILE))
    except FileNotFoundError:
        raw = None
    signatures, key = _parse(raw), load_key()
    return [name for name, data in contents.items() if not _valid(key, name, data, signatures)]


def check_signed(exp: Experiment) -> None:
    """UsageError naming the files of ``exp`` that ``resume`` must not load, if any."""
    bad = unverified(exp)
    if not bad:
        return
    shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    raise UsageError(
        f"not loading the saved state of {exp.name!r} in {exp.display()}: {shown} "
        f"{'is' if len(bad) == 1 else 'are'} not signed with your state key ({key_path()}). "
        "Loading Ray's saved state runs code, so it was either changed by someone else or "
        "written with another key: on another machine or account (copy its state.key here), "
        "or by a flower-tune older than state signing. If you trust everyone who can write "
        f"to {exp.storage.display()}, load it anyway with: {exp.resume_command()} --trust-state"
    )
