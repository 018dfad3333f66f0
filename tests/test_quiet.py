"""What a user sees on stderr of a successful search: nothing alarming, nothing repeated."""

from __future__ import annotations

import re
from pathlib import Path


def test_a_successful_search_through_uv_run_keeps_stderr_quiet(finished, finished_ray_tmp):
    """Trials ASHA stops and trials that end leave no worker traceback.

    The shared search runs as users run it (``uv run``, tests/conftest.py). Ray Tune
    drops a stopped trial's actor and removes its placement group at once; the raylet
    then sends the worker SIGTERM, which Ray's handler turned into ``SystemExit``
    inside whatever the worker ran (``Exception ignored ... sigterm_handler ...
    SystemExit: 1`` on the search's stderr, when it landed in a finaliser). The worker
    logs of the search's own Ray session show whether any trial process still ended
    that way.
    """
    proc, _, _ = finished
    logs = list(Path(finished_ray_tmp).glob("ray/session_2*/logs"))
    assert len(logs) == 1, logs  # the search's own Ray session
    trial_logs = [f for f in logs[0].glob("worker-*.err") if "train_classifier" in f.read_text()]
    killed_by_ray_handler = [
        f.name
        for f in logs[0].glob("python-core-worker-*.log")
        if "The process receives a SIGTERM" in f.read_text()
    ]
    worker_errors = "".join(f.read_text() for f in trial_logs)
    for noise in (
        "Traceback",
        "SystemExit",
        "Token authentication",
        "Bytecode compiled",
        "Warning",
        "A new study created",  # Optuna's INFO lines
    ):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    # One line per trial that ended, not Ray's status table (search --verbose shows it).
    assert "== Status ==" not in proc.stdout and "Result logdir" not in proc.stdout
    ended = re.findall(r"^trial (\w+) (?:ran all|stopped after).*\[(\d)/5 ended\]$",
                       proc.stdout, re.M)  # fmt: skip
    assert sorted(n for _, n in ended) == ["1", "2", "3", "4", "5"], proc.stdout[-3000:]
    # Piped, so no terminal escape codes (Ray colours each worker line's prefix on one).
    assert "\x1b[" not in proc.stdout + proc.stderr
    # What a person reads: a screenful on stdout, nothing on stderr.
    assert len(proc.stdout.splitlines()) <= 30, proc.stdout
    assert proc.stderr == "", proc.stderr[-3000:]
    trials = re.search(r"Trials: 5 \((.*)\)", proc.stdout)
    assert trials, proc.stdout[-2000:]
    stopped = re.search(r"(\d+) stopped_early", trials.group(1))
    assert stopped and int(stopped.group(1)) >= 1, trials.group(0)  # ASHA did stop trials
    assert trial_logs, logs  # its trial workers
    assert "SystemExit" not in worker_errors, worker_errors[-3000:]
    assert not killed_by_ray_handler, killed_by_ray_handler
