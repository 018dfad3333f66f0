"""A resume whose saved files come from different moments.

Ray Tune saves the trial list (``experiment_state-*.json``), the search
generator's state (its count of trials and the concurrency limiter) and the
searcher's state as separate files, uploaded one by one; a driver killed while
uploading them leaves some newer than others. Real Ray Tune objects and a real
Optuna journal study here: the states are saved by Ray's own code and restored
through ``restore_from_dir``, as ``resume`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from tuner.engine._internals import ReconcilingSearchGenerator, make_search_alg
from tuner.search._journal import journal_storage
from tuner.search._study import MirroredOptunaSearch
from tuner.storage._experiment import Experiment
from tuner.storage._storage import Storage

SPACE = {"lr": tune.loguniform(1e-4, 1e-1)}


def _trainable(config: dict[str, Any]) -> None:
    pass


def search_alg(tmp: Path, num_samples: int = 3) -> ReconcilingSearchGenerator:
    """As the driver builds it; a second call is the copy a resume unpickles."""
    exp = Experiment(Storage.parse(str(tmp / "results")), "s")
    searcher = MirroredOptunaSearch(
        metric="val_acc",
        mode="max",
        seed=0,
        study_name="s",
        storage=journal_storage(tmp / "journal.log"),
        max_epochs=2,
        exp=exp,
    )
    alg = make_search_alg(searcher, max_concurrent=4)
    alg.set_search_properties("val_acc", "max", SPACE)
    alg.add_configurations(
        [tune.Experiment("s", run=_trainable, num_samples=num_samples, config=SPACE)]
    )
    return alg


def save_trial_list(folder: Path, trials: list[Any]) -> None:
    """The experiment state file as Tune writes its trial list."""
    state = {"trial_data": [t.get_json_state() for t in trials]}
    (folder / "experiment_state-2026-11-30_00-00-00.json").write_text(json.dumps(state))


def study_trials(alg: ReconcilingSearchGenerator) -> dict[str, Any]:
    searcher = alg.searcher.searcher
    return {t.user_attrs.get("tune_trial_id"): t for t in searcher.study.get_trials()}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir()
    return folder


def test_a_trial_list_newer_than_the_search_state_makes_no_extra_trial(tmp_path, state):
    """Killed after the trial list with a third trial was uploaded, before the
    generator's and searcher's states with it: Tune made a fourth trial."""
    from optuna.trial import TrialState

    alg = search_alg(tmp_path)
    trials = [alg.next_trial(), alg.next_trial()]
    alg.save_to_dir(str(state), session_str="2026-11-30_00-00-00")  # the older states
    trials.append(alg.next_trial())
    save_trial_list(state, trials)
    ids = {t.trial_id for t in trials}

    resumed = search_alg(tmp_path)
    assert resumed.has_checkpoint(str(state))
    resumed.restore_from_dir(str(state))
    assert resumed.is_finished() and resumed.next_trial() is None  # 3 of 3 made
    assert resumed.searcher.live_trials == ids  # each one Tune runs again holds a slot
    # The third trial's completion reaches the study, through the limiter.
    third = trials[2].trial_id
    resumed.on_trial_complete(third, {"val_acc": 0.8, "epoch": 2})
    study = study_trials(resumed)
    assert study[third].state == TrialState.COMPLETE and study[third].value == 0.8
    assert third not in resumed.searcher.live_trials


def test_a_search_state_newer_than_the_trial_list_runs_its_lost_trial_again(tmp_path, state):
    """Killed after the generator's and searcher's states with a third trial were
    uploaded, before the trial list with it: Tune would never run that trial (nor a
    replacement), its slot stayed taken and its Optuna trial RUNNING for ever."""
    from optuna.trial import TrialState

    alg = search_alg(tmp_path)
    trials = [alg.next_trial(), alg.next_trial()]
    save_trial_list(state, trials)  # the older trial list
    lost = alg.next_trial().trial_id
    alg.save_to_dir(str(state), session_str="2026-11-30_00-00-00")

    resumed = search_alg(tmp_path)
    resumed.restore_from_dir(str(state))
    assert resumed.searcher.live_trials == {t.trial_id for t in trials}
    replacement = resumed.next_trial()
    assert replacement is not None and replacement.trial_id != lost
    assert resumed.is_finished()
    study = study_trials(resumed)
    assert study[lost].state == TrialState.FAIL and study[lost].user_attrs["orphaned"]
    assert study[replacement.trial_id].state == TrialState.RUNNING
    assert [study[t.trial_id].state for t in trials] == [TrialState.RUNNING] * 2
    assert not any(t.user_attrs.get("orphaned") for t in study.values() if t is not study[lost])


def test_a_trial_list_without_any_search_state_restores_the_count(tmp_path, state):
    """Killed in the first upload, after the trial list, before the generator's own
    file: Ray alone would start all three trials anew beside the two restored."""
    alg = search_alg(tmp_path)
    trials = [alg.next_trial(), alg.next_trial()]
    save_trial_list(state, trials)

    resumed = search_alg(tmp_path)
    assert resumed.has_checkpoint(str(state))
    resumed.restore_from_dir(str(state))
    assert resumed.next_trial() is not None and resumed.is_finished()
    searcher = resumed.searcher.searcher
    # Found in the study by their Tune ids: their results reach their Optuna trials.
    assert {t.trial_id for t in trials} <= set(searcher.optuna_trials)


def test_a_study_told_after_the_saved_trial_list_is_cut_back_to_it(tmp_path):
    """Finding 11: Tune told the study a trial was PRUNED (ASHA stopped it), then the
    driver was killed before the trial list saying so was saved. The resume ran the trial
    again, it completed, and the study kept PRUNED (Optuna cannot reopen a trial). The
    journal is cut back to its length at the restored save; the trial ends COMPLETE."""
    from optuna.trial import TrialState

    from tuner.search._journal import cut_journal, local_journal
    from tuner.storage._signing import write_signed

    exp = Experiment(Storage.parse(str(tmp_path / "results")), "s")
    folder = Path(exp.path())
    folder.mkdir(parents=True)

    def driver_alg() -> ReconcilingSearchGenerator:
        return search_alg_at(exp, num_samples=2)

    alg = driver_alg()
    trials = [alg.next_trial(), alg.next_trial()]
    stopped = trials[0].trial_id
    alg.on_trial_result(stopped, {"val_acc": 0.5, "epoch": 1})
    # Tune's save: the trial list, then (in the same thread) the searcher's state, which
    # notes the journal's length; the list is signed as the signing file system uploads it.
    session = "2026-11-30_00-00-00"
    save_trial_list(folder, trials)
    alg.save_to_dir(str(folder), session_str=session)
    name = f"experiment_state-{session}.json"
    write_signed(exp, name, (folder / name).read_bytes())
    saved_length = local_journal(exp).stat().st_size
    # After the save: ASHA stops the trial, the study is told; then the kill.
    alg.on_trial_complete(stopped, {"val_acc": 0.5, "epoch": 1})
    assert study_trials(alg)[stopped].state == TrialState.PRUNED
    assert local_journal(exp).stat().st_size > saved_length

    said: list[str] = []
    assert cut_journal(exp, said.append) >= 1 and "dropped" in said[0]
    assert local_journal(exp).stat().st_size == saved_length
    resumed = driver_alg()
    resumed.restore_from_dir(str(folder))
    assert study_trials(resumed)[stopped].state == TrialState.RUNNING  # as the list has it
    # The resumed run lets the trial finish: the study says what the leaderboard says.
    resumed.on_trial_result(stopped, {"val_acc": 0.7, "epoch": 2})
    resumed.on_trial_complete(stopped, {"val_acc": 0.7, "epoch": 2})
    study = study_trials(resumed)
    assert study[stopped].state == TrialState.COMPLETE and study[stopped].value == 0.7
    assert study[stopped].intermediate_values == {1: 0.5, 2: 0.7}


def test_a_searcher_state_newer_than_the_cut_study_tells_its_trial_again(tmp_path):
    """The searcher's own file saved after the trial was told (it lists the trial as
    completed), the trial list and the journal before: the completion is told again."""
    from optuna.trial import TrialState

    from tuner.search._journal import cut_journal
    from tuner.storage._signing import write_signed

    exp = Experiment(Storage.parse(str(tmp_path / "results")), "s")
    folder = Path(exp.path())
    folder.mkdir(parents=True)
    alg = search_alg_at(exp)
    trial = alg.next_trial()
    session = "2026-11-30_00-00-00"
    save_trial_list(folder, [trial])
    alg.save_to_dir(str(folder), session_str=session)
    name = f"experiment_state-{session}.json"
    write_signed(exp, name, (folder / name).read_bytes())
    alg.on_trial_complete(trial.trial_id, {"val_acc": 0.5, "epoch": 1})
    alg.save_to_dir(str(folder), session_str="2026-11-30_00-00-01")  # its searcher only
    (folder / "experiment_state-2026-11-30_00-00-01.json").unlink(missing_ok=True)

    cut_journal(exp, lambda line: None)
    resumed = search_alg_at(exp)
    resumed.restore_from_dir(str(folder))
    resumed.on_trial_complete(trial.trial_id, {"val_acc": 0.8, "epoch": 2})
    assert study_trials(resumed)[trial.trial_id].state == TrialState.COMPLETE


def search_alg_at(exp: Experiment, num_samples: int = 1) -> ReconcilingSearchGenerator:
    from tuner.search._journal import local_journal

    searcher = MirroredOptunaSearch(
        metric="val_acc", mode="max", seed=0, study_name="s",
        storage=journal_storage(local_journal(exp)), max_epochs=2, exp=exp,
    )  # fmt: skip
    alg = make_search_alg(searcher, max_concurrent=4)
    alg.set_search_properties("val_acc", "max", SPACE)
    alg.add_configurations(
        [tune.Experiment("s", run=_trainable, num_samples=num_samples, config=SPACE)]
    )
    return alg
