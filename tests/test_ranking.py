"""The leaderboard's ranking rules and statuses, and `list`, on synthetic experiment
folders (tests/synthetic.py): fast, no search."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest
from conftest import read_board, run_cli
from synthetic import FakeTrial, write_experiment

from tuner.results._leaderboard import build_leaderboard
from tuner.storage._experiment import Experiment
from tuner.storage._storage import Storage


def board_of(tmp_path, trials, **kwargs):
    write_experiment(tmp_path, "e", trials, **kwargs)
    return build_leaderboard(Experiment(Storage.parse(str(tmp_path)), "e"))


def test_statuses_come_from_ray_s_status_and_the_epochs_reported(tmp_path):
    board = board_of(tmp_path, [
        FakeTrial("full", epochs=[(0.5, 1.0), (0.6, 0.9), (0.7, 0.8)]),
        FakeTrial("cut", epochs=[(0.4, 1.1)]),
        FakeTrial("none"),  # a time budget ended it before its first epoch
        FakeTrial("nan", epochs=[(0.3, 1.2), (0.2, 9.9)], diverged_at=2),
        FakeTrial("live", status="RUNNING", epochs=[(0.45, 1.0)]),
        FakeTrial("bad", status="ERROR", epochs=[(0.9, 0.1)]),
    ], max_epochs=3)  # fmt: skip
    status = dict(zip(board["trial_id"], board["status"], strict=True))
    assert status == {"full": "completed", "cut": "stopped_early", "none": "not_started",
                      "nan": "diverged", "live": "running", "bad": "error"}  # fmt: skip
    row = board.set_index("trial_id")
    assert row.loc["cut", "stopped_early"] and not row.loc["full", "stopped_early"]
    assert row.loc["full", "epochs"] == 3 and row.loc["none", "epochs"] == 0
    # A diverged trial's val_acc is its best epoch before it diverged.
    assert row.loc["nan", "val_acc"] == pytest.approx(0.3)


def test_ranked_by_status_group_then_val_acc_then_the_lower_val_loss(tmp_path):
    board = board_of(tmp_path, [
        FakeTrial("error", status="ERROR", epochs=[(0.99, 0.01)]),
        FakeTrial("diverged", epochs=[(0.98, 0.02), (0.1, 9.0)], diverged_at=2),
        FakeTrial("pending", status="PENDING"),
        FakeTrial("running", status="RUNNING", epochs=[(0.97, 0.03)]),
        FakeTrial("tied_high_loss", epochs=[(0.8, 0.9)]),
        FakeTrial("tied_low_loss", epochs=[(0.8, 0.5)]),
        FakeTrial("best", epochs=[(0.85, 0.7)]),
        FakeTrial("not_started"),
    ], max_epochs=1)  # fmt: skip
    assert list(board["trial_id"]) == [
        "best", "tied_low_loss", "tied_high_loss",  # ended: val_acc, then val_loss
        "running", "pending",  # still going, however well
        "diverged", "error", "not_started",
    ]  # fmt: skip
    assert list(board["rank"]) == list(range(1, 9))


def test_the_best_epoch_is_the_latest_of_tied_epochs_whose_checkpoint_is_kept(tmp_path):
    trials = [
        FakeTrial("kept_both", epochs=[(0.8, 0.5), (0.6, 0.6), (0.8, 0.4)]),
        FakeTrial("kept_first", epochs=[(0.8, 0.5), (0.6, 0.6), (0.8, 0.4)], kept=[1, 2]),
        FakeTrial("kept_none", epochs=[(0.8, 0.5), (0.7, 0.6)], kept=[]),
    ]
    row = board_of(tmp_path, trials).set_index("trial_id")
    assert row.loc["kept_both", "best_epoch"] == 3
    assert row.loc["kept_both", "checkpoint"].endswith("trial_kept_both/checkpoint_000002")
    assert row.loc["kept_both", "val_loss"] == pytest.approx(0.4)
    assert row.loc["kept_first", "best_epoch"] == 1
    assert row.loc["kept_first", "checkpoint"].endswith("checkpoint_000000")
    # No checkpoint left: the latest best epoch, and no checkpoint to export.
    assert row.loc["kept_none", "best_epoch"] == 1 and row.loc["kept_none", "checkpoint"] == ""


def test_standard_error_from_the_validation_photos_and_test_acc_only_for_that_checkpoint(
    tmp_path,
):
    write_experiment(tmp_path, "e", [FakeTrial("t", epochs=[(0.75, 0.5), (0.8, 0.4)]),
                                     FakeTrial("u", epochs=[(0.5, 0.9), (0.6, 0.8)])],
                     n_val=48, max_epochs=2)  # fmt: skip
    exp = Experiment(Storage.parse(str(tmp_path)), "e")
    board = build_leaderboard(exp).set_index("trial_id")
    assert board.loc["t", "val_acc_se"] == pytest.approx(math.sqrt(0.8 * 0.2 / 48))
    scores = {
        "t": {"checkpoint": board.loc["t", "checkpoint"], "test_acc": 0.77, "n_images": 30},
        "u": {"checkpoint": "elsewhere/checkpoint_000000", "test_acc": 0.99, "n_images": 30},
    }
    (tmp_path / "e" / "test_scores.json").write_text(json.dumps(scores))
    board = build_leaderboard(exp).set_index("trial_id")
    assert board.loc["t", "test_acc"] == pytest.approx(0.77)
    assert math.isnan(board.loc["u", "test_acc"])  # scored on another checkpoint


def test_leaderboard_and_list_of_a_synthetic_folder_and_their_usage_errors(tmp_path):
    write_experiment(tmp_path, "e", [FakeTrial("t", epochs=[(0.75, 0.5)]),
                                     FakeTrial("u", status="RUNNING", epochs=[(0.5, 0.9)])],
                     max_epochs=1)  # fmt: skip
    code, out, err = run_cli("leaderboard", "e", "--storage", str(tmp_path), "--format", "json")
    assert code == 0, err
    assert [r["trial_id"] for r in json.loads(out)] == ["t", "u"]
    code, out, err = run_cli("list", "--storage", str(tmp_path), "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["status"] == "interrupted" and row["trials_ended"] == 1
    assert row["best_val_acc"] == pytest.approx(0.75)
    code, _, err = run_cli("leaderboard", "nope", "--storage", str(tmp_path))
    assert code == 2 and "no experiment 'nope'" in err and "experiments there: e" in err
    code, _, err = run_cli("leaderboard", "e", "--storage", str(tmp_path), "--format", "xml")
    assert code == 2 and "invalid choice: 'xml'" in err
    # A result line Ray Tune did not write: one line naming it, exit 2.
    (tmp_path / "e" / "trial_t" / "result.json").write_text('{"epoch": "one"}\n')
    code, _, err = run_cli("leaderboard", "e", "--storage", str(tmp_path))
    assert code == 2 and "epoch is str, not a result Ray Tune wrote" in err


def test_trial_ids_of_digits_stay_text_in_every_format(tmp_path):
    # Ray's trial ids are eight random hex digits: some are all digits, with or without an
    # ``e`` or leading zeros, and must come back as the same text, not as numbers.
    ids = ["68394985", "93556e90", "00012345"]
    trials = [FakeTrial(t, epochs=[(0.9 - i / 10, 0.5)]) for i, t in enumerate(ids)]
    write_experiment(tmp_path, "e", trials, max_epochs=1)
    base = ("leaderboard", "e", "--storage", str(tmp_path))
    code, out, err = run_cli(*base, "--format", "csv")
    assert code == 0, err
    assert read_board(io.StringIO(out))["trial_id"].tolist() == ids
    code, out, err = run_cli(*base, "--format", "json")
    assert code == 0, err
    assert [r["trial_id"] for r in json.loads(out)] == ids
    parquet = tmp_path / "board.parquet"
    code, _, err = run_cli(*base, "--format", "parquet", "--output", str(parquet))
    assert code == 0, err
    assert pd.read_parquet(parquet)["trial_id"].tolist() == ids
