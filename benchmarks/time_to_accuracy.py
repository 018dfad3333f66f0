"""Time to accuracy: wall-clock seconds until a search first reaches a val_acc.

Runs ``python -m tuner search --space lite`` (EfficientNet-Lite0, works with
no network) over the real photos and reads every trial's reported epochs
(``trial_*/result.json``: ``val_acc`` and the ``timestamp`` of the report).
The clock starts when the benchmark launches the search command, so the
figures include decoding the photos and starting Ray: what a user waits.

    uv run python benchmarks/time_to_accuracy.py              # the lite space in full (20+ min)
    uv run python benchmarks/time_to_accuracy.py --num-samples 4 --time-budget 600
    uv run python benchmarks/time_to_accuracy.py --quick      # smoke space, 2 trials x 1 epoch
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from _common import (
    DEFAULT_DATA,
    add_search_flags,
    benchmark_search,
    check_data,
    environment_line,
    load_line,
    make_subset,
    print_headlines,
    print_table,
    trial_results,
    work_dir,
)

DEFAULT_THRESHOLDS = (0.93, 0.95)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Seconds from launching `python -m tuner search --space lite` until the "
        "best val_acc so far first reaches each threshold; best val_acc; total wall time.",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="photo folder")
    parser.add_argument("--space", default="lite", help="space name or YAML file")
    parser.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=list(DEFAULT_THRESHOLDS),
        help="val_acc levels to time (default: 0.93 0.95)",
    )
    passthrough = parser.add_argument_group("passed to `tuner search`")
    passthrough.add_argument("--num-samples", type=int)
    passthrough.add_argument("--max-epochs", type=int)
    passthrough.add_argument("--time-budget", type=float, metavar="SECONDS")
    passthrough.add_argument("--seed", type=int)
    passthrough.add_argument("--cpus-per-trial", type=float)
    add_search_flags(
        parser,
        "check the code path in about a minute: smoke space, 12 photos/class, 2 trials of 1 epoch",
    )
    args = parser.parse_args()
    if args.quick:
        args.space, args.num_samples, args.max_epochs = "smoke", 2, 1
    return args


def search_flags(args: argparse.Namespace) -> list[str]:
    """The pass-through flags that were given."""
    flags: list[str] = []
    for name in ("num_samples", "max_epochs", "time_budget", "seed", "cpus_per_trial"):
        value = getattr(args, name)
        if value is not None:
            flags += [
                f"--{name.replace('_', '-')}",
                f"{value:g}" if isinstance(value, float) else str(value),
            ]
    return flags


def main() -> None:
    args = parse_args()
    data = check_data(args.data)
    flags = search_flags(args)
    space = Path(args.space)
    if space.suffix in (".yaml", ".yml") and space.is_file():
        args.space = str(space.resolve())  # the search runs from the repository root
    print(f"# Time to accuracy, space {args.space} {' '.join(flags)}, {environment_line()}")
    print(f"# {load_line()}")
    with work_dir(args.keep, "bench-tta-") as tmp:
        if args.quick:
            data = make_subset(data, tmp / "photos", per_class=12)
        run = benchmark_search(
            args.space, data, tmp / "results", "tta", flags, verbose=args.verbose
        )
        results = trial_results(run.exp_dir)
    # Every reported epoch, in the order they were reported: (seconds since launch, val_acc).
    epochs = sorted(
        (float(row["timestamp"]) - run.started, float(row["val_acc"]), trial)
        for trial, rows in results.items()
        for row in rows
        if not row.get("diverged") and math.isfinite(float(row["val_acc"]))
    )
    if not epochs:
        raise SystemExit("the search reported no scored epoch")
    first_report = epochs[0][0]
    best = max(acc for _, acc, _ in epochs)
    reached: dict[float, float | None] = {}
    for level in args.thresholds:
        reached[level] = next((t for t, acc, _ in epochs if acc >= level), None)

    print()
    print(
        f"{len(results)} trials, {len(epochs)} scored epochs; first epoch reported at "
        f"{first_report:.0f}s, search finished at {run.wall_s:.0f}s"
    )
    print_table(
        ["val_acc >=", "seconds since launch", "trial"],
        [
            [
                f"{level:.2f}",
                "never" if t is None else f"{t:.0f}",
                next((tr for tt, acc, tr in epochs if acc >= level), "-"),
            ]
            for level, t in reached.items()
        ],
    )
    print(f"# at the end: {load_line()}")
    print_headlines(
        {
            **{
                f"seconds_to_{level:g}": "never" if t is None else round(t)
                for level, t in reached.items()
            },
            "best_val_acc": best,
            "total_wall_s": run.wall_s,
        }
    )


if __name__ == "__main__":
    main()
