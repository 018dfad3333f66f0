"""Search strategies at an equal budget: schedulers and samplers side by side.

Runs ``python -m tuner search`` over the real photos with one space and budget
(the smoke space by default: EfficientNet-Lite0 at 96 px, 8 trials x <= 6
epochs) for each strategy and each seed:

* ASHA, HyperBand, the median rule and FIFO (no early stopping), with TPE;
* ASHA with random sampling and with CMA-ES.

Every strategy searches from nothing: the space's ``points_to_evaluate`` are
dropped (``--seeded`` keeps them; the smoke space's known-good point was every
strategy's best trial, which leaves nothing to compare). The first search of each
seed fills the frozen-activation cache the others reuse, so each seed starts with
another strategy. Per strategy, over the seeds (each seed is another split and
another sampler seed, the same for every strategy), it prints the trial-epochs run, the
trial-epochs until one reached the val_acc target (every reported epoch of the
search, in the order reported), the best val_acc, rank 1's test_acc (photos no
trial saw) and the wall time; and ASHA's share of FIFO's trial-epochs.

    uv run python benchmarks/search_efficiency.py              # ~1 h on 2 CPUs (6 x 3 runs)
    uv run python benchmarks/search_efficiency.py --seeds 1    # one seed, ~20 min
    uv run python benchmarks/search_efficiency.py --quick      # same code paths, ~3 min
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
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
    read_leaderboard,
    write_space,
)

STRATEGIES = {  # label: (scheduler, searcher)
    "asha": ("asha", "tpe"),
    "hyperband": ("hyperband", "tpe"),
    "median": ("median", "tpe"),
    "fifo": ("fifo", "tpe"),
    "asha_random": ("asha", "random"),
    "asha_cmaes": ("asha", "cmaes"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Trial-epochs to a val_acc target, best test_acc and wall time of each "
        "scheduler and sampler at the same space, budget and seeds."
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--space", default="smoke", help="built-in space of every run")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--target", type=float, default=0.9, help="val_acc to reach")
    parser.add_argument(
        "--seeded",
        action="store_true",
        help="keep the space's points_to_evaluate (by default every strategy searches from "
        "nothing: the smoke space's known-good point was every strategy's best trial)",
    )
    parser.add_argument(
        "--only", default=",".join(STRATEGIES), help=f"comma list of {', '.join(STRATEGIES)}"
    )
    add_search_flags(parser, "tiny run of the same code paths (12 photos/class, 3 x 2 epochs)")
    args = parser.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(STRATEGIES)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}")
    if args.quick:
        args.num_samples, args.max_epochs, args.seeds, args.target = 3, 2, 1, 0.5
    return args


@dataclass
class Outcome:
    """What one search did."""

    strategy: str
    seed: int
    run: SearchRun
    epochs: int
    to_target: int | None
    best_val_acc: float
    test_acc: float


def outcome(strategy: str, seed: int, run: SearchRun, target: float) -> Outcome:
    accs = epochs_in_order(run.exp_dir)
    board = read_leaderboard(run.exp_dir)
    test = board[0].get("test_acc", "") if board else ""
    return Outcome(
        strategy, seed, run, len(accs), epochs_to_reach(accs, target),
        max(accs, default=float("nan")), float(test) if test not in ("", "nan") else float("nan"),
    )  # fmt: skip


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def main() -> None:
    args = parse_args()
    outcomes: list[Outcome] = []
    setup = (
        f"space {args.space}: {args.num_samples} trials x <= {args.max_epochs} epochs, "
        f"grace {args.grace_period}, reduction {args.reduction_factor}, 1 CPU per trial; "
        f"seeds 0..{args.seeds - 1}; target val_acc {args.target}"
    )
    with bench_run(args, "Search strategies at an equal budget", setup, "bench-strategies-") as (
        tmp,
        data,
    ):
        space = write_space(
            tmp / "space.yaml",
            args.space,
            budget={
                "num_samples": args.num_samples,
                "max_epochs": args.max_epochs,
                "grace_period": args.grace_period,
                "reduction_factor": args.reduction_factor,
                "cpus_per_trial": 1,
            },
            points_to_evaluate=None if args.seeded else [],
        )
        for seed in range(args.seeds):
            # The first search of a seed (a split of its own) fills the frozen-activation
            # cache the others reuse: each seed starts with another strategy.
            turn = seed % len(args.only)
            for label in args.only[turn:] + args.only[:turn]:
                scheduler, searcher = STRATEGIES[label]
                run = benchmark_search(
                    space, data, tmp / "results", f"{label}-s{seed}",
                    ["--scheduler", scheduler, "--searcher", searcher, "--seed", str(seed)],
                    verbose=args.verbose, cache=tmp / "cache",
                )  # fmt: skip
                outcomes.append(outcome(label, seed, run, args.target))
    print()
    rows: list[list[object]] = []
    figures: dict[str, float] = {}
    for label in args.only:
        mine = [o for o in outcomes if o.strategy == label]
        reached = [o.to_target for o in mine if o.to_target is not None]
        row = {
            "trial_epochs": mean([o.epochs for o in mine]),
            "epochs_to_target": mean([float(r) for r in reached]),
            "best_val_acc": mean([o.best_val_acc for o in mine]),
            "best_test_acc": mean([o.test_acc for o in mine]),
            "wall_s": mean([o.run.wall_s for o in mine]),
        }
        rows.append([label, *STRATEGIES[label], *row.values(), f"{len(reached)}/{len(mine)}"])
        figures |= {f"{label}_{k}": v for k, v in row.items()}
    print_table(
        ["strategy", "scheduler", "searcher", "trial epochs", f"epochs to {args.target}",
         "best val_acc", "rank-1 test_acc", "wall s", "reached"],
        rows,
    )  # fmt: skip
    if "asha" in args.only and "fifo" in args.only:
        figures["asha_epoch_fraction"] = figures["asha_trial_epochs"] / figures["fifo_trial_epochs"]
    print(f"# at the end: {load_line()}")
    print_headlines(figures)


if __name__ == "__main__":
    main()
