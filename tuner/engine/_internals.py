"""Every private attribute or function of Ray and Optuna the tool relies on, in one place.

Each exists because no public API gives the same thing (said below, per use);
``tests/test_internals.py`` checks each against the installed versions, so an
upgrade that removes or renames one fails there with the name of the use,
not somewhere a user finds first.

- Ray Tune's per-trial checkpoint bookkeeping (``trial.run_metadata.checkpoint_manager``):
  which checkpoints a live trial registered, for the checkpoint pruner. After a
  search the same facts come from each trial's ``result.json`` (public).
- ``ray.train.constants._get_ray_train_session_dir``: where Ray stages a remote
  experiment on the driver's disk, deleted once the search has uploaded it.
- The logger Ray's token-authentication notice goes through, silenced for the
  local cluster the tool starts itself.
- Ray's ``OptunaSearch``: its Optuna study, storage, trials and completed set,
  and ``_setup_study``, the only point where the study's storage can be chosen
  on a restore (:class:`HookedOptunaSearch`).
- ``Tuner._local_tuner``: the callbacks a restored ``Tuner`` runs (unpickled from
  the experiment, not the driver's own objects), so that the driver reads why its
  storage guard stopped a resumed search.
- ``optuna.Trial._trial_id``: the storage id of a live Optuna trial, to read
  its frozen state from the storage.
- Ray Tune's ``SearchGenerator`` count of trials made (``_counter``), the live
  trials of its ``ConcurrencyLimiter`` and the layout of its experiment state
  file (``_find_newest_experiment_checkpoint``, ``trial_data``): Ray saves the
  trial list, the generator's state and the searcher's state as separate files,
  uploaded one by one, and restores each as it finds it
  (:class:`ReconcilingSearchGenerator` makes them agree again). The generator's
  ``save_to_dir`` runs right after Tune wrote the trial list to the same folder
  (``TuneController.save_to_dir``, named ``EXPERIMENT_STATE``), in the driver's
  thread: the searcher is told then (:meth:`HookedOptunaSearch.state_saved`), when
  the study holds exactly what that trial list knows.
- ``HyperBandScheduler._process_bracket`` and ``TuneController._mark_trial_to_checkpoint``:
  Tune re-serialises a trial into its saved trial list only when marked, and
  stopping a PAUSED trial (HyperBand halving a bracket, or ending it) does not
  mark it, so the saved list kept those trials PAUSED after the search had
  ended them (:class:`SavedHyperBand` marks them). ``_requeue_restored_trials``: a
  restore adds ended trials to the scheduler again, which HyperBand must skip.
- ``PopulationBasedTraining.on_trial_add`` refuses a ``SearchGenerator``, Tune's
  wrapper of any searcher: :class:`PopulationSearch` passes everything to one
  without being one, so the Optuna searcher draws PBT's first population.
- ``LoggerCallback._restore_from_remote``: Ray copies a restarted trial's
  ``result.json`` from storage over the driver's newer copy (:class:`KeptJsonLogger`).
- ``PopulationBasedTraining._quantiles`` and ``_trial_state``: the trials PBT may
  take weights from, which :class:`LivePopulationTraining` keeps to those with
  epochs left.
- The layout of PBT's policy logs (:data:`PBT_POLICY`, :func:`pbt_lineage`): the
  leaderboard's ``pbt_history`` reads each trial's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import HyperBandScheduler, PopulationBasedTraining
from ray.tune.search import ConcurrencyLimiter, SearchAlgorithm, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from trainables import parse_json, read_bounded
from tuner.engine.formats import EXPERIMENT_STATE, trial_states
from tuner.storage import STATE_LIMIT

# Ray Tune's trial list in a folder it saves (``TuneController.CKPT_FILE_TMPL``).
# Ray's logger of "Token authentication is enabled ..." (ray/_private/authentication/).
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def best_checkpoint_results(trial: Any) -> list[Any]:
    """The results (``.metrics``, ``.checkpoint``) of every checkpoint Ray Tune registered
    for a live ``trial``, best first."""
    return list(trial.run_metadata.checkpoint_manager.best_checkpoint_results)


def latest_checkpoint_result(trial: Any) -> Any:
    """The result of a live ``trial``'s latest checkpoint, or None before its first."""
    return trial.run_metadata.checkpoint_manager.latest_checkpoint_result


def train_session_dir() -> Path:
    """The folder under Ray's session where the driver stages experiments
    (``/tmp/ray/session_*/artifacts``)."""
    from ray.train.constants import _get_ray_train_session_dir

    return Path(_get_ray_train_session_dir())


def run_callbacks(tuner: Any) -> list[Any]:
    """The callbacks ``tuner`` (a ``ray.tune.Tuner``, new or restored) runs its search with."""
    return list(tuner._local_tuner.get_run_config().callbacks or [])


def optuna_trial_id(trial: Any) -> int:
    """The storage id of a live ``optuna.Trial`` (``trial.number`` counts within a study)."""
    return int(trial._trial_id)


class HookedOptunaSearch(OptunaSearch):
    """Ray's ``OptunaSearch`` with the private state a subclass needs behind named members.

    Override :meth:`study_storage` to choose the Optuna storage the study is set
    up in (Ray calls ``_setup_study`` on a fresh search and on ``restore``), and
    :meth:`study_ready` to add to the study before its first trial is asked.
    """

    def study_storage(self) -> Any:
        """The Optuna storage to set the study up in (None: the one given to ``__init__``)."""
        return None

    def reconcile(self, trials: dict[str, str]) -> None:
        """After a restore: agree with the restored Tune trials (id -> status), whatever
        the searcher's own saved state said (see :class:`ReconcilingSearchGenerator`)."""

    def state_saved(self, experiment_state: Path) -> None:
        """Tune has just saved its trial list to ``experiment_state`` (and this searcher's
        state beside it); nothing has been told to the study since."""

    def study_ready(self) -> None:
        """The study is set up (fresh, or as a restore found it); no trial asked yet."""

    def _setup_study(self, mode: Any) -> None:
        storage = self.study_storage()
        if storage is not None:
            self._storage = storage
        super()._setup_study(mode)
        self.study_ready()

    @property
    def study(self) -> Any:
        """The live ``optuna.Study`` (None before Ray set the search up)."""
        return self._ot_study

    @property
    def optuna_trials(self) -> dict[str, Any]:
        """Tune trial id -> its live ``optuna.Trial``."""
        return self._ot_trials

    @property
    def completed(self) -> set[str]:
        """The Tune trial ids already told to the study."""
        return self._completed_trials

    def rebind(self, storage: Any, study: Any) -> None:
        """Continue in ``study`` (in ``storage``): the live trials are re-opened in it (one
        the study does not have, asked after the save a resume cut it back to, is dropped)."""
        import optuna

        self._storage, self._ot_study = storage, study
        known = {optuna_trial_id(t) for t in study.get_trials(deepcopy=False)}
        self._ot_trials = {
            tid: optuna.Trial(study, optuna_trial_id(trial))
            for tid, trial in self._ot_trials.items()
            if optuna_trial_id(trial) in known
        }


def restored_trials(dirpath: str) -> dict[str, str] | None:
    """Trial id -> status of every trial in the newest experiment state in ``dirpath``
    (None: there is none), read as plain JSON: nothing in it is unpickled."""
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    path = _find_newest_experiment_checkpoint(dirpath)
    if path is None:
        return None
    state = parse_json(read_bounded(path, STATE_LIMIT), path, nan=True)
    return {t["trial_id"]: t["status"] for t in trial_states(state, path)}


class ReconcilingSearchGenerator(SearchGenerator):
    """Ray's ``SearchGenerator`` that, on a restore, makes its count of trials, its
    concurrency limiter and its searcher agree with the trials Tune restored.

    Ray restores the trial list from the newest experiment state file, and the
    generator and searcher from two other files. A driver killed while uploading
    them leaves them from different moments: with an older count Tune made a trial
    too many; with an older limiter, trials that never finish held its slots (a
    resume could wait for ever) or finished trials were never told to the searcher.
    """

    def has_checkpoint(self, dirpath: str) -> bool:
        # The generator's own file may not have been uploaded yet; the trial list was.
        return super().has_checkpoint(dirpath) or restored_trials(dirpath) is not None

    def _innermost(self) -> Any:
        searcher = self.searcher
        while hasattr(searcher, "searcher"):
            searcher = searcher.searcher
        return searcher

    def save_to_dir(self, dirpath: str, session_str: str = "default", **kwargs: Any) -> Any:
        saved = super().save_to_dir(dirpath, session_str=session_str)
        searcher = self._innermost()
        if isinstance(searcher, HookedOptunaSearch):
            searcher.state_saved(Path(dirpath) / EXPERIMENT_STATE.format(session_str))
        return saved

    def restore_from_dir(self, dirpath: str) -> None:
        if super().has_checkpoint(dirpath):
            super().restore_from_dir(dirpath)
        trials = restored_trials(dirpath)
        if trials is None:
            return
        self._counter = len(trials)
        # Tune runs the unfinished ones again; each then completes through the limiter.
        live = {t for t, status in trials.items() if status not in ("TERMINATED", "ERROR")}
        searcher = self.searcher
        while hasattr(searcher, "searcher"):
            if isinstance(searcher, ConcurrencyLimiter) and not searcher.batch:
                searcher.live_trials = set(live)
                searcher.num_unfinished_live_trials = len(live)
            searcher = searcher.searcher
        if isinstance(searcher, HookedOptunaSearch):
            searcher.reconcile(trials)


def make_search_alg(searcher: Any, max_concurrent: int, population: bool = False) -> Any:
    """``searcher`` as Tune wraps it for ``max_concurrent_trials``, in the generator
    that reconciles on a restore (pass it as ``search_alg`` without
    ``max_concurrent_trials``); for PBT (``population``), behind :class:`PopulationSearch`."""
    generator = ReconcilingSearchGenerator(
        ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    )
    return PopulationSearch(generator) if population else generator


class PopulationSearch(SearchAlgorithm):
    """The search generator for PBT, which refuses any ``SearchGenerator``
    (``PopulationBasedTraining.on_trial_add``): the Optuna searcher draws the first
    population (and keeps the study) and PBT's exploit and explore take over from there.
    Everything is passed to the generator inside."""

    def __init__(self, generator: ReconcilingSearchGenerator) -> None:
        super().__init__()
        self.generator = generator

    def __getattr__(self, name: str) -> Any:
        if name == "generator":  # unpickling: not set yet
            raise AttributeError(name)
        return getattr(self.generator, name)

    @property
    def metric(self) -> Any:
        return self.generator.metric

    @property
    def total_samples(self) -> int:
        return int(self.generator.total_samples)

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return bool(self.generator.set_search_properties(metric, mode, config, **spec))

    def add_configurations(self, experiments: Any) -> None:
        self.generator.add_configurations(experiments)

    def next_trial(self) -> Any:
        return self.generator.next_trial()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.generator.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self.generator.on_trial_complete(trial_id, result=result, error=error)

    def is_finished(self) -> bool:
        return bool(self.generator.is_finished())

    def set_finished(self) -> None:
        self.generator.set_finished()

    def has_checkpoint(self, dirpath: str) -> bool:
        return bool(self.generator.has_checkpoint(dirpath))

    def save_to_dir(self, dirpath: str, **kwargs: Any) -> None:
        self.generator.save_to_dir(dirpath, **kwargs)

    def restore_from_dir(self, dirpath: str) -> None:
        self.generator.restore_from_dir(dirpath)


class SavedHyperBand(HyperBandScheduler):
    """Ray's HyperBand, whose stopped trials reach the saved trial list as stopped, and
    which a resume does not deadlock.

    A restored Tune adds every trial of the saved list to the scheduler again, ended
    ones included (``TuneController._requeue_restored_trials``); Ray's HyperBand puts
    those in a bracket too, where they never report again, so the bracket's other
    trials waited PAUSED for them for ever. An ended trial joins no bracket here.
    """

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if trial.status in ("TERMINATED", "ERROR"):
            return
        super().on_trial_add(tune_controller, trial)

    _ending = False  # a class default: schedulers pickled before it existed lack it

    def _process_bracket(self, tune_controller: Any, bracket: Any) -> str:
        paused = [t for t in bracket.current_trials() if t.status == "PAUSED"]
        action: str = super()._process_bracket(tune_controller, bracket)
        _mark_stopped(tune_controller, paused)
        return action

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        """Ray ends a finished bracket's PAUSED trials only on a result. A trial that
        ends with none, restored at its last epoch with nothing left to train, left
        them PAUSED for ever (a resume hung); they are stopped here instead."""
        bracket = self._trial_info[trial][0]
        super().on_trial_remove(tune_controller, trial)
        if self._ending or not bracket.finished():
            return
        self._ending = True  # stopping them removes them: no nested pass
        try:
            paused = [t for t in bracket.current_trials() if t.status == "PAUSED"]
            for other in paused:
                tune_controller.stop_trial(other)
            _mark_stopped(tune_controller, paused)
        finally:
            self._ending = False


def _mark_stopped(tune_controller: Any, paused: list[Any]) -> None:
    """Mark the trials of ``paused`` that are no longer PAUSED for Tune's next save, which
    else keeps a trial stopped while paused as PAUSED."""
    # Schedulers get the controller behind a wrapper that warns on private names.
    controller = getattr(tune_controller, "_tune_controller", tune_controller)
    for trial in paused:
        if trial.status != "PAUSED":
            controller._mark_trial_to_checkpoint(trial)


# Ray Tune's PBT logs (``PopulationBasedTraining._log_config_on_step``), written beside the
# experiment state: every exploit, and per trial the lineage of its current weights.
PBT_GLOBAL = "pbt_global.txt"
PBT_POLICY = "pbt_policy_{}.txt"


def pbt_lineage(text: str) -> list[tuple[int, str, dict[str, Any], dict[str, Any]]]:
    """(epoch, donor tag, donor config, new config) of each exploit in a trial's PBT
    policy log (one JSON list a line: target tag, donor tag, target iteration, donor
    iteration, donor config, new config); a line that is not one is skipped."""
    out = []
    for line in text.splitlines():
        try:
            _, donor, _, step, old, new = json.loads(line)
            if isinstance(old, dict) and isinstance(new, dict):
                out.append((int(step), str(donor), old, new))
        except (ValueError, TypeError):
            continue
    return out


class KeptJsonLogger(JsonLoggerCallback):
    """Ray's ``result.json`` writer, which does not throw away what it wrote.

    Each time a trial (re)starts from a checkpoint, Ray's writer copies the trial's
    ``result.json`` from storage over the driver's own copy
    (``LoggerCallback._restore_from_remote``), which holds the lines not synced up
    yet: a trial PBT continued from another's checkpoint, or one retried after its
    worker died, lost its latest epochs. The copy is made only where the driver has
    none, as on a resume, the case it exists for.
    """

    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        if not Path(trial.local_path, file_name).exists():
            super()._restore_from_remote(file_name, trial)


class LivePopulationTraining(PopulationBasedTraining):
    """Ray's (asynchronous) PBT, where no trial takes the weights of one that has run its
    last epoch.

    Ray ranks every trial still running (``PopulationBasedTraining._quantiles``),
    including one whose last result, at ``max_t``, is being handled: a trial that
    lagged could take those weights and be left nothing to train.
    """

    def __init__(self, *args: Any, max_t: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t

    def _quantiles(self) -> tuple[list[Any], list[Any]]:
        lower, upper = super()._quantiles()
        going = [t for t in upper if self._trial_state[t].last_train_time < self._max_t]
        return (lower, going) if going else ([], [])  # no donor: nobody exploits now
