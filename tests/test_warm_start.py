"""`search --warm-start EXP`: the new study starts with the earlier experiments' ended
trials that fit its space (tuner/search/_warm.py), says what it took and ignored, and
records its sources."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import (
    STATE_OF_STATUS,
    TINY_SPACE,
    assert_study_tells_the_leaderboard,
    cli,
    cli_search,
    experiment_at,
    read_board,
)

from tuner._errors import UsageError
from tuner.search._study import WARM_ATTR, load_study
from tuner.search._warm import warm_start
from tuner.spaces._spaces import parse_space
from tuner.storage._storage import Storage

pytestmark = pytest.mark.slow  # every test reads the shared search (e2e)


@pytest.fixture
def earlier(finished, tmp_path):
    """A copy of the shared search in a storage folder of the test's own."""
    _, _, exp = finished
    storage = tmp_path / "r"
    shutil.copytree(exp, storage / "e2e", symlinks=True)
    return storage


def tiny(**changes: str) -> str:
    text = TINY_SPACE
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


def test_a_warm_started_search_holds_the_earlier_trials_and_records_them(
    earlier, small_flowers, tmp_path
):
    space = tmp_path / "tiny.yaml"
    space.write_text(tiny())
    # Another split of the photos (seed 1): the earlier trials are a prior, not a score.
    proc = cli_search(
        space, small_flowers, earlier, "warm", "--warm-start", "e2e", "--num-samples", "2",
        "--seed", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    before = read_board(earlier / "e2e" / "leaderboard.csv")
    assert f"Warm start from e2e: {len(before)} of its {len(before)} trials taken" in proc.stdout
    record = json.loads((earlier / "warm" / "tuner.json").read_text())
    assert record["warm_start"] == [
        {"experiment": "e2e", "storage": str(earlier), "taken": len(before), "ignored": 0,
         "reasons": {}}
    ]  # fmt: skip
    study = load_study(experiment_at(earlier / "warm")).trials
    warm = {t.user_attrs[WARM_ATTR]: t for t in study if WARM_ATTR in t.user_attrs}
    assert set(warm) == {f"e2e/{t}" for t in before["trial_id"]}
    for row in before.to_dict("records"):
        trial = warm[f"e2e/{row['trial_id']}"]
        assert trial.state.name == STATE_OF_STATUS[row["status"]]
        assert trial.params["lr"] == pytest.approx(row["lr"])
        assert max(trial.intermediate_values) == row["epochs"]
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(row["val_acc"])
    # The new search's own trials are its leaderboard, and told like any search's.
    board = assert_study_tells_the_leaderboard(earlier / "warm")
    assert len(board) == 2 and not set(board["trial_id"]) & set(before["trial_id"])


def test_trials_that_do_not_fit_the_space_are_ignored_with_the_reason(earlier):
    before = read_board(earlier / "e2e" / "leaderboard.csv")
    # Adam alone, up to the lowest lr an Adam trial had: that trial fits, the others not.
    lr_cut = float(before.loc[before["optimizer"] == "adam", "lr"].min())
    text = tiny(**{
        "lr: {loguniform: [1.0e-4, 1.0e-1]}": f"lr: {{loguniform: [1.0e-4, {lr_cut}]}}",
        "optimizer: {choice: [adam, sgd]}": "optimizer: adam",
    })  # fmt: skip
    import yaml

    space = parse_space(yaml.safe_load(text.split("points_to_evaluate:")[0]), name="narrow")
    said: list[str] = []
    taken = warm_start(space, Storage.parse(str(earlier)), ["e2e"], said.append)
    fits = before[(before["lr"] <= lr_cut) & (before["optimizer"] == "adam")]
    assert len(taken.trials) == len(fits) >= 1
    reasons = taken.sources[0]["reasons"]
    assert sum(reasons.values()) == len(before) - len(fits)
    assert all(r.startswith(("optimizer 'sgd' (this space fixes 'adam')", "lr ")) for r in reasons)
    assert f"{len(fits)} of its {len(before)} trials taken" in said[0]
    assert "ignored: " in said[0]

    other_model = parse_space(
        yaml.safe_load(tiny(**{"model: efficientnet_lite0": "model: resnet18"})), name="r"
    )
    with pytest.raises(UsageError, match="no trial of e2e fits this space"):
        warm_start(other_model, Storage.parse(str(earlier)), ["e2e"], said.append)
    assert "model 'efficientnet_lite0' (this space fixes 'resnet18')" in said[-1]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["gone"], "no experiment 'gone'"),
        (["e2e", "e2e"], "--warm-start: an experiment is named twice"),
    ],
)
def test_a_bad_warm_start_is_refused_before_anything_is_written(
    earlier, small_flowers, tmp_path, capsys, names, message
):
    space = tmp_path / "tiny.yaml"
    space.write_text(tiny())
    code, _, err = cli(
        capsys, "search", "--space", str(space), "--data", str(small_flowers),
        "--storage", str(earlier), "--name", "new", "--warm-start", *names,
    )  # fmt: skip
    assert code == 2 and message in err, err
    assert not (earlier / "new").exists() or not any(
        p.name != ".lock" for p in (earlier / "new").iterdir()
    )


def test_a_warm_started_search_killed_and_resumed_keeps_the_earlier_trials_once(
    earlier, small_flowers, tmp_path
):
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT, run_tuner, search_args
    from test_resume import saved_with_checkpoint, wait_for

    space = tmp_path / "tiny.yaml"
    space.write_text(tiny(**{"max_epochs: 3": "max_epochs: 6"}))
    exp = earlier / "warm"
    args = search_args(space, small_flowers, earlier, "warm", "--warm-start", "e2e")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner", *args, "--num-samples", "3", "--seed", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: saved_with_checkpoint(exp), 240, "a saved checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = run_tuner("resume", "warm", "--storage", str(earlier), timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    before = read_board(earlier / "e2e" / "leaderboard.csv")
    taken = [t.user_attrs[WARM_ATTR] for t in load_study(experiment_at(exp)).trials
             if WARM_ATTR in t.user_attrs]  # fmt: skip
    assert sorted(taken) == sorted(f"e2e/{t}" for t in before["trial_id"])
    board = assert_study_tells_the_leaderboard(exp)
    assert len(board) == 3
