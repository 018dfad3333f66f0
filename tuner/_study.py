"""The Optuna study of a search, persisted where Optuna's own tools open it.

The driver is the only writer of ``results/NAME/optuna_journal.log`` (Optuna's
journal file storage), so a user can inspect or continue the study with::

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="NAME",
        storage=JournalStorage(JournalFileBackend("results/NAME/optuna_journal.log")),
    )

or ``optuna-dashboard results/NAME/optuna_journal.log``.

The study tells the search's story (:class:`MirroredOptunaSearch`): every
reported epoch is an intermediate value (``val_acc`` at step ``epoch``),
trials ASHA stopped are PRUNED (Optuna then takes their last intermediate
value as their value), diverged or errored ones FAIL, the others COMPLETE
with their best val_acc. Each Optuna trial carries the Tune trial id and its
best checkpoint's folder as user attributes (``tune_trial_id``,
``checkpoint``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

JOURNAL_FILE = "optuna_journal.log"


class MirroredOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, telling the study what the leaderboard tells (see the module doc).

    Ray's own searcher reports each result at its training iteration but not
    the last one (that one arrives as the completion), and marks every trial
    that returned a result COMPLETE, ASHA's stopped trials included.
    """

    def __init__(self, *args: Any, max_epochs: int, exp_dir: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._exp_dir = exp_dir
        # trial -> (best val_acc, the folder of that epoch's checkpoint)
        self._best: dict[str, tuple[float, str]] = {}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self._completed_trials and trial_id in self._ot_trials:
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        epoch, acc = result.get("epoch"), result.get("val_acc")
        if epoch is None or acc is None or not math.isfinite(float(acc)):
            return
        trial = self._ot_trials[trial_id]
        frozen = trial.storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():
            return  # told before a driver was killed; the restored Tune state did not know
        if int(epoch) not in frozen.intermediate_values:
            trial.report(float(acc), int(epoch))
        best = self._best.get(trial_id)
        if best is None or float(acc) >= best[0]:  # the latest of tied epochs, as Tune keeps
            # Tune names each reported checkpoint's folder in the result.
            name = result.get("checkpoint_dir_name") or f"checkpoint_{int(epoch) - 1:06d}"
            self._best[trial_id] = (float(acc), str(name))
        trial.set_user_attr("tune_trial_id", trial_id)
        folder = Path(self._exp_dir) / f"trial_{trial_id}" / self._best[trial_id][1]
        trial.set_user_attr("checkpoint", str(folder))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        if result:
            self._report(trial_id, result)
        value = None
        if error or (result and result.get("diverged")):
            state = TrialState.FAIL
        elif not result or int(result.get("epoch", 0)) < self._max_epochs:
            state = TrialState.PRUNED  # stopped by ASHA (or a time budget) before the end
        else:
            state, value = TrialState.COMPLETE, result.get(self.metric)
            if value is None or not math.isfinite(float(value)):
                state, value = TrialState.FAIL, None
        assert self._ot_study is not None
        ot_trial = self._ot_trials[trial_id]
        # A driver killed after telling Optuna but before Tune saved its state finishes
        # the trial again on resume: the study already has it.
        self._ot_study.tell(ot_trial, value, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)


def journal_storage(exp_dir: Path) -> Any:
    """Optuna journal storage in the experiment folder."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(exp_dir / JOURNAL_FILE)))


def make_searcher(
    name: str,
    exp_dir: Path,
    metric: str,
    seed: int,
    points: list[dict[str, Any]],
    max_epochs: int,
) -> Any:
    """Seeded TPE through :class:`MirroredOptunaSearch`, its study persisted in ``exp_dir``."""
    return MirroredOptunaSearch(
        metric=metric,
        mode="max",
        seed=seed,
        points_to_evaluate=points or None,
        study_name=name,
        storage=journal_storage(exp_dir),
        max_epochs=max_epochs,
        exp_dir=str(exp_dir),
    )


def load_study(exp_dir: Path, name: str) -> Any:
    """The persisted study of experiment ``name``."""
    import optuna

    return optuna.load_study(study_name=name, storage=journal_storage(exp_dir))
