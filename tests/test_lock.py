"""One writer per experiment: two `search` (or `resume`) of one name, on a folder and on S3."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, S3_BUCKET, cli_search, s3_uri, search_args

from tuner import Experiment, Storage
from tuner._errors import UsageError
from tuner.storage._experiment import LOCK_FILE
from tuner.storage._lock import STALE_S, WriterLock, is_stale

SPACE = (
    "params:\n  model: efficientnet_lite0\n  image_size: 32\n  freeze_depth: 4\n"
    "  lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
    "budget:\n  num_samples: 1\n  max_epochs: 1\n  grace_period: 1\n"
)


def search_command(space: Path, data: Path, storage: str, name: str) -> list[str]:
    args = search_args(space, data, storage, name, "--test-fraction", "0")
    return [sys.executable, "-m", "tuner", *args]


def race(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(c, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    return [
        subprocess.CompletedProcess(c, p.returncode, o, e)
        for c, p, (o, e) in zip(commands, procs, outs, strict=True)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["folder", "s3"])
def test_two_searches_of_one_name_started_together_one_runs(where, s3, small_flowers, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = str(tmp_path / "r") if where == "folder" else s3_uri(s3, f"{S3_BUCKET}/race")
    command = search_command(space, small_flowers, storage, "race")
    first, second = race([command, command], ROOT)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (first.stderr[-2000:], second.stderr[-2000:])
    loser = first if first.returncode == 2 else second
    lines = loser.stderr.strip().splitlines()
    assert len(lines) == 1 and "is being written by `tuner search" in lines[0], lines
    assert f"on {socket.gethostname()}" in lines[0] and "Traceback" not in loser.stderr
    exp = Experiment(Storage.parse(storage), "race")
    assert len(exp.trial_ids()) == 1 and exp.read_json(LOCK_FILE) is None  # released
    # A resume while another holds the experiment is refused the same way.
    holder = WriterLock(exp)
    holder.acquire()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tuner", "resume", "race", "--storage", storage],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.release()
    assert proc.returncode == 2 and "is being written by" in proc.stderr, proc.stderr[-2000:]


def test_a_lock_of_a_dead_process_on_this_host_or_without_heartbeat_is_taken_over(tmp_path):
    exp = Experiment(Storage.parse(str(tmp_path)), "held")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    now = time.time()
    here = {"host": socket.gethostname(), "since": now, "beat": now, "command": "tuner x"}
    elsewhere = here | {"host": "another-machine", "pid": 1}
    assert is_stale(here | {"pid": int(dead)})  # killed -9: taken over at once
    assert not is_stale(elsewhere)  # alive for all we know
    assert is_stale(elsewhere | {"beat": now - STALE_S - 1})  # stopped beating
    assert is_stale({"garbage": True})
    exp.write_json(LOCK_FILE, elsewhere)
    with pytest.raises(UsageError, match=r"being written by `tuner x` \(process 1 on another"):
        WriterLock(exp).acquire()
    exp.write_json(LOCK_FILE, here | {"pid": int(dead)})
    with WriterLock(exp) as lock:
        assert exp.read_json(LOCK_FILE)["token"] == lock.token
    assert not (tmp_path / "held").exists()  # nothing else was written: no trace left


@pytest.mark.slow
def test_a_failed_search_leaves_no_folder_and_no_lock(small_flowers, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("image_size: 32", "image_size: 8"))
    proc = cli_search(space, small_flowers, tmp_path / "r", "bad")
    assert proc.returncode == 2
    assert not (tmp_path / "r" / "bad").exists()


def test_a_name_with_a_trailing_newline_is_refused(tmp_path):
    from tuner.storage._experiment import validate_name

    with pytest.raises(UsageError, match="invalid experiment name"):
        validate_name("ok\n")
    assert json.dumps(validate_name("ok.1-a_b")) == '"ok.1-a_b"'
