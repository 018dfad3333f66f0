"""Data scale: the same small `lite` search on folders of about 3k, 12k and 47k photos.

The folders are made from the flower photos: each photo cropped at random
(1, 4 or 16 crops per photo, each at most 400 px, JPEG quality 85) into a
temporary folder (kept under ``--folders``, default ``/tmp/flower-scale``, and
reused by later runs). On each, ``tuner search --space lite --num-samples 2
--max-epochs 1`` runs with an empty cache of its own, while a sampler reads
``/proc/PID/status`` of the driver and of every trial process twice a second:
``RssAnon`` (private memory) and ``RssFile + RssShmem`` (pages of mapped
files: the decoded photos and activations, shared through the page cache).

Per size it prints the decode rate, peak private and shared memory of the
driver and of each trial, the time from launch to the first trained epoch,
and the trials' training images/s. Then a second search on the 47k folder
(same cache) is started and stopped as soon as its first trial has started:
the decoded photos are reused. Headlines: ``driver_peak_rss_gb_47k`` (the
driver's private memory), ``trial_private_rss_ratio_47k_vs_3k``,
``images_per_s_ratio_47k_vs_3k``, ``second_search_first_trial_s``.

    uv run python benchmarks/data_scale.py                 # ~40 min on 2 CPUs
    uv run python benchmarks/data_scale.py --sizes 1 --quick   # a few photos, a minute
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    DEFAULT_DATA,
    ROOT,
    benchmark_search,
    check_data,
    descendant_pids,
    environment_line,
    experiment_at,
    print_headlines,
    print_table,
    work_dir,
)

TRIAL_MARK = "ray::ImplicitFunc"
MAX_SIDE = 400


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4, 16],
        help="crops per photo of each folder (default 1,4,16: ~3k, 12k, 47k photos)",
    )
    parser.add_argument("--folders", type=Path, default=Path("/tmp/flower-scale"))
    parser.add_argument("--quick", action="store_true", help="20 photos per class, 32 px")
    parser.add_argument("--keep", action="store_true", help="keep the experiments' folders")
    parser.add_argument("--verbose", action="store_true", help="echo the searches' output")
    return parser.parse_args()


def _crop_job(job: tuple[str, list[str], int]) -> None:
    from PIL import Image, ImageOps

    source, targets, seed = job
    rng = random.Random(seed)
    with Image.open(source) as opened:
        img = ImageOps.exif_transpose(opened).convert("RGB")
    for target in targets:
        w, h = img.size
        scale = rng.uniform(0.5, 1.0)
        cw, ch = max(16, int(w * scale)), max(16, int(h * scale))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((x, y, x + cw, y + ch))
        crop.thumbnail((MAX_SIDE, MAX_SIDE))
        crop.save(target, quality=85)


def make_folder(source: Path, dest: Path, crops: int, per_class: int | None) -> tuple[Path, int]:
    """``dest`` with ``crops`` random crops of each photo of ``source`` (made once, reused)."""
    done = dest / ".complete"
    if not done.is_file():
        jobs = []
        for cls in sorted(p for p in source.iterdir() if p.is_dir()):
            (dest / cls.name).mkdir(parents=True, exist_ok=True)
            photos = sorted(p for p in cls.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
            for i, photo in enumerate(photos[:per_class]):
                targets = [str(dest / cls.name / f"{photo.stem}-{k}.jpg") for k in range(crops)]
                jobs.append((str(photo), targets, hash((cls.name, i)) % 2**31))
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
            list(pool.map(_crop_job, jobs, chunksize=16))
        done.write_text("")
        print(f"  made {dest} in {time.perf_counter() - t0:.0f} s", flush=True)
    count = sum(1 for p in dest.rglob("*.jpg"))
    return dest, count


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(RssAnon, RssFile + RssShmem) of ``pid`` in KiB, or None once it is gone."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        kib = {k: int(v.split()[0]) for k, v in fields.items() if k.startswith("Rss")}
        return kib["RssAnon"], kib["RssFile"] + kib["RssShmem"]
    except (OSError, KeyError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode("utf-8", "replace")
        )
    except OSError:
        return ""


@dataclass
class Sampler:
    """Peak private and shared memory of the driver and of each trial process."""

    interval: float = 0.5
    driver: tuple[int, int] = (0, 0)
    trials: dict[int, tuple[int, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._loop, args=(pid,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self, root: int) -> None:
        while not self._stop.wait(self.interval):
            mem = memory_kib(root)
            if mem is None:
                continue
            self.driver = (max(self.driver[0], mem[0]), max(self.driver[1], mem[1]))
            for pid in descendant_pids(root):
                if TRIAL_MARK not in _cmdline(pid):
                    continue
                got = memory_kib(pid)
                if got is not None:
                    old = self.trials.get(pid, (0, 0))
                    self.trials[pid] = (max(old[0], got[0]), max(old[1], got[1]))


@dataclass
class Result:
    photos: int
    decode_per_s: float
    driver: tuple[int, int]
    trial_private: int  # KiB: the largest trial's peak RssAnon
    trial_shared: int
    first_epoch_s: float
    images_per_s: float
    wall_s: float


def space_args(quick: bool) -> list[str]:
    extra = ["--num-samples", "2", "--max-epochs", "1"]
    return extra + (["--test-fraction", "0.15"] if not quick else [])


def measure(folder: Path, photos: int, space: Path | str, storage: Path, args: Any) -> Result:
    sampler = Sampler()
    name = f"scale-{photos}"
    run = benchmark_search(
        space, folder, storage, name, space_args(args.quick), verbose=args.verbose, watcher=sampler
    )
    exp = experiment_at(run.exp_dir)
    rows = [r for t in exp.trial_ids() for r in exp.reports(t)]
    first = min(r["timestamp"] for r in rows) - run.started
    ips = sorted(r["images_per_s"] for r in rows)
    decode = run.cache
    per_s = photos / decode[1] if decode else float("nan")
    trial = max(sampler.trials.values(), default=(0, 0))
    return Result(
        photos, per_s, sampler.driver, trial[0], trial[1], first, sum(ips) / len(ips), run.wall_s
    )


def second_search_start(folder: Path, space: Path | str, storage: Path, cache: Path) -> float:
    """Seconds from launch to the first trial folder of a second search on ``folder``."""
    name = "scale-second"
    cmd = [sys.executable, "-m", "tuner", "search", "--space", str(space), "--data", str(folder)]
    cmd += ["--storage", str(storage), "--name", name, "--num-samples", "1", "--max-epochs", "1"]
    env = {**os.environ, "TUNER_CACHE": str(cache)}
    t0 = time.perf_counter()
    log = (storage / f"{name}.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None and time.perf_counter() - t0 < 600:
            if any((storage / name).glob("trial_*")):
                return time.perf_counter() - t0
            time.sleep(0.2)
        raise SystemExit(f"the second search did not start a trial; see {log.name}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        reused = "Decoded photos reused" in (storage / f"{name}.log").read_text()
        print(f"  second search: decoded photos reused: {reused}", flush=True)


def main() -> None:
    args = parse_args()
    data = check_data(args.data)
    print(f"# Data scale, {environment_line()}")
    per_class = 20 if args.quick else None
    with work_dir(args.keep, "bench-scale-") as tmp:
        space: Path | str = "lite"
        if args.quick:
            space = tmp / "quick.yaml"
            base = (ROOT / "search_spaces" / "lite.yaml").read_text()
            space.write_text(base.replace("image_size: 224", "image_size: 32"))
        results = []
        for crops in args.sizes:
            suffix = "-quick" if args.quick else ""
            folder, photos = make_folder(data, args.folders / f"x{crops}{suffix}", crops, per_class)
            print(f"## {photos} photos ({crops} crop(s) per photo)", flush=True)
            results.append(measure(folder, photos, space, tmp / "results", args))
        biggest = args.folders / f"x{args.sizes[-1]}{'-quick' if args.quick else ''}"
        second = second_search_start(
            biggest, space, tmp / "results", tmp / "results" / f"scale-{results[-1].photos}-cache"
        )

    def gib(kib: int) -> float:
        return kib / 2**20

    print()
    print_table(
        [
            "photos",
            "decode/s",
            "driver private GiB",
            "driver mapped GiB",
            "trial private GiB",
            "trial mapped GiB",
            "first epoch s",
            "train img/s",
            "search s",
        ],
        [
            [
                r.photos,
                r.decode_per_s,
                gib(r.driver[0]),
                gib(r.driver[1]),
                gib(r.trial_private),
                gib(r.trial_shared),
                r.first_epoch_s,
                r.images_per_s,
                r.wall_s,
            ]
            for r in results
        ],
    )
    small, big = results[0], results[-1]
    print_headlines(
        {
            "driver_peak_rss_gb_47k": gib(big.driver[0]) * 2**30 / 1e9,
            "trial_private_rss_ratio_47k_vs_3k": big.trial_private / max(small.trial_private, 1),
            "images_per_s_ratio_47k_vs_3k": big.images_per_s / small.images_per_s,
            "second_search_first_trial_s": second,
        }
    )


if __name__ == "__main__":
    main()
