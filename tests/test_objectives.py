"""Several objectives: val_acc against the deployed model's latency (or size), parsed at the
edge (tuner/spaces/_objectives.py), timed once per network and size
(trainables/models/_latency.py), ranked by Pareto front in ASHA's rungs (tuner/engine/_pareto.py),
the study and the leaderboard, picked from by ``export --pick``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import (
    TINY_SPACE,
    assert_study_tells_the_leaderboard,
    cli,
    cli_search,
    make_subset,
    run_cli,
)
from test_resume import kill_9_and_resume

from tuner.engine import _strategy as adapter
from tuner.engine._pareto import ParetoASHA
from tuner.results._front import pick_rank
from tuner.spaces._objectives import Constraint, Objectives, front_ranks
from tuner.spaces._spaces import load_space

TWO = "objectives: [{val_acc: max}, {latency_ms: min}]\n"


def tiny(tmp: Path, extra: str = TWO, num: int = 4, epochs: int = 3) -> Path:
    """The shared tiny space (Lite0 at 32 px) at two sizes, with ``extra`` sections."""
    text = TINY_SPACE.replace("image_size: 32", "image_size: {choice: [32, 48]}")
    text = text.replace("aug_strength: 0.0}", "aug_strength: 0.0, image_size: 48}")
    text = text.replace("num_samples: 5", f"num_samples: {num}")
    text = text.replace("max_epochs: 3", f"max_epochs: {epochs}")
    path = tmp / "space.yaml"
    path.write_text(text + extra)
    return path


def test_a_space_states_its_objectives_and_the_record_keeps_them(tmp_path):
    space = load_space(str(tiny(tmp_path, TWO + "latency_device: cpu\n")))
    assert space.objectives == Objectives((("val_acc", "max"), ("latency_ms", "min")), "cpu")
    assert load_space(str(tiny(tmp_path, ""))).objectives == Objectives()
    from tuner.spaces._spaces import parse_space

    recorded = {k: v for k, v in space.to_dict().items() if k not in ("name", "source")}
    again = parse_space(recorded, name="again")
    assert again.objectives == space.objectives
    assert space.with_strategy(None, None, "cuda").objectives.latency_device == "cuda"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("objectives: [{val_acc: max}, {latency: min}]", "unknown 'latency'; known: val_acc"),
        ("objectives: [{val_acc: max}, {latency_ms: max}]", "latency_ms can only be minimised"),
        ("objectives: [{latency_ms: min}, {val_acc: max}]", "the first must be {val_acc: max}"),
        ("objectives: [val_acc, val_acc]", "val_acc is given twice"),
        ("objectives: val_acc", "give a list"),
        (TWO + "latency_device: tpu", "latency_device: unknown 'tpu'"),
        (TWO + "scheduler: hyperband", "scheduler hyperband with 2 objectives"),
        (TWO + "scheduler: pbt", "scheduler pbt with 2 objectives"),
        (TWO + "searcher: cmaes", "searcher cmaes with 2 objectives: it models one"),
        ("scheduler: {asha: {rungs_by: pareto}}", "this space has one"),
        (TWO + "scheduler: {asha: {rungs_by: latency}}", "rungs_by must be pareto or val_acc"),
    ],
)
def test_bad_objectives_are_refused_with_the_reason(tmp_path, capsys, extra, message):
    code, _, err = cli(capsys, "spaces", str(tiny(tmp_path, extra + "\n")))
    assert code == 2 and message in err, err
    assert "Traceback" not in err


def test_a_point_to_try_first_gives_every_searched_key(tmp_path, capsys):
    text = tiny(tmp_path).read_text().replace(", image_size: 48}", "}")
    (tmp_path / "space.yaml").write_text(text)
    code, _, err = cli(capsys, "spaces", str(tmp_path / "space.yaml"))
    assert code == 2 and "points_to_evaluate[0] leaves image_size unset" in err, err


def test_front_ranks_put_on_the_front_what_optuna_puts_in_best_trials():
    import random

    import optuna

    rng = random.Random(0)
    # Ties included: a step of one photo on val_acc, latencies shared by a network and size.
    points = [(rng.randrange(20) / 20, float(rng.randrange(8))) for _ in range(60)]
    study = optuna.create_study(directions=["maximize", "minimize"])
    for point in points:
        trial = study.ask()
        study.tell(trial, list(point))
    optuna_front = {t.number for t in study.best_trials}
    ranks = front_ranks(points, ("max", "min"))
    assert {i for i, r in enumerate(ranks) if r == 1} == optuna_front
    # Each later front is the front of what the earlier ones leave.
    second = [i for i, r in enumerate(ranks) if r == 2]
    rest = [i for i, r in enumerate(ranks) if r >= 2]
    sub = front_ranks([points[i] for i in rest], ("max", "min"))
    assert [rest[j] for j, r in enumerate(sub) if r == 1] == second


def test_pareto_rungs_keep_a_fast_model_that_accuracy_alone_would_stop():
    rungs = ParetoASHA(["val_acc", "latency_ms"], ["max", "min"], max_t=4, grace_period=1,
                       reduction_factor=2)  # fmt: skip
    assert rungs.milestones == [1, 2]

    def at(trial_id: str, epoch: int, acc: float, ms: float) -> str:
        trial = SimpleNamespace(trial_id=trial_id)
        return rungs.on_trial_result(
            None, trial, {"epoch": epoch, "val_acc": acc, "latency_ms": ms}
        )

    assert at("a", 1, 0.90, 10.0) == "CONTINUE"  # the first at a rung
    assert at("b", 1, 0.80, 20.0) == "STOP"  # dominated by a
    assert at("c", 1, 0.60, 2.0) == "CONTINUE"  # less accurate, but the fastest: on the front
    assert at("d", 1, 0.85, 12.0) == "STOP"  # on the second front, outside the top half
    assert at("a", 2, 0.92, 10.0) == "CONTINUE"
    assert at("a", 3, 0.93, 10.0) == "CONTINUE"  # between rungs
    assert at("c", 2, 0.50, 2.0) == "CONTINUE"  # still on the rung's front
    assert at("e", 1, 0.80, 8.0) == "CONTINUE"  # between a and c on the front: kept
    # Off the front, by ASHA's share: a later front's ends go on, then its sparsest
    # stretch. Front 1 is one point; front 2 five; kept 4 of 7.
    best, worst = (0.95, 0.3), (0.1, 20.0)
    ends = [(0.9, 10.0), (0.2, 0.4)]
    assert rungs.keeps((0.55, 3.0), [best, worst, *ends, (0.89, 9.8), (0.88, 9.6)])
    assert not rungs.keeps((0.89, 9.8), [best, worst, *ends, (0.55, 3.0), (0.88, 9.6)])
    # On val_acc alone the same search stops c at its first rung.
    space = load_space_of(TWO + "scheduler: {asha: {rungs_by: val_acc}}\n")
    plain = adapter.make_scheduler(space.strategy, space.budget, space)
    assert not isinstance(plain, ParetoASHA)
    decided = []
    for trial_id, acc in (("a", 0.90), ("b", 0.80), ("c", 0.60)):
        trial = SimpleNamespace(trial_id=trial_id)
        plain.on_trial_add(None, trial)
        result = {"epoch": 1, "val_acc": acc, "latency_ms": 2.0}
        decided.append(plain.on_trial_result(None, trial, result))
    assert decided == ["CONTINUE", "STOP", "STOP"]
    space = load_space_of(TWO)
    assert isinstance(adapter.make_scheduler(space.strategy, space.budget, space), ParetoASHA)
    assert "rungs by Pareto front" in adapter.describe(space.strategy, space.budget, space)
    fifo = load_space_of(TWO + "scheduler: fifo\n")
    assert not adapter.pareto_rungs(fifo.strategy, fifo)
    made = adapter.make_scheduler(fifo.strategy, fifo.budget, fifo)
    assert type(made).__name__ == "FIFOScheduler"


def load_space_of(extra: str):
    import yaml

    from tuner.spaces._spaces import parse_space

    return parse_space(yaml.safe_load(TINY_SPACE + extra), name="t")


def board_of(rows: list[tuple[float, float, bool]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"rank": i + 1, "val_acc": a, "latency_ms": ms, "pareto": p}
         for i, (a, ms, p) in enumerate(rows)]
    )  # fmt: skip


def test_pick_exports_the_most_accurate_front_trial_meeting_the_constraints():
    board = board_of([(0.95, 9.0, True), (0.94, 12.0, False), (0.90, 4.0, True),
                      (0.85, 1.5, True), (0.80, 1.0, False)])  # fmt: skip
    assert pick_rank(board, "latency_ms<=9") == 1
    assert pick_rank(board, "latency_ms<9") == 3
    assert pick_rank(board, "latency_ms <= 5, val_acc>=0.86") == 3
    assert pick_rank(board, "latency_ms<2") == 4  # rank 5 is faster but not on the front
    from tuner._errors import UsageError

    with pytest.raises(
        UsageError, match=r"latency_ms<1\.4: on the front latency_ms runs 1\.5 to 9"
    ):
        pick_rank(board, "latency_ms<1.4")
    for bad, why in [("latency_ms=5", "cannot read"), ("speed<3", "unknown key 'speed'"),
                     ("params_m<3", "did not measure params_m")]:  # fmt: skip
        with pytest.raises(UsageError, match=why):
            pick_rank(board, bad)
    with pytest.raises(UsageError, match="optimised val_acc alone"):
        pick_rank(board.drop(columns="pareto"), "latency_ms<3")
    assert [str(c) for c in Constraint.parse("latency_ms<=5,params_m>1e-1")] == [
        "latency_ms<=5",
        "params_m>0.1",
    ]


@pytest.mark.slow
def test_latency_is_measured_once_per_network_and_size_and_a_bad_cache_is_measured_again(
    tmp_path, monkeypatch
):
    from trainables import CostSpec, deploy_cost, use_cache_dir
    from trainables.models import _latency

    use_cache_dir(tmp_path / "cache")
    measured: list[int] = []
    real = _latency.cpu_latency_ms

    def counting(deployed, size):
        measured.append(size)
        return real(deployed, size)

    monkeypatch.setattr(_latency, "cpu_latency_ms", counting)
    first = deploy_cost("efficientnet_lite0", 32, 5, CostSpec())
    assert first["latency_ms"] > 0 and first["params_m"] == pytest.approx(3.377, abs=0.01)
    assert deploy_cost("efficientnet_lite0", 32, 5, CostSpec()) == first
    assert measured == [32]
    deploy_cost("efficientnet_lite0", 48, 5, CostSpec())
    assert measured == [32, 48]
    # A cache file that is not this tool's (garbage, a FIFO): measured again, replaced.
    (cached,) = [p for p in (tmp_path / "cache" / "latency").iterdir()
                 if json.loads(p.read_text())["key"]["image_size"] == 32]  # fmt: skip
    cached.write_text('{"key": {}, "latency_ms": -1}')
    assert deploy_cost("efficientnet_lite0", 32, 5, CostSpec())["latency_ms"] > 0
    cached.write_text("[1, 2]")
    assert deploy_cost("efficientnet_lite0", 32, 5, CostSpec())["latency_ms"] > 0
    cached.unlink()
    os.mkfifo(cached)
    assert deploy_cost("efficientnet_lite0", 32, 5, CostSpec())["latency_ms"] > 0
    assert measured == [32, 48, 32, 32, 32] and cached.is_file()
    assert "latency_ms" not in deploy_cost("efficientnet_lite0", 32, 5, CostSpec(latency=False))


@pytest.mark.parametrize("cost", ["latency_ms", "params_m"])
def test_a_cost_that_is_not_a_number_in_a_result_is_refused(tmp_path, cost):
    from conftest import experiment_at

    from trainables import FileRefused

    trial = tmp_path / "exp" / "trial_abc"
    trial.mkdir(parents=True)
    line = {"epoch": 1, "val_acc": 0.5, cost: "fast"}
    (trial / "result.json").write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(FileRefused, match=f"{cost} is str, not a result Ray Tune wrote"):
        experiment_at(tmp_path / "exp").reports("abc")


@pytest.mark.slow
def test_cuda_latency_without_a_gpu_is_refused_before_any_trial(tmp_path, small_flowers):
    done = cli_search(tiny(tmp_path), small_flowers, tmp_path / "r", "g", "--latency-device",
                      "cuda", "--gpus-per-trial", "0")  # fmt: skip
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--latency-device cuda times each trial's model on its GPU" in done.stderr
    assert "Traceback" not in done.stderr


def fake_torchvision_weights(hub: Path) -> None:
    """Random ImageNet-shaped weights where torch hub looks, for the torchvision networks
    (this machine cannot download the real ones)."""
    from trainables import build_model, pretrained_weights_file

    os.environ["TORCH_HOME"] = str(hub)
    try:
        for name in ("mobilenet_v3_small", "mobilenet_v3_large", "resnet18"):
            path = pretrained_weights_file(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            torch.save(build_model(name, 1000, pretrained=False).state_dict(), path)
    finally:
        del os.environ["TORCH_HOME"]


@pytest.mark.slow
def test_a_two_objective_search_of_the_mobile_space_gives_a_front_to_pick_from(flowers, tmp_path):
    # 30 photos a class: val_acc in steps of ~4 points, fine enough for a front.
    photos = make_subset(flowers, tmp_path / "photos", 30)
    hub = tmp_path / "torch"
    fake_torchvision_weights(hub)
    env = {"TORCH_HOME": str(hub)}
    storage = tmp_path / "r"
    found = cli_search("mobile", photos, storage, "m", "--num-samples", "10",
                       "--max-epochs", "2", env=env, timeout=600)  # fmt: skip
    assert found.returncode == 0, found.stdout[-3000:] + found.stderr[-3000:]
    assert "(rungs by Pareto front)" in found.stdout
    assert "val_acc (max) against latency_ms (min, cpu)" in found.stdout
    board = assert_study_tells_the_leaderboard(storage / "m")
    assert {"pareto", "latency_ms", "params_m"} <= set(board.columns)
    assert board["latency_ms"].notna().all() and (board["latency_ms"] > 0).all()
    front = board[board["pareto"]].sort_values("latency_ms")
    assert len(front) >= 3, board[["status", "val_acc", "latency_ms", "model", "image_size"]]
    assert front["val_acc"].is_monotonic_increasing  # accuracy costs latency along it
    assert (front["status"] == "completed").all()
    # Ranked by front, then val_acc: the front first, most accurate first.
    assert list(board["pareto"][: len(front)]) == [True] * len(front)
    assert board["val_acc"][: len(front)].is_monotonic_decreasing
    # One latency per network and size.
    assert (board.groupby(["model", "image_size"])["latency_ms"].nunique() == 1).all()

    # Optuna's front is the leaderboard's.
    from conftest import experiment_at

    from tuner.search._study import load_study

    study = load_study(experiment_at(storage / "m"))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert {t.user_attrs["tune_trial_id"] for t in study.best_trials} == set(front["trial_id"])

    code, only, _ = run_cli("leaderboard", "m", "--storage", str(storage), "--pareto",
                            "--format", "json")  # fmt: skip
    assert code == 0 and {r["trial_id"] for r in json.loads(only)} == set(front["trial_id"])

    # --pick: under the front's second-lowest latency, the most accurate front trial there.
    limit = float(front["latency_ms"].iloc[1])
    chosen = front[front["latency_ms"] <= limit].sort_values("val_acc").iloc[-1]
    out = tmp_path / "picked"
    code, said, err = run_cli("export", "m", "--storage", str(storage), "--pick",
                              f"latency_ms<={limit}", "--output", str(out))  # fmt: skip
    assert code == 0, said + err
    assert json.loads((out / "config.json").read_text())["trial_id"] == chosen["trial_id"]
    code, _, err = run_cli("export", "m", "--storage", str(storage), "--pick",
                           f"latency_ms<{front['latency_ms'].min()}",
                           "--output", str(tmp_path / "none"))  # fmt: skip
    assert code == 2 and "no trial on the front" in err and not (tmp_path / "none").exists()

    code, said, err = run_cli("report", "m", "--storage", str(storage))
    assert code == 0, said + err
    assert (storage / "m" / "report" / "pareto.png").stat().st_size > 10_000
    code, compared, _ = run_cli("compare", "m", "--storage", str(storage), "--format", "json")
    (summary,) = json.loads(compared)
    assert summary["objectives"] == "val_acc max, latency_ms min"
    assert summary["front"].count("@") == len(front)


@pytest.mark.slow
def test_a_two_objective_search_survives_a_kill_9_and_resume(small_flowers, tmp_path):
    space = tiny(tmp_path, TWO, num=4, epochs=4)
    storage = tmp_path / "r"
    exp = storage / "s"
    kill_9_and_resume(space, small_flowers, storage, "s")
    board = assert_study_tells_the_leaderboard(exp)
    assert len(board) == 4 and board["latency_ms"].notna().all()
    assert board["pareto"].any()
    assert json.loads((exp / "tuner.json").read_text())["space"]["objectives"] == [
        {"val_acc": "max"},
        {"latency_ms": "min"},
    ]
    # A later search of the same objectives starts from its trials, values and all.
    warm = cli_search(space, small_flowers, storage, "w", "--warm-start", "s",
                      "--num-samples", "1", "--max-epochs", "1")  # fmt: skip
    assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]
    assert "Warm start from s: 4 of its 4 trials taken" in warm.stdout
    from conftest import experiment_at

    from tuner.search._study import WARM_ATTR, load_study

    study = load_study(experiment_at(storage / "w"))
    taken = [t for t in study.trials if WARM_ATTR in t.user_attrs]
    completed = board[board["status"] == "completed"]
    got = sorted(tuple(t.values) for t in taken if t.state.name == "COMPLETE")
    want = sorted((row.val_acc, row.latency_ms) for row in completed.itertuples())
    assert len(got) == len(want)
    assert all(g == pytest.approx(w) for g, w in zip(got, want, strict=True))


def test_front_options_on_a_search_of_one_objective_are_refused(finished, tmp_path):
    _, storage, _ = finished
    code, _, err = run_cli("leaderboard", "e2e", "--storage", str(storage), "--pareto")
    assert code == 2 and "optimised val_acc alone" in err
    code, _, err = run_cli("export", "e2e", "--storage", str(storage), "--pick", "latency_ms<5",
                           "--output", str(tmp_path / "x"))  # fmt: skip
    assert code == 2 and "optimised val_acc alone" in err and not (tmp_path / "x").exists()
    code, _, err = run_cli("export", "e2e", "--storage", str(storage), "--pick", "latency_ms<5",
                           "--rank", "2", "--output", str(tmp_path / "x"))  # fmt: skip
    assert code == 2 and "give --pick or --rank, not both" in err


def test_a_warm_start_of_two_objectives_ignores_trials_that_measured_no_latency(
    finished, small_flowers, tmp_path
):
    import shutil

    _, storage, _ = finished
    copy = tmp_path / "r"
    shutil.copytree(storage / "e2e", copy / "e2e")
    done = cli_search(tiny(tmp_path), small_flowers, copy, "w", "--warm-start", "e2e")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "with no latency_ms (its search did not measure it)" in done.stdout, done.stdout
    assert "no trial of e2e fits this space" in done.stderr
    assert not (copy / "w").exists()
