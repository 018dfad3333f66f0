"""Each private Ray/Optuna use of ``tuner/engine/_internals.py`` against the installed versions.

A failure here means an upgrade removed or changed what the named use relies on:
fix ``tuner/engine/_internals.py`` (or pin the older version), nothing else.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tuner.engine import _internals as internals

pytestmark = pytest.mark.slow  # each test starts Ray or a search of its own


@pytest.fixture(scope="module")
def live_trials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real two-epoch Tune run; a callback reads each trial's checkpoints while it is live."""
    import ray
    from ray import tune

    seen: dict[str, Any] = {}

    class Look(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            seen["best"] = internals.best_checkpoint_results(trial)
            seen["latest"] = internals.latest_checkpoint_result(trial)
            seen["session"] = internals.train_session_dir()
            seen["trial_id"] = trial.trial_id

    def trainable(config: dict[str, Any]) -> None:
        for epoch in (1, 2):
            folder = Path(tune.get_context().get_trial_dir()) / f"ckpt{epoch}"
            folder.mkdir(exist_ok=True)
            (folder / "w").write_text(str(epoch))
            tune.report(
                {"epoch": epoch, "val_acc": 0.5 * epoch},
                checkpoint=tune.Checkpoint.from_directory(str(folder)),
            )

    storage = tmp_path_factory.mktemp("internals")
    look = Look()
    new = tune.Tuner(
        trainable,
        run_config=tune.RunConfig(
            name="run", storage_path=str(storage), callbacks=[look], verbose=0
        ),
    )
    seen["new_callbacks"] = internals.run_callbacks(new)
    seen["look"] = look
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        new.fit()
        seen["restored_trials"] = internals.restored_trials(str(storage / "run"))
        seen["folder"] = storage / "run"
        restored = tune.Tuner.restore(str(storage / "run"), trainable=trainable)
        seen["restored_callbacks"] = internals.run_callbacks(restored)
    finally:
        ray.shutdown()
    return seen


def test_the_state_file_and_checkpoint_folders_have_the_layout_engine_formats_reads(live_trials):
    """Use: the leaderboard reads each trial of the experiment state through
    trial_states; the pruner and the study name checkpoint folders by report index."""
    import json

    from tuner.engine.formats import checkpoint_index, checkpoint_name, trial_states

    folder = live_trials["folder"]
    (newest,) = sorted(folder.glob("experiment_state-*.json"))[-1:]
    (trial,) = trial_states(json.loads(newest.read_text()), str(newest))
    assert trial["trial_id"] == live_trials["trial_id"] and trial["status"] == "TERMINATED"
    assert isinstance(trial["config"], dict) and isinstance(trial["experiment_tag"], str)
    (trial_dir,) = [p for p in folder.iterdir() if p.is_dir() and live_trials["trial_id"] in p.name]
    names = sorted(p.name for p in trial_dir.glob("checkpoint_*"))
    assert names == [checkpoint_name(0), checkpoint_name(1)]
    assert checkpoint_index(live_trials["latest"].checkpoint.path) == 1


def test_the_files_a_restore_loads_are_the_ones_signed():
    """Use: signing covers every file Tuner.restore unpickles or loads (RESTORED_FILES):
    the tuner, every state a ``CKPT_FILE_TMPL`` names (trial list, generators, searcher,
    callbacks)."""
    import fnmatch

    from ray.tune.callback import CallbackList
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl.tuner_internal import _TUNER_PKL
    from ray.tune.search import BasicVariantGenerator, Searcher, SearchGenerator

    from tuner.engine.formats import RESTORED_FILES
    from tuner.storage._signing import is_signed

    names = [_TUNER_PKL] + [
        cls.CKPT_FILE_TMPL.format("2026-12-06_10-00-00")
        for cls in (TuneController, SearchGenerator, BasicVariantGenerator, Searcher, CallbackList)
    ]
    for name in names:
        assert any(fnmatch.fnmatchcase(name, p) for p in RESTORED_FILES), name
        assert is_signed(name), name


def test_a_config_value_ray_cannot_write_as_json_is_the_fallback_plain_config_drops():
    """Use: the leaderboard reads a trial's config from the state file without decoding
    Ray's cloudpickle fallback (tuner/engine/formats.py::plain_config)."""
    from ray.tune.utils.serialization import TuneFunctionEncoder

    from tuner.engine.formats import plain_config

    written = json.loads(json.dumps({"lr": 0.1, "fn": len}, cls=TuneFunctionEncoder))
    assert isinstance(written["fn"], dict) and "value" in written["fn"], written
    assert plain_config(written) == {"lr": 0.1}, "Ray's CLOUDPICKLE_FALLBACK encoding changed"


def test_checkpoint_bookkeeping_of_a_live_trial(live_trials):
    """Use: the checkpoint pruner (tuner/search/_pruning.py) reads what a live trial registered
    (it orders them itself)."""
    best = live_trials["best"]
    assert sorted(r.metrics["epoch"] for r in best) == [1, 2], (
        "Ray's trial.run_metadata.checkpoint_manager.best_checkpoint_results changed"
    )
    latest = live_trials["latest"]
    assert latest.metrics["epoch"] == 2 and latest.checkpoint.path.endswith("000001"), (
        "Ray's trial.run_metadata.checkpoint_manager.latest_checkpoint_result changed"
    )


def test_train_session_dir_is_where_ray_stages_experiments(live_trials):
    """Use: a finished remote search deletes Ray's staging copy (tuner/search/_finish.py)."""
    session = live_trials["session"]
    assert session.name == "artifacts" and "session_" in str(session), (
        f"ray.train.constants._get_ray_train_session_dir() now gives {session}"
    )


def test_token_notice_logger_is_the_one_ray_logs_through():
    """Use: the local cluster's token notice is filtered (tuner/engine/_cluster.py)."""
    module = importlib.import_module(internals.TOKEN_NOTICE_LOGGER)
    assert module.logger is logging.getLogger(internals.TOKEN_NOTICE_LOGGER)
    assert "Token authentication is enabled" in Path(module.__file__).read_text()


def test_hooked_optuna_search_reaches_the_study_trials_and_storage(tmp_path):
    """Use: MirroredOptunaSearch (tuner/search/_study.py) tells its study what the leaderboard
    tells, in the storage it chooses, and continues in a reloaded study on restore."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray import tune

    chosen = JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))

    class Search(internals.HookedOptunaSearch):
        def study_storage(self) -> Any:
            return chosen

    search = Search(space={"lr": tune.loguniform(1e-4, 1e-1)}, metric="val_acc", mode="max")
    assert search.study is not None and search.study._storage is chosen, (
        "OptunaSearch._setup_study no longer sets the study up in self._storage"
    )
    config = search.suggest("t1")
    assert 1e-4 <= config["lr"] <= 1e-1
    trial = search.optuna_trials["t1"]
    assert isinstance(trial, optuna.Trial)
    frozen = chosen.get_trial(internals.optuna_trial_id(trial))
    assert frozen.number == trial.number and frozen.params == config

    search.on_trial_complete("t1", {"val_acc": 0.7})
    assert "t1" in search.completed
    assert search.study.trials[0].value == 0.7

    # On restore, the search continues in a study loaded from another storage.
    search.suggest("t2")
    elsewhere = JournalStorage(JournalFileBackend(str(tmp_path / "copy.log")))
    optuna.copy_study(
        from_study_name=search.study.study_name, from_storage=chosen, to_storage=elsewhere
    )
    reloaded = optuna.load_study(study_name=search.study.study_name, storage=elsewhere)
    search.rebind(elsewhere, reloaded)
    assert search.study is reloaded and search.optuna_trials["t2"].study is reloaded


def test_run_callbacks_of_a_new_and_a_restored_tuner(live_trials):
    """Use: the driver reads its storage guard's verdict from the callbacks a restored
    search runs with (tuner/search/_run.py)."""
    assert live_trials["look"] in live_trials["new_callbacks"], (
        "Tuner._local_tuner.get_run_config() changed"
    )
    assert any(type(c).__name__ == "Look" for c in live_trials["restored_callbacks"])


def test_restored_trials_reads_the_trial_list_tune_saved(live_trials):
    """Use: ReconcilingSearchGenerator counts the trials of the experiment state Tune
    restores (tuner/engine/_internals.py; the generator and limiter state it sets are
    checked in tests/test_resume_state.py)."""
    assert live_trials["restored_trials"] == {live_trials["trial_id"]: "TERMINATED"}, (
        "the experiment state file's name or its trial_data layout changed"
    )


def test_the_trial_list_is_saved_where_the_generator_looks_for_it():
    """Use: ReconcilingSearchGenerator.save_to_dir tells the searcher the file of the trial
    list Tune has just saved (EXPERIMENT_STATE), so the journal's length is kept with it
    (tests/test_resume_state.py and tests/test_resume.py cut a study back to it)."""
    import inspect

    from ray.tune.execution.tune_controller import TuneController

    assert TuneController.CKPT_FILE_TMPL == internals.EXPERIMENT_STATE
    source = inspect.getsource(TuneController.save_to_dir)
    # The trial list is written before the search algorithm saves, in the same call.
    assert source.index("experiment_state_file_name") < source.index("_search_alg.save_to_dir")


def test_hyperband_bookkeeping_the_saved_hyperband_relies_on():
    """Use: SavedHyperBand marks the trials a bracket stopped while paused for Tune's next
    save (TuneController._mark_trial_to_checkpoint, else the saved list keeps them PAUSED),
    and skips ended trials a restore adds again (_requeue_restored_trials adds each)."""
    import inspect

    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.schedulers import HyperBandScheduler

    params = inspect.signature(HyperBandScheduler._process_bracket).parameters
    assert list(params) == ["self", "tune_controller", "bracket"]
    # Tune re-serialises only the trials marked: the saved list is built from them.
    assert "_trials_to_cache" in inspect.getsource(TuneController._get_trial_checkpoints)
    assert "_trials_to_cache.add" in inspect.getsource(TuneController._mark_trial_to_checkpoint)
    # Stopping a trial that is not live (a PAUSED one) returns before marking it.
    stop = inspect.getsource(TuneController._schedule_trial_stop)
    assert stop.index("not in self._trial_to_actor") < stop.index("_mark_trial_to_checkpoint")
    # A restore hands every saved trial, ended ones included, to add_trial.
    requeue = inspect.getsource(TuneController._requeue_restored_trials)
    assert "Trial.TERMINATED" in requeue and "self.add_trial(trial_to_add)" in requeue
    # Schedulers are handed the controller behind a wrapper that keeps it here.
    from ray.tune.execution.tune_controller import TrialRunnerWrapper

    assert "self._tune_controller = tune_controller" in inspect.getsource(
        TrialRunnerWrapper.__init__
    )


def test_tune_logs_and_error_files_where_the_storage_guard_reads_them():
    """Use: StorageGuard shortens what Tune's trial loop logs (its module logger) and
    reads a trial's newest failure from its error file (Trial.handle_error's header)."""
    import inspect

    from ray.tune.execution import tune_controller
    from ray.tune.experiment.trial import Trial

    from tuner.engine import _logs

    assert tune_controller.logger.name == _logs.CONTROLLER_LOGGER
    header = f'"{_logs.FAILURE_HEADER}{{}} (occurred at {{}})'
    assert header in inspect.getsource(Trial.handle_error)


def test_tune_run_logs_its_restore_hint_where_no_restore_hint_drops_it(caplog):
    """Use: ``no_restore_hint`` filters the logger of ``tune.run``, whose interrupted
    search ends with "Resume experiment with: Tuner.restore(...)"."""
    import inspect
    import logging

    from ray.tune import tune

    from tuner.engine import _logs

    assert tune.logger.name == _logs.RUN_LOGGER
    assert f"\\n{_logs.RESTORE_HINT}{{restore_entrypoint}}" in inspect.getsource(tune.run)
    with caplog.at_level(logging.WARNING, logger=_logs.RUN_LOGGER):
        with _logs.no_restore_hint():
            tune.logger.warning(f"interrupted.\n{_logs.RESTORE_HINT}Tuner.restore(path='x')")
            tune.logger.warning("Stop signal received")
        tune.logger.warning(f"{_logs.RESTORE_HINT}after")
    assert [r.getMessage() for r in caplog.records] == [
        "Stop signal received",
        f"{_logs.RESTORE_HINT}after",
    ]


def test_the_trial_actor_tune_builds_mixes_in_quiet_stop_before_ray_s_own_class():
    """Use: tune_trainable sets ``__mixins__``, which tune.with_parameters keeps and
    wrap_function puts first in the actor class (QuietStop.cleanup runs, then Ray's);
    nothing here starts Ray."""
    import inspect

    import ray
    from ray.tune.trainable import Trainable
    from ray.tune.trainable.function_trainable import FunctionTrainable, wrap_function

    from tuner.engine._actor import QuietStop, tune_trainable

    def trial(config, data=None):
        return None

    actor = wrap_function(tune_trainable(trial, {"cpu": 1}, data=[1, 2]))
    mro = actor.__mro__
    assert mro.index(QuietStop) < mro.index(FunctionTrainable)
    # Tune's stop of an actor for good runs cleanup, which QuietStop extends.
    assert "self.cleanup()" in inspect.getsource(Trainable.stop)
    assert not ray.is_initialized()


@pytest.mark.parametrize("saved", [False, True])
def test_a_finished_bracket_ends_its_paused_trials_when_its_last_trial_ends_resultless(saved):
    """Ray's HyperBand stops a finished bracket's PAUSED trials only on a result; a trial
    restored at its last epoch ends with none (on_trial_complete alone), and a resume
    waited on the PAUSED ones for ever. SavedHyperBand stops them and marks them saved."""
    from ray.tune.schedulers import HyperBandScheduler

    cls = internals.SavedHyperBand if saved else HyperBandScheduler
    hyperband = cls(time_attr="epoch", metric="val_acc", mode="max", max_t=4, reduction_factor=2)

    class Trial:
        def __init__(self, name: str) -> None:
            self.trial_id, self.status, self.is_saving = name, "PENDING", False

    class Controller:  # what Tune's TuneController.stop_trial does to a PAUSED trial
        def __init__(self) -> None:
            self.marked: list = []

        def stop_trial(self, trial):
            if trial.status == "PAUSED":
                hyperband.on_trial_remove(self, trial)
            trial.status = "TERMINATED"

        def _mark_trial_to_checkpoint(self, trial):
            self.marked.append(trial)

    controller, trials = Controller(), [Trial(str(i)) for i in range(3)]
    for trial in trials:
        hyperband.on_trial_add(controller, trial)
    bracket = hyperband._trial_info[trials[0]][0]
    assert bracket._halves == 0 and bracket._r == 4 and len(bracket.current_trials()) == 3
    for trial in trials[:2]:
        trial.status = "RUNNING"
        assert hyperband.on_trial_result(controller, trial, {"epoch": 4, "val_acc": 0.5}) == "PAUSE"
        trial.status = "PAUSED"
    trials[2].status = "RUNNING"
    hyperband.on_trial_complete(controller, trials[2], {"epoch": 4, "val_acc": 0.5})
    trials[2].status = "TERMINATED"
    if saved:
        assert [t.status for t in trials] == ["TERMINATED"] * 3
        assert controller.marked == trials[:2]
    else:  # Ray's own: if this fails, Ray mends it and SavedHyperBand's override can go
        assert [t.status for t in trials[:2]] == ["PAUSED", "PAUSED"]


def test_the_json_logger_copies_results_from_storage_where_kept_json_logger_skips_it():
    """Use: KeptJsonLogger overrides LoggerCallback._restore_from_remote, which Ray's
    result.json writer calls each time a trial starts, copying storage's file over the
    driver's; Ray adds no writer of its own when one is given."""
    import inspect

    from ray.tune.logger import JsonLoggerCallback, LoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    assert "_restore_from_remote" in vars(LoggerCallback)
    start = inspect.getsource(JsonLoggerCallback.log_trial_start)
    assert "self._restore_from_remote(EXPR_RESULT_FILE, trial)" in start
    assert start.index("_restore_from_remote") < start.index('open("at")')
    callbacks = _create_default_callbacks([internals.KeptJsonLogger()])
    assert sum(isinstance(c, JsonLoggerCallback) for c in callbacks) == 1


def test_pbt_refuses_a_search_generator_and_logs_the_lineage_pbt_history_reads():
    """Use: PopulationSearch is no SearchGenerator (PBT.on_trial_add refuses one);
    LivePopulationTraining filters _quantiles by _trial_state's last_train_time;
    pbt_lineage reads the lists _log_config_on_step writes."""
    import inspect
    import json

    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.search import SearchGenerator

    assert "SearchGenerator" in inspect.getsource(PopulationBasedTraining.on_trial_add)
    assert not issubclass(internals.PopulationSearch, SearchGenerator)
    assert "self._trial_state.items()" in inspect.getsource(PopulationBasedTraining._quantiles)
    assert "last_train_time" in inspect.getsource(PopulationBasedTraining.on_trial_result)
    log = inspect.getsource(PopulationBasedTraining._log_config_on_step)
    for name in ('"pbt_policy_" + trial_id + ".txt"', '"pbt_global.txt"'):
        assert name in log
    assert internals.PBT_POLICY.format("t") == "pbt_policy_t.txt"
    # The policy's fields in order: target tag, donor tag, target and donor iterations,
    # donor config, new config.
    assert (
        log.index("trial_name,")
        < log.index("trial_to_clone_name,")
        < log.index("trial_to_clone.config,")
        < log.index("new_config,")
    )
    line = json.dumps(["2_a", "4_b", 3, 3, {"lr": 0.1}, {"lr": 0.08}])
    assert internals.pbt_lineage(line + "\nnot json\n") == [(3, "4_b", {"lr": 0.1}, {"lr": 0.08})]


def test_live_population_training_never_hands_over_weights_with_no_epoch_left():
    """Its upper quantile leaves out trials at max_t; with none left, nobody exploits
    (Ray picks a donor from the upper quantile whenever the lower one is not empty)."""
    from types import SimpleNamespace

    class Trial:
        def is_finished(self) -> bool:
            return False

    pbt = internals.LivePopulationTraining(
        time_attr="epoch", metric="val_acc", mode="max", max_t=4, perturbation_interval=1,
        hyperparam_mutations={"lr": [0.1, 0.01]},
    )  # fmt: skip
    trials = [Trial() for _ in range(4)]
    for i, trial in enumerate(trials):
        pbt._trial_state[trial] = SimpleNamespace(last_score=float(i), last_train_time=2)
    lower, upper = pbt._quantiles()
    assert lower == [trials[0]] and upper == [trials[3]]
    pbt._trial_state[trials[3]].last_train_time = 4
    assert pbt._quantiles() == ([], [])
