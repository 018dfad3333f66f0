"""Search efficiency: ASHA early stopping vs running every trial to the end (FIFO).

Runs ``python -m tuner search`` twice over the real photos with the smoke
space (EfficientNet-Lite0, 96 px) and the same seed and number of samples:

* **ASHA**: the smoke space's own schedule, grace period 1 and reduction
  factor 2 (rungs after 1, 2 and 4 epochs; at each, a trial goes on only if it
  is in the top half of the trials that reached it);
* **FIFO**: grace period = max_epochs, so ASHA has no rung below the end and
  stops nothing; every trial runs all its epochs.

With the same seed, Optuna proposes the same configurations in both runs
while it is still in its random start-up phase (TPE's first 10 trials), so
the two runs differ only in what the scheduler stopped. The benchmark reads
both leaderboards and compares the total trial epochs (the work done), the
best val_acc found, and the wall time.

    uv run python benchmarks/search_efficiency.py            # ~25 min on 2 CPUs
    uv run python benchmarks/search_efficiency.py --quick    # same code paths, ~1-2 min
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from _common import (
    DEFAULT_DATA,
    SearchRun,
    add_search_flags,
    benchmark_search,
    check_data,
    environment_line,
    load_line,
    make_subset,
    print_headlines,
    print_table,
    read_leaderboard,
    work_dir,
    write_space,
)

EPOCH_FRACTION_TARGET = 0.45
ACC_GAP_TARGET = 0.01


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Total trial epochs, best val_acc and wall time of an ASHA search vs the "
        "same search with nothing stopped early (FIFO), same seed and samples, via "
        "`python -m tuner search` on the smoke space.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--space", default="smoke", help="built-in space to base both runs on")
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA run's grace period")
    parser.add_argument("--reduction-factor", type=int, default=2)
    parser.add_argument("--cpus-per-trial", type=float, default=1)
    parser.add_argument("--seed", type=int, default=0)
    add_search_flags(
        parser, "tiny run of the same code paths (12 photos/class, 3 trials of 2 epochs)"
    )
    args = parser.parse_args()
    if args.quick:
        args.num_samples, args.max_epochs = 3, 2
    return args


@dataclass
class Outcome:
    """What one search did, read from its leaderboard."""

    label: str
    run: SearchRun
    trials: int
    epochs: int
    stopped_early: int
    best_val_acc: float
    best_trial: str


def outcome(label: str, run: SearchRun) -> Outcome:
    board = read_leaderboard(run.exp_dir)
    scored = [r for r in board if r["val_acc"] not in ("", "nan")]
    best = max(scored, key=lambda r: float(r["val_acc"])) if scored else None
    return Outcome(
        label=label,
        run=run,
        trials=len(board),
        epochs=sum(int(r["epochs"]) for r in board),
        stopped_early=sum(r["stopped_early"].lower() == "true" for r in board),
        best_val_acc=float(best["val_acc"]) if best else float("nan"),
        best_trial=best["trial_id"] if best else "-",
    )


def main() -> None:
    args = parse_args()
    data = check_data(args.data)
    print(f"# Search efficiency, ASHA vs FIFO, {environment_line()}")
    print(
        f"# space {args.space}: {args.num_samples} trials x <= {args.max_epochs} epochs, seed "
        f"{args.seed}, {args.cpus_per_trial:g} CPU per trial; ASHA grace {args.grace_period}, "
        f"reduction {args.reduction_factor}; FIFO grace {args.max_epochs} (stops nothing)"
    )
    print(f"# {load_line()}")
    with work_dir(args.keep, "bench-asha-") as tmp:
        if args.quick:
            data = make_subset(data, tmp / "photos", per_class=12)
        budget = {
            "num_samples": args.num_samples,
            "max_epochs": args.max_epochs,
            "reduction_factor": args.reduction_factor,
            "cpus_per_trial": args.cpus_per_trial,
            "seed": args.seed,
        }
        spaces = {
            "asha": write_space(
                tmp / "asha.yaml", args.space, budget={**budget, "grace_period": args.grace_period}
            ),
            "fifo": write_space(
                tmp / "fifo.yaml", args.space, budget={**budget, "grace_period": args.max_epochs}
            ),
        }
        outcomes = [
            outcome(
                label, benchmark_search(space, data, tmp / "results", label, verbose=args.verbose)
            )
            for label, space in spaces.items()
        ]
    asha, fifo = outcomes
    print()
    print_table(
        ["scheduler", "trials", "stopped early", "trial epochs", "best val_acc", "wall s"],
        [
            [o.label, o.trials, o.stopped_early, o.epochs, o.best_val_acc, o.run.wall_s]
            for o in outcomes
        ],
    )
    fraction = asha.epochs / fifo.epochs
    gap = fifo.best_val_acc - asha.best_val_acc
    print(
        f"ASHA did {fraction:.0%} of FIFO's trial epochs (target <= {EPOCH_FRACTION_TARGET:.0%})"
        f" and its best val_acc is {gap:+.4f} below FIFO's (target <= {ACC_GAP_TARGET}); "
        f"wall time {asha.run.wall_s / fifo.run.wall_s:.0%} of FIFO's"
    )
    if asha.trials != fifo.trials:
        print(f"note: the runs have {asha.trials} and {fifo.trials} trials")
    print(f"# at the end: {load_line()}")
    print_headlines(
        {
            "asha_trial_epochs": asha.epochs,
            "fifo_trial_epochs": fifo.epochs,
            "asha_best_val_acc": asha.best_val_acc,
            "fifo_best_val_acc": fifo.best_val_acc,
            "asha_wall_s": asha.run.wall_s,
            "fifo_wall_s": fifo.run.wall_s,
            "asha_epoch_fraction": fraction,
            "best_acc_gap": gap,
        }
    )


if __name__ == "__main__":
    main()
