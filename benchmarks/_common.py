"""Helpers shared by the benchmark scripts: photo folders, spaces, searches, results, output.

Every benchmark ends its output with one ``NAME: VALUE`` line per headline
figure (see docs/design.md); :func:`print_headlines` writes them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "flowers"
SPACES = ROOT / "search_spaces"

# Lines of `tuner search` output worth showing live (the full output goes to a log file).
_ECHO_PREFIXES = (
    "Split:",
    "Decoded",
    "Search:",
    "Results:",
    "Trials:",
    "Best trial",
    "Wrote",
    "The search was interrupted",
    "error",
    "Error",
)
_CACHE_RE = re.compile(r"Decoded \d+ photos at (\d+)px in ([\d.]+)s .*?\((\d+) MiB on disk")


def add_search_flags(parser: argparse.ArgumentParser, quick_help: str) -> None:
    """--keep, --verbose and --quick, shared by the scripts that run `tuner search`."""
    parser.add_argument("--keep", action="store_true", help="keep the experiments' folders")
    parser.add_argument("--verbose", action="store_true", help="echo the searches' full output")
    parser.add_argument("--quick", action="store_true", help=quick_help)


def make_subset(source: Path, dest: Path, per_class: int) -> Path:
    """A folder of symlinks to the first ``per_class`` photos of each class of ``source``."""
    for cls in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        photos = sorted(p for p in cls.iterdir() if p.is_file() and not p.name.startswith("."))
        for photo in photos[:per_class]:
            (dest / cls.name / photo.name).symlink_to(photo.resolve())
    return dest


def own_cache(data: Path, prefix: str, quick_per_class: int | None) -> tuple[Path, Path]:
    """A new temporary folder made this process's ``$TUNER_CACHE`` (the project reads it on
    first use: call this first), and the photos to use: ``data`` checked, or with
    ``quick_per_class`` a subset of that many photos per class linked into the folder."""
    photos = check_data(data)
    cache = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["TUNER_CACHE"] = str(cache)
    if quick_per_class is not None:
        photos = make_subset(photos, cache / "photos", per_class=quick_per_class)
    return cache, photos


@contextmanager
def work_dir(keep: bool, prefix: str) -> Iterator[Path]:
    """A temporary folder for storage and spaces, removed afterwards unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"(kept {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def bench_run(
    args: argparse.Namespace, title: str, setup: str, prefix: str
) -> Iterator[tuple[Path, Path]]:
    """Print a benchmark's header (``title``, where it runs, ``setup``, the load), make its
    work folder; yields (work folder, photos): ``--data``, or 12 of each class of it
    with ``--quick``."""
    data = check_data(args.data)
    print(f"# {title}, {environment_line()}")
    print(f"# {setup}")
    print(f"# {load_line()}")
    with work_dir(args.keep, prefix) as tmp:
        if args.quick:
            data = make_subset(data, tmp / "photos", per_class=12)
        yield tmp, data


def write_space(
    dest: Path,
    base: str | None = None,
    params: Mapping[str, Any] | None = None,
    budget: Mapping[str, Any] | None = None,
    points_to_evaluate: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a space YAML to ``dest``: built-in space ``base`` (or empty) with overrides.

    ``params`` and ``budget`` update the base's sections key by key;
    ``points_to_evaluate`` (when given) replaces the base's.
    """
    raw: dict[str, Any] = {}
    if base is not None:
        raw = yaml.safe_load((SPACES / f"{base}.yaml").read_text(encoding="utf-8")) or {}
    raw["params"] = {**raw.get("params", {}), **(params or {})}
    raw["budget"] = {**raw.get("budget", {}), **(budget or {})}
    if points_to_evaluate is not None:
        raw["points_to_evaluate"] = points_to_evaluate
    if not raw.get("points_to_evaluate"):
        raw.pop("points_to_evaluate", None)
    dest.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return dest


class Watcher(Protocol):
    """Something that observes a running search process (e.g. samples its memory)."""

    def start(self, pid: int) -> None: ...

    def stop(self) -> None: ...


@dataclass
class SearchRun:
    """One finished ``python -m tuner search`` run."""

    name: str
    exp_dir: Path
    returncode: int
    started: float  # time.time() just before the process was launched
    wall_s: float
    log: Path
    output: str

    @property
    def cache(self) -> tuple[int, float, int] | None:
        """(decoded px, decode seconds, MiB) from the search's "Decoded" line (None if reused)."""
        match = _CACHE_RE.search(self.output)
        if match is None:
            return None
        return int(match.group(1)), float(match.group(2)), int(match.group(3))


def benchmark_search(
    space: Path | str,
    data: Path,
    storage: Path,
    name: str,
    extra: Sequence[str] = (),
    *,
    verbose: bool = False,
    watcher: Watcher | None = None,
    cache: Path | None = None,
) -> SearchRun:
    """Run ``python -m tuner search`` as a user would; stream it to a log, echo key lines.

    Each search starts with an empty cache of its own (decoded photos, frozen
    activations), so its time includes filling it, unless ``cache`` names one
    to share. Exits the benchmark (with the tail of the log) if the search fails.
    """
    storage.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNER_CACHE": str(cache or storage / f"{name}-cache")}
    log = storage / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "tuner",
        "search",
        "--space",
        str(space),
        "--data",
        str(data),
        "--storage",
        str(storage),
        "--name",
        name,
        *extra,
    ]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    lines: list[str] = []
    started = time.time()
    t0 = time.perf_counter()
    with (
        log.open("w", encoding="utf-8") as out,
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc,
    ):
        if watcher is not None:
            watcher.start(proc.pid)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                lines.append(line)
                if verbose or line.lstrip().startswith(_ECHO_PREFIXES):
                    print(f"  | {line.rstrip()}", flush=True)
            returncode = proc.wait()
        finally:
            if watcher is not None:
                watcher.stop()
    wall = time.perf_counter() - t0
    run = SearchRun(name, storage / name, returncode, started, wall, log, "".join(lines))
    if returncode != 0:
        tail = "".join(lines[-40:])
        raise SystemExit(f"search {name} failed with exit code {returncode}; log {log}:\n{tail}")
    print(f"  ({name}: {wall:.0f} s)", flush=True)
    return run


def experiment_at(exp_dir: Path) -> Any:
    """The :class:`tuner.Experiment` whose local folder is ``exp_dir``."""
    from tuner import Experiment

    return Experiment.from_folder(exp_dir)


def trial_results(exp_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every reported epoch of every trial, by trial folder name."""
    exp = experiment_at(exp_dir)
    return {f"trial_{t}": [r for r in exp.reports(t) if "val_acc" in r] for t in exp.trial_ids()}


def epochs_in_order(exp_dir: Path) -> list[float]:
    """val_acc of every reported trial-epoch of a search, in the order they were reported."""
    reports = [r for results in trial_results(exp_dir).values() for r in results]
    reports.sort(key=lambda r: float(r.get("timestamp", 0)))
    return [float(r["val_acc"]) for r in reports]


def epochs_to_reach(accs: Sequence[float], target: float) -> int | None:
    """Trial-epochs run until one reached ``target`` (None: never)."""
    for i, acc in enumerate(accs, start=1):
        if acc >= target - 1e-12:
            return i
    return None


def read_leaderboard(exp_dir: Path) -> list[dict[str, str]]:
    """Rows of ``leaderboard.csv`` (best first), as strings."""
    import csv

    with (exp_dir / "leaderboard.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def median(values: Iterable[float]) -> float:
    """Median of ``values`` (NaN when empty)."""
    items = list(values)
    return statistics.median(items) if items else math.nan


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def print_headlines(figures: Mapping[str, object]) -> None:
    """The closing ``NAME: VALUE`` lines, one per headline figure."""
    print()
    for name, value in figures.items():
        if isinstance(value, float):
            text = "nan" if math.isnan(value) else f"{value:.{_digits(value)}f}"
        else:
            text = str(value)
        print(f"{name}: {text}", flush=True)


def _digits(value: float) -> int:
    return 2 if abs(value) >= 1 or value == 0 else 4


def environment_line() -> str:
    """One line describing where the benchmark ran."""
    import platform

    import torch

    cpus = len(os.sched_getaffinity(0))
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, {cpus} CPU(s) "
        f"({platform.processor() or platform.machine()}), "
        f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}"
    )


def load_line() -> str:
    """The machine's load averages (other work on a small machine skews timings)."""
    one, five, _ = os.getloadavg()
    return (
        f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {len(os.sched_getaffinity(0))} CPUs"
    )


class OtherCpu:
    """How much CPU other processes used while this one (and its waited-for children) ran.

    ``other = OtherCpu()`` starts measuring; ``other.share()`` is the fraction of
    the machine's CPU capacity used since then by every other process; ``restart()``
    starts a new window. Near 0 means the timings were taken undisturbed.
    """

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._busy0 = _machine_busy_s()
        self._own0 = _own_cpu_s()
        self._t0 = time.perf_counter()

    def share(self) -> float:
        wall = time.perf_counter() - self._t0
        others = (_machine_busy_s() - self._busy0) - (_own_cpu_s() - self._own0)
        return max(0.0, others) / (max(wall, 1e-9) * (os.cpu_count() or 1))


def _machine_busy_s() -> float:
    """CPU-seconds all CPUs spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU-seconds of this process, its waited-for children and its live descendants
    (DataLoader workers, for example)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + _live_descendants_cpu_s()


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU-seconds used) of every process (``/proc/PID/stat``)."""
    found: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        found[int(entry)] = (int(fields[1]), cpu)
    return found


def descendant_pids(pid: int) -> list[int]:
    """Every live process below ``pid``: its children, theirs, and so on."""
    processes = _processes()
    below, frontier = [], [pid]
    while frontier:
        frontier = [p for p, (parent, _) in processes.items() if parent in frontier]
        below += frontier
    return below


def _live_descendants_cpu_s() -> float:
    processes = _processes()
    return sum(processes[p][1] for p in descendant_pids(os.getpid()) if p in processes)


def check_data(path: Path) -> Path:
    """``path`` resolved, or exit with a message if it is not a folder."""
    if not path.is_dir():
        raise SystemExit(f"photo folder {path} not found (give --data DIR)")
    return path.resolve()


def die(message: str) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(2)


def require_cuda() -> str:
    """The GPU's name, or exit 2 with one line."""
    try:
        import torch
    except ImportError as e:
        die(f"no CUDA GPU: torch is not importable ({e}); run it on a GPU machine")
    if not torch.cuda.is_available():
        die(
            f"no CUDA GPU: torch {torch.__version__} sees no CUDA device; "
            "run it on a GPU machine (see benchmarks/gpu_suite.py)"
        )
    return torch.cuda.get_device_name(0)


def require_photos(data: Path) -> None:
    if not data.is_dir():
        die(f"no photo folder at {data}; pass --data DIR (ImageFolder layout)")
