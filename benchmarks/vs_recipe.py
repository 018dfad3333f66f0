"""The search against one good guess, scored on photos neither of them saw.

Both contenders use the same stratified, seeded split of the photos (val 0.2,
test 0.15, ``--seed`` (default 0) for the split, the recipe and the search:
``trainables.make_split``, exactly what ``tuner search``
writes to ``split.json``):

* **recipe**: the classic hand-tuned fine-tune a competent user would write:
  pretrained EfficientNet-Lite0 at 160 px, every layer trained, Adam 1e-3,
  StepLR 7/0.1, batch 32, RandomResizedCrop + horizontal flip + colour jitter,
  a plain PIL Dataset + ``DataLoader(num_workers = the CPUs)`` fp32 loop, 12
  epochs on the training photos; its last epoch's model is scored on test.
* **search**: ``tuner search --space lite`` (``--space lite-accurate`` for
  Lite1/Lite2) on the same split, then its
  exported model (rank 1: what ``tuner export`` writes), its refit on train +
  val (``tuner refit``, ``tuner export --refit``) and two ensembles of 3
  (``tuner export --ensemble 3``, greedy on val and the plain top 3). Each is
  scored on the test split through its export folder (``model.ts`` and
  ``config.json``, what ``predict`` reads).

Prints each test accuracy and wall time, and ``test_acc_gain`` (the search's
exported model minus the recipe). The gains are paired, photo by photo, on
one test split of a few hundred photos, so each comes with a 95 % bootstrap
interval and the photos only one side got right: a gain inside its interval's
noise is not a difference between the two.

    uv run python benchmarks/vs_recipe.py           # ~45 min on 2 CPUs
    uv run python benchmarks/vs_recipe.py --seed 1  # another split, recipe and search
    uv run python benchmarks/vs_recipe.py --space lite-accurate  # Lite1/Lite2, ~60 min
    uv run python benchmarks/vs_recipe.py --quick   # same code paths, a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    DEFAULT_DATA,
    ROOT,
    add_search_flags,
    check_data,
    environment_line,
    load_line,
    make_subset,
    print_headlines,
    print_table,
    run_search,
    work_dir,
)
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import trainables
from tuner._export import load_export
from tuner._inference import classify_labelled

VAL_FRACTION, TEST_FRACTION = 0.2, 0.15
BOOTSTRAP = 10_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Test accuracy and wall time of the classic fine-tuning recipe vs a "
        "`tuner search` (exported, refit and ensemble models), same split.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--space", default="lite", help="space of the search")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, the recipe and the search"
    )
    parser.add_argument("--recipe-epochs", type=int, default=12)
    parser.add_argument("--recipe-size", type=int, default=160)
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="recipe's loaders"
    )
    add_search_flags(parser, "12 photos/class, recipe 1 epoch at 64 px, smoke search")
    args = parser.parse_args()
    if args.quick:
        args.recipe_epochs, args.recipe_size, args.space = 1, 64, "smoke"
    return args


class Photos(Dataset[tuple[torch.Tensor, int]]):
    """(path, label) pairs read with PIL, as in any tutorial."""

    def __init__(self, root: Path, files: list[tuple[str, int]], tf: transforms.Compose) -> None:
        self.root, self.files, self.tf = root, files, tf

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[i]
        with Image.open(self.root / path) as img:
            return self.tf(img.convert("RGB")), label


def run_recipe(split: trainables.Split, args: argparse.Namespace) -> dict[str, Any]:
    """The classic recipe: fine-tune Lite0 on train, report val per epoch, score test
    (``test_right``: whether each test photo, in split order, was classified right)."""
    size = args.recipe_size
    mean, std = trainables.normalization("efficientnet_lite0")
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.4, 0.4, 0.4),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    eval_tf = transforms.Compose(
        [
            transforms.Resize(trainables.cache_size_for(size)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )

    def loader(files: list[tuple[str, int]], tf: transforms.Compose, shuffle: bool) -> DataLoader:
        return DataLoader(
            Photos(split.root, files, tf),
            batch_size=32,
            shuffle=shuffle,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )

    torch.manual_seed(args.seed)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = trainables.build_model("efficientnet_lite0", len(split.classes), True, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    train, val = loader(split.train, train_tf, True), loader(split.val, eval_tf, False)
    test = loader(split.test, eval_tf, False)

    @torch.no_grad()
    def right(batches: DataLoader) -> np.ndarray:
        model.eval()
        return np.concatenate([(model(x).argmax(1) == y).numpy() for x, y in batches])

    t0 = time.perf_counter()
    val_acc = 0.0
    for epoch in range(1, args.recipe_epochs + 1):
        model.train()
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
        scheduler.step()
        val_acc = float(right(val).mean())
        print(f"  recipe epoch {epoch}: val_acc {val_acc:.4f} ({time.perf_counter() - t0:.0f} s)")
    wall = time.perf_counter() - t0
    test_right = right(test)
    return {"val_acc": val_acc, "test_acc": float(test_right.mean()), "test_right": test_right,
            "wall_s": wall}  # fmt: skip


def right_on_test(folder: Path, split: trainables.Split) -> np.ndarray:
    """Whether the exported model in ``folder`` classifies each test photo right (split order)."""
    exported = load_export(folder)
    result, labels = classify_labelled(
        exported.model, split.root, split.test, exported.preprocessing
    )
    if result.failed:
        raise SystemExit(f"{folder}: unreadable test photos {sorted(result.failed)}")
    return (result.logits.argmax(1) == labels).numpy()


def paired_gain(search: np.ndarray, recipe: np.ndarray, seed: int) -> dict[str, float]:
    """Test accuracy gain of one model over the recipe on the same photos, its 95 %
    bootstrap interval (photos resampled, pairs kept), and the photos only one got right."""
    diff = search.astype(np.float64) - recipe.astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(diff), (BOOTSTRAP, len(diff)))
    low, high = np.percentile(diff[draws].mean(axis=1), [2.5, 97.5])
    return {"gain": float(diff.mean()), "low": float(low), "high": float(high),
            "only_search": int((diff > 0).sum()), "only_recipe": int((diff < 0).sum())}  # fmt: skip


def tuner(*args: str) -> str:
    """``python -m tuner ARGS`` as a user runs it; its output (exit on failure)."""
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", *args], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"tuner {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr}")
    return proc.stdout


def main() -> None:
    args = parse_args()
    data = check_data(args.data)
    print(f"# The search vs the classic recipe, {environment_line()}")
    print(
        f"# split: val {VAL_FRACTION}, test {TEST_FRACTION}, seed {args.seed}; recipe: Lite0 at "
        f"{args.recipe_size} px, {args.recipe_epochs} epochs, {args.workers} DataLoader "
        f"workers, fp32; search: --space {args.space}"
    )
    print(f"# {load_line()}")
    rows = []
    with work_dir(args.keep, "bench-vs-recipe-") as tmp:
        if args.quick:
            data = make_subset(data, tmp / "photos", per_class=12)
        split = trainables.make_split(
            trainables.scan_folder(data), VAL_FRACTION, args.seed, test_fraction=TEST_FRACTION
        )
        print(f"split: {len(split.train)} train / {len(split.val)} val / {len(split.test)} test")
        recipe = run_recipe(split, args)
        name = f"recipe (Lite0 {args.recipe_size} px, {args.recipe_epochs} epochs)"
        rows.append([name, recipe["val_acc"], recipe["test_acc"], "", "", recipe["wall_s"]])

        storage = tmp / "results"
        flags = ["--seed", str(args.seed), "--test-fraction", str(TEST_FRACTION)]
        run = run_search(args.space, data, storage, "vs", flags, verbose=args.verbose)
        saved = json.loads((run.exp_dir / "split.json").read_text())
        if [p for p, _ in saved["test"]] != [p for p, _ in split.test]:
            raise SystemExit("the search's test split differs from the recipe's")
        board = json.loads((run.exp_dir / "best_config.json").read_text())

        where = ("--storage", str(storage))
        t0 = time.perf_counter()
        refit = tuner("refit", "vs", *where)
        refit_acc = float(re.search(r"test_acc ([\d.]+)", refit).group(1))  # type: ignore[union-attr]
        refit_s = time.perf_counter() - t0
        contenders = {  # name: (export flags, val_acc, test_acc the tuner reported, wall s)
            "rank 1": ((), board["val_acc"], board["test_acc"], run.wall_s),
            "refit": (("--refit",), None, refit_acc, run.wall_s + refit_s),
            "greedy": (("--ensemble", "3", "--ensemble-method", "greedy"), None, None, 0.0),
            "top": (("--ensemble", "3", "--ensemble-method", "top"), None, None, 0.0),
        }
        labels = {
            "rank 1": "search: exported rank 1",
            "refit": "search + refit on train+val",
            "greedy": "search: ensemble of 3 (greedy)",
            "top": "search: ensemble of 3 (top)",
        }
        gains: dict[str, dict[str, float]] = {}
        for key, (export_flags, val_acc, reported, wall) in contenders.items():
            t0 = time.perf_counter()
            out = tuner("export", "vs", *where, "--output", str(tmp / key), *export_flags)
            if "--ensemble" in export_flags:
                config = json.loads((tmp / key / "config.json").read_text())["ensemble"]
                val_acc, reported = config["val_acc"], config["test_acc"]
                wall = run.wall_s + time.perf_counter() - t0
                print(f"  {out.strip().splitlines()[-1]}")
            right = right_on_test(tmp / key, split)
            if abs(float(right.mean()) - reported) > 0.5 / len(right):
                raise SystemExit(
                    f"{key}: export scores {right.mean():.4f} on test, the tuner said {reported}"
                )
            gains[key] = paired_gain(right, recipe["test_right"], args.seed)
            g = gains[key]
            rows.append([labels[key], val_acc, float(right.mean()),
                         f"{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]",
                         f"{g['only_search']} / {g['only_recipe']}", wall])  # fmt: skip

    print()
    n = len(split.test)
    headers = ["model", "val_acc", f"test_acc ({n} photos)", "gain vs recipe [95% CI]",
               "right only here / only recipe", "wall s"]  # fmt: skip
    print_table(headers, rows)
    print(f"# at the end: {load_line()}")
    test = {key: float(rows[i + 1][2]) for i, key in enumerate(contenders)}
    print_headlines(
        {
            "recipe_test_acc": recipe["test_acc"],
            "search_test_acc": test["rank 1"],
            "refit_test_acc": test["refit"],
            "ensemble_greedy_test_acc": test["greedy"],
            "ensemble_top_test_acc": test["top"],
            "recipe_wall_s": recipe["wall_s"],
            "search_wall_s": run.wall_s,
            "test_acc_gain": gains["rank 1"]["gain"],
            "test_acc_gain_ci95_low": gains["rank 1"]["low"],
            "test_acc_gain_ci95_high": gains["rank 1"]["high"],
            "refit_test_acc_gain": gains["refit"]["gain"],
            "ensemble_test_acc_gain": gains["top"]["gain"],
            "ensemble_greedy_test_acc_gain": gains["greedy"]["gain"],
        }
    )


if __name__ == "__main__":
    main()
