"""The study's journal (Optuna's journal file storage), of which the driver is the only
writer: a local file, in the experiment folder on a local storage, else a copy under the
temporary folder that :class:`JournalUpload` uploads each time Ray Tune saves the
experiment state and ``resume`` downloads again (:func:`fetch_journal`)."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from trainables import FileRefused
from tuner.storage import (
    JOURNAL_FILE,
    STATE_LIMIT,
    STATE_PATTERN,
    Experiment,
    load_key,
    stored_record,
)

_UPLOADING = threading.Lock()
_UPLOADED: dict[str, int] = {}  # remote journal (its display) -> bytes uploaded at least


def local_journal(exp: Experiment) -> Path:
    """The journal file the driver writes: the experiment's own on a local folder, else a
    copy named after the experiment's URI in the temporary folder."""
    if exp.storage.is_local:
        return Path(exp.path(JOURNAL_FILE))
    digest = hashlib.sha256(exp.display().encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "flower-tune-journals" / digest / JOURNAL_FILE


def fetch_journal(exp: Experiment) -> None:
    """Before a resume: the local journal becomes the storage's (the study as Ray Tune last
    saved it), whatever this machine held before."""
    local = local_journal(exp)
    if exp.storage.is_local:
        return
    try:
        exp.storage.download(exp.rel(JOURNAL_FILE), local)
    except FileNotFoundError:
        local.unlink(missing_ok=True)


def upload_journal(exp: Experiment, at_least: int = 0) -> None:
    """Upload the local copy of a remote journal, unless ``at_least`` bytes of it were."""
    local = local_journal(exp)
    if exp.storage.is_local or not local.exists():
        return
    with _UPLOADING:
        if at_least and _UPLOADED.get(exp.display(), 0) >= at_least:
            return
        size = local.stat().st_size
        exp.storage.upload(local, exp.rel(JOURNAL_FILE))
        _UPLOADED[exp.display()] = max(size, _UPLOADED.get(exp.display(), 0))


def journal_length(exp: Experiment) -> int | None:
    """The journal's length when Ray saved the trial list ``resume`` restores (the newest
    state file), if that list's signature recorded it."""
    names = exp.storage.list(exp.name, dirs=False)
    states = [n for n in names if fnmatch.fnmatchcase(n, STATE_PATTERN)]
    if not states:
        return None
    newest = max(states)  # as Ray chooses it
    try:
        data = exp.storage.read_bytes(exp.rel(newest), STATE_LIMIT)
        record = stored_record(exp)
    except (OSError, FileRefused):
        return None
    if record is None or not record.valid(load_key(), newest, data):
        return None
    return record.journal.get(record.digest(load_key(), newest, data))


def cut_journal(exp: Experiment, say: Callable[[str], None] = print) -> int:
    """Before a resume (after :func:`fetch_journal`): cut the local journal back to its
    length when the restored trial list was saved; the number of entries dropped."""
    length = journal_length(exp)
    if length is None:
        return 0
    local = local_journal(exp)
    flags = os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(local, flags)
    except OSError:
        return 0  # no journal (or not one this tool wrote): the study starts from none
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size <= length:
            return 0
        if length and os.pread(fd, 1, length - 1) != b"\n":
            return 0  # not where an entry ended: not the journal that was measured
        dropped = os.pread(fd, min(info.st_size - length, 2**24), length).count(b"\n")
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)
    say(
        f"Study: {dropped} journal entries written after the saved state this resume "
        "restores were dropped; the trials they told of run again from that state"
    )
    return dropped


def forget_journal(exp: Experiment) -> None:
    """Upload the journal one last time and drop the local copy of a remote one."""
    local = local_journal(exp)
    if exp.storage.is_local or not local.exists():
        return
    exp.storage.upload(local, exp.rel(JOURNAL_FILE))
    shutil.rmtree(local.parent, ignore_errors=True)


class JournalUpload(tune.Callback):
    """Uploads the driver's journal whenever Ray Tune saves the experiment state, so the
    study in the storage matches the saved trials (nothing to do on a local folder)."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp

    def _upload(self) -> None:
        upload_journal(self.exp)

    def get_state(self) -> dict[str, Any] | None:
        """Called by Tune each time it saves the experiment state; stores nothing."""
        self._upload()
        return None

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._upload()


def journal_storage(path: Path) -> Any:
    """Optuna journal storage in the file ``path``."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))
