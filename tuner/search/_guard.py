"""End a search cleanly, and resumably, when its storage fills up or turns read-only.

Ray Tune writes trial checkpoints and the experiment state into the storage
folder while a search runs. On a full disk those writes fail half-way: a
truncated experiment state cannot be resumed. :class:`StorageGuard` prevents
that:

- it keeps a *reserve* file (:data:`RESERVE_BYTES`) in the experiment folder,
  created before the first trial (:func:`make_reserve`);
- before each step of Tune's loop (at most once a second) it checks that the
  folder is still writable and that the free space covers the next round of
  checkpoints (the largest checkpoint so far, once per running trial); a trial
  that fails with a disk error ("No space left on device", a quota, a
  read-only file system) trips it too;
- when tripped it deletes the reserve, so Ray's last state save has room, and
  stops the search the way Ctrl-C does: Ray saves the state, and
  ``tuner resume`` continues the trials from their last checkpoints.

On an object store there is no free space to check and no reserve: a trial
whose checkpoint upload the store refused (quota, permissions, a bucket that
went away) trips it, and so does a probe object the driver cannot write
(every :data:`_PROBE_EVERY_S`); the message names the URI.

Example:
    >>> import tempfile
    >>> from tuner.storage._storage import Storage
    >>> exp = Experiment(Storage.parse(tempfile.mkdtemp()), "exp")
    >>> exp.write_json("tuner.json", {})
    >>> guard = StorageGuard(exp)
    >>> guard.problem() is None
    True
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from ray import tune

from trainables import create_new
from tuner._errors import UsageError
from tuner.engine import filter_trial_loop_log, last_failure, silence_tune_logs
from tuner.storage import RESERVE_FILE, Experiment, object_store_error

RESERVE_BYTES = 32 * 2**20
# Room kept free beyond the next checkpoints: trial results, logs, the state itself.
_MARGIN_BYTES = 8 * 2**20
_CHECK_EVERY_S = 1.0
_PROBE_EVERY_S = 30.0
# The OS errors that mean "the storage cannot take more writes", as a trial reports them.
_DISK_ERRORS = {
    os.strerror(errno.ENOSPC): "is full",
    os.strerror(errno.EDQUOT): "is over its quota",
    os.strerror(errno.EROFS): "is no longer writable",
}


def disk_error(text: str) -> str | None:
    """The disk error named in ``text`` (an exception or error file), if any."""
    return next((e for e in _DISK_ERRORS if e in text), None)


def _upload_error(text: str) -> str | None:
    """The object store's refusal named in ``text`` (``AWS Error ...``), if any."""
    code = object_store_error(text)
    return f"AWS Error {code}" if code else None


class _ShortDiskErrors(logging.Filter):
    """Ray logs a trial's failed checkpoint write with the whole traceback; one line will do."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        error = (disk_error(str(exc)) or _upload_error(str(exc))) if exc is not None else None
        if error:
            record.msg = f"{record.getMessage()}: {error}"
            record.args = ()
            record.exc_info = None
        return True


_SHORT_DISK_ERRORS = _ShortDiskErrors()


def make_reserve(exp: Experiment) -> None:
    """Create the reserve file of a local folder; exit 2 before the search if the storage
    lacks the room. Nothing on an object store."""
    if not exp.storage.is_local:
        return
    exp_dir = Path(exp.path())
    path = exp_dir / RESERVE_FILE
    try:
        # Created anew, never through what is there: a link planted at this name would
        # otherwise have the victim's own file (their state key, say) zero-filled.
        with os.fdopen(create_new(path, 0o600), "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                f.write(bytes(RESERVE_BYTES))  # a file system without fallocate
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        free = shutil.disk_usage(exp_dir).free if exp_dir.is_dir() else 0
        raise UsageError(
            f"storage {exp_dir.parent} cannot hold the experiment: {exc.strerror or exc} "
            f"({free / 2**20:.0f} MiB free; a search keeps {RESERVE_BYTES / 2**20:.0f} MiB in "
            "reserve plus two checkpoints per trial). Free some space and run the same "
            "command again."
        ) from None


def release_reserve(exp: Experiment) -> None:
    """Delete the reserve file (a read-only folder keeps it; its last state stays)."""
    if exp.storage.is_local:
        with contextlib.suppress(OSError):
            (Path(exp.path()) / RESERVE_FILE).unlink(missing_ok=True)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class StorageGuard(tune.Callback):
    """A Tune callback that stops the search before the storage breaks it."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.exp_dir = Path(exp.path())
        self.checkpoint_bytes = 0
        self._last_check = 0.0
        self._last_probe = time.monotonic()
        # Why this guard stopped the search, read by the driver once ``fit`` returns.
        self.tripped: str | None = None

    def setup(self, **info: Any) -> None:  # type: ignore[override]
        self.tripped = None
        filter_trial_loop_log(_SHORT_DISK_ERRORS)

    def problem(self, running: int = 0) -> str | None:
        """What stops the storage from taking the next checkpoints, if anything."""
        if not self.exp.storage.is_local:
            return self._remote_problem()
        if not os.access(self.exp_dir, os.W_OK | os.X_OK):
            return f"the storage of {self.exp_dir} is no longer writable"
        free = shutil.disk_usage(self.exp_dir).free
        needed = self.checkpoint_bytes * running + _MARGIN_BYTES
        if free < needed:
            return (
                f"the storage of {self.exp_dir} is full: {free / 2**20:.0f} MiB free, the next "
                f"checkpoints need about {needed / 2**20:.0f} MiB"
            )
        return None

    def _remote_problem(self) -> str | None:
        now = time.monotonic()
        if now - self._last_probe < _PROBE_EVERY_S:
            return None
        self._last_probe = now
        try:
            self.exp.storage.check_writable()
        except UsageError as exc:
            return str(exc)
        return None

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self._last_check < _CHECK_EVERY_S:
            return
        self._last_check = now
        running = sum(1 for t in trials if t.status == "RUNNING")
        reason = self.problem(running)
        if reason:
            self._stop(reason)

    def on_checkpoint(
        self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any
    ) -> None:
        if not self.exp.storage.is_local:
            return
        try:
            size = _folder_bytes(Path(checkpoint.path))
        except OSError:
            return
        self.checkpoint_bytes = max(self.checkpoint_bytes, size)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._check_trial_error(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._check_trial_error(trial)

    def _check_trial_error(self, trial: Any) -> None:
        try:
            text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
        except OSError:
            return
        last = last_failure(text)
        error, refused = disk_error(last), _upload_error(last)
        if error:
            self._stop(
                f"the storage of {self.exp_dir} {_DISK_ERRORS[error]}: trial {trial.trial_id} "
                f"could not save its checkpoint ({error})"
            )
        elif refused:
            self._stop(
                f"the storage {self.exp.display()} refused an upload ({refused}): "
                f"trial {trial.trial_id} could not save its checkpoint"
            )

    def _stop(self, reason: str) -> None:
        if self.tripped:
            return
        self.tripped = reason
        release_reserve(self.exp)  # room for Ray's last save
        # Ray logs the failed writes of its last save with tracebacks; the driver
        # prints one message instead.
        silence_tune_logs()
        signal.raise_signal(signal.SIGINT)  # Tune's graceful stop, as for Ctrl-C
