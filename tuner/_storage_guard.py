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

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> guard = StorageGuard(folder)
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

from tuner._errors import UsageError

RESERVE_FILE = ".tuner-reserve"
RESERVE_BYTES = 32 * 2**20
# Room kept free beyond the next checkpoints: trial results, logs, the state itself.
_MARGIN_BYTES = 8 * 2**20
_CHECK_EVERY_S = 1.0
# The OS errors that mean "the storage cannot take more writes", as a trial reports them.
_DISK_ERRORS = {
    os.strerror(errno.ENOSPC): "is full",
    os.strerror(errno.EDQUOT): "is over its quota",
    os.strerror(errno.EROFS): "is no longer writable",
}


def disk_error(text: str) -> str | None:
    """The disk error named in ``text`` (an exception or error file), if any."""
    return next((e for e in _DISK_ERRORS if e in text), None)


class _ShortDiskErrors(logging.Filter):
    """Ray logs a trial's failed checkpoint write with the whole traceback; one line will do."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        error = disk_error(str(exc)) if exc is not None else None
        if error:
            record.msg = f"{record.getMessage()}: {error}"
            record.args = ()
            record.exc_info = None
        return True


logging.getLogger("ray.tune.execution.tune_controller").addFilter(_ShortDiskErrors())

# Why the guard of an experiment folder stopped its search (read by the driver).
_TRIPPED: dict[str, str] = {}


def make_reserve(exp_dir: Path) -> None:
    """Create the reserve file; exit 2 before the search if the storage lacks the room."""
    path = exp_dir / RESERVE_FILE
    try:
        with open(path, "wb") as f:
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


def release_reserve(exp_dir: Path) -> None:
    """Delete the reserve file (a read-only folder keeps it; its last state stays)."""
    with contextlib.suppress(OSError):
        (exp_dir / RESERVE_FILE).unlink(missing_ok=True)


def tripped(exp_dir: Path) -> str | None:
    """Why the guard stopped the search in ``exp_dir``, or None if it did not."""
    return _TRIPPED.get(str(exp_dir))


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class StorageGuard(tune.Callback):
    """A Tune callback that stops the search before the storage breaks it."""

    def __init__(self, exp_dir: Path) -> None:
        self.exp_dir = Path(exp_dir)
        self.checkpoint_bytes = 0
        self._last_check = 0.0

    def setup(self, **info: Any) -> None:  # type: ignore[override]
        _TRIPPED.pop(str(self.exp_dir), None)

    def problem(self, running: int = 0) -> str | None:
        """What stops the storage from taking the next checkpoints, if anything."""
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
        # The newest failure is the last one in the file.
        last = text.rsplit("Failure # ", 1)[-1]
        error = disk_error(last)
        if error:
            self._stop(
                f"the storage of {self.exp_dir} {_DISK_ERRORS[error]}: trial {trial.trial_id} "
                f"could not save its checkpoint ({error})"
            )

    def _stop(self, reason: str) -> None:
        key = str(self.exp_dir)
        if key in _TRIPPED:
            return
        _TRIPPED[key] = reason
        release_reserve(self.exp_dir)  # room for Ray's last save
        # Ray logs the failed writes of its last save with tracebacks; the driver
        # prints one message instead.
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        signal.raise_signal(signal.SIGINT)  # Tune's graceful stop, as for Ctrl-C
