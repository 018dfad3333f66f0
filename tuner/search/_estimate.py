"""How long a search will take: its scheduler's expected trial-epochs at the measured pace.

The start banner gives the work
(:meth:`tuner.engine._strategy.Strategy.trial_epochs`); once trials have
reported a few epochs, :class:`TimeEstimate` prints how long the whole search
should take at the pace measured so far, and which flags shorten it, so a
user who started a large space on a laptop learns it within minutes.

The pace is wall-clock time, as the user waits it: an epoch is the time between
two results of one trial (its validation and checkpoint included), and a trial's
start-up is the time from its start to its first result, less one epoch (a new
worker, the model's weights, frozen activations computed for a new network, its
latency measured). Trials not started yet each add a start-up.
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
# The pace is the median of the latest this many of each measure (kept with the state).
_KEPT = 500


def _print(line: str) -> None:
    print(line)


class TimeEstimate(tune.Callback):
    """Prints the expected duration of the search at the pace measured so far."""

    def __init__(
        self,
        trial_epochs: float,
        concurrent: int,
        say: Callable[[str], None],
        trials: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trial_epochs = trial_epochs
        self.concurrent = max(1, concurrent)
        self.trials = trials
        self.say = say
        self.clock = clock
        self._reported = 0  # results with an epoch time
        self._epoch_seconds: list[float] = []  # as each trial measured its training
        self._gaps: list[float] = []  # between two results of one trial
        self._startups: list[float] = []  # from a trial's start to its first result, less an epoch
        self._trials_started: set[str] = set()
        self._since: dict[str, tuple[float, bool]] = {}  # trial -> (time, started there)
        self._started = clock()
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the run; ``say`` (often ``print``) is this
        # process's. Pickled by reference, ``print`` fails once Ray has swapped
        # ``builtins.print`` for its tqdm-safe one, which it does when a progress bar
        # first reaches the driver: a search then died at start.
        return {k: v for k, v in self.__dict__.items() if k != "say"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A search saved by an earlier version lacks the later attributes: their defaults.
        self.__init__(state.get("trial_epochs", 0.0), state.get("concurrent", 1), _print)  # type: ignore[misc]
        self.__dict__.update(state)
        if "_reported" not in state:
            self._reported = len(self._epoch_seconds)
        self.say = _print

    def get_state(self) -> dict[str, Any]:
        # Saved with the experiment: a resume counts the epochs and trials so far.
        return {
            "reported": self._reported,
            "epoch_seconds": list(self._epoch_seconds),
            "gaps": list(self._gaps),
            "startups": list(self._startups),
            "trials_started": sorted(self._trials_started),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            return
        for key in ("epoch_seconds", "gaps", "startups"):
            values = state.get(key)
            if isinstance(values, list):
                kept = [float(v) for v in values if isinstance(v, int | float) and v >= 0]
                setattr(self, f"_{key}", kept[-_KEPT:])
        reported = state.get("reported")
        if isinstance(reported, int) and reported >= 0:
            self._reported = reported
        started = state.get("trials_started")
        if isinstance(started, list):
            self._trials_started = {str(t) for t in started}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._trials_started.add(trial.trial_id)
        self._since[trial.trial_id] = (self.clock(), True)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        seconds = result.get("epoch_time_s")
        if seconds is None:
            return
        now = self.clock()
        self._reported += 1
        _keep(self._epoch_seconds, float(seconds))
        trial_id = getattr(trial, "trial_id", None)
        if trial_id in self._since:
            before, at_start = self._since[trial_id]
            if at_start:
                _keep(self._startups, max(0.0, now - before - float(seconds)))
            else:
                _keep(self._gaps, now - before)
        if trial_id is not None:
            self._since[trial_id] = (now, False)
        reported = self._reported
        due = reported == _FIRST_AFTER_EPOCHS or (
            reported > _FIRST_AFTER_EPOCHS and now - self._last >= _EVERY_S
        )
        if not due:
            return
        self._last = now
        self.say(self.line(now - self._started))

    def line(self, elapsed: float) -> str:
        """The estimate as one line: the remaining trial-epochs at the median epoch, and the
        trials not started yet at the median start-up, ``concurrent`` at a time."""
        per_epoch = statistics.median(self._gaps or self._epoch_seconds)
        startup = statistics.median(self._startups) if self._startups else 0.0
        remaining = max(0.0, self.trial_epochs - self._reported)
        to_start = max(0, self.trials - len(self._trials_started))
        left = (remaining * per_epoch + to_start * startup) / self.concurrent
        starting = f" and {describe_duration(startup)} to start a trial" if startup >= 1 else ""
        return (
            f"Estimate: about {describe_duration(elapsed + left)} in all, "
            f"{describe_duration(left)} left ({per_epoch:.0f} s per trial-epoch{starting}, "
            f"{self.concurrent} at once, ~{self.trial_epochs:.0f} trial-epochs expected). "
            "Shorter: --num-samples, --max-epochs, --time-budget SECONDS, or a smaller space."
        )


def _keep(values: list[float], value: float) -> None:
    values.append(value)
    del values[:-_KEPT]
