"""Training throughput: this project's training loop vs the classic PyTorch recipe.

All contenders train ResNet-18 (random init) on the flower photos at the
same size, batch, augmentation strength and thread count, on the GPU when
one is present (else the CPU):

* **plain loop**: ``torchvision.datasets.ImageFolder`` with PIL transforms
  (RandomResizedCrop, RandomHorizontalFlip, ColorJitter, ToTensor, Normalize),
  ``DataLoader(batch_size, shuffle=True, num_workers=W, pin_memory=on a GPU,
  persistent_workers)`` with W the CPUs the trial has (``--workers``), fp32
  forward/backward/SGD step. Every step decodes its JPEGs in the workers.
* **plain loop, tuned**: the same loop with channels-last and the precision
  ``choose_precision`` picks (bf16 autocast where native), as a user who
  knows AMP would write it.
* **project**: the photos decoded once into the uint8 cache
  (``trainables.prepare_data``; its time is reported separately), then
  ``trainables.fit`` itself: batched augmentation on the trial's device,
  channels-last, the same precision, SGD.

The project's augmentation alone (``trainables.augment_batch``) is timed
too, as a share of a project step (``augment_share_of_step``).

``fit`` cannot be timed per step from outside, so the project side runs one
``fit`` call of ``rounds + 1`` short epochs over a subset of the cache and
reads ``images_per_s`` from each reported epoch (the first epoch is warm-up).
The plain loops run their rounds inside ``fit``'s report callback, so the
contenders alternate: warm-up, P, T, F, P, T, F, ... (the machine is noisy).

Every round also records the share of the machine's CPUs that other
processes used meanwhile (the loops' own DataLoader workers are not
"other"): with 2 torch threads on 2 cores, a core taken by anything else
slows a step several-fold. The headline medians use the undisturbed rounds
(others < 10 %) when each contender has at least two, else all rounds (with
a warning); both are printed.

    uv run python benchmarks/throughput.py            # the real measurement (~6 min on 2 CPUs)
    uv run python benchmarks/throughput.py --quick    # the same code paths, seconds
    # on a GPU machine: batch 64, 30 steps per round, workers = every CPU
    uv run python benchmarks/throughput.py --batch-size 64 --steps 30
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    DEFAULT_DATA,
    OtherCpu,
    check_data,
    environment_line,
    load_line,
    make_subset,
    median,
    print_headlines,
    print_table,
)
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import trainables

# The project's augmentation at strength s (trainables/train/_augment.py): random resized
# crop down to 1 - 0.92 s of the area, colour jitter 0.4 s, hue 0.05 s. The plain
# loop uses the same crop range and jitter so both do comparable work.
_MIN_CROP_SCALE = 0.08
_MAX_JITTER = 0.4
_MAX_HUE = 0.05
# A round counts as undisturbed when other processes used less than this share of the CPUs.
QUIET_SHARE = 0.10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Images/s of this project's training loop (trainables.fit on the decoded "
        "uint8 cache) vs a plain ImageFolder + DataLoader loop (fp32, and with channels-last "
        "+ autocast), same model, size, batch, augmentation strength and threads, "
        "alternating timed rounds, on the GPU when there is one.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--aug-strength", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (all contenders)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers of the plain loops (default: --threads on a CPU, every CPU "
        "on a GPU machine: the CPUs the trial would have)",
    )
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds of each contender")
    parser.add_argument("--steps", type=int, default=6, help="training steps per round")
    parser.add_argument("--warmup-steps", type=int, default=3, help="plain-loop warm-up steps")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny run of the same code paths (8 photos/class, 64 px, batch 8, 2x2 steps)",
    )
    args = parser.parse_args()
    if args.quick:
        args.image_size, args.batch_size = 64, 8
        args.rounds, args.steps, args.warmup_steps = 2, 2, 1
    return args


class PlainLoop:
    """The classic recipe: ImageFolder + PIL transforms + DataLoader workers + SGD steps.

    ``precision`` fp32 is the plain loop; with autocast and ``channels_last``
    it is the same loop tuned the way the PyTorch docs suggest.
    """

    def __init__(
        self,
        root: Path,
        args: argparse.Namespace,
        precision: trainables.ComputePolicy,
        channels_last: bool,
        workers: int,
    ) -> None:
        s = args.aug_strength
        tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    args.image_size, scale=(1 - (1 - _MIN_CROP_SCALE) * s, 1)
                ),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(
                    brightness=_MAX_JITTER * s,
                    contrast=_MAX_JITTER * s,
                    saturation=_MAX_JITTER * s,
                    hue=_MAX_HUE * s,
                ),
                transforms.ToTensor(),
                transforms.Normalize(*trainables.normalization("resnet18")),
            ]
        )
        dataset = datasets.ImageFolder(str(root), transform=tf)
        self.device = precision.device
        self.precision = precision
        self.channels_last = channels_last
        self.n_photos = len(dataset)
        self.loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            drop_last=True,
        )
        self.batches: Iterator[Any] = iter(self.loader)
        torch.manual_seed(0)
        model = trainables.build_model("resnet18", len(dataset.classes), pretrained=False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.to(self.device)
        self.model.train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.scaler = precision.grad_scaler()
        self.loss_fn = nn.CrossEntropyLoss()
        self.batch_size = args.batch_size

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(self.batches, None)
        if batch is None:  # a new epoch
            self.batches = iter(self.loader)
            batch = next(self.batches)
        images, labels = batch
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def run(self, steps: int) -> tuple[float, float]:
        """Train ``steps`` steps; (images/s, share of the time spent waiting for data)."""
        data_s = 0.0
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            td = time.perf_counter()
            images, labels = self._next()
            data_s += time.perf_counter() - td
            with self.precision.autocast():
                loss = self.loss_fn(self.model(images).float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        _sync(self.device)
        elapsed = time.perf_counter() - t0
        return steps * self.batch_size / elapsed, data_s / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def subset_cache(
    cache: trainables.DecodedSplit, n_train: int, n_val: int, seed: int = 0
) -> trainables.DecodedSplit:
    """An DecodedSplit of ``n_train`` random training rows and ``n_val`` validation rows."""
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(len(cache.train_y), size=n_train, replace=False))
    val = np.sort(rng.choice(len(cache.val_y), size=min(n_val, len(cache.val_y)), replace=False))
    return cache.subset(train, val)


def augment_seconds_per_image(
    x: torch.Tensor, image_size: int, strength: float, batch: int, batches: int, offset: int = 0
) -> float:
    """Seconds per image of the project's batched augmentation alone (augment_batch)."""
    generator = torch.Generator().manual_seed(offset)
    _sync(x.device)
    t0 = time.perf_counter()
    for i in range(batches):
        idx = (torch.arange(batch, device=x.device) + (offset + i) * batch) % len(x)
        trainables.augment_batch(x[idx], image_size, strength, generator)
    _sync(x.device)
    return (time.perf_counter() - t0) / (batches * batch)


@dataclass
class Round:
    """One timed round of one contender."""

    images_per_s: float
    data_s_per_image: float  # loading + augmenting (plain) or augmenting alone (project)
    others_cpu: float  # share of the machine's CPUs other processes used meanwhile

    @property
    def quiet(self) -> bool:
        return self.others_cpu < QUIET_SHARE


def summarize(rounds: list[Round]) -> tuple[list[Round], bool]:
    """The rounds the headline uses: the undisturbed ones if there are two, else all."""
    quiet = [r for r in rounds if r.quiet]
    return (quiet, True) if len(quiet) >= 2 else (rounds, False)


def main() -> None:
    args = parse_args()
    data = check_data(args.data)
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if gpu else "cpu")
    cpus = len(os.sched_getaffinity(0))
    workers = args.workers if args.workers is not None else (cpus if gpu else args.threads)
    precision = trainables.choose_precision("auto", device, "resnet18")
    where = torch.cuda.get_device_name(device) if gpu else "CPU"
    print(f"# Training throughput, ResNet-18 (random init), on {where}; {environment_line()}")
    print(
        f"# {args.image_size}px, batch {args.batch_size}, aug_strength {args.aug_strength}, "
        f"{args.threads} torch threads, plain loops: {workers} DataLoader workers, "
        f"pin_memory {gpu}; {args.rounds} rounds x {args.steps} steps each; "
        f"tuned loop and project precision: {precision.name}, channels-last"
    )
    print(f"# {load_line()}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        if args.quick:
            data = make_subset(data, tmp / "photos", per_class=8)

        # The project's one-time cost: decode every photo into the uint8 cache.
        t0 = time.perf_counter()
        split, cache = trainables.prepare_data(
            trainables.scan_folder(data), trainables.resize_for(args.image_size)
        )
        decode_s = time.perf_counter() - t0
        n_photos = len(split.train) + len(split.val)
        print(
            f"decoded {n_photos} photos once at {cache.resize}px in {decode_s:.1f}s "
            f"({n_photos / decode_s:.0f} photos/s, {cache.nbytes / 2**20:.0f} MiB)"
        )
        n_train = args.steps * args.batch_size
        if n_train > len(cache.train_y):
            raise SystemExit(f"--steps x --batch-size = {n_train} exceeds the training photos")
        subset = subset_cache(cache, n_train, n_val=2 * args.batch_size)
        train_x = torch.from_numpy(subset.train_x).to(device)

        fp32 = trainables.choose_precision("fp32", device)
        loops = {
            "plain": PlainLoop(data, args, fp32, channels_last=False, workers=workers),
            "tuned": PlainLoop(data, args, precision, channels_last=True, workers=workers),
        }
        for loop in loops.values():
            loop.run(args.warmup_steps)

        rounds: dict[str, list[Round]] = {"plain": [], "tuned": [], "project": []}
        other = OtherCpu()  # CPU that other processes take while each round runs

        def show(name: str, r: Round, n: int) -> None:
            flag = "" if r.quiet else "  (disturbed)"
            print(
                f"  round {n}: {name:7s} {r.images_per_s:8.2f} images/s, other processes used "
                f"{r.others_cpu:4.0%} of the CPUs{flag}",
                flush=True,
            )

        def on_epoch(metrics: dict[str, Any], folder: Path) -> None:
            busy = other.share()
            shutil.rmtree(folder, ignore_errors=True)
            if metrics.get("diverged"):
                raise SystemExit("the project's loop diverged; lower the learning rate")
            if metrics["epoch"] > 1:  # epoch 1 warms the project's loop up
                n = len(rounds["project"])
                other.restart()
                aug = augment_seconds_per_image(
                    train_x, args.image_size, args.aug_strength, args.batch_size, 2, offset=n
                )
                busy = max(busy, other.share())
                rounds["project"].append(Round(float(metrics["images_per_s"]), aug, busy))
                show("project", rounds["project"][-1], n + 1)
            for name, loop in loops.items():
                if len(rounds[name]) < args.rounds:
                    other.restart()
                    ips, data_share = loop.run(args.steps)
                    rounds[name].append(Round(ips, data_share / ips, other.share()))
                    show(name, rounds[name][-1], len(rounds[name]))
            other.restart()

        cfg = trainables.TrialConfig.from_dict(
            {
                "model": "resnet18",
                "pretrained": False,
                "optimizer": "sgd",
                "lr": 0.01,
                "momentum": 0.9,
                "batch_size": args.batch_size,
                "step_size": 100,
                "aug_strength": args.aug_strength,
                "image_size": args.image_size,
                "max_epochs": args.rounds + 1,
                "precision": "auto",
            }
        )
        trainables.fit(cfg, subset, on_epoch, threads=args.threads, device=device)
        if len(rounds["project"]) != args.rounds:
            timed = len(rounds["project"])
            raise SystemExit(f"fit reported {timed} timed epochs, not {args.rounds}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    names = {
        "plain": f"plain loop (PIL + DataLoader x{workers}, fp32)",
        "tuned": f"plain loop, channels-last + {precision.name}",
        "project": f"project (uint8 cache + fit, {precision.name})",
    }
    rows, all_quiet = [], True
    for key, name in names.items():
        used, quiet = summarize(rounds[key])
        all_quiet = all_quiet and quiet
        ips = median(r.images_per_s for r in used)
        data_ms = 1000 * median(r.data_s_per_image for r in used)
        rows.append(
            [
                name,
                ips,
                f"{len(used)}/{len(rounds[key])}",
                median(r.images_per_s for r in rounds[key]),
                data_ms,
                1000 / ips - data_ms,
            ]
        )
    print()
    print_table(
        [
            "contender",
            "median img/s",
            "rounds used",
            "median, all rounds",
            "data ms/img",
            "rest ms/img",
        ],
        rows,
    )
    print(
        f"Rounds used: those in which other processes took < {QUIET_SHARE:.0%} of the CPUs "
        "(all rounds when fewer than 2 were). data = waiting for a batch (plain loops) or "
        "the batched augmentation alone (project); rest = forward, backward, optimizer step."
    )
    if not all_quiet:
        print(
            "WARNING: other processes were busy during most rounds; the figures below include "
            "disturbed rounds (2 torch threads slow down badly when a core is taken)."
        )
    plain_ips, tuned_ips, project_ips = (float(row[1]) for row in rows)
    augment_ms = float(rows[2][4])
    print(
        f"project one-time decode: {decode_s:.1f}s for {n_photos} photos "
        f"(not in images/s; {n_photos / plain_ips:.0f}s is one plain-loop epoch over them)"
    )
    print(f"# at the end: {load_line()}")
    print_headlines(
        {
            "plain_loop_images_per_s": plain_ips,
            "tuned_loop_images_per_s": tuned_ips,
            "project_images_per_s": project_ips,
            "augment_images_per_s": 1000 / augment_ms,
            "augment_share_of_step": augment_ms / (1000 / project_ips),
            "speedup_vs_plain_loop": project_ips / plain_ips,
            "speedup_vs_tuned_loop": project_ips / tuned_ips,
            "project_decode_once_s": decode_s,
        }
    )


if __name__ == "__main__":
    main()
