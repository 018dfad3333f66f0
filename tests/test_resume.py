"""Interruptions and faults, run for real in subprocesses: kill -9, Ctrl-C, dead workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cli, experiment_at, read_board, run_tuner, search_args
from ray import cloudpickle

from tuner.storage._signing import unverified, write_signed

pytestmark = pytest.mark.slow

SPACE = """
params:
  model: efficientnet_lite0
  pretrained: true
  image_size: 32
  optimizer: adam
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  batch_size: 16
  freeze_depth: {randint: [0, 3]}
  aug_strength: {uniform: [0.0, 0.5]}
budget:
  num_samples: NUM
  max_epochs: EPOCHS
  grace_period: EPOCHS
  cpus_per_trial: 1
"""


def write_space(tmp: Path, num: int, epochs: int, size: int = 32) -> Path:
    path = tmp / "space.yaml"
    text = SPACE.replace("NUM", str(num)).replace("EPOCHS", str(epochs))
    path.write_text(text.replace("image_size: 32", f"image_size: {size}"))
    return path


def start_search(space: Path, data: Path, storage: Path, name: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", *search_args(space, data, storage, name)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def epochs_by_trial(exp: Path) -> dict[str, list[int]]:
    """Every reported epoch of every trial folder, in report order."""
    experiment = experiment_at(exp)
    return {t: [r["epoch"] for r in experiment.reports(t)] for t in experiment.trial_ids()}


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (this test's own driver; never anyone else's)."""
    found, frontier = [], [pid]
    while frontier:
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", ",".join(map(str, frontier))],
            capture_output=True,
            text=True,
        ).stdout.split()
        frontier = [int(c) for c in children]
        found += frontier
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def checkpointed(exp: Path, n: int = 1) -> bool:
    return len(list(exp.glob("trial_*/checkpoint_*"))) >= n


def with_checkpoint(exp: Path) -> set[str]:
    return {p.parent.name.removeprefix("trial_") for p in exp.glob("trial_*/checkpoint_*")}


def saved_with_checkpoint(exp: Path) -> set[str]:
    """Trials with a checkpoint that the driver has saved results of.

    A worker writes its checkpoint before the driver hears of it; the driver copies
    the trials' results to storage right after saving the experiment state, so a
    trial with results there is known, checkpoint included, to a resume or a retry.
    """
    epochs = epochs_by_trial(exp)
    return {t for t in with_checkpoint(exp) if epochs.get(t)}


def kill_9_once_saved(space: Path, data: Path, storage: Path, name: str) -> str:
    """Start a search and kill -9 it once a saved state holds a checkpoint; its output."""
    exp = storage / name
    proc = start_search(space, data, storage, name)
    try:
        wait_for(lambda: saved_with_checkpoint(exp), 240, "a saved checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        out = proc.communicate()[0]
    return out


def kill_9_and_resume(space: Path, data: Path, storage: Path, name: str) -> str:
    """:func:`kill_9_once_saved`, then resume it to the end (the test fails if it hangs or
    fails); the killed search's output."""
    out = kill_9_once_saved(space, data, storage, name)
    try:
        resumed = run_tuner("resume", name, "--storage", str(storage), timeout=240)
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"resume hung:\n{hung.stdout[-3000:]!s}\n{hung.stderr[-5000:]!s}")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return out


def killed_with_a_saved_checkpoint(data: Path, storage: Path, name: str) -> Path:
    """The folder of a search (2 trials of 10 epochs: still running when its first
    checkpoint is saved) killed -9 once a saved state holds a checkpoint."""
    kill_9_once_saved(write_space(storage.parent, 2, 10), data, storage, name)
    return storage / name


def test_killed_workers_and_a_kill_9_of_the_driver_lose_no_finished_epoch(small_flowers, tmp_path):
    """Trial workers killed mid-training are retried from their checkpoints; then the
    whole driver is killed -9 and `resume` continues from the checkpoints, with the
    Optuna state."""
    # 96 px: epochs long enough to kill a worker in the middle of training.
    space, storage = write_space(tmp_path, 3, 3, size=96), tmp_path / "r"
    exp = storage / "k9"
    proc = start_search(space, small_flowers, storage, "k9")
    try:
        wait_for(lambda: saved_with_checkpoint(exp), 240, "a checkpoint")
        retried = saved_with_checkpoint(exp)
        workers = [p for p in descendants(proc.pid) if "ImplicitFunc" in command_line(p)]
        assert workers, "no trial worker process found"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: checkpointed(exp, 3) and saved_with_checkpoint(exp) == with_checkpoint(exp),
            240,
            "saved checkpoints after the retries",
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    had_checkpoint = saved_with_checkpoint(exp)  # not one written after the last save
    before = epochs_by_trial(exp)
    # As a kill between uploading the trial list and the generator's own state leaves
    # it (tests/test_resume_state.py): its count of trials made one behind the list.
    generator = max(exp.glob("search_gen_state-*.json"))
    state = cloudpickle.loads(generator.read_bytes())
    state["counter"] -= 1
    write_signed(experiment_at(exp), generator.name, cloudpickle.dumps(state))

    resumed = run_tuner("resume", "k9", "--storage", str(storage), timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    board = read_board(exp / "leaderboard.csv")
    assert len(board) == 3 and board["trial_id"].is_unique
    assert (board["status"] == "completed").all()
    after = epochs_by_trial(exp)
    for trial in retried:  # the killed worker went on from its checkpoint, not from epoch 1
        assert after[trial].count(1) == 1, (trial, after[trial])
    for trial in had_checkpoint & set(board["trial_id"]):  # nor did resume restart it
        assert after[trial].count(1) == before[trial].count(1), (trial, before, after)
        assert max(after[trial]) == 3
    # The restored sampler goes on; a fresh one with the same seed would propose the
    # first run's values again.
    assert board["lr"].round(12).is_unique, board[["trial_id", "lr"]]
    assert board["freeze_depth"].notna().all()
    assert unverified(experiment_at(exp)) == []  # the resumed search signed what it saved


def test_ctrl_c_prints_the_resume_command_and_resume_finishes(small_flowers, tmp_path):
    space, storage = write_space(tmp_path, 2, 3), tmp_path / "r"
    exp = storage / "cc"
    proc = start_search(space, small_flowers, storage, "cc")
    wait_for(lambda: checkpointed(exp, 1), 240, "a checkpoint")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"python -m tuner resume cc --storage {storage}" in out
    assert "Tuner.restore" not in out  # Ray's own hint, for its Python API
    split = json.loads((exp / "split.json").read_text())
    assert split["test"] and not (exp / "test_scores.json").exists()  # scored only at the end
    resumed = run_tuner("resume", "cc", "--storage", str(storage), timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    board = read_board(exp / "leaderboard.csv")
    assert len(board) == 2 and (board["epochs"] == 3).all()
    # The resumed search kept its test split, and scored its top trials on it.
    assert json.loads((exp / "split.json").read_text()) == split
    assert board["test_acc"].notna().all()
    assert "Test split (photos no trial saw)" in resumed.stdout


def test_resume_of_an_unknown_experiment_lists_what_is_there(finished, capsys):
    _, storage, _ = finished
    code, _, err = cli(capsys, "resume", "nope", "--storage", str(storage))
    assert code == 2
    assert "no experiment 'nope'" in err and "e2e" in err
    assert "Traceback" not in err


def test_resume_starts_a_search_again_when_its_driver_died_before_the_first_trial(
    finished, tmp_path
):
    """Killed after writing tuner.json but before Ray saved any state: nothing ran, so
    `resume` runs the recorded search from the start instead of refusing."""
    _, _, exp = finished
    saved = json.loads((exp / "tuner.json").read_text())
    storage = tmp_path / "r"
    dest = storage / "early"
    dest.mkdir(parents=True)
    saved.update(name="early", storage=str(storage))
    saved["space"]["budget"].update(num_samples=2, max_epochs=1, grace_period=1)
    # As the search writes it: signed with the user's key (tests/test_signing.py).
    write_signed(experiment_at(dest), "tuner.json", json.dumps(saved).encode())
    (dest / "split.json").write_text('{"half": ')  # as a kill mid-write leaves it
    proc = run_tuner("resume", "early", "--storage", str(storage), timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "stopped before its first trial was recorded; starting it again" in proc.stdout
    board = read_board(dest / "leaderboard.csv")
    assert len(board) == 2 and (board["status"] == "completed").all()
    assert json.loads((dest / "split.json").read_text())["test"]


def test_a_kill_after_the_study_was_told_but_before_the_state_was_saved(small_flowers, tmp_path):
    """Finding 11, built from a real search killed -9: the journal holds a trial told
    PRUNED (as ASHA's stop is told at once) after the experiment state that still has it
    running (the next save never came). `resume` cuts the study back to the restored save,
    runs the trial on, and the study ends saying what the leaderboard says."""
    from optuna.trial import TrialState

    from tuner.search._journal import journal_length
    from tuner.search._study import load_study

    storage = tmp_path / "r"
    exp = killed_with_a_saved_checkpoint(small_flowers, storage, "ahead")
    experiment = experiment_at(exp)
    saved = journal_length(experiment)
    assert saved is not None, "the saved trial list carries no journal length"
    listed = json.loads(max(exp.glob("experiment_state-*.json")).read_text())["trial_data"]
    statuses = [json.loads(trial)["status"] for trial, _ in listed]
    running = {json.loads(t)["trial_id"] for (t, _), s in zip(listed, statuses, strict=True)
               if s != "TERMINATED"}  # fmt: skip
    study = load_study(experiment)
    told = [t for t in study.trials if t.state == TrialState.RUNNING
            and t.user_attrs.get("tune_trial_id") in running]  # fmt: skip
    assert told, "every trial had ended before the kill"
    study.tell(told[0].number, state=TrialState.PRUNED)  # after the save, as a stop is
    pruned = told[0].user_attrs["tune_trial_id"]
    assert (exp / "optuna_journal.log").stat().st_size > saved

    resumed = run_tuner("resume", "ahead", "--storage", str(storage), timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "journal entries written after the saved state" in resumed.stdout
    board = read_board(exp / "leaderboard.csv")
    assert len(board) == 2 and (board["status"] == "completed").all()
    after = load_study(experiment).trials
    trials = {t.user_attrs["tune_trial_id"]: t for t in after if not t.user_attrs.get("orphaned")}
    assert set(board["trial_id"]) <= set(trials)
    for trial_id in board["trial_id"]:
        assert trials[trial_id].state == TrialState.COMPLETE, (trial_id, trials[trial_id].state)
    assert trials[pruned].state == TrialState.COMPLETE
