"""What a search prints while it runs: one line per trial that ends.

Ray Tune's status table (every trial, every 30 s, with Ray's session paths) is shown
only with ``search --verbose``. Otherwise each trial that ends prints one line: how
many epochs it ran, the best val_acc it reported itself (what the leaderboard ranks
it by; and its costs), and the values searched for it.

    >>> line = trial_line("3f2a1b8c", 2, 6, {"best_val_acc": 0.71}, {"lr": 0.00123}, 3, 8)
    >>> line
    'trial 3f2a1b8c stopped after 2 of 6 epochs: best val_acc 0.7100 (lr=0.00123)  [3/8 ended]'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ray import tune

COST_UNITS = {"latency_ms": "ms", "params_m": "M params"}


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trial_line(
    trial_id: str,
    epochs: int,
    max_epochs: int,
    result: dict[str, Any],
    searched: dict[str, Any],
    ended: int,
    asked: int,
) -> str:
    """The line of a trial that ended after ``epochs`` of ``max_epochs``."""
    if epochs >= max_epochs:
        ran = f"ran all {max_epochs} epochs"
    else:
        ran = f"stopped after {epochs} of {max_epochs} epochs"
    best = result.get("best_val_acc")
    scores = [f"best val_acc {best:.4f}"] if isinstance(best, (int, float)) else ["no epoch"]
    scores += [f"{result[c]:.3g} {u}" for c, u in COST_UNITS.items() if c in result]
    values = ", ".join(f"{k}={_value(v)}" for k, v in searched.items())
    return f"trial {trial_id} {ran}: {', '.join(scores)} ({values})  [{ended}/{asked} ended]"


def _print(line: str) -> None:
    print(line, flush=True)


class TrialLines(tune.Callback):
    """Prints :func:`trial_line` for each trial that ends, and one for each that fails."""

    def __init__(
        self, max_epochs: int, asked: int, searched: Sequence[str], say: Callable[[str], None]
    ) -> None:
        self.max_epochs, self.asked, self.searched = max_epochs, asked, list(searched)
        self.say = say
        self.ended: set[str] = set()
        # trial -> the best val_acc it reported itself. A result's best_val_acc comes
        # from the trial's checkpoint: under PBT, another trial's (the donor's best).
        self.best: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with the run: ``say`` is this process's (see TimeEstimate).
        return {k: v for k, v in self.__dict__.items() if k != "say"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.say = _print

    def get_state(self) -> dict[str, Any]:
        # Saved with the experiment (a signed file): a resume counts on from here.
        return {"ended": sorted(self.ended), "best": dict(self.best)}

    def set_state(self, state: dict[str, Any]) -> None:
        ended = state.get("ended") if isinstance(state, dict) else None
        if isinstance(ended, list):
            self.ended = {str(t) for t in ended}
        best = state.get("best") if isinstance(state, dict) else None
        if isinstance(best, dict):
            self.best = {str(t): float(v) for t, v in best.items() if isinstance(v, int | float)}

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        acc = result.get("val_acc")
        if isinstance(acc, int | float) and math.isfinite(acc):
            self.best[trial.trial_id] = max(float(acc), self.best.get(trial.trial_id, -math.inf))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.trial_id in self.ended:
            return
        self.ended.add(trial.trial_id)
        result = dict(trial.last_result or {})
        if trial.trial_id in self.best:  # its own, as the leaderboard ranks it
            result["best_val_acc"] = self.best[trial.trial_id]
        config = trial.config or {}
        searched = {k: config[k] for k in self.searched if k in config}
        epochs = int(result.get("epoch", 0) or 0)
        self.say(
            trial_line(
                trial.trial_id, epochs, self.max_epochs, result, searched, len(self.ended),
                self.asked,
            )
        )  # fmt: skip

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.trial_id in self.ended:
            return
        self.ended.add(trial.trial_id)
        self.say(
            f"trial {trial.trial_id} failed; its error: {trial.error_file}  "
            f"[{len(self.ended)}/{self.asked} ended]"
        )


class Quiet(tune.ProgressReporter):
    """Tune's progress reporter that reports nothing (the trial lines say it)."""

    def should_report(self, trials: list[Any], done: bool = False) -> bool:
        return False

    def report(self, trials: list[Any], done: bool, *sys_info: str) -> None:
        return None


def status_table(searched: Sequence[str], costs: Sequence[str], metric: str) -> Any:
    """Ray Tune's status table of every trial, every 30 s (``search --verbose``)."""
    return tune.CLIReporter(
        metric_columns={
            "epoch": "ep",
            "val_acc": "val_acc",
            "best_val_acc": "best",
            **{c: COST_UNITS[c] for c in costs},
            "train_loss": "loss",
            "images_per_s": "img/s",
        },
        parameter_columns=list(searched),
        max_report_frequency=30,
        # Ray sorts finished trials by their last metric, which a trial that never
        # reported (a time budget ended first) does not have: a TypeError at the end.
        # The leaderboard ranks them; the live table lists trials in start order.
        sort_by_metric=False,
        metric=metric,
        mode="max",
        max_column_length=12,
    )
