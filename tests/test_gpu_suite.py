"""benchmarks/gpu_suite.py on a machine without a GPU: its refusals, its plan, its plumbing.

The suite itself needs a CUDA GPU; these tests run what does not: the exit
without one, ``--dry-run``, the hidden memory probe's arguments, and (with
the GPU check replaced) the step runner on tiny stand-in steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"
NO_GPU_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


def suite(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=NO_GPU_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def gpu_suite() -> Iterator[ModuleType]:
    """The script as a module (it imports ``_common`` from beside it)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_suite"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_suite", None)
        sys.path.remove(str(SCRIPT.parent))


@pytest.mark.slow
def test_without_a_gpu_it_exits_2_with_one_line(tmp_path):
    proc = suite("--data", str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("no CUDA GPU: ") and "run it on a GPU machine" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_dry_run_lists_every_step_with_its_command_and_limit(tmp_path):
    proc = suite("--dry-run", "--data", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    steps = re.findall(r"^(\w+)\. (\w+) \(limit (\d+) s\)", proc.stdout, re.MULTILINE)
    assert [key for key, _, _ in steps] == ["a", "b", "c1", "c2", "d", "e", "f"]
    assert sum(int(limit) for _, _, limit in steps) <= 450  # + start-up and kills < 8 min
    out = proc.stdout
    assert "benchmarks/throughput.py" in out and "--batch-size 64 --steps 30" in out
    assert f"--workers {len(os.sched_getaffinity(0))}" in out
    assert "benchmarks/concurrency.py" in out and "--gpu" in out
    assert "--gpu-memory-probe 500" in out and "--gpu-memory-probe 0" in out
    assert "--space smoke --name gpu-smoke" in out
    assert "--space lite --name gpu-lite --num-samples 4 --max-epochs 2" in out
    gpu_tests = "tests/test_augment.py tests/test_predict_device.py tests/test_trainable.py"
    assert f"-k 'cuda or gpu' {gpu_tests}" in out


def test_only_picks_steps_by_key_or_name(tmp_path):
    proc = suite("--dry-run", "--data", str(tmp_path), "--only", "c1,lite_search")
    assert proc.returncode == 0, proc.stderr
    assert re.findall(r"^(\w+)\. ", proc.stdout, re.MULTILINE) == ["c1", "e"]
    # The recommended path is a command of its own: only when asked for, within 8 minutes.
    proc = suite("--dry-run", "--data", str(tmp_path), "--only", "g")
    steps = re.findall(r"^(\w+)\. (\w+) \(limit (\d+) s\)", proc.stdout, re.MULTILINE)
    assert [(k, n) for k, n, _ in steps] == [("g", "best_path")] and int(steps[0][2]) <= 450
    assert f"benchmarks/gpu_best_path.py --data {tmp_path}" in proc.stdout
    proc = suite("--dry-run", "--only", "a,zz")
    assert proc.returncode == 2 and "unknown step(s) zz" in proc.stderr


@pytest.mark.slow
def test_the_best_path_benchmark_without_a_gpu_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "gpu_best_path.py"), "--data", str(tmp_path)],
        cwd=ROOT, env=NO_GPU_ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("no CUDA GPU: ") and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def best_path() -> Iterator[ModuleType]:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec = importlib.util.spec_from_file_location(
            "gpu_best_path", SCRIPT.parent / "gpu_best_path.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(SCRIPT.parent))


def test_utilisation_samples_are_read_from_nvidia_smi_lines(best_path):
    lines = ["87\n", "100\n", "0\n", "[N/A]\n", "", "  42 \n", "130\n"]
    assert best_path.parse_utilisation(lines) == [0.87, 1.0, 0.0, 0.42, 1.0]


def test_where_a_searchs_time_went_is_read_from_its_trials_and_log(best_path, finished):
    """On the shared real search: the trials' own reports and caching lines of its log."""
    _, _, exp = finished
    rows = [
        json.loads(line)
        for trial in sorted(exp.glob("trial_*"))
        for line in (trial / "result.json").read_text().splitlines()
        if line.strip()
    ]
    first = min(r["timestamp"] - r["epoch_time_s"] for r in rows)
    log = ("frozen activations (train): 40/40 photos (12/s in 3s)\n"
           "frozen activations (val): 10/10 photos (5/s in 1m02s)\n"
           "frozen activations (test): 3/3 photos (2s/photo in 6s)\n"
           "frozen activations (val): 3/10 photos (5/s, 1s left)\n")  # fmt: skip
    got = best_path.time_breakdown(exp, log, first - 7.0)
    assert got["startup_s"] == pytest.approx(7.0)
    assert got["caching_s"] == 71.0  # finished lines only
    assert got["trial_s"] == pytest.approx(sum(r["epoch_time_s"] for r in rows))
    assert 0 < got["train_s"] <= got["trial_s"] and got["val_s"] >= 0
    assert got["concurrency"] > 0


@pytest.mark.parametrize(
    ("value", "message"),
    [("-3", "must be >= 0"), ("x", "invalid photo_count value"), ("500", "no CUDA GPU: ")],
)
@pytest.mark.slow
def test_memory_probe_arguments(tmp_path, value, message):
    proc = suite("--data", str(tmp_path), "--gpu-memory-probe", value)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_headlines_and_pytest_summaries_are_read(gpu_suite, tmp_path):
    out = "decoded 10 photos in 1.0s\nrows: a b\n\nx_images_per_s: 12.5\nspeedup: 2.10\n"
    assert gpu_suite.trailing_headlines(out) == {"x_images_per_s": "12.5", "speedup": "2.10"}
    figures, problem = gpu_suite.forward("throughput_{}")(gpu_suite.Run(0, 3.0, out))
    assert figures == {"throughput_x_images_per_s": "12.5", "throughput_speedup": "2.10"}
    assert problem is None
    assert gpu_suite.forward("{}")(gpu_suite.Run(0, 3.0, "no figures\n"))[1] is not None

    ok = gpu_suite.pytest_result(gpu_suite.Run(0, 9.0, "...\n3 passed, 21 deselected in 8.2s\n"))
    assert ok == ({"cuda_tests_passed": 3, "cuda_tests_failed": 0, "cuda_tests_skipped": 0}, None)
    bad = gpu_suite.pytest_result(
        gpu_suite.Run(1, 9.0, "F..\n1 failed, 2 passed, 1 error, 21 deselected in 8.2s\n")
    )
    assert bad[0]["cuda_tests_failed"] == 2 and bad[1] is not None
    skipped = gpu_suite.pytest_result(gpu_suite.Run(0, 9.0, "3 skipped, 21 deselected in 2s\n"))
    assert skipped[0]["cuda_tests_skipped"] == 3 and skipped[1] is not None

    exp = tmp_path / "gpu-lite"
    exp.mkdir()
    (exp / "leaderboard.csv").write_text(
        "rank,trial_id,status,val_acc\n1,t1,completed,0.93\n2,t2,error,\n3,t3,stopped_early,0.5\n"
    )
    figures, problem = gpu_suite.search_result("lite", exp)(gpu_suite.Run(0, 61.0, ""))
    assert figures["lite_errored_trials"] == 1 and figures["lite_best_val_acc"] == "0.93"
    assert figures["lite_search_s"] == 61.0 and figures["lite_search_exit"] == 0
    assert problem == "1 trial(s) errored"


@pytest.mark.slow
def test_failed_and_timed_out_steps_are_reported_and_the_suite_goes_on(
    gpu_suite, tmp_path, monkeypatch, capsys
):
    py = sys.executable
    steps = [
        gpu_suite.Step("a", "good", "prints a figure", [py, "-c", "print('\\nfig_x: 1.5')"], 20,
                       gpu_suite.forward("good_{}")),
        gpu_suite.Step("b", "broken", "exits 3", [py, "-c", "print('boom'); exit(3)"], 20,
                       gpu_suite.forward("{}")),
        gpu_suite.Step("c", "slow", "sleeps", [py, "-c", "import time; time.sleep(60)"], 60,
                       gpu_suite.forward("{}")),
        gpu_suite.Step("d", "late", "after the budget", [py, "-c", "pass"], 20,
                       gpu_suite.forward("{}")),
    ]  # fmt: skip
    monkeypatch.setattr(gpu_suite, "require_cuda", lambda: "Fake GPU 80GB")
    monkeypatch.setattr(gpu_suite, "MIN_STEP_S", 0.5)
    # c runs until the budget is spent (then it is killed), which leaves d none.
    args = argparse.Namespace(budget=3.0, limit_factor=1.0, logs=tmp_path / "logs")
    with pytest.raises(SystemExit) as exit_info:
        gpu_suite.run_suite(args, tmp_path, tmp_path, steps)
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert "device: Fake GPU 80GB" in out and "good_fig_x: 1.5" in out
    assert "good_ok: 1" in out and "broken_ok: 0" in out and "| boom" in out
    assert re.search(r"slow_ok: 0 .*timed out", out)
    assert "late_ok: 0  (skipped" in out
    assert out.rstrip().endswith("steps_failed: 3")
    assert (tmp_path / "logs" / "b-broken.log").read_text().strip() == "boom"
