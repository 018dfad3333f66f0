"""How long a search will take: its scheduler's expected trial-epochs at the measured pace.

The start banner gives the work
(:meth:`tuner.engine._strategy.Strategy.trial_epochs`); once trials have
reported a few epochs, :class:`TimeEstimate` prints how long the whole search
should take at the pace measured so far, and which flags shorten it, so a
user who started a large space on a laptop learns it within minutes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from ray import tune

from trainables import describe_duration

# Estimates are printed after this many reported epochs, then at most this often.
_FIRST_AFTER_EPOCHS = 3
_EVERY_S = 300.0


def _print(line: str) -> None:
    print(line)


class TimeEstimate(tune.Callback):
    """Prints the expected duration of the search at the pace measured so far."""

    def __init__(self, trial_epochs: float, concurrent: int, say: Callable[[str], None]) -> None:
        self.trial_epochs = trial_epochs
        self.concurrent = max(1, concurrent)
        self.say = say
        self._epoch_seconds: list[float] = []
        self._started = time.monotonic()
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the run; ``say`` (often ``print``) is this
        # process's. Pickled by reference, ``print`` fails once Ray has swapped
        # ``builtins.print`` for its tqdm-safe one, which it does when a progress bar
        # first reaches the driver: a search then died at start.
        return {k: v for k, v in self.__dict__.items() if k != "say"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.say = _print

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        seconds = result.get("epoch_time_s")
        if seconds is None:
            return
        self._epoch_seconds.append(float(seconds))
        now, reported = time.monotonic(), len(self._epoch_seconds)
        due = reported == _FIRST_AFTER_EPOCHS or (
            reported > _FIRST_AFTER_EPOCHS and now - self._last >= _EVERY_S
        )
        if not due:
            return
        self._last = now
        self.say(self.line(now - self._started))

    def line(self, elapsed: float) -> str:
        """The estimate as one line (median epoch time x remaining trial-epochs / concurrency)."""
        per_epoch = statistics.median(self._epoch_seconds)
        remaining = max(0.0, self.trial_epochs - len(self._epoch_seconds))
        left = remaining * per_epoch / self.concurrent
        return (
            f"Estimate: about {describe_duration(elapsed + left)} in all, "
            f"{describe_duration(left)} left ({per_epoch:.0f} s per trial-epoch, "
            f"{self.concurrent} at once, ~{self.trial_epochs:.0f} trial-epochs expected). "
            "Shorter: --num-samples, --max-epochs, --time-budget SECONDS, or a smaller space."
        )
