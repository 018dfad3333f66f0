"""Scheduler and searcher from the space file or the command line: parsed and refused at
the edge (tuner/spaces/_strategy.py), built by one adapter (tuner/engine/_strategy.py), and
each scheduler run for real through a kill -9 and a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_SPACE, assert_study_tells_the_leaderboard, cli
from test_resume import kill_9_and_resume

from tuner.engine import _strategy as adapter
from tuner.engine._strategy import asha_trial_epochs, hyperband_trial_epochs
from tuner.spaces._spaces import Budget, load_space, parse_space
from tuner.spaces._strategy import Strategy


def space_text(strategy: str = "", num: int = 4, epochs: int = 4) -> str:
    """The shared tiny space (32 px Lite0), ``num`` trials of ``epochs``, with ``strategy``."""
    text = TINY_SPACE.replace("num_samples: 5", f"num_samples: {num}")
    return text.replace("max_epochs: 3", f"max_epochs: {epochs}") + strategy + "\n"


def write(tmp: Path, strategy: str = "", num: int = 4, epochs: int = 4) -> Path:
    path = tmp / "space.yaml"
    path.write_text(space_text(strategy, num, epochs))
    return path


def test_a_space_names_its_scheduler_and_searcher_with_settings(tmp_path):
    space = load_space(str(write(tmp_path, "scheduler: {median: {grace_period: 2}}\nsearcher: gp")))
    assert space.strategy == Strategy("median", {"grace_period": 2}, "gp", {})
    assert load_space(str(write(tmp_path))).strategy == Strategy("asha", {}, "tpe", {})
    # The resolved space (what tuner.json records, and `resume` parses) keeps them.
    resolved = space.to_dict()
    recorded = {k: resolved[k] for k in ("params", "budget", "scheduler", "searcher")}
    again = parse_space(recorded, name="again")
    assert again.strategy == space.strategy


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("scheduler: pbs", "scheduler: unknown 'pbs'; known: asha, hyperband, median, fifo"),
        ("searcher: bayes", "searcher: unknown 'bayes'"),
        ("scheduler: {asha: {grace: 2}}", "asha has no setting 'grace'"),
        ("scheduler: {asha: {reduction_factor: 1}}", "reduction_factor must be a number > 1"),
        ("searcher: {nsga2: {population_size: 1}}", "population_size must be an integer >= 2"),
        ("searcher: {tpe: {multivariate: 1}}", "multivariate must be true or false"),
        ("scheduler: {asha: {}, fifo: {}}", "give one name"),
        ("searcher: {random: 3}", "the settings of random must be a mapping"),
        ("scheduler: pbt\nsearcher: cmaes", "scheduler pbt with searcher cmaes"),
        ("scheduler: {pbt: {quantile_fraction: 0.7}}", "quantile_fraction must be a number"),
    ],
)
def test_a_bad_scheduler_or_searcher_is_refused_with_the_reason(
    tmp_path, capsys, strategy, message
):
    code, _, err = cli(capsys, "spaces", str(write(tmp_path, strategy)))
    assert code == 2 and message in err, err
    assert "Traceback" not in err


def test_a_numeric_sampler_on_a_space_of_choices_only_is_refused(tmp_path, capsys, synthetic):
    text = space_text().replace("{loguniform: [1.0e-4, 1.0e-1]}", "{choice: [0.001, 0.01]}")
    text = text.replace("{randint: [2, 5]}", "{choice: [3, 4]}")
    path = tmp_path / "choices.yaml"
    path.write_text(text.replace("{uniform: [0.0, 0.5]}", "{choice: [0.0, 0.5]}"))
    for searcher in ("cmaes", "gp"):
        code, _, err = cli(
            capsys, "search", "--space", str(path), "--data", str(synthetic),
            "--storage", str(tmp_path / "r"), "--searcher", searcher,
        )  # fmt: skip
        assert code == 2 and "searches none (only choices); use tpe or random" in err, err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_pbt_needs_a_searched_lr(tmp_path, capsys):
    path = tmp_path / "fixed.yaml"
    text = space_text().split("points_to_evaluate:")[0] + "scheduler: pbt\n"
    path.write_text(text.replace("{loguniform: [1.0e-4, 1.0e-1]}", "0.01"))
    code, _, err = cli(capsys, "spaces", str(path))
    assert code == 2 and "scheduler pbt perturbs lr, which this space does not search" in err


def test_command_line_names_override_the_space_and_drop_its_settings(tmp_path):
    space = load_space(str(write(tmp_path, "scheduler: {asha: {grace_period: 2}}")))
    assert space.with_strategy(None, "random").strategy == Strategy(
        "asha", {"grace_period": 2}, "random", {}
    )
    assert space.with_strategy("asha", None).strategy.scheduler_settings == {"grace_period": 2}
    assert space.with_strategy("fifo", None).strategy == Strategy("fifo", {}, "tpe", {})


def test_the_adapter_builds_each_scheduler_with_the_budget_and_its_settings():
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    from tuner.engine._internals import SavedHyperBand

    asha = adapter.make_scheduler(
        Strategy.parse({"asha": {"grace_period": 2}}),
        Budget(max_epochs=6, grace_period=1, reduction_factor=3),
    )
    assert isinstance(asha, ASHAScheduler)
    assert (asha._max_t, asha._reduction_factor) == (6, 3)
    # A rung at its own grace period (the budget's is 1), and the end.
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [6, 2]
    budget = Budget(max_epochs=4, grace_period=1, reduction_factor=2)
    hyperband = adapter.make_scheduler(Strategy.parse("hyperband"), budget)
    assert isinstance(hyperband, SavedHyperBand) and hyperband._eta == 2
    median = adapter.make_scheduler(
        Strategy.parse({"median": {"min_samples_required": 2}}),
        Budget(max_epochs=4, grace_period=2),
    )
    assert isinstance(median, MedianStoppingRule)
    assert (median._grace_period, median._min_samples_required) == (2, 2)
    assert type(adapter.make_scheduler(Strategy.parse("fifo"), budget)) is FIFOScheduler


@pytest.mark.parametrize(
    ("searcher", "sampler"),
    [
        ("tpe", "TPESampler"),
        ("random", "RandomSampler"),
        ("cmaes", "CmaEsSampler"),
        ("gp", "GPSampler"),
        ("nsga2", "NSGAIISampler"),
    ],
)
def test_the_adapter_builds_each_sampler_seeded(searcher, sampler):
    import optuna
    from optuna.distributions import FloatDistribution

    def first_lrs(seed: int) -> list[float]:
        made = adapter.make_sampler(Strategy.parse(None, searcher), seed)
        assert type(made).__name__ == sampler
        study = optuna.create_study(sampler=made, direction="maximize")
        values = []
        for _ in range(3):
            trial = study.ask({"lr": FloatDistribution(1e-4, 1e-1, log=True)})
            values.append(trial.params["lr"])
            study.tell(trial, trial.params["lr"])
        return values

    assert first_lrs(3) == first_lrs(3)
    assert first_lrs(3) != first_lrs(4)


@pytest.mark.parametrize("restarted", [False, True], ids=["one driver", "driver restarted"])
def test_a_pbt_trial_is_told_its_own_best_not_its_donors(tmp_path, restarted):
    """A trial that exploited another's checkpoint reports the donor's best_val_acc (it is
    in the checkpoint); the study must be told the best val_acc the trial itself reported,
    which is what the leaderboard ranks it by, also from a searcher restored without it."""
    from optuna.trial import TrialState
    from ray import tune

    from tuner.search._journal import journal_storage
    from tuner.search._study import BEST_METRIC, MirroredOptunaSearch
    from tuner.storage import Experiment, Storage

    exp = Experiment(Storage.parse(str(tmp_path / "results")), "pbt")

    def searcher() -> MirroredOptunaSearch:
        made = MirroredOptunaSearch(
            metric=BEST_METRIC, mode="max", seed=0, study_name="pbt", max_epochs=3, exp=exp,
            storage=journal_storage(tmp_path / "journal.log"),
        )  # fmt: skip
        made.set_search_properties(BEST_METRIC, "max", {"lr": tune.loguniform(1e-4, 1e-1)})
        return made

    search = searcher()
    search.suggest("t1")
    search.save(str(tmp_path / "searcher.pkl"))  # before it saw any epoch of the trial
    own = [0.30, 0.25]
    search.on_trial_result("t1", {"epoch": 1, "val_acc": own[0], BEST_METRIC: own[0]})
    # Exploited at epoch 1: the donor's checkpoint carried its best, 0.4.
    search.on_trial_result("t1", {"epoch": 2, "val_acc": own[1], BEST_METRIC: 0.4})
    if restarted:  # the study's journal has the epochs, the restored searcher does not
        search = searcher()
        search.restore(str(tmp_path / "searcher.pkl"))
        assert "t1" not in search._best
    last = {"epoch": 3, "val_acc": 0.2, BEST_METRIC: 0.4}
    search.on_trial_complete("t1", last)
    (told,) = search.study.get_trials()
    assert told.state == TrialState.COMPLETE
    assert told.value == max(own)


def test_a_pbt_trials_line_says_its_own_best_not_its_donors():
    """The line a trial prints as it ends says the best val_acc it reported itself, as the
    study and the leaderboard do, also after a resume restores the lines' saved state."""
    from types import SimpleNamespace

    from tuner.search._lines import TrialLines

    said: list[str] = []
    lines = TrialLines(3, 1, ["lr"], said.append)
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.01}, last_result={})
    lines.on_trial_result(0, [], trial, {"epoch": 1, "val_acc": 0.30, "best_val_acc": 0.30})
    # Exploited at epoch 1: the donor's checkpoint carried its best, 0.4.
    lines.on_trial_result(0, [], trial, {"epoch": 2, "val_acc": 0.25, "best_val_acc": 0.4})
    resumed = TrialLines(3, 1, ["lr"], said.append)
    resumed.set_state(lines.get_state())
    trial.last_result = {"epoch": 3, "val_acc": 0.2, "best_val_acc": 0.4}
    resumed.on_trial_result(0, [], trial, trial.last_result)
    resumed.on_trial_complete(0, [], trial)
    assert said == ["trial t1 ran all 3 epochs: best val_acc 0.3000 (lr=0.01)  [1/1 ended]"]


def test_the_expected_work_follows_the_scheduler():
    budget = Budget(num_samples=8, max_epochs=6, grace_period=2, reduction_factor=3)

    def work(name: str) -> float:
        return adapter.trial_epochs(Strategy.parse(name), budget)

    assert work("asha") == asha_trial_epochs(8, 6, 2, 3)
    assert work("fifo") == 48
    assert work("median") == 48  # at most
    # Ray's brackets for max_t 6, eta 3: 3 trials x 6 epochs, then 5 x 2 and the best 2 x 4.
    assert hyperband_trial_epochs(8, 6, 3) == 3 * 6 + 5 * 2 + 2 * 4
    assert work("hyperband") == hyperband_trial_epochs(8, 6, 3)
    # HyperBand halves among a bracket's live trials: it keeps them all live.
    assert adapter.live_trials(Strategy.parse("hyperband"), 2, 8) == 8
    assert adapter.live_trials(Strategy.parse("asha"), 2, 8) == 2


# A real search per scheduler, each with another sampler, killed -9 once a saved state
# holds a checkpoint and resumed: it finishes, and the study agrees with the leaderboard.
STRATEGIES = [
    ("hyperband", "random", "HyperBand reduction 2, random sampling"),
    ("median", "cmaes", "median stopping after epoch 1, 2 trials to compare, CMA-ES"),
    ("fifo", "gp", "FIFO (no early stopping), Gaussian-process BO"),
    ("asha", "nsga2", "ASHA grace 1 / reduction 2, NSGA-II"),
    ("pbt", "tpe", "PBT every 1 epochs (perturbs lr), TPE"),
]
SETTINGS = {
    "median": "{median: {min_samples_required: 2}}",
    # Half the population below the other half: an exploit at nearly every epoch.
    "pbt": "{pbt: {perturbation_interval: 1, quantile_fraction: 0.5}}",
}


@pytest.mark.slow
@pytest.mark.parametrize(("scheduler", "searcher", "banner"), STRATEGIES)
def test_each_scheduler_survives_a_kill_9_and_resume_and_agrees_with_the_study(
    small_flowers, tmp_path, scheduler, searcher, banner
):
    settings = SETTINGS.get(scheduler, scheduler)
    space = write(tmp_path, f"scheduler: {settings}\nsearcher: {searcher}", num=4, epochs=4)
    storage = tmp_path / "r"
    exp = storage / "s"
    out = kill_9_and_resume(space, small_flowers, storage, "s")
    assert banner in out, out[-3000:]
    board = assert_study_tells_the_leaderboard(exp)
    assert len(board) == 4 and set(board["status"]) <= {"completed", "stopped_early"}
    assert (board["stopped_early"] == (board["epochs"] < 4)).all()
    if scheduler in ("fifo", "pbt"):  # neither stops a trial
        assert (board["status"] == "completed").all()
    if scheduler == "pbt":
        assert_pbt_history_is_each_trials_lineage(board)
    space_record = json.loads((exp / "tuner.json").read_text())["space"]
    assert space_record["searcher"] == searcher
    assert space_record["scheduler"] == yaml.safe_load(SETTINGS.get(scheduler, scheduler))


def assert_pbt_history_is_each_trials_lineage(board) -> None:
    """Some trial took another's weights; each such trial's last lr is its lineage's last
    new lr (the config columns hold a trial's last values)."""
    histories = board["pbt_history"].fillna("")
    assert histories.str.contains("weights of").any(), histories
    for row in board[histories != ""].to_dict("records"):
        steps = row["pbt_history"].split("; ")
        donor = steps[-1].split("weights of ")[1].split(",")[0]
        assert donor in set(board["trial_id"]), (donor, row)
        if "lr " in steps[-1]:
            # Shown to 3 significant digits.
            assert float(steps[-1].split("lr ")[1]) == pytest.approx(row["lr"], rel=6e-3)
