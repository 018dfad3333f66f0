"""Every GPU claim of the README in one command of under 8 minutes on one GPU machine.

Runs each step below as a subprocess with its own time limit (a global
``--budget``, 450 s by default, caps them all), forwards each step's
``NAME: VALUE`` headline lines, and ends with every headline again, the
device, ``steps_failed: N`` and exit 1 if any step failed or timed out
(a failed step prints ``STEP_ok: 0`` and its last output lines; the others
still run). ``--dry-run`` lists the steps, their commands and limits.

a. ``throughput``: ``trainables.fit`` vs the classic DataLoader loop (workers =
   every CPU), ResNet-18, 224 px, batch 64, aug 0.5 (``benchmarks/throughput.py``);
b. ``concurrency``: 1, 2 and 4 trials sharing the GPU (``benchmarks/concurrency.py --gpu``);
c. ``gpu_memory_small`` / ``gpu_memory_all``: one trial's peak GPU memory
   (``torch.cuda.max_memory_allocated``) on 500 photos and on the whole folder;
d. ``smoke_search``: ``python -m tuner search --space smoke``, wall time and exit code;
e. ``lite_search``: ``--space lite --num-samples 4 --max-epochs 2``, wall time and
   errored trials (``leaderboard.csv``);
f. ``cuda_tests``: the tests that need a GPU (``pytest -k "cuda or gpu"`` over the
   test files that check ``torch.cuda.is_available()``);
g. ``best_path`` (only with ``--only g``: a command of its own, ~7 minutes): the
   README's recommended search + export on the photos, test accuracy, the GPU's
   sampled busy fraction and where the search's time goes (``benchmarks/gpu_best_path.py``).

On the GPU machine, through the kit in ``../shared/gpu`` (README there), from the
project root once the three bundles are in:

    bash .gpu/w3/on-device.sh python3 benchmarks/gpu_suite.py --data /tmp/flowers
    # --logs $OUT/gpu-suite keeps every step's full log; --dry-run lists the steps;
    # a rerun of some steps with longer limits: --only b,e --limit-factor 1.5 --budget 400
    # the recommended path, a command of its own:
    bash .gpu/w3/on-device.sh python3 benchmarks/gpu_suite.py --data /tmp/flowers --only g \
        --budget 440

Step f needs pytest on the device (``../shared/gpu/prepare.sh pytest pluggy iniconfig pygments``).
Without a CUDA GPU it exits 2 at once with one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    DEFAULT_DATA,
    ROOT,
    descendant_pids,
    die,
    make_subset,
    print_headlines,
    require_cuda,
    require_photos,
)

BUDGET_S = 450  # all steps together; with start-up and a timed-out step's kill, < 8 min
MIN_STEP_S = 10  # a step is skipped when less than this is left of the budget
TERM_GRACE_S = 5  # SIGTERM (Ray saves and stops), then SIGKILL of the whole tree
TAIL_LINES = 15
SMALL_PHOTOS = 500
# One trial of the throughput claim: every stage trained, the whole cache on the GPU.
PROBE_TRIAL = {"model": "resnet18", "pretrained": False, "image_size": 224, "batch_size": 64,
               "aug_strength": 0.5, "freeze_depth": 0, "optimizer": "sgd", "lr": 0.01,
               "max_epochs": 1}  # fmt: skip
HEADLINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): (\S+)$")
PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected)\b")

Figures = dict[str, object]


@dataclass
class Run:
    """What one step's subprocess did."""

    rc: int | None  # None: killed at its time limit
    wall_s: float
    output: str


@dataclass
class Step:
    key: str  # a, b, c1, ...
    name: str  # prefix of its ``NAME_ok`` line
    what: str
    cmd: list[str]
    limit_s: int
    # Figures from the run, and a failure reason (None: it passed).
    collect: Callable[[Run], tuple[Figures, str | None]]
    env: dict[str, str] = field(default_factory=dict)
    default: bool = True  # run without --only (False: its own command, --only KEY)


def trailing_headlines(output: str) -> dict[str, str]:
    """The ``NAME: VALUE`` block that ends a benchmark's output."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    block: list[tuple[str, str]] = []
    for line in reversed(lines):
        match = HEADLINE.match(line)
        if match is None:
            break
        block.append((match.group(1), match.group(2)))
    return dict(reversed(block))


def forward(fmt: str) -> Callable[[Run], tuple[Figures, str | None]]:
    """Collect a benchmark's headlines, renamed by ``fmt`` (e.g. ``throughput_{}``)."""

    def collect(run: Run) -> tuple[Figures, str | None]:
        figures: Figures = {fmt.format(k): v for k, v in trailing_headlines(run.output).items()}
        if run.rc == 0 and not figures:
            return figures, "no NAME: VALUE lines at the end of its output"
        return figures, None if run.rc == 0 else f"exit code {run.rc}"

    return collect


def leaderboard(exp_dir: Path) -> list[dict[str, str]]:
    path = exp_dir / "leaderboard.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def search_result(prefix: str, exp_dir: Path) -> Callable[[Run], tuple[Figures, str | None]]:
    def collect(run: Run) -> tuple[Figures, str | None]:
        rows = leaderboard(exp_dir)
        errored = sum(row.get("status") == "error" for row in rows)
        figures: Figures = {
            f"{prefix}_search_s": run.wall_s,
            f"{prefix}_search_exit": "timeout" if run.rc is None else run.rc,
            f"{prefix}_errored_trials": errored if rows else "nan",
            f"{prefix}_trials": len(rows),
        }
        if rows and rows[0].get("val_acc"):
            figures[f"{prefix}_best_val_acc"] = rows[0]["val_acc"]
        if run.rc != 0:
            return figures, f"exit code {run.rc}"
        if not rows:
            return figures, f"no leaderboard.csv in {exp_dir}"
        return figures, f"{errored} trial(s) errored" if errored else None

    return collect


def pytest_result(run: Run) -> tuple[Figures, str | None]:
    counts: dict[str, int] = {}
    for line in run.output.splitlines():
        found = PYTEST_COUNT.findall(line)
        if found and " in " in line:  # the summary line: "3 passed, 40 deselected in 9.1s"
            counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                      for n, kind in found}  # fmt: skip
    failed = counts.get("failed", 0) + counts.get("error", 0)
    figures: Figures = {
        "cuda_tests_passed": counts.get("passed", 0),
        "cuda_tests_failed": failed if counts else "nan",
        "cuda_tests_skipped": counts.get("skipped", 0),
    }
    if "No module named pytest" in run.output:
        return (
            figures,
            "pytest is missing here: ../shared/gpu/prepare.sh pytest pluggy iniconfig pygments",
        )
    if run.rc != 0 or failed or not counts.get("passed"):
        return figures, f"exit code {run.rc}, {failed} failed, {counts.get('passed', 0)} passed"
    return figures, None


def gpu_test_files() -> list[str]:
    """The test files with tests that need CUDA (skipped where torch sees none)."""
    return [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "tests").glob("test_*.py"))
        if "torch.cuda.is_available()" in p.read_text(encoding="utf-8")
    ]


def build_steps(data: Path, work: Path) -> list[Step]:
    py, me = sys.executable, str(Path(__file__).resolve().relative_to(ROOT))
    cpus = len(os.sched_getaffinity(0))
    storage = work / "results"
    probe = [py, me, "--data", str(data), "--gpu-memory-probe"]
    search = [py, "-m", "tuner", "search", "--data", str(data), "--storage", str(storage)]
    return [
        Step("a", "throughput", "fit vs the classic DataLoader loop, 224 px, batch 64, aug 0.5",
             [py, "benchmarks/throughput.py", "--data", str(data), "--batch-size", "64",
              "--steps", "30", "--rounds", "3", "--workers", str(cpus)],
             65, collect=forward("throughput_{}")),
        Step("b", "concurrency", "1, 2 and 4 ResNet-18 trials sharing the GPU",
             [py, "benchmarks/concurrency.py", "--data", str(data), "--gpu"],
             130, collect=forward("{}")),
        Step("c1", "gpu_memory_small", f"one trial's peak GPU memory, {SMALL_PHOTOS} photos",
             [*probe, str(SMALL_PHOTOS)], 30, collect=forward("{}_small")),
        Step("c2", "gpu_memory_all", "one trial's peak GPU memory, every photo",
             [*probe, "0"], 40, collect=forward("{}_all")),
        Step("d", "smoke_search", "search --space smoke (cold photo and activation cache)",
             [*search, "--space", "smoke", "--name", "gpu-smoke"], 65,
             search_result("smoke", storage / "gpu-smoke"), {"TUNER_CACHE": str(work / "c-d")}),
        Step("e", "lite_search", "search --space lite, 4 trials x <= 2 epochs (cold caches)",
             [*search, "--space", "lite", "--name", "gpu-lite", "--num-samples", "4",
              "--max-epochs", "2"], 75,
             search_result("lite", storage / "gpu-lite"), {"TUNER_CACHE": str(work / "c-e")}),
        Step("f", "cuda_tests", "the tests that need a GPU",
             [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
              "-k", "cuda or gpu", *gpu_test_files()],
             45, pytest_result, {"TUNER_TEST_FLOWERS": str(data)}),
        Step("g", "best_path", "the recommended search + export, GPU busy fraction, time split",
             [py, "benchmarks/gpu_best_path.py", "--data", str(data)], 420, forward("{}"),
             default=False),
    ]  # fmt: skip


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the step's process group (a search saves and stops Ray), then SIGKILL it
    and every process below it (Ray's daemons start sessions of their own)."""
    below = descendant_pids(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(TERM_GRACE_S)
    for target in (-proc.pid, *below, *descendant_pids(proc.pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)
    proc.wait()


def run_step(step: Step, limit_s: float, log: Path) -> Run:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    t0 = time.monotonic()
    deadline = t0 + limit_s
    with log.open("wb") as out:
        proc = subprocess.Popen(
            step.cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        rc: int | None
        try:
            rc = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
            stop_tree(proc)
        except BaseException:  # Ctrl-C of the suite: leave nothing running
            stop_tree(proc)
            raise
    return Run(rc, time.monotonic() - t0, log.read_text(encoding="utf-8", errors="replace"))


def print_tail(output: str) -> None:
    for line in output.rstrip().splitlines()[-TAIL_LINES:]:
        print(f"    | {line[:200]}")


def memory_probe(data: Path, photos: int) -> None:
    """One ResNet-18 trial (224 px, batch 64, aug 0.5, one epoch) on ``photos`` photos
    (0: all); prints its peak GPU memory."""
    require_cuda()
    require_photos(data)
    import torch

    import trainables

    classes = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    with tempfile.TemporaryDirectory(prefix="gpu-probe-") as tmp:
        folder = data
        if photos:  # the first photos/classes of each class; the whole class if it has fewer
            folder = make_subset(data, Path(tmp) / "photos", max(1, photos // max(1, len(classes))))
        t0 = time.perf_counter()
        split, cache = trainables.prepare_data(
            trainables.scan_folder(folder), resize=trainables.resize_for(224), seed=0
        )
        decode_s = time.perf_counter() - t0
        n = len(split.train) + len(split.val)
        print(f"decoded {n} photos ({len(split.train)} train) in {decode_s:.1f}s", flush=True)
        cfg = trainables.TrialConfig.from_dict(PROBE_TRIAL)
        reports: list[dict[str, object]] = []

        def report(metrics: dict[str, object], checkpoint: Path) -> None:
            reports.append(metrics)
            shutil.rmtree(checkpoint, ignore_errors=True)  # the caller owns it

        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        trainables.fit(cfg, cache, report, device=torch.device("cuda"))
        torch.cuda.synchronize()
        fit_s = time.perf_counter() - t0
    ips = float(str(reports[-1]["images_per_s"])) if reports else float("nan")
    print(f"fit: 1 epoch in {fit_s:.1f}s ({ips:.0f} images/s in the epoch)")
    print_headlines(
        {
            "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20,
            "gpu_reserved_peak_mib": torch.cuda.max_memory_reserved() / 2**20,
            "gpu_photos": n,
            "gpu_cache_mib": cache.nbytes / 2**20,
            "gpu_probe_images_per_s": ips,
        }
    )


def photo_count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"photo count must be >= 0 (0: all), got {value}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Every GPU claim of the README (throughput, GPU sharing, GPU memory, "
        "searches, the CUDA tests) as subprocess steps with time limits; NAME: VALUE lines.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds, all steps")
    parser.add_argument("--limit-factor", type=float, default=1.0, help="scale step limits")
    parser.add_argument("--only", help="comma-separated step keys or names (default: all)")
    parser.add_argument("--logs", type=Path, help="keep every step's full log in this folder")
    parser.add_argument("--keep", action="store_true", help="keep the searches' folder")
    parser.add_argument("--dry-run", action="store_true", help="list the steps, run nothing")
    parser.add_argument("--gpu-memory-probe", type=photo_count, metavar="N", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    data = args.data.expanduser().resolve()
    if args.gpu_memory_probe is not None:
        memory_probe(data, args.gpu_memory_probe)
        return
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    try:
        steps = build_steps(data, work)
        if args.only:
            wanted = {w.strip() for w in args.only.split(",") if w.strip()}
            unknown = wanted - {s.key for s in steps} - {s.name for s in steps}
            if unknown:
                die(f"--only: unknown step(s) {', '.join(sorted(unknown))}")
            steps = [s for s in steps if s.key in wanted or s.name in wanted]
        else:
            steps = [s for s in steps if s.default]
        if args.dry_run:
            print(f"{len(steps)} steps, budget {args.budget:.0f} s in all:")
            for s in steps:
                env = " ".join(f"{k}={shlex.quote(v)}" for k, v in s.env.items())
                print(f"{s.key}. {s.name} (limit {s.limit_s * args.limit_factor:.0f} s): {s.what}")
                print(f"    {env + ' ' if env else ''}{shlex.join(s.cmd)}")
            return
        run_suite(args, data, work, steps)
    finally:
        if args.keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_suite(args: argparse.Namespace, data: Path, work: Path, steps: list[Step]) -> None:
    device = require_cuda()
    require_photos(data)
    t_start = time.monotonic()
    deadline = t_start + args.budget
    logs = args.logs or work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    figures: Figures = {"device": device}
    print(f"device: {device}\n# {len(os.sched_getaffinity(0))} CPUs, photos {data}, "
          f"budget {args.budget:.0f} s, logs {logs}", flush=True)  # fmt: skip
    failed = 0
    for step in steps:
        left = deadline - time.monotonic()
        limit = min(step.limit_s * args.limit_factor, left)
        print(f"\n== {step.key}. {step.name}: {step.what} (limit {limit:.0f} s, "
              f"{time.monotonic() - t_start:.0f} s in)", flush=True)  # fmt: skip
        if limit < MIN_STEP_S:
            print(f"{step.name}_ok: 0  (skipped: {left:.0f} s of the budget left)", flush=True)
            figures[f"{step.name}_ok"] = 0
            failed += 1
            continue
        run = run_step(step, limit, logs / f"{step.key}-{step.name}.log")
        got, problem = step.collect(run)
        if run.rc is None:
            problem = f"timed out after {limit:.0f} s"
        for name, value in got.items():
            print(f"{name}: {value}")
        figures |= got
        figures[f"{step.name}_s"] = run.wall_s
        figures[f"{step.name}_ok"] = int(problem is None)
        print(f"{step.name}_ok: {int(problem is None)}  ({run.wall_s:.0f} s"
              f"{'; ' + problem if problem else ''})", flush=True)  # fmt: skip
        if problem:
            failed += 1
            print_tail(run.output)
    small, whole = figures.get("gpu_peak_mib_small"), figures.get("gpu_peak_mib_all")
    with contextlib.suppress(TypeError, ValueError, ZeroDivisionError):
        figures["gpu_peak_ratio_all_vs_small"] = float(str(whole)) / float(str(small))
    figures["suite_s"] = time.monotonic() - t_start
    figures["steps_failed"] = failed
    print_headlines(figures)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
