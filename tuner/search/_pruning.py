"""Delete old trial checkpoints only once no saved experiment state points at them.

Ray Tune's ``CheckpointConfig(num_to_keep=K)`` deletes a trial's older
checkpoints as soon as a newer one arrives, while the experiment state it
saves every few seconds may still name one of them as the trial's latest. A
driver killed in between leaves a state that cannot be resumed ("Could not
recover from checkpoint as it does not exist on storage anymore",
ray-project/ray#27790). So Ray keeps every checkpoint, and
:class:`CheckpointPruner` deletes them later: a checkpoint goes once it is
older than what the trial's latest checkpoint was two experiment-state saves
ago (the save being written now may not complete; the one before it did;
after ``resume`` the state it restored counts as the first) and it is not one
of the trial's :data:`KEEP_BEST` best by val_acc. When the search ends,
everything but the best and the latest goes.

The pruner decides without asking storage: it works from what Ray recorded
of each trial's checkpoints and remembers what it deleted, so a state save
makes a request only for a checkpoint it deletes (on object storage, a few
per trial over a search), not one per checkpoint kept.

Example:
    >>> pruner = CheckpointPruner()
    >>> pruner.get_state() is None  # nothing for Ray to store
    True
"""

from __future__ import annotations

import contextlib
from typing import Any

from ray import tune

from tuner.engine import best_checkpoint_results, latest_checkpoint_result
from tuner.engine.formats import checkpoint_index

KEEP_BEST = 2


def recorded_checkpoints(trial: Any) -> list[tuple[int, float, str]]:
    """(epoch, val_acc, folder) of every checkpoint Ray recorded for ``trial``, deleted
    or not (the folder as a path of the checkpoint's file system)."""
    return [
        (int(r.metrics["epoch"]), float(r.metrics["val_acc"]), r.checkpoint.path)
        for r in best_checkpoint_results(trial)
        if "epoch" in r.metrics and "val_acc" in r.metrics
    ]


def checkpoint_filesystem(trial: Any) -> Any:
    """The file system of ``trial``'s checkpoints (they share one), or None before any."""
    results = best_checkpoint_results(trial)
    return results[0].checkpoint.filesystem if results else None


def prunable(
    checkpoints: list[tuple[int, float, str]], safe_below: int, keep_best: int = KEEP_BEST
) -> list[str]:
    """Paths to delete among ``(epoch, val_acc, path)``: index below ``safe_below``, not best.

    >>> prunable([(1, 0.9, "t/checkpoint_000000"), (2, 0.8, "t/checkpoint_000001"),
    ...           (3, 0.7, "t/checkpoint_000002"), (4, 0.6, "t/checkpoint_000003")], 3)
    ['t/checkpoint_000002']
    """
    best = sorted(checkpoints, key=lambda c: (c[1], c[0]), reverse=True)[:keep_best]
    keep = {path for _, _, path in best}
    return [p for _, _, p in checkpoints if p not in keep and checkpoint_index(p) < safe_below]


def _latestcheckpoint_index(trial: Any) -> int:
    latest = latest_checkpoint_result(trial)
    return checkpoint_index(latest.checkpoint.path) if latest is not None else -1


class CheckpointPruner(tune.Callback):
    """Keeps each trial's best checkpoints and the ones a saved state may still need."""

    def __init__(self, during_search: bool = True) -> None:
        # False: only at the end (PBT hands a trial's latest checkpoint to another trial
        # to continue from, while the trial goes on writing newer ones).
        self._during = during_search
        self._trials: list[Any] = []
        # trial_id -> latest checkpoint index at the last two experiment-state saves.
        self._saved: list[dict[str, int]] = []
        # Deleted by this pruner: never among the best again (the best of a growing
        # set stay or drop out, they do not come back), so never asked about again.
        self._deleted: set[str] = set()

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._saved:
            # The state this run started from (restored by `resume`, or empty) is a
            # completed save: what it names as latest, and anything newer, stays.
            self._saved = [{t.trial_id: _latestcheckpoint_index(t) for t in trials}]
        self._trials = trials

    def get_state(self) -> dict[str, Any] | None:
        """Called by Tune each time it saves the experiment state: prune, store nothing."""
        self._saved = [
            *self._saved[-1:],
            {t.trial_id: _latestcheckpoint_index(t) for t in self._trials},
        ]
        for trial in self._trials if self._during else []:
            self._prune(trial, self._saved[0].get(trial.trial_id, -1))
        return None

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        for trial in trials:
            self._prune(trial, _latestcheckpoint_index(trial))

    def _prune(self, trial: Any, safe_below: int) -> None:
        fs = checkpoint_filesystem(trial)
        if fs is None:
            return
        alive = [c for c in recorded_checkpoints(trial) if c[2] not in self._deleted]
        for path in prunable(alive, safe_below):
            with contextlib.suppress(OSError):  # already gone (deleted before a resume)
                fs.delete_dir(path)
            self._deleted.add(path)
