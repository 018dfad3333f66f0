"""Concurrency: aggregate images/s and node memory of 1 trial vs N concurrent trials.

Runs real searches (``python -m tuner search``) of one fixed configuration
(EfficientNet-Lite0, pretrained, 160 px, so the decoded cache of all photos
is ~280 MiB; N identical trials), each with ``--cpus-per-trial 1``:
first ``--max-concurrent 1`` (the trials run one after another), then
``--max-concurrent N`` (they run side by side).

* **Throughput**: every reported epoch carries ``images_per_s``
  (``trial_*/result.json``). With one trial at a time the aggregate is the
  median over its epochs; with N the aggregate is the sum over the trials of
  their median over epochs that overlapped another trial's.
* **Memory**: every 0.5 s the benchmark sums the proportional set size
  (``Pss`` of ``/proc/PID/smaps_rollup``) of the search's whole process tree:
  the driver, Ray's daemons and every worker (``ray::...``). PSS divides each
  shared page among the processes that map it, so the decoded cache, held
  once in Ray's shared-memory object store and mapped read-only by every
  trial, is counted once. If each trial had its own copy, every extra trial
  would add the cache size on top of its own process (Python, torch, the
  model and its activations: several hundred MiB). The benchmark also reads
  each trial worker's ``/proc/PID/smaps`` for the object-store mapping: how
  much of the shared cache it has resident (RSS) and how little of it PSS
  charges to it.

With ``--gpu`` (on a machine with a GPU) it measures fractional GPU sharing
instead: 1, 2 and 4 trials of ResNet-18 (random init, 224 px, batch 64,
aug_strength 0.5, every stage trained) at 1, 0.5 and 0.25 GPU per trial, all
at once, the machine's CPUs split between them; aggregate images/s of each.

    uv run python benchmarks/concurrency.py            # ~10 min on 2 CPUs
    uv run python benchmarks/concurrency.py --quick    # same code paths, ~1-2 min
    uv run python benchmarks/concurrency.py --gpu      # 1/2/4 trials sharing one GPU
"""

from __future__ import annotations

import argparse
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_DATA,
    SearchRun,
    add_search_flags,
    benchmark_search,
    check_data,
    environment_line,
    load_line,
    make_subset,
    median,
    print_headlines,
    print_table,
    trial_results,
    work_dir,
    write_space,
)

KIB_PER_MIB = 1024
# Ray names the process running a function trainable after its actor class.
TRIAL_PROCESS_MARK = "ray::ImplicitFunc"

Results = dict[str, list[dict[str, Any]]]  # trial -> its reported epochs
Span = tuple[float, float, float]  # (start, end, images_per_s) of one epoch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Aggregate training images/s and peak node memory (PSS of the driver, Ray "
        "and all workers) of 1 trial at a time vs N concurrent trials, 1 CPU each, via "
        "`python -m tuner search`.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--trials", type=int, default=2, help="N: trials run side by side")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per trial")
    parser.add_argument(
        "--freeze-depth",
        type=int,
        default=3,
        help="frozen backbone stages (3 keeps a full-data epoch short on a CPU)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--interval", type=float, default=0.5, help="memory sampling period, s")
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="fractional GPU sharing: 1, 2, 4 trials at 1, 0.5, 0.25 GPU (needs a GPU)",
    )
    add_search_flags(parser, "tiny run of the same code paths (12 photos/class, 64 px)")
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.epochs = 64, 1
    return args


@dataclass
class Sample:
    """Memory of the search's process tree at one moment (KiB of PSS)."""

    t: float
    total: int
    driver: int
    trial_workers: int
    other: int
    n_trials: int
    trials_store_rss: int  # object-store pages resident in the trial workers' address spaces
    trials_store_pss: int  # ... and the share of them counted to the trial workers


@dataclass
class PssSampler:
    """Samples the PSS of a process and all its descendants on a background thread."""

    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    ray_processes: set[str] = field(default_factory=set)  # names of the ray:: processes seen
    _root: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._root = pid
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        t0 = time.perf_counter()
        while True:
            sample = self.sample(time.perf_counter() - t0)
            if sample is not None:
                self.samples.append(sample)
            if self._stop.wait(self.interval):
                return

    def sample(self, t: float) -> Sample | None:
        """One reading of the tree's PSS, or None if the root process is gone."""
        tree = descendants(self._root)
        driver = pss_kib(self._root)
        if driver is None:
            return None
        trial_workers = other = n_trials = store_rss = store_pss = 0
        for pid in tree:
            pss = pss_kib(pid)
            if pss is None:
                continue
            cmd = command_line(pid)
            if cmd.startswith("ray::"):
                self.ray_processes.add(cmd.split()[0])
            if TRIAL_PROCESS_MARK in cmd:
                trial_workers += pss
                n_trials += 1
                rss_kib, pss_of_store = object_store_kib(pid)
                store_rss += rss_kib
                store_pss += pss_of_store
            else:
                other += pss
        return Sample(
            t,
            driver + trial_workers + other,
            driver,
            trial_workers,
            other,
            n_trials,
            store_rss,
            store_pss,
        )

    def peak(self, during_trials: bool = False) -> Sample:
        """The sample with the largest total (optionally only while a trial ran)."""
        pool = [s for s in self.samples if s.n_trials] if during_trials else self.samples
        if not pool:
            raise SystemExit("no memory samples were taken")
        return max(pool, key=lambda s: s.total)


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (not ``root`` itself)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def pss_kib(pid: int) -> int | None:
    """``Pss`` of ``/proc/PID/smaps_rollup`` in KiB, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def object_store_kib(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in KiB of the Ray object store (``/dev/shm/plasma*``) mapped into ``pid``."""
    rss = pss = 0
    in_store = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(maxsplit=1)[0]
                if not head.endswith(":"):  # a mapping's header line: "start-end perms ... path"
                    in_store = "plasma" in line
                elif in_store and head == "Rss:":
                    rss += int(line.split()[1])
                elif in_store and head == "Pss:":
                    pss += int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def command_line(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


@dataclass
class Measurement:
    """One search: its throughput and memory."""

    concurrent: int
    run: SearchRun
    per_trial_ips: dict[str, float]
    aggregate_ips: float
    max_overlap: int
    peak: Sample
    peak_trials: Sample
    ray_processes: set[str]
    samples: list[Sample]


def epoch_spans(rows: list[dict[str, Any]]) -> list[Span]:
    """(start, end, images_per_s) of each reported epoch, wall clock in seconds.

    Ray's ``timestamp`` is whole seconds (truncated), so the end is taken half
    a second later and overlaps are judged with a second of tolerance.
    """
    spans = []
    for row in rows:
        end = float(row["timestamp"]) + 0.5
        spans.append((end - float(row["epoch_time_s"]), end, float(row["images_per_s"])))
    return spans


def aggregate(results: Results, concurrent: int) -> tuple[float, dict[str, float]]:
    """(aggregate images/s, each trial's median images/s).

    One trial at a time: the median over all epochs. Several: the sum over the
    trials of each trial's median over its epochs that overlapped other
    trials' epochs for at least half their length (NaN if none did).
    """
    spans = {trial: epoch_spans(rows) for trial, rows in results.items()}
    per_trial = {trial: median(ips for _, _, ips in s) for trial, s in spans.items()}
    if concurrent == 1:
        return median(ips for s in spans.values() for _, _, ips in s), per_trial
    overlapping: dict[str, list[float]] = {}
    for trial, own in spans.items():
        others = [span for other, s in spans.items() if other != trial for span in s]
        for start, end, ips in own:
            shared = sum(max(0.0, min(end, e) - max(start, s)) for s, e, _ in others)
            if shared + 1.0 >= 0.5 * (end - start):
                overlapping.setdefault(trial, []).append(ips)
    if len(overlapping) < 2:
        return math.nan, per_trial
    return sum(median(v) for v in overlapping.values()), per_trial


def measure(
    concurrent: int, space: Path, data: Path, storage: Path, args: argparse.Namespace
) -> Measurement:
    sampler = PssSampler(args.interval)
    run = benchmark_search(
        space,
        data,
        storage,
        f"concurrent-{concurrent}",
        ["--max-concurrent", str(concurrent), "--cpus-per-trial", "1"],
        verbose=args.verbose,
        watcher=sampler,
    )
    results = trial_results(run.exp_dir)
    if len(results) != args.trials or any(len(r) != args.epochs for r in results.values()):
        raise SystemExit(f"{run.name}: expected {args.trials} trials of {args.epochs} epochs")
    ips, per_trial = aggregate(results, concurrent)
    overlap = max(sample.n_trials for sample in sampler.samples)
    return Measurement(
        concurrent,
        run,
        per_trial,
        ips,
        overlap,
        sampler.peak(),
        sampler.peak(during_trials=True),
        sampler.ray_processes,
        sampler.samples,
    )


def mib(kib: int) -> float:
    return kib / KIB_PER_MIB


def gpu_main(args: argparse.Namespace, data: Path) -> None:
    """Aggregate images/s of 1, 2 and 4 trials sharing one GPU (1, 0.5, 0.25 each)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a GPU that torch can see")
    cpus = len(os.sched_getaffinity(0))
    epochs = 1 if args.quick else 3
    print(f"# GPU sharing on {torch.cuda.get_device_name(0)}; {environment_line()}")
    print(
        f"# N trials of ResNet-18 (random init), 224px, batch 64, aug_strength 0.5, "
        f"{epochs} epoch(s), 1/N GPU and {cpus}/N CPUs each, all N at once"
    )
    rows, figures = [], {}
    with work_dir(args.keep, "bench-gpu-sharing-") as tmp:
        if args.quick:
            data = make_subset(data, tmp / "photos", per_class=40)
        for n in (1, 2, 4):
            space = write_space(
                tmp / f"gpu{n}.yaml",
                params={
                    "model": "resnet18",
                    "pretrained": False,
                    "image_size": 64 if args.quick else 224,
                    "optimizer": {"choice": ["sgd"]},
                    "lr": 1.0e-2,
                    "batch_size": 64,
                    "freeze_depth": 0,
                    "aug_strength": 0.5,
                },
                budget={"num_samples": n, "max_epochs": epochs, "grace_period": epochs},
            )
            run = benchmark_search(
                space,
                data,
                tmp / "results",
                f"gpu-{n}",
                [
                    "--max-concurrent", str(n),
                    "--gpus-per-trial", f"{1 / n:g}",
                    "--cpus-per-trial", f"{max(1, cpus // n)}",
                ],
                verbose=args.verbose,
            )  # fmt: skip
            results = trial_results(run.exp_dir)
            # Epoch 1 includes cuDNN's autotuning: the later epochs are the steady state.
            steady = {t: r[1:] or r for t, r in results.items()}
            ips, per_trial = aggregate(steady, n)
            rows.append([n, f"{1 / n:g}", " / ".join(f"{v:.0f}" for v in per_trial.values()), ips])
            figures[f"gpu_aggregate_images_per_s_{n}_trials"] = ips
    print()
    print_table(["trials at once", "GPU each", "img/s of each trial", "aggregate img/s"], rows)
    one = figures["gpu_aggregate_images_per_s_1_trials"]
    print_headlines(
        figures
        | {
            "gpu_aggregate_speedup_2_trials": figures["gpu_aggregate_images_per_s_2_trials"] / one,
            "gpu_aggregate_speedup_4_trials": figures["gpu_aggregate_images_per_s_4_trials"] / one,
        }
    )


def main() -> None:
    args = parse_args()
    data = check_data(args.data)
    if args.gpu:
        gpu_main(args, data)
        return
    n = args.trials
    print(f"# Concurrency, 1 trial at a time vs {n} side by side, {environment_line()}")
    print(
        f"# {n} trials of {args.epochs} epoch(s): EfficientNet-Lite0 (pretrained), "
        f"{args.image_size}px, batch {args.batch_size}, freeze_depth {args.freeze_depth}, "
        "1 CPU each"
    )
    print(f"# {load_line()}")
    with work_dir(args.keep, "bench-concurrency-") as tmp:
        if args.quick:
            data = make_subset(data, tmp / "photos", per_class=12)
        space = write_space(
            tmp / "fixed.yaml",
            params={
                "model": "efficientnet_lite0",
                "pretrained": True,
                "image_size": args.image_size,
                # A space of constants only cannot be searched (OptunaSearch needs one
                # distribution), so the optimizer is a choice of one.
                "optimizer": {"choice": ["adam"]},
                "lr": 1.0e-3,
                "batch_size": args.batch_size,
                "freeze_depth": args.freeze_depth,
                "aug_strength": 0.3,
            },
            budget={
                "num_samples": n,
                "max_epochs": args.epochs,
                "grace_period": args.epochs,
                "cpus_per_trial": 1,
            },
        )
        one = measure(1, space, data, tmp / "results", args)
        many = measure(n, space, data, tmp / "results", args)

    cache = one.run.cache
    cache_mib = float(cache[2]) if cache else math.nan
    print()
    print_table(
        ["throughput", "img/s of each trial", "aggregate img/s", "wall s"],
        [
            [
                f"--max-concurrent {m.concurrent}",
                " / ".join(f"{v:.1f}" for v in m.per_trial_ips.values()),
                m.aggregate_ips,
                m.run.wall_s,
            ]
            for m in (one, many)
        ],
    )
    print()
    print_table(
        [
            "memory (PSS, MiB)",
            "trial processes",
            "peak total",
            "driver",
            "trial workers",
            "other Ray",
            "peak while training",
        ],
        [
            [
                f"--max-concurrent {m.concurrent}",
                m.max_overlap,
                mib(m.peak.total),
                mib(m.peak.driver),
                mib(m.peak.trial_workers),
                mib(m.peak.other),
                mib(m.peak_trials.total),
            ]
            for m in (one, many)
        ],
    )
    extra = (mib(many.peak.total) - mib(one.peak.total)) / (n - 1)
    extra_training = (mib(many.peak_trials.total) - mib(one.peak_trials.total)) / (n - 1)
    print(
        f"decoded cache: {cache_mib:.0f} MiB; each extra concurrent trial added {extra:.0f} MiB "
        f"to the node's peak ({extra_training:.0f} MiB comparing peaks while trials trained)"
    )
    for m in (one, many):
        store = max(m.samples, key=lambda s: s.trials_store_rss)
        if store.n_trials:
            print(
                f"--max-concurrent {m.concurrent}: {store.n_trials} trial process(es) had "
                f"{mib(store.trials_store_rss) / store.n_trials:.0f} MiB each of Ray's object "
                f"store (the shared cache) resident, charged "
                f"{mib(store.trials_store_pss) / store.n_trials:.0f} MiB each in PSS"
            )
    print(f"Ray processes seen: {', '.join(sorted(one.ray_processes | many.ray_processes))}")
    if many.max_overlap < n:
        print(f"note: at most {many.max_overlap} trial processes ran at once, not {n}")
    if math.isnan(many.aggregate_ips):
        print("note: no epochs of different trials overlapped; the aggregate is undefined")
    print(f"# at the end: {load_line()}")
    print_headlines(
        {
            f"aggregate_speedup_{n}_trials": many.aggregate_ips / one.aggregate_ips,
            "aggregate_images_per_s_1_trial": one.aggregate_ips,
            f"aggregate_images_per_s_{n}_trials": many.aggregate_ips,
            "peak_pss_mib_1_trial": mib(one.peak.total),
            f"peak_pss_mib_{n}_trials": mib(many.peak.total),
            "cache_mib": cache_mib,
            "extra_mib_per_extra_trial": extra,
        }
    )


if __name__ == "__main__":
    main()
