"""One writer per experiment: ``search`` and ``resume`` hold ``NAME/.writer.json`` while
they run, so a second one gets exit 2 naming the holder instead of corrupting the first.

- **A folder** (local or shared): the lock is read and written under ``flock`` on
  ``NAME/.writer.guard``, so of two commands started together exactly one wins.
- **An object store**, which has no conditional write here: a lease. A writer that
  finds no live lock writes one with a random token, waits :data:`SETTLE_S` and reads
  it back; only the writer whose token is there holds it.

The holder rewrites the lock every :data:`BEAT_S` seconds, adding one to its ``beats``
counter. A lock is stale, and is taken over, when

- its holder ran on this host and its process is gone (a killed driver: the next
  ``resume`` takes over at once), or when it is not a lock this tool wrote;
- otherwise, when the same ``(token, beats)`` (see :func:`heartbeat`) has been seen
  unchanged for :data:`STALE_S` seconds **by this machine's own clock**. No clock of
  the holder is ever compared with this machine's: two clocks minutes apart cannot make
  two writers, and a heartbeat stamped in the future is treated like any other value.
  A command does not wait that long silently: the first refusal records what it saw
  (and when, by this machine's clock) in :data:`OBSERVATIONS_FILE` in the user's config
  folder, and says when a second attempt may take over; an attempt at least
  :data:`STALE_S` later that finds the heartbeat still unchanged does.

``tuner list`` calls :func:`is_stale` without a sighting: a live-looking lock of
another host shows as running until a writer takes it over.

``.writer.guard`` is opened without following a link: a link planted there is refused
(exit 2), so nothing is ever created outside the experiment folder through it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from trainables import (
    KIB,
    FileRefused,
    open_lock,
    parse_json,
    process_alive,
    read_bounded,
    settings,
    write_replacing,
)
from tuner._errors import UsageError, printable
from tuner.storage._experiment import GUARD_FILE, LOCK_FILE, Experiment

BEAT_S = 15.0
STALE_S = 120.0
SETTLE_S = 1.0
OBSERVATIONS_FILE = "lock-observations.json"  # in settings().config_dir
OBSERVATIONS_LIMIT = 256 * KIB
KEEP_OBSERVATIONS = 200  # the most recent ones; older sightings are forgotten


@dataclass(frozen=True)
class Sighting:
    """What a contender saw of a lock it could not take: the holder's ``token`` and
    ``beats`` and when it first saw them unchanged (``seen``, this machine's clock)."""

    token: str
    beats: Any
    seen: float

    def matches(self, holder: dict[str, Any]) -> bool:
        return (self.token, self.beats) == (holder.get("token"), heartbeat(holder))


def heartbeat(holder: dict[str, Any]) -> Any:
    """The value that changes at each of ``holder``'s heartbeats: its ``beats`` counter
    (a lock of an older version of the tool has none: its ``beat`` time stamp, compared
    only for equality, never with a clock)."""
    return holder.get("beats", holder.get("beat"))


def _wrote_by_this_tool(holder: dict[str, Any]) -> bool:
    token, host, pid, beats = (holder.get(k) for k in ("token", "host", "pid", "beats"))
    number = (int, float)
    return (
        isinstance(token, str)
        and isinstance(host, str)
        and isinstance(pid, int)
        and not isinstance(pid, bool)
        and isinstance(heartbeat(holder), number)
        and not isinstance(heartbeat(holder), bool)
        and (beats is None or (isinstance(beats, int) and not isinstance(beats, bool)))
    )


def is_stale(holder: Any, seen: Sighting | None = None, now: float | None = None) -> bool:
    """Whether ``holder``'s lock may be taken over (see the module doc): at once if it is
    not a lock this tool wrote or its holder was a process of this host that is gone;
    else only if ``seen`` (this machine's earlier sighting) shows the same heartbeat
    unchanged for :data:`STALE_S` seconds by ``now`` (this machine's clock). Without a
    sighting a live-looking lock is never stale: its own time stamps are not trusted."""
    if not isinstance(holder, dict) or not _wrote_by_this_tool(holder):
        return True  # not a lock this tool wrote: nobody holds it
    if holder["host"] == socket.gethostname() and not process_alive(holder["pid"]):
        return True
    if seen is None or not seen.matches(holder):
        return False
    now = time.time() if now is None else now
    return now - seen.seen >= STALE_S


class Observations:
    """This machine's sightings of locks it could not take, in ``path`` (default:
    :data:`OBSERVATIONS_FILE` in the config folder), keyed by the lock's display path.
    A file that cannot be read is an empty record: at worst a take-over waits longer."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or settings().config_dir / OBSERVATIONS_FILE

    def _load(self) -> dict[str, Any]:
        try:
            data = parse_json(read_bounded(self.path, OBSERVATIONS_LIMIT), self.path)
        except (OSError, FileRefused):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> Sighting | None:
        entry: Any = self._load().get(key)
        try:
            seen = entry["seen"]
            if not isinstance(seen, (int, float)) or isinstance(seen, bool):
                return None
            return Sighting(str(entry["token"]), entry["beats"], float(seen))
        except (KeyError, TypeError):
            return None

    def _save(self, data: dict[str, Any]) -> None:
        def when(item: tuple[str, Any]) -> float:
            seen = item[1].get("seen") if isinstance(item[1], dict) else None
            return float(seen) if isinstance(seen, (int, float)) else 0.0

        recent = sorted(data.items(), key=when)[-KEEP_OBSERVATIONS:]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_replacing(self.path, json.dumps(dict(recent), indent=1).encode(), 0o600)
        except OSError:
            pass  # a read-only config folder: the next attempt just observes again

    def put(self, key: str, sighting: Sighting) -> None:
        data = self._load()
        data[key] = {"token": sighting.token, "beats": sighting.beats, "seen": sighting.seen}
        self._save(data)

    def forget(self, key: str) -> None:
        data = self._load()
        if data.pop(key, None) is not None:
            self._save(data)


def describe(holder: dict[str, Any]) -> str:
    since: Any = holder.get("since")
    try:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since)))
    except (TypeError, ValueError, OverflowError, OSError):
        when = "?"
    command, pid, host = (printable(holder.get(k, "?")) for k in ("command", "pid", "host"))
    return f"`{command}` (process {pid} on {host}, since {when} by its clock)"


class WriterLock:
    """``with WriterLock(exp):`` holds ``exp``'s writer lock (UsageError if another does).

    ``observations`` is where refusals record their sightings (see :class:`Observations`);
    ``clock`` this machine's wall clock (tests give their own)."""

    def __init__(
        self,
        exp: Experiment,
        observations: Observations | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.exp = exp
        self.token = secrets.token_hex(8)
        self.since = time.time()
        self.beats = 0
        self.observations = observations
        self.clock = clock
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.lost = False

    def _record(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "beats": self.beats,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": " ".join(shlex.quote(a) for a in ["tuner", *sys.argv[1:]]),
            "since": self.since,
            "beat": time.time(),  # shown to people only: staleness never reads it
        }

    def _read(self) -> dict[str, Any] | None:
        """The lock (None if there is none; ``{}``, taken over, if it is not one this tool
        wrote: unreadable, a link, not JSON)."""
        try:
            holder = self.exp.read_json(LOCK_FILE)
        except (FileRefused, ValueError, UnicodeDecodeError):
            return {}
        if holder is None:
            return None
        return holder if isinstance(holder, dict) else {}

    def _check(self, holder: dict[str, Any] | None) -> None:
        """Return if ``holder``'s lock may be taken over; else record this sighting and
        raise the refusal, which says when a new attempt may take over."""
        if holder is None or is_stale(holder):
            return
        key = self.exp.display(LOCK_FILE)
        store = self.observations or Observations()
        now = self.clock()
        seen = store.get(key)
        if seen is not None and seen.matches(holder) and seen.seen <= now:
            if is_stale(holder, seen, now):
                store.forget(key)
                return
        else:  # a new heartbeat (or this machine's clock went back): count from now
            seen = Sighting(str(holder["token"]), heartbeat(holder), now)
            store.put(key, seen)
        raise self._refuse(holder, seen.seen + STALE_S)

    def _refuse(self, holder: dict[str, Any], after: float | None = None) -> UsageError:
        if after is None:
            tail = "it took the lock first"
        else:
            when = time.strftime("%H:%M:%S", time.localtime(after))
            tail = (
                f"a holder is taken over once its heartbeat stays unchanged for "
                f"{STALE_S:.0f} s as seen from this machine; if it has stopped, run again "
                f"after {when}"
            )
        return UsageError(
            f"experiment {self.exp.name!r} in {self.exp.storage.display()} is being written by "
            f"{describe(holder)}; wait for it to end or stop it ({tail})"
        )

    def acquire(self) -> None:
        if self.exp.storage.is_local:
            self._acquire_local()
        else:
            self._acquire_lease()
        self._beat = threading.Thread(target=self._heartbeat, name="writer-lock", daemon=True)
        self._beat.start()

    def _open_guard(self, folder: Path) -> int:
        """A descriptor of ``folder/.writer.guard``, created if absent, never through a
        link (UsageError if one is planted there, or anything but a regular file)."""
        try:
            return open_lock(folder / GUARD_FILE)
        except FileRefused as exc:
            raise UsageError(str(exc)) from None

    def _acquire_local(self) -> None:
        folder = Path(self.exp.path())
        folder.mkdir(parents=True, exist_ok=True)
        guard = self._open_guard(folder)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            self._check(self._read())
            self.exp.write_json(LOCK_FILE, self._record())
        finally:
            os.close(guard)  # closing releases the flock

    def _acquire_lease(self) -> None:
        self._check(self._read())
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
                self.beats += 1
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
