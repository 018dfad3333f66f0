"""The Optuna study of a search, persisted where Optuna's own tools open it.

The driver is the only writer of the study's journal (Optuna's journal file
storage). It writes a local file: in the experiment folder itself when the
storage is a local folder, else a copy under the temporary folder that
:class:`JournalUpload` uploads to ``STORAGE/NAME/optuna_journal.log`` each
time Ray Tune saves the experiment state, and ``resume`` downloads again
(:func:`fetch_journal`), from any machine. A user can inspect or continue the
study with::

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
trials the scheduler stopped before ``max_epochs`` are PRUNED (Optuna then
takes their last intermediate value as their value; a trial stopped while
paused is judged by the epochs the study holds for it), diverged or errored
ones FAIL, the others COMPLETE with the best val_acc they themselves reported
(never a PBT donor's, which an exploited checkpoint carries). A study of several
objectives (``objectives:`` in the space) has their directions, and a COMPLETE
trial's values are its best val_acc and its costs (``latency_ms``, ``params_m``);
Optuna keeps no intermediate values there, so its trials have none. Each Optuna
trial carries the Tune trial id and its best checkpoint's folder as user attributes
(``tune_trial_id``, ``checkpoint``). A trial Optuna made after the last state a
killed driver saved is never run: ``resume`` marks it FAIL with the user
attribute ``orphaned`` (:meth:`MirroredOptunaSearch.reconcile`).

The study is as old as the trial list a resume restores. The journal is
append-only, and Tune saves its trial list and then, in the same thread, this
searcher: its length then is kept with the list's signature
(:func:`~tuner.storage._signing.note_journal`; on an object store the journal is
uploaded at least that long before the list is). ``resume`` cuts the journal
back to that length (:func:`cut_journal`): what the study was told after the
save (a trial pruned or completed, a trial asked) is dropped with the save's
future, so a driver killed at any moment leaves the study and the leaderboard
agreeing once resumed.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from trainables import FileRefused, read_bounded
from tuner.engine import HookedOptunaSearch, optuna_trial_id
from tuner.engine.formats import checkpoint_name
from tuner.search._journal import journal_storage, local_journal, upload_journal
from tuner.spaces import Objectives
from tuner.storage import (
    JOURNAL_FILE,
    STATE_LIMIT,
    Experiment,
    Storage,
    note_journal,
)

WARM_ATTR = "warm_start"  # user attribute of a warm-start trial: EXPERIMENT/TRIAL_ID
BEST_METRIC = "best_val_acc"  # Optuna learns from each trial's best epoch


class MirroredOptunaSearch(HookedOptunaSearch):
    """Ray's OptunaSearch, telling the study what the leaderboard tells (see the module doc).

    Ray's own searcher reports each result at its training iteration but not
    the last one (that one arrives as the completion), and marks every trial
    that returned a result COMPLETE, ASHA's stopped trials included.
    """

    def __init__(
        self,
        *args: Any,
        max_epochs: int,
        exp: Experiment,
        warm: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._warm = list(warm or [])  # finished trials of earlier experiments (warm start)
        # Strings, not the experiment: this object is pickled into Ray's state.
        self._where = (exp.storage.uri, exp.name)
        self._folder = exp.display()
        # trial -> (best val_acc, the folder of that epoch's checkpoint)
        self._best: dict[str, tuple[float, str]] = {}

    @property
    def multi(self) -> bool:
        """Whether the study has several objectives (``metric`` is then their list)."""
        return isinstance(self.metric, list)

    def _experiment(self) -> Experiment:
        return Experiment(Storage.parse(self._where[0]), self._where[1])

    def study_storage(self) -> Any:
        # The journal storage pickled with a saved search names the file of the machine
        # that started it; this machine's copy is where the study continues.
        return journal_storage(local_journal(self._experiment()))

    def study_ready(self) -> None:
        """A new study gets the earlier experiments' trials before its first is asked."""
        study = self.study
        if self._warm and study is not None:
            had = {t.user_attrs.get(WARM_ATTR) for t in study.get_trials(deepcopy=False)}
            study.add_trials([t for t in self._warm if t.user_attrs[WARM_ATTR] not in had])
        self._warm = []

    def restore(self, checkpoint_path: str) -> None:
        import optuna

        super().restore(checkpoint_path)
        if self.study is None:
            return
        storage = self.study_storage()
        study = optuna.load_study(
            study_name=self.study.study_name,
            storage=storage,
            sampler=self.study.sampler,
            pruner=self.study.pruner,
        )
        self.rebind(storage, study)

    def state_saved(self, trial_list: Path) -> None:
        """Keep the journal's length now with the signature of the trial list just saved:
        the study holds exactly what that list knows (see the module doc)."""
        try:
            state = read_bounded(trial_list, STATE_LIMIT)
        except (OSError, FileRefused):
            return
        exp = self._experiment()
        local = local_journal(exp)
        length = local.stat().st_size if local.exists() else 0
        note_journal(state, length, lambda: upload_journal(exp, length))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        trial = self.optuna_trials.get(trial_id)
        if trial is not None and isinstance(config, dict):
            # From its first line in the journal: a resume finds it by this id.
            trial.set_user_attr("tune_trial_id", trial_id)
        return config

    def reconcile(self, trials: dict[str, str]) -> None:
        """After a restore: the study's trials are those of the restored Tune state.

        A trial this searcher's saved state knew but Tune's did not is never run; one
        Tune's knew but this state did not is found in the study by its
        ``tune_trial_id``; every unfinished study trial Tune will not run (Optuna made
        it after the state Tune saved) is marked FAIL, ``orphaned``, instead of staying
        RUNNING for ever.
        """
        import optuna
        from optuna.trial import TrialState

        study = self.study
        if study is None:
            return
        live = self.optuna_trials
        for tid in [t for t in live if t not in trials]:
            del live[tid]
        frozen_trials = study.get_trials(deepcopy=False)
        by_tune_id = {
            f.user_attrs["tune_trial_id"]: f
            for f in frozen_trials
            if "tune_trial_id" in f.user_attrs
        }
        for tid in trials.keys() - live.keys():
            if tid in by_tune_id:
                live[tid] = optuna.Trial(study, optuna_trial_id(by_tune_id[tid]))
        known = {optuna_trial_id(t) for t in live.values()}
        # Finished as the restored state's study knows it, else told again when it ends.
        finished = {optuna_trial_id(f) for f in frozen_trials if f.state.is_finished()}
        for tid in list(self.completed):
            if tid not in live or optuna_trial_id(live[tid]) not in finished:
                self.completed.discard(tid)
        for frozen in frozen_trials:
            ident = optuna_trial_id(frozen)
            if frozen.state == TrialState.RUNNING and ident not in known:
                optuna.Trial(study, ident).set_user_attr("orphaned", True)
                study.tell(frozen.number, state=TrialState.FAIL, skip_if_finished=True)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id not in self.completed and trial_id in self.optuna_trials:
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        epoch, acc = result.get("epoch"), result.get("val_acc")
        if epoch is None or acc is None or not math.isfinite(float(acc)):
            return
        trial = self.optuna_trials[trial_id]
        frozen = trial.storage.get_trial(optuna_trial_id(trial))
        if frozen.state.is_finished():
            return  # told before a driver was killed; the restored Tune state did not know
        # Optuna keeps no intermediate values in a study of several objectives.
        if not self.multi and int(epoch) not in frozen.intermediate_values:
            trial.report(float(acc), int(epoch))
        best = self._best.get(trial_id)
        if best is None or float(acc) >= best[0]:  # the latest of tied epochs, as Tune keeps
            # Tune names each reported checkpoint's folder in the result.
            name = result.get("checkpoint_dir_name") or checkpoint_name(int(epoch) - 1)
            self._best[trial_id] = (float(acc), str(name))
        folder = f"{self._folder}/trial_{trial_id}/{self._best[trial_id][1]}"
        trial.set_user_attr("checkpoint", folder)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        from optuna.trial import TrialState

        if trial_id not in self.optuna_trials:
            return  # a trial the study never had (see reconcile)
        if trial_id in self.completed:
            super().on_trial_complete(trial_id, result, error)
            return
        if result:
            self._report(trial_id, result)
        ot_trial = self.optuna_trials[trial_id]
        if not result and not error:
            # Stopped while paused (HyperBand ends a bracket's waiting trials so): its
            # last result is the study's, which holds every epoch it reported.
            told = ot_trial.storage.get_trial(optuna_trial_id(ot_trial)).intermediate_values
            if told:
                result = {"epoch": max(told), self.metric: max(told.values())}
        value = None
        if error or (result and result.get("diverged")):
            state = TrialState.FAIL
        elif not result or int(result.get("epoch", 0)) < self._max_epochs:
            state = TrialState.PRUNED  # stopped by the scheduler (or a time budget) early
        else:
            metrics = self.metric if self.multi else [self.metric]
            values: list[Any] | None = [result.get(m) for m in metrics]
            if values and metrics[0] == BEST_METRIC:
                values[0] = self._own_best(trial_id, values[0])
            state = TrialState.COMPLETE
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values or []):
                state, values = TrialState.FAIL, None
            value = values if self.multi or values is None else values[0]
        assert self.study is not None
        # A driver killed after telling Optuna but before Tune saved its state finishes
        # the trial again on resume: the study already has it.
        self.study.tell(ot_trial, value, state=state, skip_if_finished=True)
        self.completed.add(trial_id)

    def _own_best(self, trial_id: str, reported: Any) -> Any:
        """The best val_acc ``trial_id`` itself reported, as the leaderboard ranks it.

        A trial's ``best_val_acc`` comes from its checkpoint: a PBT trial that
        exploited another's checkpoint carries the donor's best, which it never
        reported. The study takes the best of the epochs this searcher saw and of the
        intermediate values the study holds (those outlive a driver's restart); the
        reported value only where it saw none."""
        seen = [self._best[trial_id][0]] if trial_id in self._best else []
        if not self.multi:
            ot_trial = self.optuna_trials[trial_id]
            frozen = ot_trial.storage.get_trial(optuna_trial_id(ot_trial))
            seen += [float(v) for v in frozen.intermediate_values.values()]
        return max(seen) if seen else reported


def make_searcher(
    exp: Experiment,
    metric: str,
    sampler: Any,
    points: list[dict[str, Any]],
    max_epochs: int,
    warm: list[Any] | None = None,
    objectives: Objectives | None = None,
) -> Any:
    """``sampler`` (seeded) through :class:`MirroredOptunaSearch`, its study the
    experiment's journal, holding the ``warm`` trials (Optuna frozen trials) first.
    With several ``objectives`` the study has one direction each: ``metric`` (the
    trial's best val_acc) first, then the costs."""
    import optuna

    # Optuna's "A new study created" and per-trial INFO lines would repeat on stderr
    # what the search's own lines say.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metrics: str | list[str] = metric
    modes: str | list[str] = "max"
    if objectives is not None and objectives.multi:
        metrics, modes = [metric, *objectives.names[1:]], list(objectives.modes)
    return MirroredOptunaSearch(
        metric=metrics,
        mode=modes,
        sampler=sampler,
        points_to_evaluate=points or None,
        study_name=exp.name,
        storage=journal_storage(local_journal(exp)),
        max_epochs=max_epochs,
        exp=exp,
        warm=warm,
    )


def load_study(exp: Experiment) -> Any:
    """The persisted study of ``exp``, as the storage holds it (a remote journal is read
    from a fresh download, never from a running driver's copy)."""
    import optuna

    if exp.storage.is_local:
        return optuna.load_study(study_name=exp.name, storage=journal_storage(local_journal(exp)))
    folder = Path(tempfile.mkdtemp(prefix="flower-tune-study-"))
    try:
        exp.storage.download(exp.rel(JOURNAL_FILE), folder / JOURNAL_FILE)
        study = optuna.load_study(
            study_name=exp.name, storage=journal_storage(folder / JOURNAL_FILE)
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # Optuna reads the file again on every query: it goes with the study (or at exit).
    weakref.finalize(study, shutil.rmtree, folder, ignore_errors=True)
    return study
