"""`tuner list`: finished, interrupted and running experiments, on a folder and on S3."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from urllib.parse import unquote

import pytest
from conftest import S3_ENV, run_cli, s3_uri, start_s3_server

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


@pytest.mark.slow  # an S3 server process
def test_list_on_s3_reads_a_few_files_per_finished_experiment(tmp_path, monkeypatch):
    """Five finished experiments on a real S3 server: ``list`` asks the server a handful
    of times per experiment (record, lock, trial list, summary), not once per trial. The
    server's own request log counts the requests; a stale summary, which sends ``list`` to
    every trial's results, shows the count can grow."""
    import pyarrow.fs as pafs
    from synthetic import FakeTrial, write_experiment

    from tuner import build_leaderboard, load_space, write_leaderboard
    from tuner.storage import Experiment, RunRecord, Storage

    trials, names = 12, [f"e{i}" for i in range(5)]
    space = {k: v for k, v in load_space("smoke").to_dict().items() if k not in ("name", "source")}
    space["budget"] |= {"num_samples": trials, "max_epochs": 2}
    for name in names:
        folder = write_experiment(tmp_path / "local", name, [
            FakeTrial(f"{name}t{i}", epochs=[(0.5, 0.9), (0.5 + i / 100, 0.8)])
            for i in range(trials)
        ], max_epochs=2)  # fmt: skip
        record = RunRecord(name=name, space_name="smoke", space_source="smoke", space=space,
                           data_dir="photos", storage=str(tmp_path / "local"), address=None,
                           resize=40, resources={"CPU": 1.0})  # fmt: skip
        (folder / "tuner.json").write_bytes(record.encode())
        exp = Experiment(Storage.parse(str(tmp_path / "local")), name)
        write_leaderboard(exp, build_leaderboard(exp))

    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    log = tmp_path / "requests.log"
    server, endpoint = start_s3_server(log=log)
    try:
        fs, _ = pafs.FileSystem.from_uri(s3_uri(endpoint, "bkt") + "&allow_bucket_creation=true")
        fs.create_dir("bkt")
        pafs.copy_files(str(tmp_path / "local"), "bkt/list", destination_filesystem=fs)

        def requests_per_experiment() -> dict[str, int]:
            before = len(log.read_text().splitlines())
            code, out, err = run_cli("list", "--storage", s3_uri(endpoint, "bkt/list"),
                                     "--format", "json")  # fmt: skip
            assert code == 0, err
            rows = json.loads(out)
            assert [r["status"] for r in rows] == ["finished"] * 5, (rows, err)
            served = [unquote(line) for line in log.read_text().splitlines()[before:]]
            served = [line for line in served if '"GET ' in line or '"HEAD ' in line]
            return {n: sum(f"list/{n}/" in line for line in served) for n in names}

        counts = requests_per_experiment()
        assert max(counts.values()) <= 8, counts  # measured: 6
        # A summary from another trial list: e0's row is rebuilt from its 12 trials.
        fs.delete_file("bkt/list/e0/summary.json")
        stale = requests_per_experiment()
        assert stale["e0"] >= counts["e0"] + trials, (counts, stale)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_record_that_names_the_resize_by_its_earlier_name_still_reads():
    from trainables import FileRefused
    from tuner.storage import RunRecord

    fields = {"name": "e", "space_name": "smoke", "space_source": "smoke", "space": {},
              "data_dir": "photos", "storage": "/r", "address": None,
              "resources": {"CPU": 1}, "created": "2026-12-06T00:00:00+0000"}  # fmt: skip
    written = RunRecord.from_json({**fields, "resize": 40})
    assert json.loads(written.encode())["resize"] == 40
    assert RunRecord.from_json({**fields, "cache_size": 40}) == written
    with pytest.raises(FileRefused, match="resize"):
        RunRecord.from_json(fields)
