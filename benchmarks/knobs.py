"""Each training knob against the plain trial, on the validation photos a search selects by.

One configuration (by default ``lite-accurate``'s Lite2 starting point: the last stage
and the head on frozen 240 px activations, Adam 3e-4, batch 32, StepLR 4/0.1, 6 epochs),
trained with ``trainables.fit`` on the search's split of the photos (val 0.2, test 0.15,
``--split-seed``; the test photos are not decoded) as is and with one knob changed at a
time, each over ``--seeds`` trial seeds. Prints, per variant, the best val_acc (what a
search ranks by) and the last epoch's, averaged over the seeds, the paired difference
to the plain trial seed by seed, and the time; ends with ``KNOB_val_gain`` headlines
(mean best val_acc minus the plain trial's, in points of accuracy: 0.01 = 1 point; one
of 588 validation photos is 0.0017).

    uv run python benchmarks/knobs.py                 # ~25 min on 2 CPUs
    uv run python benchmarks/knobs.py --seeds 1 --only ema,cosine --epochs 2  # a quick look
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from _common import DEFAULT_DATA, check_data, environment_line, print_headlines, print_table
from _fit import timed_fit

import trainables

BASE: dict[str, Any] = {
    "model": "efficientnet_lite2", "pretrained": True, "image_size": 240, "optimizer": "adam",
    "lr": 3e-4, "batch_size": 32, "step_size": 4, "gamma": 0.1, "freeze_depth": 3,
    "weight_decay": 1e-5, "label_smoothing": 0.1, "aug_strength": 0.0, "max_epochs": 6,
}  # fmt: skip
VARIANTS: dict[str, dict[str, Any]] = {
    "ema": {"ema_decay": 0.99},
    "cosine": {"schedule": "cosine", "warmup_epochs": 1},
    "mixup": {"mixup": 0.2},
    "cutmix": {"cutmix": 1.0},
    "lr_decay": {"freeze_depth": 2, "lr_decay": 0.3},
    "fixres": {"train_size": 192},  # train at 192 px, validate at the 240 px
    "size280": {"image_size": 280},  # train and validate at a larger size
    "size320": {"image_size": 320},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--seeds", type=int, default=2, help="trial seeds per variant")
    parser.add_argument("--epochs", type=int, default=BASE["max_epochs"])
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.only:
        unknown = set(args.only.split(",")) - set(VARIANTS)
        if unknown:
            parser.error(f"--only: unknown variant(s) {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = parse_args()
    data_dir = check_data(args.data)
    print(f"# Training knobs against the plain trial, on val; {environment_line()}")
    base = {**BASE, "max_epochs": args.epochs}
    print(f"# plain trial: {base}")
    scan = trainables.scan_folder(data_dir)
    decoded: dict[int, trainables.DecodedSplit] = {}

    def photos_for(image_size: int) -> trainables.DecodedSplit:
        """The split's photos decoded for ``image_size`` (the same split at every size)."""
        resize = trainables.resize_for(image_size)
        if resize not in decoded:
            split, decoded[resize] = trainables.prepare_data(
                scan, resize, val_fraction=0.2, seed=args.split_seed, test_fraction=0.15
            )
            print(f"split: {len(split.train)} train / {len(split.val)} val (seed "
                  f"{args.split_seed}), decoded at {resize} px")  # fmt: skip
        return decoded[resize]

    names = args.only.split(",") if args.only else list(VARIANTS)
    results: dict[str, list[dict[str, float]]] = {}
    for name in ["plain", *names]:
        change = VARIANTS.get(name, {})
        results[name] = []
        for seed in range(args.seeds):
            cfg = trainables.TrialConfig.from_dict({**base, **change, "seed": seed})
            fitted = timed_fit(cfg, photos_for(cfg.image_size), args.threads)
            result = {"best": max(fitted.accs), "last": fitted.accs[-1],
                      "loss": min(fitted.losses), "seconds": fitted.seconds}  # fmt: skip
            results[name].append(result)
            print(f"  {name} seed {seed}: best val_acc {result['best']:.4f}, last "
                  f"{result['last']:.4f}, lowest val_loss {result['loss']:.4f}, "
                  f"{result['seconds']:.0f} s", flush=True)  # fmt: skip
    plain = results["plain"]
    rows, figures = [], {}
    for name, runs in results.items():
        diffs = [r["best"] - p["best"] for r, p in zip(runs, plain, strict=True)]
        rows.append([name, str(VARIANTS.get(name, "")),
                     statistics.mean(r["best"] for r in runs),
                     statistics.mean(r["last"] for r in runs),
                     statistics.mean(r["loss"] for r in runs),
                     " ".join(f"{d:+.4f}" for d in diffs),
                     statistics.mean(r["seconds"] for r in runs)])  # fmt: skip
        if name != "plain":
            figures[f"{name}_val_gain"] = statistics.mean(diffs)
            figures[f"{name}_val_loss_change"] = statistics.mean(
                r["loss"] - p["loss"] for r, p in zip(runs, plain, strict=True)
            )
    print()
    print_table(["variant", "change", "best val_acc", "last val_acc", "lowest val_loss",
                 "best - plain, by seed", "s per trial"], rows)  # fmt: skip
    print_headlines(figures)


if __name__ == "__main__":
    main()
