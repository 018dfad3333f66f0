"""`tuner list`: finished, interrupted and running experiments, on a folder and on S3."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

import pytest
from conftest import run_cli

from tuner.storage._experiment import LOCK_FILE


def live_lock() -> dict[str, object]:
    now = time.time()
    return {"token": "t", "host": socket.gethostname(), "pid": os.getpid(),
            "command": "tuner search", "since": now, "beat": now}  # fmt: skip


def test_list_tells_finished_interrupted_and_running_experiments_apart(finished, tmp_path):
    _, storage, exp = finished
    shared = tmp_path / "shared"
    for name in ("done", "cut", "live"):
        shutil.copytree(exp, shared / name)
    # "cut": its driver died with a trial running (as the state Ray saved then says).
    state = sorted((shared / "cut").glob("experiment_state-*.json"))[-1]
    data = json.loads(state.read_text())
    trial = json.loads(data["trial_data"][0][0])
    data["trial_data"][0][0] = json.dumps(trial | {"status": "RUNNING"})
    state.write_text(json.dumps(data))
    # "live": a search holds it now.
    (shared / "live" / LOCK_FILE).write_text(json.dumps(live_lock()))
    code, out, err = run_cli("list", "--storage", str(shared), "--format", "json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert {n: r["status"] for n, r in rows.items()} == {
        "cut": "interrupted", "done": "finished", "live": "running",
    }  # fmt: skip
    board = json.loads(run_cli("leaderboard", "e2e", "--storage", str(storage), "--format",
                               "json")[1])  # fmt: skip
    assert rows["done"]["trials_ended"] == rows["done"]["trials_asked"] == 5
    assert rows["cut"]["trials_ended"] == 4
    assert rows["done"]["best_val_acc"] == pytest.approx(board[0]["val_acc"])
    code, table, _ = run_cli("list", "--storage", str(shared))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["name", "status", "trials_ended"] and len(lines) == 4


def test_list_reads_the_summary_written_with_the_leaderboard_while_it_is_current(
    finished, tmp_path
):
    """A finished experiment's row comes from summary.json, not from every trial's
    results, while the summary was written from the newest trial list; a stale, malformed
    or unreadable summary is passed over and the leaderboard rebuilt."""
    _, storage, exp = finished
    written = json.loads((exp / "summary.json").read_text())
    board = json.loads(run_cli("leaderboard", "e2e", "--storage", str(storage), "--format",
                               "json")[1])  # fmt: skip
    assert written["trials"] == len(board) == 5
    assert written["best_val_acc"] == pytest.approx(board[0]["val_acc"])

    def listed() -> dict[str, object]:
        code, out, err = run_cli("list", "--storage", str(tmp_path / "s"), "--format", "json")
        assert code == 0, err
        (row,) = json.loads(out)
        return row

    copy = tmp_path / "s" / "e2e"
    shutil.copytree(exp, copy)
    (copy / "summary.json").write_text(json.dumps(written | {"best_val_acc": 0.1234}))
    assert listed()["best_val_acc"] == pytest.approx(0.1234)  # the summary, not the trials
    assert listed()["status"] == "finished"
    # Another trial list than the one it was written from: rebuilt from the trials.
    state = sorted(copy.glob("experiment_state-*.json"))[-1]
    state.write_text(state.read_text() + "\n")
    assert listed()["best_val_acc"] == pytest.approx(board[0]["val_acc"])
    # Malformed or not a regular file: rebuilt, and the experiment still listed as it is.
    for bad in ('{"state_sha256": 1}', "[1, 2]"):
        (copy / "summary.json").write_text(bad)
        assert listed()["best_val_acc"] == pytest.approx(board[0]["val_acc"])
    (copy / "summary.json").unlink()
    os.mkfifo(copy / "summary.json")
    row = listed()
    assert row["status"] == "finished"
    assert row["best_val_acc"] == pytest.approx(board[0]["val_acc"])
