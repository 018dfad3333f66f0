"""What a user sees on stderr of a successful search: nothing alarming, nothing repeated."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_a_successful_search_through_uv_run_keeps_stderr_quiet(small_flowers, tmp_path):
    uv = shutil.which("uv")
    assert uv, "uv is how users run the project (README); install it with pip install uv"
    proc = subprocess.run(
        [uv, "run", "--locked", "python", "-m", "tuner", "search", "--space", "smoke",
         "--data", str(small_flowers), "--storage", str(tmp_path / "r"), "--name", "quiet",
         "--num-samples", "2", "--max-epochs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TUNER_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for noise in ("Traceback", "Token authentication", "Bytecode compiled", "Warning"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    assert "Trials: 2" in proc.stdout
