"""A storage that fills up or turns read-only mid-search: a clear stop, a resumable state.

The storage is a real, small tmpfs mounted in a private mount namespace
(``unshare -rm``), so the disk really fills (ENOSPC) and really turns
read-only (EROFS) under a running search, with no root on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, experiment_at, read_board

from tuner._errors import UsageError
from tuner.search._guard import StorageGuard, make_reserve
from tuner.storage._experiment import RESERVE_FILE

pytestmark = pytest.mark.slow

SPACE = """
params:
  model: efficientnet_lite0
  image_size: 64
  optimizer: sgd
  momentum: 0.0
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  batch_size: 16
  freeze_depth: 3
  aug_strength: 0.0
budget:
  num_samples: 2
  max_epochs: 6
  grace_period: 6
  cpus_per_trial: 1
"""

# Runs as root of a private user + mount namespace; every step's output goes to $OUT.
SCENARIO = r"""
set -u
mount -t tmpfs -o size=224m tmpfs "$STORE"
tuner() { "$PY" -m tuner "$@"; }
first_checkpoint() {
  while ! ls -d "$STORE"/exp/trial_*/checkpoint_* >/dev/null 2>&1; do
    kill -0 "$1" 2>/dev/null || return 1; sleep 0.5
  done
}

# 1. The disk fills up under the search.
tuner search --space "$SPACE" --data "$DATA" --storage "$STORE" --name exp \
  >"$OUT/search.log" 2>&1 &
pid=$!
first_checkpoint $pid
dd if=/dev/zero of="$STORE/filler" bs=1M >/dev/null 2>&1
wait $pid; echo $? >"$OUT/search.rc"
ls -a "$STORE/exp" >"$OUT/after_exp.ls"
rm -f "$STORE/filler"

# 2. Resumed, then the storage turns read-only under it: once its trials run, they
# are held still (SIGSTOP) for the remount, so no epoch ends in between; a file
# being written at that instant makes the remount fail with "busy", so it is retried.
tuner resume exp --storage "$STORE" >"$OUT/resume1.log" 2>&1 &
pid=$!
trials='^ray::ImplicitFunc'  # the trial actors (not this script, which names them)
ours="--ns $$ --nslist user"     # in this namespace: not another test's trials
until pgrep $ours -f "$trials" >/dev/null; do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
pgrep $ours -af "$trials" >"$OUT/trials.ps"
for _ in $(seq 100); do
  pkill $ours -STOP -f "$trials"
  mount -o remount,ro "$STORE" 2>>"$OUT/remount.err"; ro=$?
  pkill $ours -CONT -f "$trials"
  [ $ro -eq 0 ] && break; sleep 0.1
done
echo $ro >"$OUT/remount.rc"
wait $pid; echo $? >"$OUT/resume1.rc"

# 3. Still read-only: refused before Ray starts.
tuner resume exp --storage "$STORE" >"$OUT/resume2.log" 2>&1; echo $? >"$OUT/resume2.rc"

# 4. Writable again: the search finishes.
mount -o remount,rw "$STORE"
tuner resume exp --storage "$STORE" >"$OUT/resume3.log" 2>&1; echo $? >"$OUT/resume3.rc"
cp "$STORE/exp/leaderboard.csv" "$OUT/" 2>/dev/null
for f in "$STORE"/exp/trial_*/result.json; do
  t=$(basename "$(dirname "$f")"); cp "$f" "$OUT/$t.result.json"
done
ls -a "$STORE/exp" >"$OUT/final.ls"
"""


def read(out: Path, name: str) -> str:
    path = out / name
    return path.read_text() if path.exists() else f"<{name} missing>"


def test_full_disk_and_read_only_storage_stop_cleanly_and_resume(small_flowers, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare")
    space, store, out = tmp_path / "space.yaml", tmp_path / "store", tmp_path / "out"
    space.write_text(SPACE)
    store.mkdir()
    out.mkdir()
    env = {
        "PY": sys.executable,
        "SPACE": str(space),
        "DATA": str(small_flowers),
        "STORE": str(store),
        "OUT": str(out),
    }
    subprocess.run(
        ["unshare", "-rm", "--propagation", "private", "sh", "-c", SCENARIO],
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=900,
        check=False,
    )
    logs = {n: read(out, n) for n in ("search.log", "resume1.log", "resume2.log", "resume3.log")}

    # 1. Full disk: one clear message, the resume command, exit 1; state intact.
    assert read(out, "search.rc").strip() == "1", logs["search.log"][-3000:]
    assert "Stopped: " in logs["search.log"]
    assert "is full" in logs["search.log"].split("Stopped: ", 1)[1].splitlines()[0]
    assert f"python -m tuner resume exp --storage {store}" in logs["search.log"]
    assert RESERVE_FILE not in read(out, "after_exp.ls")

    # 2. Read-only mid-search: the same kind of stop.
    remount = read(out, "remount.rc") + read(out, "remount.err") + read(out, "trials.ps")
    assert read(out, "remount.rc").strip() == "0", remount
    assert read(out, "resume1.rc").strip() == "1", remount + logs["resume1.log"][-3000:]
    stopped = logs["resume1.log"].split("Stopped: ", 1)[-1].splitlines()[0]
    assert "no longer writable" in stopped, logs["resume1.log"][-3000:]

    # 3. A read-only storage is refused up front.
    assert read(out, "resume2.rc").strip() == "2", logs["resume2.log"][-3000:]
    assert "not writable" in logs["resume2.log"]
    assert "Traceback" not in logs["resume2.log"]

    # 4. Nothing was lost: the search completes every trial, none restarted from epoch 1.
    assert read(out, "resume3.rc").strip() == "0", logs["resume3.log"][-3000:]
    board = read_board(out / "leaderboard.csv")
    assert len(board) == 2 and (board["status"] == "completed").all(), board
    for result in out.glob("trial_*.result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines() if line]
        assert epochs.count(1) == 1 and max(epochs) == 6, (result.name, epochs)
    assert RESERVE_FILE not in read(out, "final.ls")


def test_guard_sees_a_storage_too_full_for_the_next_checkpoints(tmp_path):
    guard = StorageGuard(experiment_at(tmp_path / "exp"))
    (tmp_path / "exp").mkdir()
    assert guard.problem(running=2) is None
    guard.checkpoint_bytes = shutil.disk_usage(tmp_path).free  # one checkpoint fills it
    problem = guard.problem(running=2)
    assert problem is not None and "is full" in problem and str(tmp_path / "exp") in problem


def test_reserve_is_refused_with_a_clear_message_when_storage_is_missing(tmp_path):
    with pytest.raises(UsageError, match="cannot hold the experiment"):
        make_reserve(experiment_at(tmp_path / "missing" / "exp"))
