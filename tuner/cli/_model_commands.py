"""The commands that score, retrain, export and run a ranked trial's model: evaluate,
refit, export (one model, an ensemble or a distilled student) and predict."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from tuner._errors import UsageError
from tuner.cli._common import experiment_of, ranked_trial


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from tuner.results import apply_tta, evaluate_folder, evaluate_test_split

    trial = ranked_trial(args)
    trial = replace(trial, model=apply_tta(trial.model, args.tta))
    data = Path(args.data) if args.data else None
    metrics = evaluate_folder(trial, data) if data else evaluate_test_split(trial)
    print(json.dumps(metrics | {"tta": args.tta}, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tuner.results import check_output, choose_tta, export_trial

    check_output(Path(args.output), args.force)  # before any model is loaded
    if args.pick is not None:
        if args.ensemble or args.distill:
            raise UsageError("--pick chooses one trial: it goes without --ensemble and --distill")
        if args.rank is not None:
            raise UsageError("--pick chooses the rank: give --pick or --rank, not both")
        from tuner.results import build_leaderboard, pick_rank

        args.rank = pick_rank(build_leaderboard(experiment_of(args)), args.pick)
        print(f"--pick {args.pick}: rank {args.rank}, the most accurate front trial that meets it")
    args.rank = args.rank or 1
    if args.distill:
        if args.refit:
            raise UsageError("--distill and --refit cannot be combined")
        return export_distilled(args)
    given = {"--student": args.student is not None, "--epochs": args.epochs is not None}
    flag = next((f for f, on in given.items() if on), None)
    if flag is not None:
        raise UsageError(f"{flag} goes with --distill")
    if args.trust_state and not args.refit:
        raise UsageError("--trust-state goes with --refit or --distill")
    if args.ensemble:
        if args.refit:
            raise UsageError("--ensemble and --refit cannot be combined")
        return export_ensemble(args)
    trial = ranked_trial(args)
    # Chosen on the search checkpoint: a refit trained on the validation photos.
    scored = f"the search checkpoint of trial {trial.trial_id}" if args.refit else "the model"
    tta = choose_tta(args.tta, trial.model, trial.experiment.split(), trial.preprocessing, scored)
    if args.refit:
        from tuner.results import load_refit

        trial = load_refit(trial, trust_state=args.trust_state)
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


def export_distilled(args: argparse.Namespace) -> int:
    from tuner.results import DistillRequest, choose_tta, distill, export_trial, load_distilled

    exp = experiment_of(args)
    request = DistillRequest(
        rank=args.rank, size=args.ensemble or 3, method=args.ensemble_method,
        student=args.student, teacher_weight=args.teacher_weight, epochs=args.epochs,
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


def cmd_refit(args: argparse.Namespace) -> int:
    from tuner.results import refit

    exp = experiment_of(args)
    record = refit(exp, args.rank, trust_state=args.trust_state, epochs=args.epochs)
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


def export_ensemble(args: argparse.Namespace) -> int:
    from tuner.results import (
        build_leaderboard,
        choose_ensemble,
        choose_tta,
        export_ensemble,
        record_ensemble,
        score_module_on_test,
    )

    exp = experiment_of(args)
    board = build_leaderboard(exp)
    ensemble = choose_ensemble(exp, board, args.ensemble, args.ensemble_method, say=print)
    prep = ensemble.members[0].preprocessing
    split = exp.split()
    if args.tta == "auto":
        print(f"Trying a flip average on the {len(split.val)} validation photos")
    tta = choose_tta(args.tta, ensemble.module(), split, prep, "the ensemble")
    if split.test:
        print(f"Scoring the ensemble on the {len(split.test)} test photos")
    test_acc = score_module_on_test(exp, ensemble.module(), prep)
    print("Writing the export (state dicts, TorchScript, ONNX, torch.export program)")
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


def cmd_predict(args: argparse.Namespace) -> int:
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
