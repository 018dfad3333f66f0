"""One writer per experiment: ``search`` and ``resume`` hold ``NAME/.writer.json`` while
they run, so a second one gets exit 2 naming the holder instead of corrupting the first.

- **A folder** (local or shared): the lock is read and written under ``flock`` on
  ``NAME/.writer.guard``, so of two commands started together exactly one wins.
- **An object store**, which has no conditional write here: a lease. A writer that
  finds no live lock writes one with a random token, waits :data:`SETTLE_S` and reads
  it back; only the writer whose token is there holds it.

The holder rewrites the lock every :data:`BEAT_S` seconds. A lock is stale, and is taken
over, when its holder ran on this host and its process is gone (a killed driver: the
next ``resume`` takes over at once), or when its last heartbeat is older than
:data:`STALE_S` seconds (a holder on another machine that died).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tuner._errors import UsageError, printable
from tuner.storage._experiment import GUARD_FILE, LOCK_FILE, Experiment

BEAT_S = 15.0
STALE_S = 120.0
SETTLE_S = 1.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(holder: dict[str, Any], now: float | None = None) -> bool:
    """Whether ``holder``'s lock may be taken over (see the module doc)."""
    now = time.time() if now is None else now
    try:
        if holder["host"] == socket.gethostname() and not _alive(int(holder["pid"])):
            return True
        return now - float(holder["beat"]) > STALE_S
    except (KeyError, TypeError, ValueError):
        return True  # not a lock this tool wrote: nobody holds it


def describe(holder: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
    command = printable(holder.get("command", "?"))
    return f"`{command}` (process {holder.get('pid')} on {holder.get('host')}, since {since})"


class WriterLock:
    """``with WriterLock(exp):`` holds ``exp``'s writer lock (UsageError if another does)."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.token = secrets.token_hex(8)
        self.since = time.time()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.lost = False

    def _record(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": " ".join(shlex.quote(a) for a in ["tuner", *sys.argv[1:]]),
            "since": self.since,
            "beat": time.time(),
        }

    def _read(self) -> dict[str, Any] | None:
        holder = self.exp.read_json(LOCK_FILE)
        return holder if isinstance(holder, dict) else None

    def _refuse(self, holder: dict[str, Any]) -> UsageError:
        return UsageError(
            f"experiment {self.exp.name!r} in {self.exp.storage.display()} is being written by "
            f"{describe(holder)}; wait for it to end or stop it (a holder that stopped "
            f"without a word is taken over after {STALE_S:.0f} s)"
        )

    def acquire(self) -> None:
        if self.exp.storage.is_local:
            self._acquire_local()
        else:
            self._acquire_lease()
        self._beat = threading.Thread(target=self._heartbeat, name="writer-lock", daemon=True)
        self._beat.start()

    def _acquire_local(self) -> None:
        folder = Path(self.exp.path())
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / GUARD_FILE, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                holder = self._read()
                if holder is not None and not is_stale(holder):
                    raise self._refuse(holder)
                self.exp.write_json(LOCK_FILE, self._record())
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    def _acquire_lease(self) -> None:
        holder = self._read()
        if holder is not None and not is_stale(holder):
            raise self._refuse(holder)
        self.exp.write_json(LOCK_FILE, self._record())
        time.sleep(SETTLE_S)
        holder = self._read()
        if holder is None or holder.get("token") != self.token:
            raise self._refuse(holder or {})

    def _heartbeat(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                holder = self._read()
                if holder is None or holder.get("token") != self.token:
                    self.lost = True  # taken over: never overwrite the new holder
                    return
                self.exp.write_json(LOCK_FILE, self._record())
            except Exception:  # a missed beat is retried; the lock only goes stale late
                continue

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            holder = self._read()
            if holder is not None and holder.get("token") == self.token:
                self.exp.delete(LOCK_FILE)
            if self.exp.storage.is_local:
                folder = Path(self.exp.path())
                left = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
                if left <= {GUARD_FILE}:  # the command wrote nothing else: no trace left
                    (folder / GUARD_FILE).unlink(missing_ok=True)
                    folder.rmdir()
        except (OSError, UsageError):
            pass  # storage gone read-only or away: a lock left behind is taken over as stale

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
