"""End to end, as a user runs it: `python -m tuner ...` over real photos with real Ray Tune."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from conftest import (
    METRIC_KEYS,
    STATE_OF_STATUS,
    assert_study_tells_the_leaderboard,
    cli,
    cli_search,
    experiment_at,
    free_port,
    read_board,
)
from synthetic import FakeTrial, write_experiment

from tuner.cli import main
from tuner.results._leaderboard import _BASE_COLUMNS


def test_search_writes_the_results_layout(finished):
    proc, _, exp = finished
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        "split.json",
        "tuner.json",
        "leaderboard.csv",
        "leaderboard.parquet",
        "best_config.json",
    ):
        assert (exp / name).is_file(), name
    split = json.loads((exp / "split.json").read_text())
    assert split["classes"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 60
    assert len(split["test"]) == 10  # --test-fraction 0.15 of 12 per class: 2 each
    assert "Best trial" in proc.stdout and "leaderboard.csv" in proc.stdout


def test_leaderboard_ranks_every_trial_and_asha_stopped_some(finished):
    _, _, exp = finished
    board = read_board(exp / "leaderboard.csv")
    assert list(board.columns[: len(_BASE_COLUMNS)]) == _BASE_COLUMNS
    assert {"lr", "batch_size", "freeze_depth", "aug_strength", "checkpoint"} <= set(board.columns)
    assert len(board) == 5 and board["trial_id"].is_unique
    assert list(board["rank"]) == [1, 2, 3, 4, 5]
    assert board["val_acc"].is_monotonic_decreasing
    assert board["stopped_early"].any(), board[["status", "epochs"]]
    stopped = board[board["stopped_early"]]
    assert (stopped["epochs"] < 3).all() and (stopped["status"] == "stopped_early").all()
    assert (board.loc[board["status"] == "completed", "epochs"] == 3).all()
    best = json.loads((exp / "best_config.json").read_text())
    assert best["trial_id"] == board.loc[0, "trial_id"]
    assert best["val_acc"] == pytest.approx(board.loc[0, "val_acc"])
    # The best checkpoint exists and holds the epoch the leaderboard names.
    state = torch.load(f"{best['checkpoint']}/checkpoint.pt", weights_only=True)
    assert state["epoch"] == board.loc[0, "best_epoch"]
    # At the end each trial keeps its two best checkpoints and its latest, no more.
    for trial_dir in exp.glob("trial_*"):
        assert 1 <= len(list(trial_dir.glob("checkpoint_*"))) <= 3, trial_dir
    assert all(Path(path).is_dir() for path in board["checkpoint"])
    # The seeded classic point was tried first, as given.
    first = read_board(exp / "leaderboard.csv").sort_values("trial_id")
    assert ((first["lr"] == 1e-2) & (first["freeze_depth"] == 3)).any()


def test_results_are_a_ray_tune_experiment(finished):
    from ray.tune import ExperimentAnalysis

    _, _, exp = finished
    analysis = ExperimentAnalysis(str(exp))
    assert len(analysis.trials) == 5
    df = next(iter(analysis.trial_dataframes.values()))
    assert set(df.columns) >= METRIC_KEYS


def test_later_trials_run_in_the_worker_processes_of_ended_ones(finished):
    _, _, exp = finished
    experiment = experiment_at(exp)
    pids = {r["pid"] for t in experiment.trial_ids() for r in experiment.reports(t)}
    assert len(pids) < 5, pids  # 5 trials, at most 2 at a time: no new process per trial


def test_leaderboard_command_formats(finished, tmp_path, capsys):
    _, storage, _ = finished
    base = ("leaderboard", "e2e", "--storage", str(storage))
    code, out, err = cli(capsys, *base, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    code, out, _ = cli(capsys, *base, "--top", "2")
    same, table = out.strip().split("\n\n")[:2]  # then the refits and ensembles made, if any
    assert code == 0 and len(table.splitlines()) == 3  # header + 2
    # The configuration every trial shares is listed once, not as columns.
    assert same.startswith("Same in every trial: model=efficientnet_lite0, pretrained=True")
    header = table.splitlines()[0].split()
    assert "model" not in header and "lr" in header and "momentum" not in header
    assert "test_acc" in header
    _, out, _ = cli(capsys, *base, "--format", "markdown", "--top", "1")
    assert out.startswith("| rank | trial_id | status |")
    path = tmp_path / "board.parquet"
    code, _, err = cli(capsys, *base, "--format", "parquet", "--output", str(path))
    assert code == 0, err
    table = pq.read_table(path)
    types = {f.name: f.type for f in table.schema}
    assert pa.types.is_float64(types["val_acc"]) and pa.types.is_int64(types["batch_size"])
    assert pa.types.is_boolean(types["stopped_early"])
    for column in ("trial_id", "status", "model", "checkpoint"):
        assert pa.types.is_string(types[column]) or pa.types.is_large_string(types[column])
    assert pd.read_parquet(path)["rank"].tolist() == [1, 2, 3, 4, 5]


def test_search_refuses_an_existing_name_and_says_what_to_do_next(small_flowers, tmp_path, capsys):
    storage = tmp_path / "r"  # a synthetic experiment whose trials all ended
    exp = write_experiment(storage, "e2e", [FakeTrial("t", epochs=[(0.8, 0.5)])], max_epochs=1)
    (exp / "best_config.json").write_text("{}")
    args = ("--data", str(small_flowers), "--storage", str(storage), "--name", "e2e")
    code, _, err = cli(capsys, "search", "--space", "smoke", *args)
    assert code == 2 and "Traceback" not in err
    # Finished: its results, not a resume that would find nothing to do.
    assert "already exists" in err and "is finished" in err and "tuner leaderboard e2e" in err
    assert "resume" not in err
    # Not finished (no leaderboard written yet): resume it.
    (exp / "best_config.json").unlink()
    code, _, err = cli(capsys, "search", "--space", "smoke", *args)
    assert code == 2 and "already exists" in err and "tuner resume e2e" in err


def test_default_space_without_cached_weights_exits_2_before_ray(
    tmp_path, small_flowers, capsys, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    args = ("--data", str(small_flowers), "--storage", str(tmp_path / "r"), "--name", "now")
    code, _, err = cli(capsys, "search", "--space", "default", *args)
    assert code == 2, err
    assert "resnet18-f37072fd.pth" in err
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert "--space lite" in err and "pretrained: false" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "now").exists()


@pytest.mark.slow
def test_default_space_runs_with_weights_in_torch_home(tmp_path, small_flowers):
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), checkpoints / "resnet18-f37072fd.pth")
    proc = cli_search(
        "default",
        small_flowers,
        tmp_path / "r",
        "d1",
        "--num-samples",
        "1",
        "--max-epochs",
        "1",
        env={"TORCH_HOME": str(tmp_path / "torch")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    board = read_board(tmp_path / "r" / "d1" / "leaderboard.csv")
    assert len(board) == 1 and board.loc[0, "model"] == "resnet18"
    assert board.loc[0, "status"] == "completed" and board.loc[0, "lr"] == 1e-3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "nope"], "unknown space 'nope'"),
        (["--space", "smoke", "--num-samples", "0"], "must be >= 1"),
        (["--space", "smoke", "--name", "../x"], "invalid experiment name"),
        (["--space", "smoke", "--gpus-per-trial", "1.5"], "whole number"),
        (["--space", "smoke", "--data", "/nonexistent/photos"], "does not exist"),
        (["--space", "smoke", "--test-fraction", "-0.1"], "test fraction must be in [0, 0.5)"),
        (["--space", "smoke", "--test-fraction", "0.5"], "test fraction must be in [0, 0.5)"),
        (["--space", "smoke", "--test-fraction", "x"], "invalid float value"),
    ],
)
def test_bad_search_input_exits_2_with_one_message(tmp_path, capsys, args, message):
    code, _, err = cli(capsys, "search", "--storage", str(tmp_path), *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_spaces_command_lists_and_shows(capsys):
    assert main(["spaces"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("default", "resnet", "lite", "smoke"))
    assert main(["spaces", "lite"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["model"] == "efficientnet_lite0"


def test_the_optuna_study_is_persisted_for_optuna_tools(finished):
    from tuner.search._study import load_study

    _, _, exp = finished
    study = load_study(experiment_at(exp))
    board = read_board(exp / "leaderboard.csv")
    assert len(study.trials) == len(board)
    completed = board[board["status"] == "completed"]
    assert study.best_value == pytest.approx(completed["val_acc"].max())
    assert {"lr", "batch_size", "freeze_depth", "optimizer"} <= set(study.best_params)


def test_test_searches_keep_their_caches_out_of_the_users_home(finished, own_feature_cache):
    """The e2e search decoded its photos, and its frozen trials (pretrained Lite0) stored
    activations, in the test run's own cache folder, which every test search inherits as
    ``$TUNER_CACHE``."""
    proc, _, _ = finished
    assert proc.returncode == 0
    assert list((own_feature_cache / "features").glob("*-plain.npy"))
    assert list((own_feature_cache / "decoded").glob("*/pixels.u8"))


def test_the_top_trials_are_scored_once_on_the_held_out_test_split(finished, capsys):
    proc, storage, exp = finished
    split = json.loads((exp / "split.json").read_text())
    test_files = {p for p, _ in split["test"]}
    assert not test_files & {p for p, _ in split["train"] + split["val"]}
    board = read_board(exp / "leaderboard.csv")
    scored = board[board["test_acc"].notna()]
    # Every trial with a checkpoint is among the top 5 of 5: each scored on the 10 test photos.
    assert len(scored) == int((board["checkpoint"].fillna("") != "").sum()) >= 1
    assert ((scored["test_acc"] * 10).round(6) % 1 == 0).all()  # k of 10 photos right
    assert "Test split (photos no trial saw): rank 1" in proc.stdout
    # The scoring is announced, so the wait at the end is explained: one pass for all.
    n = len(scored)
    ranks = f"ranks 1-{n}" if n > 1 else "rank 1"
    assert f"Scoring {ranks} of {len(board)} on the 10 test photos\n" in proc.stdout
    # Each val_acc comes with its binomial standard error over the validation photos.
    n_val, acc = len(split["val"]), board["val_acc"]
    assert board["val_acc_se"].to_numpy() == pytest.approx(((acc * (1 - acc)) / n_val) ** 0.5)
    # `evaluate` without --data scores the same test split and agrees with the leaderboard.
    code, out, err = cli(capsys, "evaluate", "e2e", "--storage", str(storage))
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["n_images"] == len(test_files) == 10
    assert metrics["accuracy"] == pytest.approx(board.loc[0, "test_acc"])


@pytest.mark.slow
def test_a_time_budget_ends_the_search_cleanly_and_lists_trials_that_never_started(
    small_flowers, tmp_path
):
    """Two trials may run at once but each needs both CPUs: the second waits, pending,
    while the first trains, until the time budget ends the search. (40 s: with 25 s, a
    machine loaded by other tests ended it once before the first trial's first epoch.)"""
    from conftest import TINY_SPACE

    space = tmp_path / "long.yaml"
    space.write_text(TINY_SPACE.replace("max_epochs: 3", "max_epochs: 200"))
    proc = cli_search(
        space, small_flowers, tmp_path / "r", "tb", "--time-budget", "40",
        "--max-concurrent", "2", "--cpus-per-trial", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    board = read_board(tmp_path / "r" / "tb" / "leaderboard.csv")
    assert set(board["status"]) <= {"completed", "stopped_early", "not_started"}
    waiting = board[board["status"] == "not_started"]
    assert len(waiting) >= 1 and (waiting["epochs"] == 0).all()
    assert not waiting["stopped_early"].any()
    # Ranked after every trial that reported, and counted in the summary.
    assert waiting["rank"].min() > board.loc[board["status"] != "not_started", "rank"].max()
    assert f"{len(waiting)} not_started" in proc.stdout


def test_the_optuna_study_tells_what_the_leaderboard_tells(finished):
    """PRUNED exactly where ASHA stopped a trial; every reported epoch an intermediate value."""
    _, _, exp = finished
    board = assert_study_tells_the_leaderboard(exp)
    assert "stopped_early" in set(board["status"])


def test_optuna_dashboard_shows_the_same_trials_by_state(finished):
    """A real optuna-dashboard server over the journal, asked as its web page asks."""
    import subprocess
    import sys
    import time
    import urllib.request
    from collections import Counter
    from pathlib import Path

    _, _, exp = finished
    board = read_board(exp / "leaderboard.csv")
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen(
        [str(dashboard), str(exp / "optuna_journal.log"), "--host", "127.0.0.1",
         "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as reply:
                    studies = json.load(reply)["study_summaries"]
                break
            except OSError:
                assert time.monotonic() < deadline, "optuna-dashboard did not answer"
                time.sleep(0.5)
        (study,) = [s for s in studies if s["study_name"] == "e2e"]
        with urllib.request.urlopen(f"{base}/api/studies/{study['study_id']}", timeout=30) as r:
            trials = json.load(r)["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(trials) == len(board) == 5
    shown = Counter(t["state"].upper() for t in trials)
    expected = Counter(STATE_OF_STATUS[status] for status in board["status"])
    assert shown == expected
    for trial in trials:  # one intermediate value per reported epoch
        epochs = {int(v["step"]) for v in trial["intermediate_values"]}
        assert epochs == set(range(1, len(epochs) + 1))


def test_tensorboard_event_files_hold_every_trials_val_acc(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, exp = finished
    board = read_board(exp / "leaderboard.csv")
    assert len(board) == 5  # every trial of the tiny space, so the loop below checks each
    for trial_id, epochs in zip(board["trial_id"], board["epochs"], strict=True):
        (events,) = list((exp / f"trial_{trial_id}").glob("events.out.tfevents.*"))
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        scalars = accumulator.Scalars("ray/tune/val_acc")
        assert len(scalars) == epochs, trial_id
        assert all(0.0 <= s.value <= 1.0 for s in scalars)


def test_the_search_says_how_long_it_will_take(finished):
    proc, _, _ = finished
    # 5 trials x <= 3 epochs, grace 1, reduction 2: 5 + 2.5 x 1 + 1.25 x 1 trial-epochs.
    assert "(~9 trial-epochs)" in proc.stdout
    assert "Estimate: about" in proc.stdout and "--time-budget SECONDS" in proc.stdout


def test_the_estimate_scales_the_measured_epoch_time_by_the_work_left():
    from tuner.engine._strategy import asha_trial_epochs
    from tuner.search._estimate import TimeEstimate

    assert asha_trial_epochs(24, 12, 1, 2) == pytest.approx(
        24 * (1 + 1 / 2 + 2 / 4 + 4 / 8) + 24 / 16 * 4
    )
    lines: list[str] = []
    estimate = TimeEstimate(trial_epochs=40, concurrent=2, say=lines.append)
    for seconds in (10.0, 30.0, 20.0):
        estimate.on_trial_result(0, [], None, {"epoch_time_s": seconds})
    assert len(lines) == 1  # once, after the third epoch
    # 37 trial-epochs left at a median 20 s, two at a time: 370 s = 6 min.
    assert "6 min left (20 s per trial-epoch, 2 at once, ~40 trial-epochs" in lines[0]


def test_the_estimate_counts_epochs_by_the_clock_and_the_start_up_of_trials_to_come():
    """An epoch is the time between two results of a trial (validation and checkpoint
    included), a start-up the time to a trial's first result less its epoch; each trial
    not started yet adds one."""
    from types import SimpleNamespace

    from tuner.search._estimate import TimeEstimate

    now = [0.0]
    lines: list[str] = []
    estimate = TimeEstimate(20, 2, lines.append, trials=6, clock=lambda: now[0])
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    estimate.on_trial_start(0, [], a)
    estimate.on_trial_start(0, [], b)
    for at, trial in ((35.0, a), (45.0, b), (47.0, a)):  # start-ups 30 and 40 s; a gap of 12 s
        now[0] = at
        estimate.on_trial_result(0, [], trial, {"epoch_time_s": 5.0})
    # (17 trial-epochs x 12 s + 4 trials x 35 s) / 2 = 172 s left, 219 s in all.
    expected = [
        "Estimate: about 4 min in all, 3 min left (12 s per trial-epoch and 35 s to start a "
        "trial, 2 at once, ~20 trial-epochs expected). Shorter: --num-samples, --max-epochs, "
        "--time-budget SECONDS, or a smaller space."
    ]
    assert lines == expected
    # A resume (a new callback given the saved state) counts on from there.
    resumed = TimeEstimate(20, 2, lines.append, trials=6, clock=lambda: now[0])
    resumed.set_state(estimate.get_state())
    assert resumed.line(47.0) == expected[0]


def test_an_estimate_saved_by_an_earlier_version_resumes():
    """Tune restores the callbacks it pickled with the run; an earlier version's estimate
    had fewer attributes."""
    from tuner.search._estimate import TimeEstimate

    lines: list[str] = []
    old = {"trial_epochs": 10.0, "concurrent": 1, "_epoch_seconds": [4.0], "_started": 0.0,
           "_last": 0.0}  # fmt: skip
    estimate = TimeEstimate.__new__(TimeEstimate)
    estimate.__setstate__(old)
    estimate.say = lines.append
    for _ in range(2):  # the third epoch with the one it had measured
        estimate.on_trial_result(0, [], None, {"epoch_time_s": 4.0})
    assert len(lines) == 1 and "28 s left (4 s per trial-epoch, 1 at once, ~10 trial-" in lines[0]


def test_the_estimate_pickles_after_ray_swapped_print(monkeypatch, capsys):
    """Tune pickles its callbacks; Ray replaces builtins.print once a progress bar reaches
    the driver, after which the original ``print`` no longer pickles by reference."""
    import builtins

    from ray import cloudpickle

    from tuner.search._estimate import TimeEstimate

    estimate = TimeEstimate(trial_epochs=4, concurrent=1, say=print)
    monkeypatch.setattr(builtins, "print", lambda *a, **k: None)
    restored = cloudpickle.loads(cloudpickle.dumps(estimate))
    monkeypatch.undo()
    for seconds in (1.0, 1.0, 1.0):
        restored.on_trial_result(0, [], None, {"epoch_time_s": seconds})
    assert "Estimate: about" in capsys.readouterr().out


def test_resume_of_a_finished_search_says_so_without_starting_ray(finished, capsys):
    _, storage, _ = finished
    code, out, err = cli(capsys, "resume", "e2e", "--storage", str(storage))
    assert code == 0, err
    assert "e2e is finished" in out and "tuner leaderboard e2e" in out
    assert "Resuming" not in out and "Trials:" not in out


def test_resume_writes_the_leaderboard_a_driver_killed_at_the_end_did_not(finished, tmp_path):
    """Killed after Ray's last save, before the leaderboard: resume writes it (no Ray)."""

    from conftest import run_cli

    _, _, exp = finished
    copy = tmp_path / "results"
    shutil.copytree(exp, copy / "e2e", ignore=shutil.ignore_patterns(".writer.*"))
    expected = read_board(copy / "e2e" / "leaderboard.csv")
    for name in ("leaderboard.csv", "leaderboard.parquet", "best_config.json"):
        (copy / "e2e" / name).unlink()
    code, out, err = run_cli("resume", "e2e", "--storage", str(copy))
    assert code == 0, out + err
    assert "writing its leaderboard" in out and "Resuming" not in out
    written = read_board(copy / "e2e" / "leaderboard.csv")
    assert written["trial_id"].tolist() == expected["trial_id"].tolist()
    assert (copy / "e2e" / "best_config.json").is_file()


def test_top_trials_over_the_weight_budget_are_scored_in_windows_with_the_time_left(
    finished, tmp_path, monkeypatch
):
    """Scored one window at a time (a budget under one model's weights), the top trials get
    the test_acc the one pass gave them, and each pass after the first says the time left."""
    import tuner.results._together as together
    from tuner.results import build_leaderboard, score_top_trials

    _, _, exp = finished
    copy = tmp_path / "results"
    shutil.copytree(exp, copy / "e2e", ignore=shutil.ignore_patterns(".writer.*"))
    (copy / "e2e" / "test_scores.json").unlink()
    experiment = experiment_at(copy / "e2e")
    board = build_leaderboard(experiment)
    expected = read_board(exp / "leaderboard.csv").set_index("trial_id")["test_acc"].dropna()
    monkeypatch.setattr(together, "MODEL_BYTES", 1)
    said: list[str] = []
    scores = score_top_trials(experiment, board, 5, said.append)
    assert scores == pytest.approx(expected.to_dict())
    assert said[0] == f"Scoring rank 1 of {min(5, len(board))} on the 10 test photos"
    assert len(said) == len(expected) >= 2
    left = r"Scoring rank 2 of \d+ on the 10 test photos \(about \d+ s left\)"
    assert re.fullmatch(left, said[1]), said
    # Scored again only where a best checkpoint changed: here none did.
    said.clear()
    assert score_top_trials(experiment, board, 5, said.append) == scores and said == []


def test_the_activation_reserve_grows_with_the_photos_up_to_the_budget():
    """A search of a few photos asks the cache disk for what their activations can take,
    not for the 8 GiB budget (a disk with less free refused every small search)."""
    from trainables.train._features import FEATURE_DISK_BUDGET
    from tuner.search._prepare import activation_bytes_per_decoded_byte, feature_reserve
    from tuner.spaces import load_space

    space = load_space("smoke")
    sets = len([d for d in space.possible_values("freeze_depth") if d]) * len(
        space.possible_values("aug_strength")
    )
    small = feature_reserve(space, 2 << 20)
    per_byte = activation_bytes_per_decoded_byte(space)  # Lite0: 0.5 x 4 views x 2 bytes
    assert per_byte == 4.0
    assert sets >= 2 and small == sets * int(per_byte * (2 << 20)) < 1 << 30
    assert feature_reserve(space, 10 << 30) == FEATURE_DISK_BUDGET
