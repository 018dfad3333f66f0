"""Warm start vs cold: trial-epochs a search needs to reach a target val_acc.

Three ``python -m tuner search`` runs over the real photos, one space:

* **first**: a cold search on split seed 0 (the earlier experiment);
* **cold**: a cold search on another split (seed 1: other train/val/test photos);
* **warm**: the same search on seed 1, with ``--warm-start first``: its study
  starts with the first search's ended trials.

The target is the cold search's best val_acc. For the cold and warm searches
the benchmark orders every reported epoch of every trial by the time it was
reported and counts the trial-epochs run until one reached the target (the
work a user waits for), and prints each search's best val_acc and wall time.

    uv run python benchmarks/warm_start.py            # ~15 min on 2 CPUs
    uv run python benchmarks/warm_start.py --quick    # same code paths, ~3 min
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import (
    DEFAULT_DATA,
    SearchRun,
    add_search_flags,
    bench_run,
    benchmark_search,
    epochs_in_order,
    epochs_to_reach,
    load_line,
    print_headlines,
    print_table,
    write_space,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Trial-epochs to reach the cold search's best val_acc: a search warm-"
        "started from an earlier one on another split vs the same search cold."
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--space", default="smoke", help="built-in space of the three runs")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=4)
    add_search_flags(parser, "tiny run of the same code paths (12 photos/class, 3 x 2 epochs)")
    args = parser.parse_args()
    if args.quick:
        args.num_samples, args.max_epochs = 3, 2
    return args


def main() -> None:
    args = parse_args()
    setup = (
        f"space {args.space}: {args.num_samples} trials x <= {args.max_epochs} epochs; "
        "first on split seed 0, cold and warm on seed 1 (warm: --warm-start first)"
    )
    with bench_run(args, "Warm start vs cold", setup, "bench-warm-") as (tmp, data):
        space = write_space(
            tmp / "space.yaml",
            args.space,
            budget={"num_samples": args.num_samples, "max_epochs": args.max_epochs},
        )
        storage, cache = tmp / "results", tmp / "cache"

        def search(name: str, *extra: str) -> SearchRun:
            return benchmark_search(
                space, data, storage, name, extra, verbose=args.verbose, cache=cache
            )

        first = search("first", "--seed", "0")
        cold = search("cold", "--seed", "1")
        warm = search("warm", "--seed", "1", "--warm-start", "first")
        taken = next((line for line in warm.output.splitlines() if "Warm start" in line), "")
        runs = {"first": first, "cold": cold, "warm": warm}
        accs = {label: epochs_in_order(run.exp_dir) for label, run in runs.items()}
    target = max(accs["cold"])
    reach = {label: epochs_to_reach(accs[label], target) for label in ("cold", "warm")}
    print()
    print(f"  {taken.strip()}")

    def reached(label: str) -> object:
        if label not in reach:
            return "-"
        return "never" if reach[label] is None else reach[label]

    rows = [
        [label, 0 if label == "first" else 1, len(accs[label]), max(accs[label]), reached(label),
         runs[label].wall_s]
        for label in runs
    ]  # fmt: skip
    print_table(
        ["search", "split", "trial epochs", "best val_acc", f"epochs to {target:.4f}", "wall s"],
        rows,
    )
    print(f"# at the end: {load_line()}")
    never = float(len(accs["warm"]) + 1)  # not reached: more than it ran
    warm_reach = float(reach["warm"]) if reach["warm"] is not None else never
    print_headlines(
        {
            "cold_epochs_to_cold_best": reach["cold"],
            "warm_epochs_to_cold_best": warm_reach,
            "warm_epoch_ratio": warm_reach / float(reach["cold"] or 1),
            "cold_best_val_acc": max(accs["cold"]),
            "warm_best_val_acc": max(accs["warm"]),
            "cold_wall_s": cold.wall_s,
            "warm_wall_s": warm.wall_s,
        }
    )


if __name__ == "__main__":
    main()
