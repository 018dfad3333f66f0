"""The state ``resume`` loads is signed by the user who wrote it, and checked before it loads.

``ray.tune.Tuner.restore`` unpickles or loads Ray's state files
(:data:`~tuner.engine.formats.RESTORED_FILES`: the tuner, the trial list, the
generators' and searchers' states); ``resume`` and ``refit`` join the cluster and read
the photos ``tuner.json`` names. Whoever can write these files (:func:`is_signed`)
could run code as whoever resumes, so they are signed:

- Ray writes through :func:`signing_filesystem`: a signed file's bytes are buffered and,
  on close, its digest is first added to the record ``NAME/.state-signatures`` (the last
  :data:`KEEP` of each file), then the file is written whole. A driver killed -9 at any
  moment leaves each file an earlier signed version or the new one.
- **Bound to the experiment**: the record holds a random experiment id (made at the
  first signed write, ``search`` writing ``tuner.json``) and the experiment's name, and
  carries HMAC-SHA256(key, its content). A file's digest is HMAC-SHA256(key, id NUL
  file name NUL bytes). A file signed for one experiment, copied with its digest or with
  the whole record, fails in another. A record without a valid MAC, of another name, or
  from before this binding verifies nothing (``--trust-state`` loads and re-signs it).
- **Bound to its order**: the record's save counter rises at every signed write, and
  this machine keeps the highest it wrote or checked per experiment id and folder
  (``CONFIG/saves/MARK``, :func:`~tuner.storage._record.mark_of`); an older record (a
  folder rolled back to an earlier signed save) is refused. A copy of the folder
  elsewhere is watched on its own. A machine that never saw the folder (its key copied
  there) has no mark: there, a rollback to an earlier signed save is still accepted.
- The journal's length when Ray saved each trial list (:func:`note_journal`) is kept
  with that list's digest, so ``resume`` cuts the study back to the save it restores.
- The key is 32 random bytes in ``$XDG_CONFIG_HOME/flower-tune/state.key`` (else
  ``~/.config/...``), created 0600. Ray pickles the file system with only the key's path.
- ``resume`` checks every signed file (:func:`check_signed`) before anything loads, and
  again as Ray reads it, unless ``--trust-state``. Every read is bounded: regular files
  only (a FIFO or link is refused at once), :data:`STATE_LIMIT` bytes at most, the record
  parsed with a depth cap and type-checked.

The record's name ends in neither ``.json`` nor ``.pkl``: Ray copies those from the
experiment folder to its staging folder on restore and back at every save.

>>> is_signed("tuner.pkl"), is_signed(STATE_GLOB.replace("*", "2025")), is_signed("split.json")
(True, True, False)
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import posixpath
import secrets
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from trainables import MIB, FileRefused, refuse_links
from tuner._errors import UsageError
from tuner.engine.formats import RESTORED_FILES, STATE_GLOB
from tuner.storage._experiment import SIGNATURES_FILE, STATE_LIMIT, Experiment
from tuner.storage._record import (
    Record,
    high_water,
    key_path,
    load_key,
    mark_of,
    parse_record,
    raise_high_water,
)
from tuner.storage._storage import read_limited, write_whole

SIGNED = ("tuner.json", *RESTORED_FILES)
STATE_PATTERN = STATE_GLOB  # the trial list Ray restores (the newest by name)
KEEP = 3  # digests kept per file: the version being replaced stays valid
RECORD_LIMIT = 4 * MIB  # the most of the record read (~300 bytes a signed file)
_LOCK = threading.Lock()  # one read-modify-write of a signatures file at a time
# sha256 of an experiment state Ray saved -> (the journal's length then, what makes the
# stored journal at least that long): see note_journal.
_JOURNAL_AT: dict[str, tuple[int, Callable[[], None] | None]] = {}
_NOTES_LOCK = threading.Lock()


def is_signed(name: str) -> bool:
    """Whether the file ``name`` of an experiment folder is signed and checked."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SIGNED)


def note_journal(state: bytes, length: int, ensure: Callable[[], None] | None = None) -> None:
    """Ray saved the experiment state ``state`` when the study's journal was ``length``
    bytes long: the signed write of those bytes keeps the length with their digest.
    ``ensure`` (if given) runs first and makes the stored journal at least that long."""
    with _NOTES_LOCK:
        _JOURNAL_AT[hashlib.sha256(state).hexdigest()] = (length, ensure)
        while len(_JOURNAL_AT) > 64:
            del _JOURNAL_AT[next(iter(_JOURNAL_AT))]


# Writing and reading through the real file system ---------------------------------


def _read(fs: Any, path: str, limit: int = STATE_LIMIT) -> bytes | None:
    """``path``'s bytes (None if absent): a regular file of at most ``limit`` bytes, else
    FileRefused (on a local disk a FIFO or a link is refused without opening it)."""
    try:
        return read_limited(fs, path, limit)
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
        # path -> sha256 of what this object last wrote there. Ray uploads every state file
        # of every session at each save; one unchanged since is not written again.
        self._written: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_writer": None, "_written": {}}

    @property
    def where(self) -> str:
        """The experiment folder as its save mark knows it: file system and path."""
        return f"{self.fs.type_name}:{self.folder}"

    def _name(self, path: str) -> str | None:
        """``path``'s name if it is a signed file of the experiment folder."""
        head, name = posixpath.split(path.rstrip("/"))
        return name if head == self.folder and is_signed(name) else None

    def record(self, refuse: bool = True) -> Record | None:
        """The experiment's signed record, if it verifies (FileRefused if it is not a
        regular file, unless not ``refuse``: then None)."""
        try:
            raw = _read(self.fs, posixpath.join(self.folder, SIGNATURES_FILE), RECORD_LIMIT)
        except FileRefused:
            if refuse:
                raise
            raw = None  # replaced by the next write, never read or written through
        name = posixpath.basename(self.folder.rstrip("/"))
        return parse_record(raw, load_key(self.key_file), name)

    def write_signed(self, path: str, data: bytes) -> None:
        name = self._name(path) or posixpath.basename(path)
        sha = hashlib.sha256(data).hexdigest()
        key = load_key(self.key_file)
        with _LOCK:
            if self._written.get(path) == sha:
                return
            if self._writer is None:
                self._writer = _direct(self.fs)
            # No record that verifies (a new experiment, or one loaded with --trust-state):
            # a new experiment id; digests under any other id verify nothing.
            folder_name = posixpath.basename(self.folder.rstrip("/"))
            record = self.record(refuse=False) or Record(secrets.token_hex(16), folder_name)
            digest = record.digest(key, name, data)
            kept = [d for d in record.files.get(name, []) if d != digest]
            record.files[name] = [*kept[-(KEEP - 1) :], digest]
            noted = _JOURNAL_AT.get(sha) if fnmatch.fnmatchcase(name, STATE_PATTERN) else None
            if noted is not None:
                length, ensure = noted
                if ensure is not None:
                    ensure()  # the study as long as the state says, before the state
                record.journal[digest] = length
            live = {d for digests in record.files.values() for d in digests}
            record.journal = {d: n for d, n in record.journal.items() if d in live}
            mark = mark_of(record.experiment, self.where)
            record.save = max(record.save, high_water(self.key_file, mark)) + 1
            signatures = posixpath.join(self.folder, SIGNATURES_FILE)
            write_whole(self._writer, signatures, record.encode(key))  # the signature first,
            write_whole(self._writer, path, data)  # then the file it signs
            raise_high_water(self.key_file, mark, record.save)
            self._written[path] = sha

    def _checked(self, path: str, retry: str = "resume --trust-state loads it anyway") -> bytes:
        data = _read(self.fs, path)
        if data is None:
            raise FileNotFoundError(path)
        record = self.record()
        if record is None or not record.valid(
            load_key(self.key_file), posixpath.basename(path), data
        ):
            raise UsageError(
                f"{path} does not carry a signature of your state key for this experiment; "
                f"it was not loaded ({retry})"
            )
        _refuse_rollback(record, self.key_file, self.where, path, retry)
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

    def _no_link(self, path: str, replace: bool = True) -> None:
        """On a local disk, ``path`` (under the experiment folder) made safe to write:
        FileRefused if a folder on the way is a link; a link at ``path`` itself removed if
        ``replace`` (written anew, never through), else refused. Ray writes trial results
        and checkpoints through here, into a folder others may have planted links in."""
        if not isinstance(self.fs, pafs.LocalFileSystem):
            return
        rel = posixpath.relpath(path, self.folder)
        if rel != "." and not rel.startswith("../"):
            refuse_links(self.folder, rel, replace_last=replace)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._no_link(path, replace=False)
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
        self._no_link(dest)
        if self._name(dest):
            self.copy_file(src, dest)
            self.fs.delete_file(src)
        else:
            self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._no_link(dest)
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
        self._no_link(path)
        if self._name(path):
            return pa.PythonFile(_SignedWrite(self, path), mode="w")
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        self._no_link(path, replace=False)
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


def _refuse_rollback(record: Record, key_file: str, where: str, what: str, retry: str) -> None:
    mark = mark_of(record.experiment, where)
    seen = high_water(key_file, mark)
    if record.save < seen:
        raise UsageError(
            f"{what}: the experiment's signed state is save {record.save}, older than save "
            f"{seen} that this machine wrote or checked: it was rolled back to an earlier "
            f"signed save; not loading it ({retry})"
        )
    raise_high_water(key_file, mark, record.save)


def _handler(exp: Experiment, verify: bool = True) -> SigningHandler:
    return SigningHandler(exp.storage.fs, exp.path(), str(key_path()), verify)


def signing_filesystem(exp: Experiment, verify: bool = True) -> Any:
    """``exp``'s file system for Ray (``storage_filesystem``): it signs the state files
    Ray writes and, if ``verify``, refuses to hand Ray one that does not verify."""
    return pafs.PyFileSystem(_handler(exp, verify))


def write_signed(exp: Experiment, name: str, data: bytes) -> None:
    """Write the signed file ``name`` of ``exp`` whole, its signature first."""
    exp.storage.fs.create_dir(exp.path(), recursive=True)
    _handler(exp).write_signed(exp.path(name), data)


def read_checked(exp: Experiment, name: str, command: str = "resume") -> bytes:
    """The signed file ``name`` of ``exp``, read once and checked (UsageError if not)."""
    retry = f"if you trust whoever can write to {exp.storage.display()}: {command} --trust-state"
    return _handler(exp)._checked(exp.path(name), retry)


def stored_record(exp: Experiment) -> Record | None:
    """The signed record of ``exp`` if it verifies (FileRefused if not a regular file)."""
    return _handler(exp).record()


def unverified(exp: Experiment) -> list[str]:
    """The signed files of ``exp`` that do not carry a signature of this user's key for
    this experiment."""
    storage = exp.storage
    names = [name for name in storage.list(exp.name, dirs=False) if is_signed(name)]
    contents = {name: storage.read_bytes(exp.rel(name), STATE_LIMIT) for name in names}
    # Read after the files: a version written meanwhile was signed before it was written.
    record, key = stored_record(exp), load_key()
    if record is None:
        return names
    return [name for name, data in contents.items() if not record.valid(key, name, data)]


def check_signed(exp: Experiment) -> None:
    """UsageError naming the files of ``exp`` that ``resume`` must not load, if any."""
    bad = unverified(exp)
    if not bad:
        record = stored_record(exp)
        if record is not None:
            retry = f"load it anyway with: {exp.resume_command()} --trust-state"
            where = _handler(exp).where
            _refuse_rollback(
                record, str(key_path()), where, f"{exp.name!r} in {exp.display()}", retry
            )
        return
    shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    raise UsageError(
        f"not loading the saved state of {exp.name!r} in {exp.display()}: {shown} "
        f"{'is' if len(bad) == 1 else 'are'} not signed with your state key ({key_path()}) "
        "for this experiment. Loading Ray's saved state runs code, so it was either changed "
        "or copied from another experiment by someone else, or written with another key: on "
        "another machine or account (copy its state.key here), or by a flower-tune older than "
        "state signing. If you trust everyone who can write to "
        f"{exp.storage.display()}, load it anyway with: {exp.resume_command()} --trust-state"
    )
