"""Progress of a long step: a tqdm bar on a terminal, else a plain line every ~30 s.

Both go to **stderr**: stdout is kept for a command's data (``predict --json``,
``leaderboard --format csv``...), which a pipe must be able to parse. The interval of
the plain lines is ``$TUNER_PROGRESS_EVERY_S`` seconds when set (``0``: a line at every
update; the tests use it to make short steps print), else :data:`LINE_EVERY_S`.

Example:
    >>> lines = []
    >>> with Progress(3, "decoding", "photo", say=lines.append, every_s=0) as bar:
    ...     bar.update(2)
    ...     bar.update(1)
    >>> lines[-1].startswith("decoding: 3/3 photos")
    True
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

LINE_EVERY_S = 30.0
EVERY_S_VARIABLE = "TUNER_PROGRESS_EVERY_S"


def line_every_s() -> float:
    """Seconds between plain progress lines: ``$TUNER_PROGRESS_EVERY_S`` if it is a number
    >= 0, else :data:`LINE_EVERY_S`."""
    try:
        value = float(os.environ.get(EVERY_S_VARIABLE, ""))
    except ValueError:
        return LINE_EVERY_S
    return value if value >= 0 else LINE_EVERY_S


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def describe_duration(seconds: float) -> str:
    """A duration as a person estimates it.

    >>> describe_duration(40), describe_duration(600), describe_duration(5400)
    ('40 s', '10 min', '1.5 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Counts ``total`` items of ``unit``; shows rate and time left.

    On a terminal (stderr) a tqdm bar; otherwise (logs, pipes, Ray workers)
    ``say`` (default: a line on stderr) gets a line at most every ``every_s`` seconds
    (default: :func:`line_every_s`) and one at the end. ``quiet`` shows nothing.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        quiet: bool = False,
        say: Callable[[str], None] | None = None,
        every_s: float | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = line_every_s() if every_s is None else every_s
        self.done, self.t0 = 0, time.perf_counter()
        self.last = self.t0
        self.quiet, self.said = quiet, False
        self.bar: Any = None
        self.say = say or _to_stderr
        if not quiet and say is None and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=False, leave=False)

    def __enter__(self) -> Progress:
        return self

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        # A step shorter than one interval says nothing; a longer one also says when it ends.
        due = now - self.last >= self.every_s or (self.done >= self.total and self.said)
        if not self.quiet and due:
            self.last, self.said = now, True
            self.say(self.line(now))

    def line(self, now: float) -> str:
        """The plain line at ``now``: the rate per second, or for an item slower than one
        a second (an epoch) the time per item.

        >>> slow = Progress(6, "distillation", "epoch", say=print)
        >>> slow.t0, slow.done = 0.0, 2
        >>> slow.line(114.0)
        'distillation: 2/6 epochs (57s/epoch, 3m48s left)'
        """
        elapsed = max(now - self.t0, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate else 0.0
        tail = (
            f", {_duration(left)} left" if self.done < self.total else f" in {_duration(elapsed)}"
        )
        speed = f"{rate:.0f}/s" if rate >= 1 or not rate else f"{_duration(1 / rate)}/{self.unit}"
        return f"{self.desc}: {self.done}/{self.total} {self.unit}s ({speed}{tail})"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
