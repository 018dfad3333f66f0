"""Frozen activations reused, against computed again: by a refit, and by a head-only trial.

A refit (``tuner refit``, ``export --refit``) and a distillation (``export --distill``)
train on the search's train photos then its val photos. With a frozen prefix and no
augmentation (``lite-accurate``), a trial of the search already computed those photos'
activations; the refit copies them from the disk cache and runs the frozen prefix only
on the test photos. This times ``trainables.fit`` on the refit's photos (train + val to
train on, test to score) both ways, on the split of ``benchmarks/vs_recipe.py`` (val 0.2,
test 0.15, ``--split-seed``), for ``lite-accurate``'s Lite2 starting point (the last
stage and the head on stage 3's activations, 240 px, Adam 3e-4, batch 32, StepLR 4/0.1)
over ``--epochs`` (a refit trains its trial's ``max_epochs``: 6 in ``lite-accurate``):

* **computed**: the refit on an empty activation cache (what it did before);
* **reused**: the search's trial first (one epoch on train, scored on val: the entries
  it keeps), then the refit.

Both train the same network from the same seed on the same activations, so their
test accuracies agree up to float rounding. Headlines: ``refit_computed_s``,
``refit_reused_s``, ``refit_speedup`` and both test accuracies.

``--compare head`` times a head-only trial of the search (``freeze_depth`` 4, one epoch
on train, scored on val) on an empty cache (the whole network on the photos: **computed**)
and after the stage-3 trial kept its entries (stage 4 and the pooling on them:
**from_stage3**). Headlines: ``head_trial_computed_s``, ``head_trial_from_stage3_s``,
``head_trial_speedup`` and both val accuracies.

    uv run python benchmarks/refit_cache.py              # ~15 min on 2 CPUs
    uv run python benchmarks/refit_cache.py --compare head --image-size 320   # ~10 min
    uv run python benchmarks/refit_cache.py --quick      # same code paths, a minute or so
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from _common import DEFAULT_DATA, environment_line, own_cache, print_headlines
from _fit import FitRun, timed_fit

BASE: dict[str, Any] = {
    "model": "efficientnet_lite2", "pretrained": True, "image_size": 240, "optimizer": "adam",
    "lr": 3e-4, "batch_size": 32, "step_size": 4, "gamma": 0.1, "freeze_depth": 3,
    "weight_decay": 1e-5, "label_smoothing": 0.1, "aug_strength": 0.0,
}  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--epochs", type=int, default=6, help="the refit's epochs")
    parser.add_argument("--image-size", type=int, default=BASE["image_size"])
    parser.add_argument(
        "--compare", nargs="+", choices=["refit", "head"], default=["refit", "head"],
        help="which reuse to time: the refit's, a head-only trial's (default: both)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="30 photos per class at 64 px, one epoch"
    )
    return parser.parse_args()


def compared(name: str, accuracy: str, **runs: FitRun) -> dict[str, float]:
    """Headlines of two runs, the slower first: ``{name}_{run}_s``, ``{name}_speedup`` and
    ``{name}_{accuracy}_{run}`` (its last epoch's)."""
    (slow, before), (fast, after) = runs.items()
    return {
        f"{name}_{slow}_s": before.seconds,
        f"{name}_{fast}_s": after.seconds,
        f"{name}_speedup": before.seconds / after.seconds,
        f"{name}_{accuracy}_{slow}": before.accs[-1],
        f"{name}_{accuracy}_{fast}": after.accs[-1],
    }


def main() -> None:
    args = parse_args()
    cache, data_dir = own_cache(args.data, "bench-refit-cache-", 30 if args.quick else None)
    if args.quick:
        args.image_size, args.epochs = 64, 1
    os.environ.pop("TUNER_FEATURE_CACHE", None)
    import dataclasses

    import trainables

    threads = os.cpu_count() or 1
    try:
        print(f"# Frozen activations reused and computed again; {environment_line()}")
        cfg = trainables.TrialConfig.from_dict(
            {**BASE, "image_size": args.image_size, "max_epochs": args.epochs}
        )
        shown = {**BASE, "image_size": cfg.image_size, "max_epochs": args.epochs}
        print(f"# configuration: {shown}")
        resize = trainables.resize_for(cfg.image_size)
        split, search = trainables.prepare_data(
            trainables.scan_folder(data_dir), resize, val_fraction=0.2, seed=args.split_seed,
            test_fraction=0.15,
        )  # fmt: skip
        refit = trainables.decode_for_refit(split, resize)
        print(f"split {args.split_seed}: refit on {len(refit.train_y)} train + val photos, "
              f"scored on {len(refit.val_y)} test photos; {cfg.image_size} px")  # fmt: skip
        headlines: dict[str, float] = {}
        if "refit" in args.compare:
            # Computed: one run of train + val (no parts to look up), then an empty cache.
            # A refit scores the rows in its val slot: here the test photos.
            computed = timed_fit(cfg, dataclasses.replace(refit, train_parts=()), threads)
            print(f"  computed: {computed.seconds:.0f} s, test_acc {computed.accs[-1]:.4f}",
                  flush=True)  # fmt: skip
        if "head" in args.compare:
            head = cfg.replace(freeze_depth=4, max_epochs=1)
            shutil.rmtree(cache / "features", ignore_errors=True)
            alone = timed_fit(head, search, threads)
            print(f"  head-only trial, computed: {alone.seconds:.0f} s, val_acc "
                  f"{alone.accs[-1]:.4f}", flush=True)  # fmt: skip
        shutil.rmtree(cache / "features", ignore_errors=True)
        searched = timed_fit(cfg.replace(max_epochs=1), search, threads)
        print(f"  the search's trial (1 epoch, its activations kept): {searched.seconds:.0f} s")
        if "head" in args.compare:
            after = timed_fit(head, search, threads)
            print(f"  head-only trial, from stage 3's activations: {after.seconds:.0f} s, "
                  f"val_acc {after.accs[-1]:.4f}", flush=True)  # fmt: skip
            headlines |= compared("head_trial", "val_acc", computed=alone, from_stage3=after)
        if "refit" in args.compare:
            reused = timed_fit(cfg, refit, threads)
            print(f"  reused: {reused.seconds:.0f} s, test_acc {reused.accs[-1]:.4f}",
                  flush=True)  # fmt: skip
            headlines |= compared("refit", "test_acc", computed=computed, reused=reused)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print_headlines(headlines)


if __name__ == "__main__":
    main()
