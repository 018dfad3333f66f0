"""The search against one good guess, scored on photos neither of them saw.

Both contenders use the same stratified, seeded split of the photos (val 0.2,
test 0.15, ``--seed`` (default 0) for the split, the recipe and the search:
``trainables.make_split``, exactly what ``tuner search``
writes to ``split.json``):

* **recipe**: the classic hand-tuned fine-tune a competent user would write:
  pretrained EfficientNet-Lite0 at 160 px, every layer trained, Adam 1e-3,
  StepLR 7/0.1, batch 32, RandomResizedCrop + horizontal flip + colour jitter,
  a plain PIL Dataset + ``DataLoader(num_workers = the CPUs)`` fp32 loop, its
  fixed 12 epochs on every photo outside the test split (train + val: a recipe
  of fixed epochs selects nothing on the val photos, so a user trains on them
  too, as ``tuner refit`` does with the search's choice); its last epoch's
  model is scored on test. (Records written before trained it on the train
  split alone; ``--pool`` refuses to mix the two kinds.)
* **search**: ``tuner search --space lite`` (``--space lite-accurate`` for
  Lite1/Lite2) on the same split, then its
  exported model (rank 1: what ``tuner export`` writes), its refit on train +
  val (``tuner refit``, ``tuner export --refit``: the trial's max_epochs; records
  written before trained its best epoch count, and ``--pool`` prints each split's) and
  two ensembles of 3
  (``tuner export --ensemble 3``, greedy on val and the plain top 3). Each is
  scored on the test split through its export folder (``model.ts`` and
  ``config.json``, what ``predict`` reads).

Every export uses ``--tta auto`` (the default: the flip average where it raises
val_acc); ``--distill`` trains the top-3 ensemble's answers into rank 1's configuration on
train + val. Prints each test accuracy and wall time (from the search's start to the end
of that model's export), ``single_gain`` (the default export of rank 1 minus the recipe),
``distilled_gain``, ``ensemble_gain`` (top 3) and ``time_ratio_vs_recipe`` (the search
and rank 1's export over the recipe's time). The gains are paired, photo by photo, on
one test split of a few hundred photos, so each comes with a 95 % bootstrap
interval and the photos only one side got right: a gain inside its interval's
noise is not a difference between the two. ``--record FILE`` keeps every
model's photo-by-photo result; ``--pool FILE...`` reads several such records
(one per split) and prints each contender's gain over all their photos, with
the interval drawn split by split (photos resampled within each split).

    uv run python benchmarks/vs_recipe.py           # ~45 min on 2 CPUs
    uv run python benchmarks/vs_recipe.py --seed 1  # another split, recipe and search
    uv run python benchmarks/vs_recipe.py --space lite-accurate  # Lite1/Lite2, ~60 min
    uv run python benchmarks/vs_recipe.py --quick   # same code paths, a few minutes
    uv run python benchmarks/vs_recipe.py --seed 3 --record s3.json  # keep the results
    uv run python benchmarks/vs_recipe.py --pool s0.json s1.json s2.json  # over splits
    # the search side again against a recorded recipe of the same split, the distilled
    # student trained 6 epochs (`export --distill --epochs 6`):
    uv run python benchmarks/vs_recipe.py --seed 3 --recipe-from s3.json --distill-epochs 6
    # only rank 1 and its refit exported and scored (the other exports take ~25 min):
    uv run python benchmarks/vs_recipe.py --seed 3 --recipe-from s3.json --models rank1 refit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    DEFAULT_DATA,
    ROOT,
    add_search_flags,
    benchmark_search,
    check_data,
    environment_line,
    experiment_at,
    load_line,
    make_subset,
    print_headlines,
    print_table,
    work_dir,
)
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import trainables
from tuner.results._inference import classify_labelled
from tuner.results._leaderboard import load_scores
from tuner.results._predict import load_export
from tuner.storage._experiment import REFIT_DIR, REFIT_RECORD

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
    parser.add_argument(
        "--reuse", type=Path, metavar="KEPT",
        help="run the recipe only, against the search kept (--keep) in this folder "
        "(its space and seed)",
    )  # fmt: skip
    parser.add_argument(
        "--record", type=Path, help="write every model's right/wrong per test photo to this JSON"
    )
    helps = {
        "--recipe-from": "no recipe run: its result and wall time from this record of the "
        "same split (--seed), as measured then",
        "--distill-epochs": "the distilled student's epochs (export --distill --epochs N; "
        "default: export's, the ranked trial's max_epochs)",
    }
    parser.add_argument("--recipe-from", type=Path, metavar="RECORD", help=helps["--recipe-from"])
    parser.add_argument("--distill-epochs", type=int, metavar="N", help=helps["--distill-epochs"])
    parser.add_argument(
        "--pool", type=Path, nargs="+", metavar="RECORD",
        help="no run: gains over the photos of these records' splits (one per split)",
    )  # fmt: skip
    parser.add_argument(
        "--models", nargs="+", choices=MODEL_NAMES, metavar="MODEL",
        help=f"the search's models to export and score (default: all: {' '.join(MODEL_NAMES)})",
    )  # fmt: skip
    add_search_flags(parser, "12 photos/class, recipe 1 epoch at 64 px, smoke search")
    args = parser.parse_args()
    args.models = [MODEL_NAMES[m] for m in dict.fromkeys(args.models or MODEL_NAMES)]
    if args.record is not None and not args.record.parent.is_dir():
        parser.error(f"--record: no folder {args.record.parent}")
    if args.reuse is not None:
        kept = ("results/vs/tuner.json", *args.models)
        missing = [k for k in kept if not (args.reuse / k).exists()]
        if missing:
            parser.error(f"--reuse: {args.reuse} is not a folder kept by --keep (no {missing[0]})")
        if args.quick != (args.reuse / "photos").is_dir():
            run = "a --quick run" if args.quick else "a full run"
            parser.error(f"--reuse: {args.reuse} was not kept by {run}; pass --quick with both")
        kept = experiment_at(args.reuse / "results" / "vs").record()
        args.space, args.seed = kept.space_name, kept.space["budget"]["seed"]
    if args.distill_epochs is not None and args.distill_epochs < 1:
        parser.error(f"--distill-epochs {args.distill_epochs}: must be >= 1")
    if args.recipe_from is not None:
        if args.reuse is not None:
            parser.error("--recipe-from goes without --reuse (which runs the recipe alone)")
        args.recorded = read_record(args.recipe_from, parser, "--recipe-from")
        if args.recorded["seed"] != args.seed:
            parser.error(f"--recipe-from: {args.recipe_from} is of seed "
                         f"{args.recorded['seed']}, not --seed {args.seed}")  # fmt: skip
        if recipe_trained_on(args.recorded) != RECIPE_TRAINED_ON:
            parser.error("--recipe-from: its recipe trained on the train split alone")
    if args.pool:
        args.records = [read_record(path, parser) for path in args.pool]
        seeds = [r["seed"] for r in args.records]
        if len(set(seeds)) < len(seeds):
            parser.error(f"--pool: records of the same split (seeds {seeds}); pool each once")
        if len({r["space"] for r in args.records}) > 1:
            parser.error("--pool: the records come from searches of different spaces")
        if len({distill_epochs(r) for r in args.records}) > 1:
            parser.error("--pool: the records' distilled students trained different epochs "
                         "(--distill-epochs, or export's default of another version); pool "
                         "records of one kind")  # fmt: skip
        if len({recipe_trained_on(r) for r in args.records}) > 1:
            parser.error(
                "--pool: some records' recipes trained on train + val, others on the train "
                "split alone; pool records of one kind"
            )
    if args.quick:
        args.recipe_epochs, args.recipe_size, args.space = 1, 64, "smoke"
    return args


def read_record(
    path: Path, parser: argparse.ArgumentParser, flag: str = "--pool"
) -> dict[str, Any]:
    """A ``--record`` file, or a usage error of ``flag`` that says what is wrong with it."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"{flag}: cannot read {path}: {exc}")
    if not isinstance(record, dict) or not {"seed", "space", "recipe", "models"} <= set(record):
        parser.error(f"{flag}: {path} is not a record written by vs_recipe.py --record")
    n = len(record["recipe"]["right"])
    if any(len(model["right"]) != n for model in record["models"].values()):
        parser.error(f"{flag}: {path}: its models were scored on other photos than the recipe")
    return record


def recorded_recipe(args: argparse.Namespace, split: trainables.Split) -> dict[str, Any]:
    """The recipe's result from ``--recipe-from``, checked to be of this split."""
    record = args.recorded
    if record["test"] != [path for path, _ in split.test]:
        print(f"error: --recipe-from {args.recipe_from}: its test photos are not this split's",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    recipe = {k: v for k, v in record["recipe"].items() if k != "right"}
    recipe["test_right"] = np.asarray(record["recipe"]["right"], dtype=bool)
    print(f"recipe: from {args.recipe_from} (not run again): test_acc "
          f"{recipe['test_acc']:.4f}, {recipe['wall_s']:.0f} s when measured")  # fmt: skip
    return recipe


def contenders(args: argparse.Namespace) -> dict[str, tuple[str, tuple[str, ...]]]:
    """:data:`EXPORTS` of ``--models``, with the distilled student's epochs of
    ``--distill-epochs``."""
    chosen = {key: EXPORTS[key] for key in args.models}
    if args.distill_epochs is None or "distilled" not in chosen:
        return chosen
    label, flags = EXPORTS["distilled"]
    n = str(args.distill_epochs)
    return chosen | {"distilled": (f"{label}, {n} epochs", (*flags, "--epochs", n))}


DISTILL_DEFAULT = "max_epochs"  # a record's distill_epochs where export chose them


def distill_epochs(record: dict[str, Any]) -> int | str:
    """How a record's distilled student got its epochs: a number (``--distill-epochs``),
    export's default, or (records without the key) the earlier default, the ranked trial's
    best epoch count."""
    return record.get("distill_epochs") or "best epoch"


REFIT_DEFAULT = "max_epochs"  # a record's refit_epochs: the refit trains its trial's max_epochs


def refit_epochs(record: dict[str, Any]) -> str:
    """How a record's refit got its epochs: the ranked trial's max_epochs (``tuner refit``'s
    default), or (records without the key) the earlier default, its best epoch count."""
    return str(record.get("refit_epochs") or "best epoch")


def recipe_trained_on(record: dict[str, Any]) -> str:
    """The photos a record's recipe trained on (records without the key: the train split)."""
    return str(record["recipe"].get("trained_on", "train"))


class Photos(Dataset[tuple[torch.Tensor, int]]):
    """(path, label) pairs read with PIL, as in any tutorial."""

    def __init__(
        self, root: trainables.PhotoSource, files: list[tuple[str, int]], tf: transforms.Compose
    ) -> None:
        self.root, self.files, self.tf = root, files, tf

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[i]
        with Image.open(self.root.local_path(path)) as img:
            return self.tf(img.convert("RGB")), label


RECIPE_TRAINED_ON = "train+val"


def run_recipe(split: trainables.Split, args: argparse.Namespace) -> dict[str, Any]:
    """The classic recipe: fine-tune Lite0 on train + val for its fixed epochs, score test
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
            transforms.Resize(trainables.resize_for(size)),
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
    train = loader(split.train + split.val, train_tf, True)
    test = loader(split.test, eval_tf, False)

    @torch.no_grad()
    def right(batches: DataLoader) -> np.ndarray:
        model.eval()
        return np.concatenate([(model(x).argmax(1) == y).numpy() for x, y in batches])

    t0 = time.perf_counter()
    for epoch in range(1, args.recipe_epochs + 1):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train:
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        scheduler.step()
        print(f"  recipe epoch {epoch}: train_loss {loss_sum / seen:.4f}, train_acc "
              f"{correct / seen:.4f} ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    wall = time.perf_counter() - t0
    test_right = right(test)
    # No val_acc: the val photos are training photos here.
    return {"val_acc": None, "test_acc": float(test_right.mean()), "test_right": test_right,
            "wall_s": wall, "trained_on": RECIPE_TRAINED_ON,
            "train_photos": len(split.train) + len(split.val)}  # fmt: skip


def right_on_test(folder: Path, split: trainables.Split) -> np.ndarray:
    """Whether the exported model in ``folder`` classifies each test photo right (split order)."""
    exported = load_export(folder)
    result, labels = classify_labelled(
        exported.model, split.root, split.test, exported.preprocessing
    )
    if result.failed:
        raise SystemExit(f"{folder}: unreadable test photos {sorted(result.failed)}")
    return (result.logits.argmax(1) == labels).numpy()


def paired_gain(pairs: list[tuple[np.ndarray, np.ndarray]], seed: int) -> dict[str, float]:
    """Test accuracy gain of a model over the recipe, over the photos of one or more splits
    (``pairs``: per split, whether each test photo was right by the model and by the
    recipe), its 95 % bootstrap interval (photos resampled within each split, pairs
    kept), and the photos only one side got right."""
    diffs = [search.astype(np.float64) - recipe.astype(np.float64) for search, recipe in pairs]
    rng = np.random.default_rng(seed)
    sums = sum(d[rng.integers(0, len(d), (BOOTSTRAP, len(d)))].sum(axis=1) for d in diffs)
    diff = np.concatenate(diffs)
    low, high = np.percentile(np.asarray(sums) / len(diff), [2.5, 97.5])
    return {"gain": float(diff.mean()), "low": float(low), "high": float(high),
            "only_search": int((diff > 0).sum()), "only_recipe": int((diff < 0).sum())}  # fmt: skip


def tuner(*args: str, cache: Path | None = None) -> str:
    """``python -m tuner ARGS`` as a user runs it (with ``cache`` as its cache folder: the
    search's, as on the user's machine); its output (exit on failure)."""
    env = {**os.environ, **({"TUNER_CACHE": str(cache)} if cache else {})}
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"tuner {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr}")
    return proc.stdout


EXPORTS = {  # contender: (label, `tuner export` flags); each with --tta auto, the default
    "rank 1": ("search: exported rank 1", ()),
    "distilled": ("search: top 3 distilled into rank 1's config", ("--distill",)),
    "refit": ("search + refit on train+val", ("--refit",)),
    "greedy": (
        "search: ensemble of 3 (greedy)",
        ("--ensemble", "3", "--ensemble-method", "greedy"),
    ),
    "top": ("search: ensemble of 3 (top)", ("--ensemble", "3", "--ensemble-method", "top")),
}
MODEL_NAMES = {key.replace(" ", ""): key for key in EXPORTS}  # --models: rank1, ...


def search_side(args: argparse.Namespace, data: Path, storage: Path, tmp: Path) -> dict[str, float]:
    """Search, refit rank 1 and export every contender under ``tmp``; the wall time (s)
    from the search's start to the end of each contender's export (a refit's: its refit
    and its export; the distilled model's: the export that trains it)."""
    flags = ["--seed", str(args.seed), "--test-fraction", str(TEST_FRACTION)]
    run = benchmark_search(args.space, data, storage, "vs", flags, verbose=args.verbose)
    where = ("--storage", str(storage))
    cache = storage / "vs-cache"  # the search's (benchmark_search)
    t0 = time.perf_counter()
    walls = {"search": run.wall_s}
    if "refit" in args.models:
        tuner("refit", "vs", *where, cache=cache)
        walls["refit"] = time.perf_counter() - t0
    for key, (_, export_flags) in contenders(args).items():
        t0 = time.perf_counter()
        out = tuner("export", "vs", *where, "--output", str(tmp / key), *export_flags, cache=cache)
        walls[key] = run.wall_s + walls.get(key, 0.0) + time.perf_counter() - t0
        print(f"  {key}: {out.strip().splitlines()[-1]}")
    return walls


def tuner_figures(config: dict[str, Any], exp: Any) -> tuple[float | None, float, str]:
    """The val_acc (None for a model trained on val) and test_acc (without test-time
    augmentation) the tuner recorded in experiment ``exp`` for the export whose
    ``config.json`` is ``config``, and the test-time augmentation the export applies."""
    tta = str(config.get("tta", "none"))
    return (*_recorded(config, exp), tta)


def _recorded(config: dict[str, Any], exp: Any) -> tuple[float | None, float]:
    if "ensemble" in config:
        return config["ensemble"]["val_acc"], config["ensemble"]["test_acc"]
    if "distilled" in config:
        return None, config["distilled"]["test_acc"]
    if config["val_acc"] is None:  # a refit: its own record, next to its checkpoint
        return None, refit_record(config, exp)["test_acc"]
    return config["val_acc"], load_scores(exp)[config["trial_id"]]["test_acc"]


def refit_record(config: dict[str, Any], exp: Any) -> dict[str, Any]:
    """What ``tuner refit`` recorded for the refit exported with ``config``."""
    return dict(exp.read_json(f"{REFIT_DIR}/{config['trial_id']}/{REFIT_RECORD}"))


@contextmanager
def reuse_or_work_dir(args: argparse.Namespace) -> Iterator[Path]:
    """The kept folder of ``--reuse``, else a fresh work folder (kept with ``--keep``)."""
    if args.reuse:
        yield args.reuse
    else:
        with work_dir(args.keep, "bench-vs-recipe-") as tmp:
            yield tmp


def pool(records: list[dict[str, Any]]) -> None:
    """Each model's gain over the recipe across the splits of ``records``, and pooled."""
    seeds = [r["seed"] for r in records]
    print(f"# The search vs the classic recipe over {len(records)} splits (seeds {seeds}), "
          f"--space {records[0]['space']}, recipe trained on "
          f"{recipe_trained_on(records[0]).replace('+', ' + ')}")  # fmt: skip
    keys = [k for k in records[0]["models"] if all(k in r["models"] for r in records)]
    recipe = [np.asarray(r["recipe"]["right"], dtype=bool) for r in records]
    rows, gains = [], {}
    for key in keys:
        right = [np.asarray(r["models"][key]["right"], dtype=bool) for r in records]
        per_split = [m.mean() - c.mean() for m, c in zip(right, recipe, strict=True)]
        gains[key] = g = paired_gain(list(zip(right, recipe, strict=True)), 0)
        rows.append([records[0]["models"][key]["label"], float(np.concatenate(right).mean()),
                     f"{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]",
                     " ".join(f"{x:+.3f}" for x in per_split),
                     f"{g['only_search']} / {g['only_recipe']}"])  # fmt: skip
    n = sum(len(r) for r in recipe)
    print(f"recipe: test_acc {np.concatenate(recipe).mean():.4f} over {n} photos")
    headers = ["model", f"test_acc ({n} photos)", "gain vs recipe [95% CI]",
               f"gain per split (seeds {' '.join(map(str, seeds))})",
               "right only here / only recipe"]  # fmt: skip
    print_table(headers, rows)
    figures: dict[str, object] = {"splits": len(records)}
    for key, name in (("rank 1", "single_gain"), ("distilled", "distilled_gain"),
                      ("top", "ensemble_gain"), ("refit", "refit_gain")):  # fmt: skip
        if key in gains:
            figures[f"pooled_{name}"] = gains[key]["gain"]
            figures[f"pooled_{name}_ci95_low"] = gains[key]["low"]
    if "refit" in keys:  # records of two refit defaults pool, and say so split by split
        shown = "; ".join(f"seed {r['seed']}: {r['models']['refit'].get('epochs', '?')} "
                          f"({refit_epochs(r)})" for r in records)  # fmt: skip
        print(f"the refit's epochs, split by split: {shown}")
    recipe_walls = [float(r["recipe"]["wall_s"]) for r in records]
    shown = "; ".join(f"seed {s}: {w:,.0f} s" for s, w in zip(seeds, recipe_walls, strict=True))
    print(f"the recipe's time, split by split: {shown}; search and export over it:")
    for key, name in (("rank 1", "time_ratio_vs_recipe"), ("refit", "refit_time_ratio_vs_recipe"),
                      ("distilled", "distilled_time_ratio_vs_recipe")):  # fmt: skip
        walls = [r["models"].get(key, {}).get("wall_s") for r in records]
        if all(isinstance(w, float | int) for w in walls):
            ratios = " ".join(
                f"{float(w or 0) / c:.2f}x" for w, c in zip(walls, recipe_walls, strict=True)
            )
            print(f"  {key}: {ratios}")
            figures[name] = sum(float(w) for w in walls if w is not None) / sum(recipe_walls)
    print_headlines(figures)


def main() -> None:
    args = parse_args()
    if args.pool:
        pool(args.records)
        return
    data = check_data(args.data)
    print(f"# The search vs the classic recipe, {environment_line()}")
    print(
        f"# split: val {VAL_FRACTION}, test {TEST_FRACTION}, seed {args.seed}; recipe: Lite0 at "
        f"{args.recipe_size} px, {args.recipe_epochs} epochs on train + val, {args.workers} "
        f"DataLoader workers, fp32; search: --space {args.space} (trials train on train)"
    )
    print(f"# {load_line()}")
    rows = []
    with reuse_or_work_dir(args) as tmp:
        if args.quick:
            data = tmp / "photos" if args.reuse else make_subset(data, tmp / "photos", 12)
        split = trainables.make_split(
            trainables.scan_folder(data), VAL_FRACTION, args.seed, test_fraction=TEST_FRACTION
        )
        print(f"split: {len(split.train)} train / {len(split.val)} val / {len(split.test)} test; "
              f"the recipe trains on {len(split.train) + len(split.val)}")  # fmt: skip
        recipe = recorded_recipe(args, split) if args.recipe_from else run_recipe(split, args)
        name = f"recipe (Lite0 {args.recipe_size} px, {args.recipe_epochs} epochs, train + val)"
        rows.append([name, "", recipe["test_acc"], "", "", recipe["wall_s"]])

        storage = tmp / "results"
        walls = {} if args.reuse else search_side(args, data, storage, tmp)
        exp = experiment_at(storage / "vs")
        if [p for p, _ in exp.split().test] != [p for p, _ in split.test]:
            print(f"error: the search's test split differs from the recipe's (--seed {args.seed}?)",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(2)
        gains: dict[str, dict[str, float]] = {}
        models: dict[str, dict[str, Any]] = {}
        for key, (label, _) in contenders(args).items():
            config = json.loads((tmp / key / "config.json").read_text())
            val_acc, reported, tta = tuner_figures(config, exp)
            right = right_on_test(tmp / key, split)
            # The tuner scores without test-time augmentation; the export applies it.
            if tta == "none" and abs(float(right.mean()) - reported) > 0.5 / len(right):
                raise SystemExit(
                    f"{key}: export scores {right.mean():.4f} on test, the tuner said {reported}"
                )
            wall = walls.get(key)
            gains[key] = paired_gain([(right, recipe["test_right"])], args.seed)
            label = f"{label}, tta {tta}"
            models[key] = {"label": label, "val_acc": val_acc, "wall_s": wall, "tta": tta,
                           "test_acc_without_tta": reported,
                           "right": right.astype(int).tolist()}  # fmt: skip
            if key == "refit":
                models[key]["epochs"] = refit_record(config, exp)["epochs"]
            g = gains[key]
            rows.append([label, val_acc, float(right.mean()),
                         f"{g['gain']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]",
                         f"{g['only_search']} / {g['only_recipe']}", wall or ""])  # fmt: skip

    if args.record is not None:
        recipe_record = {k: v for k, v in recipe.items() if k != "test_right"}
        recipe_record["right"] = recipe["test_right"].astype(int).tolist()
        record = {"seed": args.seed, "space": args.space, "data": str(data),
                  "test": [path for path, _ in split.test], "search_wall_s": walls.get("search"),
                  "recipe": recipe_record, "models": models}  # fmt: skip
        record["distill_epochs"] = args.distill_epochs or DISTILL_DEFAULT
        record["refit_epochs"] = REFIT_DEFAULT
        if args.recipe_from:
            record["recipe_from"] = str(args.recipe_from)
        args.record.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.record}")
    print()
    n = len(split.test)
    headers = ["model", "val_acc", f"test_acc ({n} photos)", "gain vs recipe [95% CI]",
               "right only here / only recipe", "wall s"]  # fmt: skip
    print_table(headers, rows)
    print(f"# at the end: {load_line()}")
    test = {key: float(rows[i + 1][2]) for i, key in enumerate(models)}
    print_headlines(headlines(recipe, test, gains, walls))


HEADLINES = {  # contender: (test_acc headline, gain headline, time ratio headline)
    "rank 1": ("search_test_acc", "single_gain", "time_ratio_vs_recipe"),
    "distilled": ("distilled_test_acc", "distilled_gain", "distilled_time_ratio_vs_recipe"),
    "refit": ("refit_test_acc", "refit_gain", "refit_time_ratio_vs_recipe"),
    "greedy": ("ensemble_greedy_test_acc", "ensemble_greedy_gain", ""),
    "top": ("ensemble_top_test_acc", "ensemble_gain", ""),
}


def headlines(
    recipe: dict[str, Any],
    test: dict[str, float],
    gains: dict[str, dict[str, float]],
    walls: dict[str, float],
) -> dict[str, object]:
    """A run's headlines: the recipe's, then each contender's that ran (``test``)."""
    figures: dict[str, object] = {
        "recipe_test_acc": recipe["test_acc"],
        "recipe_wall_s": recipe["wall_s"],
        "search_wall_s": walls.get("search"),
    }
    for key, (acc, gain, ratio) in HEADLINES.items():
        if key not in test:
            continue
        figures[acc], figures[gain] = test[key], gains[key]["gain"]
        if key in ("rank 1", "distilled"):
            figures[f"{gain}_ci95_low"] = gains[key]["low"]
        if key == "rank 1":
            figures[f"{gain}_ci95_high"] = gains[key]["high"]
        if ratio and key in walls:
            figures[ratio] = walls[key] / recipe["wall_s"]
    return {name: value for name, value in figures.items() if value is not None}


if __name__ == "__main__":
    main()
