"""The recommended path on a GPU: search, then export the recommended single model; where
the search's time goes.

Runs ``python -m tuner search --space SPACE`` on the photos (a cold cache of its own),
then ``python -m tuner export --refit`` (the README's "Best model on your photos": rank 1
retrained on train + val, which the export trains first), as a user would, while
``nvidia-smi`` samples the GPU's utilisation every 500 ms. Prints:

- ``best_path_search_s``, ``best_path_export_s``: wall times of the two commands (the
  export's includes the refit's training);
- ``best_path_val_acc``: rank 1's search val_acc; ``best_path_test_acc``: the exported
  refit's accuracy on the test split (its ``refit.json``);
- ``best_path_gpu_busy``: the mean sampled utilisation over the search (0-1), and
  ``best_path_gpu_samples``;
- where the search's time went (:func:`time_breakdown`), from the trials' own reports
  and the search's log: ``best_path_startup_s`` (from the command's start to the
  first trial's first epoch starting), ``best_path_caching_s`` (frozen activations
  computed, summed over trials), ``best_path_train_s`` and ``best_path_val_s``
  (trial-seconds in training steps and in validation + checkpointing, summed over
  trials: several run at once), ``best_path_trial_s`` (their sum) and
  ``best_path_concurrency`` (trial-seconds per second of search after start-up).

Run by ``benchmarks/gpu_suite.py --only best_path`` (it needs its own ~7 minutes).
Without a CUDA GPU it exits 2 at once with one line on stderr.

    python benchmarks/gpu_best_path.py --data /tmp/flowers [--space lite-accurate]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_DATA,
    ROOT,
    die,
    experiment_at,
    print_headlines,
    require_cuda,
    require_photos,
)

SPACE = "lite-accurate"
EXPORT_FLAGS: tuple[str, ...] = ("--refit",)  # the README's "Best model on your photos"
SAMPLE_MS = 500
# "frozen activations (val): 588/588 photos (41/s in 14s)" (trainables.Progress's last line)
CACHING = re.compile(
    r"frozen activations \(\w+\): (\d+)/\1 \w+ \((?:[\d.]+/s|[\dms]+/\w+) in (?:(\d+)m)?(\d+)s\)"
)


def parse_utilisation(lines: Iterable[str]) -> list[float]:
    """Utilisation fractions (0-1) from ``nvidia-smi --query-gpu=utilization.gpu
    --format=csv,noheader,nounits`` lines (the first GPU's: one number a line)."""
    out = []
    for line in lines:
        text = line.strip().split(",")[0].strip()
        if text.isdigit():
            out.append(min(int(text), 100) / 100.0)
    return out


class Sampler:
    """``nvidia-smi`` printing the utilisation every :data:`SAMPLE_MS` ms, read on a thread."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
               f"-lms={SAMPLE_MS}", "--id=0"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> list[float]:
        self.proc.terminate()
        self.proc.wait(10)
        self.thread.join(10)
        return parse_utilisation(self.lines)


def time_breakdown(exp_dir: Path, log: str, started: float) -> dict[str, float]:
    """Where a finished search's time went (see the module doc): ``started`` is the Unix
    time the search command started; ``log`` its output (stdout and stderr)."""
    exp = experiment_at(exp_dir)
    n_train = len(exp.split().train)
    first_start, last_end = float("inf"), 0.0
    train_s = val_s = 0.0
    for trial_id in exp.trial_ids():
        for row in exp.reports(trial_id):
            epoch_s = float(row.get("epoch_time_s", 0.0))
            rate = float(row.get("images_per_s", 0.0))
            train = min(epoch_s, n_train / rate) if rate > 0 else epoch_s
            train_s += train
            val_s += epoch_s - train
            stamp = float(row.get("timestamp", 0.0))
            if stamp:
                first_start = min(first_start, stamp - epoch_s)
                last_end = max(last_end, stamp)
    caching_s = sum(int(m or 0) * 60 + int(s) for _, m, s in CACHING.findall(log))
    startup = first_start - started if first_start != float("inf") else float("nan")
    span = last_end - first_start if last_end > 0 else float("nan")
    trial_s = train_s + val_s
    return {
        "startup_s": startup,
        "caching_s": float(caching_s),
        "train_s": train_s,
        "val_s": val_s,
        "trial_s": trial_s,
        "concurrency": trial_s / span if span and span > 0 else float("nan"),
    }


def run(cmd: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--space", default=SPACE, help=f"space of the search (default {SPACE})")
    parser.add_argument("--keep", action="store_true", help="keep the experiment's folder")
    args = parser.parse_args()
    require_cuda()
    if shutil.which("nvidia-smi") is None:
        die("no nvidia-smi on PATH: the GPU's utilisation cannot be sampled")
    require_photos(args.data)
    work = Path(tempfile.mkdtemp(prefix="gpu-best-"))
    env = {**os.environ, "TUNER_CACHE": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    storage, name = work / "results", "gpu-best"
    py = sys.executable
    try:
        started = time.time()
        sampler = Sampler()
        search = [py, "-m", "tuner", "search", "--space", args.space, "--data", str(args.data),
                  "--storage", str(storage), "--name", name]  # fmt: skip
        rc, log, search_s = run(search, env)
        busy = sampler.stop()
        (work / "search.log").write_text(log)
        if rc != 0:
            print(log[-3000:])
            raise SystemExit(f"the search exited {rc}")
        export = [py, "-m", "tuner", "export", name, "--storage", str(storage), "--output",
                  str(work / "model"), *EXPORT_FLAGS]  # fmt: skip
        rc, out, export_s = run(export, env)
        if rc != 0:
            print(out[-3000:])
            raise SystemExit(f"the export exited {rc}")
        print(out.strip().splitlines()[-2:][0])  # the test-time augmentation line
        exp_dir = storage / name
        best: dict[str, Any] = json.loads((exp_dir / "best_config.json").read_text())
        exported = json.loads((work / "model" / "config.json").read_text())
        made = json.loads((exp_dir / "refit" / exported["trial_id"] / "refit.json").read_text())
        figures: dict[str, object] = {
            "best_path_search_s": search_s,
            "best_path_export_s": export_s,
            "best_path_val_acc": best.get("val_acc"),
            "best_path_test_acc": made.get("test_acc"),
            "best_path_gpu_busy": sum(busy) / len(busy) if busy else float("nan"),
            "best_path_gpu_samples": len(busy),
        }
        breakdown = time_breakdown(exp_dir, log, started)
        figures |= {f"best_path_{k}": v for k, v in breakdown.items()}
        print_headlines(figures)
    finally:
        if args.keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
