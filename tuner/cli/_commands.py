"""Command line: parse, call, print. Every decision lives in the modules it calls.

``python -m tuner --help`` (or the ``tuner`` script) lists the subcommands.
Exit codes: 0 success, 2 bad usage or input (one message on stderr), 1 other.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainables import apply_ray_defaults, use_cache_dir
from tuner._errors import UsageError, printable
from tuner.cli._parser import build_parser

if TYPE_CHECKING:
    from tuner.results import RankedTrial
    from tuner.storage import Experiment


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


def printable_json(data: object) -> str:
    """JSON (non-ASCII kept readable) that any stdout can print: a file name's bytes that
    are not UTF-8 become ``\\udcXX`` escapes, still valid JSON (JSON escapes control
    characters itself)."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def print_data(text: str) -> None:
    """``text`` on stdout as one document: ended by exactly one newline (a CSV that
    already ends with one gains no empty last row)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from tuner.results import build_leaderboard, made_model_lines, render

    exp = _experiment(args)
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
    from tuner.spaces import available_spaces, load_space

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


def _experiment(args: argparse.Namespace) -> Experiment:
    """The experiment that NAME and --storage name (UsageError if there is none)."""
    from tuner.storage import Experiment, Storage

    return Experiment.open(Storage.parse(args.storage), args.name)


def _cmd_report(args: argparse.Namespace) -> int:
    from tuner.results import write_report

    report = write_report(_experiment(args))
    for path in report.figures:
        print(f"Wrote {path}")
    for figure, reason in report.skipped.items():
        print(f"Skipped {figure}: {reason}")
    print(f"Report: {report.markdown}")
    return 0


def _ranked_trial(args: argparse.Namespace) -> RankedTrial:
    """The ranked trial that NAME, --rank and --storage name, loaded."""
    from tuner.results import build_leaderboard, load_ranked_trial

    exp = _experiment(args)
    return load_ranked_trial(exp, args.rank, build_leaderboard(exp))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tuner.results import apply_tta, evaluate_folder, evaluate_test_split

    trial = _ranked_trial(args)
    trial = replace(trial, model=apply_tta(trial.model, args.tta))
    data = Path(args.data) if args.data else None
    metrics = evaluate_folder(trial, data) if data else evaluate_test_split(trial)
    print(json.dumps(metrics | {"tta": args.tta}, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tuner.results import check_output, choose_tta, export_trial

    check_output(Path(args.output), args.force)  # before any model is loaded
    if args.pick is not None:
        if args.ensemble or args.distill:
            raise UsageError("--pick chooses one trial: it goes without --ensemble and --distill")
        if args.rank is not None:
            raise UsageError("--pick chooses the rank: give --pick or --rank, not both")
        from tuner.results import build_leaderboard, pick_rank

        args.rank = pick_rank(build_leaderboard(_experiment(args)), args.pick)
        print(f"--pick {args.pick}: rank {args.rank}, the most accurate front trial that meets it")
    args.rank = args.rank or 1
    if args.distill:
        if args.refit:
            raise UsageError("--distill and --refit cannot be combined")
        return _export_distilled(args)
    if args.student is not None or args.trust_state:
        flag = "--student" if args.student is not None else "--trust-state"
        raise UsageError(f"{flag} goes with --distill")
    if args.ensemble:
        if args.refit:
            raise UsageError("--ensemble and --refit cannot be combined")
        return _export_ensemble(args)
    trial = _ranked_trial(args)
    # Chosen on the search checkpoint: a refit trained on the validation photos.
    scored = f"the search checkpoint of trial {trial.trial_id}" if args.refit else "the model"
    tta = choose_tta(args.tta, trial.model, trial.experiment.split(), trial.preprocessing, scored)
    if args.refit:
        from tuner.results import load_refit

        trial = load_refit(trial)
    for path in export_trial(trial, Path(args.output), args.force, tta):
        print(f"Wrote {path}")
    print(tta.line())
    if args.refit:
        print(f"Exported the refit of trial {trial.trial_id} (rank {trial.rank}, retrained on "
              f"train+val for {trial.best_epoch} epoch(s))")  # fmt: skip
    else:
        val = "-" if trial.val_acc is None else f"{trial.val_acc:.4f}"
        print(f"Exported trial {trial.trial_id} (rank {trial.rank}, val_acc {val})")
    return 0


def _export_distilled(args: argparse.Namespace) -> int:
    from tuner.results import DistillRequest, choose_tta, distill, export_trial, load_distilled

    exp = _experiment(args)
    request = DistillRequest(
        rank=args.rank, size=args.ensemble or 3, method=args.ensemble_method,
        student=args.student, teacher_weight=args.teacher_weight,
    )  # fmt: skip
    request.check()  # before anything loads
    record, folder, trial = distill(exp, request, trust_state=args.trust_state)
    scored = f"the search checkpoint of trial {trial.trial_id}"
    tta = choose_tta(args.tta, trial.model, exp.split(), trial.preprocessing, scored)
    student = load_distilled(trial, record, folder)
    extra = {"distilled": {k: record[k] for k in ("teacher", "teacher_weight", "test_acc")}}
    for path in export_trial(student, Path(args.output), args.force, tta, extra):
        print(f"Wrote {path}")
    print(tta.line())
    print(
        f"Exported the distilled model ({record['model']}, the configuration of rank "
        f"{record['rank']}, {record['epochs']} epoch(s) on train + val from a "
        f"{request.method} ensemble of {len(record['teacher']['members'])}): test_acc "
        f"{record['test_acc']:.4f} on {record['n_test']} test photos (without test-time "
        f"augmentation); {record['wall_time_s']:.0f} s of training"
    )
    return 0


def _cmd_refit(args: argparse.Namespace) -> int:
    from tuner.results import refit

    exp = _experiment(args)
    record = refit(exp, args.rank, trust_state=args.trust_state)
    val = record["search_val_acc"]
    print(
        f"Refit of trial {record['trial_id']} (rank {record['rank']}): test_acc "
        f"{record['test_acc']:.4f} on {record['n_test']} test photos after {record['epochs']} "
        f"epoch(s) on {record['n_train']} photos (search val_acc {val:.4f}); "
        f"{record['wall_time_s']:.0f} s"
    )
    print(f"  checkpoint: {record['checkpoint']}")
    where = f" --storage {shlex.quote(exp.storage.uri)}" if args.storage else ""
    command = f"python -m tuner export {args.name}{where} --rank {args.rank} --refit"
    print(f"  export it with: {command} --output DIR")
    return 0


def _export_ensemble(args: argparse.Namespace) -> int:
    from tuner.results import (
        build_leaderboard,
        choose_ensemble,
        choose_tta,
        export_ensemble,
        record_ensemble,
        score_module_on_test,
    )

    exp = _experiment(args)
    board = build_leaderboard(exp)
    ensemble = choose_ensemble(exp, board, args.ensemble, args.ensemble_method)
    prep = ensemble.members[0].preprocessing
    tta = choose_tta(args.tta, ensemble.module(), exp.split(), prep, "the ensemble")
    test_acc = score_module_on_test(exp, ensemble.module(), prep)
    for path in export_ensemble(ensemble, Path(args.output), test_acc, args.force, tta):
        print(f"Wrote {path}")
    print(tta.line())
    record_ensemble(
        exp,
        args.ensemble_method,
        [
            {"trial_id": m.trial_id, "rank": m.rank, "weight": w}
            for m, w in zip(ensemble.members, ensemble.weights, strict=True)
        ],
        ensemble.val_acc,
        test_acc,
    )
    members = ", ".join(
        f"rank {m.rank} x{w:g}" for m, w in zip(ensemble.members, ensemble.weights, strict=True)
    )
    test = f", test_acc {test_acc:.4f}" if test_acc is not None else ""
    print(
        f"Exported a {args.ensemble_method} ensemble of {len(ensemble.members)} trial(s) "
        f"({members}): val_acc {ensemble.val_acc:.4f}{test}"
    )
    best = float(board["val_acc"].iloc[0])
    if ensemble.val_acc < best:
        print(
            f"Note: the ensemble's val_acc is below rank 1's alone ({best:.4f}); on the "
            "validation photos the single trial did better (export it with --rank 1)"
        )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from tuner.results import (
        expand_images,
        format_predictions,
        load_export,
        predict_images,
        predictions_json,
        resolve_device,
        write_predictions,
    )

    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"--output {output}: give a .csv or .json file")
    device = resolve_device(args.device)
    exported = load_export(Path(args.model_dir), trust_model=args.trust_model, device=device)
    results = predict_images(exported, expand_images(args.images), args.top)
    if output is not None:
        write_predictions(results, output, args.top, args.model_dir)
        failed = sum("error" in r for r in results)
        print(f"Wrote {output}: {len(results)} photo(s), {failed} unreadable")
    elif args.json:
        print(predictions_json(args.model_dir, results), end="")
    else:
        text, errors = format_predictions(results)
        if text:
            print(text)
        for line in errors:
            print(line, file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


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
    "evaluate": _cmd_evaluate,
    "export": _cmd_export,
    "refit": _cmd_refit,
    "predict": _cmd_predict,
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
