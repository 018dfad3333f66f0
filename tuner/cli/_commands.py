"""Command line: parse, call, print. Every decision lives in the modules it calls.

``python -m tuner --help`` (or the ``tuner`` script) lists the subcommands.
Exit codes: 0 success, 2 bad usage or input (one message on stderr), 1 other.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from trainables import apply_ray_defaults, use_cache_dir
from tuner._errors import UsageError, printable
from tuner.cli._common import experiment_of, print_data, printable_json
from tuner.cli._model_commands import cmd_evaluate, cmd_export, cmd_predict, cmd_refit
from tuner.cli._parser import build_parser


def _cmd_search(args: argparse.Namespace) -> int:
    from tuner.cli._datasets import resolve_data_dir
    from tuner.search import SearchRequest, default_name, run_search
    from tuner.spaces import load_space
    from tuner.storage import Experiment, Storage, WriterLock, validate_name

    space = load_space(args.space)
    space = space.with_budget(
        space.budget.override(
            num_samples=args.num_samples,
            max_epochs=args.max_epochs,
            time_budget_s=args.time_budget,
            seed=args.seed,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            max_concurrent=args.max_concurrent,
            test_fraction=args.test_fraction,
        )
    ).with_strategy(args.scheduler, args.searcher, args.latency_device)
    name = validate_name(args.name or default_name(space))
    storage = Storage.parse(args.storage)
    request = SearchRequest(
        space=space,
        name=name,
        storage=storage,
        data_dir=resolve_data_dir(args.data),
        address=args.address,
        follow_links=args.follow_links,
        warm_start=tuple(args.warm_start or ()),
        verbose=args.verbose,
    )
    storage.check_writable()  # the lock is the first thing written: say why it cannot be
    with WriterLock(Experiment(storage, name)):
        return run_search(request)


def _cmd_resume(args: argparse.Namespace) -> int:
    from tuner.search import resume
    from tuner.storage import Experiment, Storage, WriterLock

    storage = Storage.parse(args.storage)
    storage.check_writable()  # the lock is the first thing written: say why it cannot be
    with WriterLock(Experiment(storage, args.name)):
        return resume(args.name, storage, args.restart_errored, trust_state=args.trust_state)


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from tuner.results import build_leaderboard, made_model_lines, render

    exp = experiment_of(args)
    board = build_leaderboard(exp)
    if args.pareto:
        from tuner.results import front

        board = front(board)
    out = render(board, args.format, args.top)
    if args.format == "table" and not args.output:
        made = made_model_lines(exp)
        out = "\n".join([str(out), *(["", "Made from the search:"] if made else []), *made])
    if args.output:
        path = Path(args.output)
        try:
            path.write_bytes(out) if isinstance(out, bytes) else path.write_text(out)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    elif isinstance(out, bytes):
        raise UsageError("parquet is binary: give --output FILE")
    else:
        print_data(out)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from tuner.results import list_experiments, render_list
    from tuner.storage import Storage

    print_data(render_list(list_experiments(Storage.parse(args.storage)), args.format))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from tuner.results import compare, render_compare
    from tuner.storage import Experiment, Storage

    storage = Storage.parse(args.storage)
    experiments = [Experiment.open(storage, name) for name in args.names]
    print_data(render_compare(compare(experiments, args.top), args.format))
    return 0


def _cmd_spaces(args: argparse.Namespace) -> int:
    from tuner.spaces import available_spaces, load_space, space_schema

    if args.schema:
        if args.name:
            raise UsageError("give a space to show or --schema, not both")
        print(json.dumps(space_schema(), indent=2))
        return 0
    if args.name:
        print(json.dumps(load_space(args.name).to_dict(), indent=2))
        return 0
    for name in available_spaces():
        space = load_space(name)
        b = space.budget
        goal = f"; {space.objectives.describe()}" if space.objectives.multi else ""
        print(
            f"{name:10s} {b.num_samples:3d} trials x <= {b.max_epochs:2d} epochs  "
            f"searches: {', '.join(space.searched)}{goal}"
        )
        if space.description:
            print(f"{'':10s} {space.description}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tuner.results import write_report

    report = write_report(experiment_of(args))
    for path in report.figures:
        print(f"Wrote {path}")
    for figure, reason in report.skipped.items():
        print(f"Skipped {figure}: {reason}")
    print(f"Report: {report.markdown}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from trainables import DataError, check_folder, scan_folder
    from tuner.search import describe, summary

    try:
        usable = check_folder(scan_folder(args.dir, args.follow_links))
    except DataError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(printable_json(summary(usable)))
    else:
        print("\n".join(describe(usable)))
    problem = usable.problem()
    if problem:
        raise UsageError(f"a search cannot use this folder: {problem}")
    return 0


_COMMANDS = {
    "search": _cmd_search,
    "resume": _cmd_resume,
    "leaderboard": _cmd_leaderboard,
    "list": _cmd_list,
    "compare": _cmd_compare,
    "spaces": _cmd_spaces,
    "report": _cmd_report,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "refit": cmd_refit,
    "predict": cmd_predict,
    "data": _cmd_data,
}


def _is_bad_input(exc: Exception) -> bool:
    """Whether ``exc`` is the user's mistake (exit 2) rather than a failure."""
    if isinstance(exc, UsageError):
        return True
    # Imported only now: `tuner --help` and usage errors never load torch.
    from trainables import (
        CheckpointError,
        ConfigError,
        DataError,
        FileRefused,
        WeightsUnavailableError,
    )

    bad = (ConfigError, DataError, CheckpointError, WeightsUnavailableError, FileRefused)
    return isinstance(exc, bad)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_ray_defaults()  # before anything imports Ray
    if getattr(args, "cache_dir", None):
        use_cache_dir(Path(args.cache_dir).expanduser().resolve())
    try:
        return _COMMANDS[args.command](args)
    except Exception as exc:
        if not _is_bad_input(exc):
            raise
        print(f"tuner {args.command}: error: {printable(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuner: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
