"""What a user sees on stderr of a successful search: nothing alarming, nothing repeated."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, search_args


@pytest.mark.slow
def test_a_successful_search_through_uv_run_keeps_stderr_quiet(small_flowers, tmp_path):
    """Trials ASHA stops and trials that end leave no worker traceback.

    Ray Tune drops a stopped trial's actor and removes its placement group at
    once; the raylet then sends the worker SIGTERM, which Ray's handler turned
    into ``SystemExit`` inside whatever the worker ran (``Exception ignored ...
    sigterm_handler ... SystemExit: 1`` on the search's stderr, when it landed
    in a finaliser). The worker logs of the search's own Ray session show
    whether any trial process still ended that way.
    """
    uv = shutil.which("uv")
    assert uv, "uv is how users run the project (README); install it with pip install uv"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rq"))  # short: Ray's socket paths live under it
    try:
        proc = subprocess.run(
            [uv, "run", "--locked", "python", "-m", "tuner",
             *search_args("smoke", small_flowers, tmp_path / "r", "quiet",
                          "--num-samples", "5", "--max-epochs", "2")],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env={**os.environ, "TUNER_CACHE": str(tmp_path / "cache"), "RAY_TMPDIR": str(ray_tmp)},
        )  # fmt: skip
        logs = list(ray_tmp.glob("ray/session_2*/logs"))
        trial_logs = [
            f for f in logs[0].glob("worker-*.err") if "train_classifier" in f.read_text()
        ] if logs else []  # fmt: skip
        killed_by_ray_handler = [
            f.name
            for f in logs[0].glob("python-core-worker-*.log")
            if "The process receives a SIGTERM" in f.read_text()
        ] if logs else []  # fmt: skip
        worker_errors = "".join(f.read_text() for f in trial_logs)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for noise in (
        "Traceback",
        "SystemExit",
        "Token authentication",
        "Bytecode compiled",
        "Warning",
    ):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    trials = re.search(r"Trials: 5 \((.*)\)", proc.stdout)
    assert trials, proc.stdout[-2000:]
    stopped = re.search(r"(\d+) stopped_early", trials.group(1))
    assert stopped and int(stopped.group(1)) >= 1, trials.group(0)  # ASHA did stop trials
    assert len(logs) == 1 and trial_logs, logs  # the search's own Ray session, its trial workers
    assert "SystemExit" not in worker_errors, worker_errors[-3000:]
    assert not killed_by_ray_handler, killed_by_ray_handler
