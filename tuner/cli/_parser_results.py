"""The grammar of the commands that read what a search left: leaderboard, report, evaluate,
compare, export, refit and predict."""

from __future__ import annotations

from typing import Any

from tuner.cli._flags import (
    STORAGE_HELP,
    add_ranked_trial_args,
    cache_dir_flag,
    device,
    positive_int,
)


def add_result_commands(sub: Any) -> None:
    """Add the result commands to the subparsers ``sub``."""
    board = sub.add_parser(
        "leaderboard",
        help="show or export the ranked trials",
        description="Ranked trials of an experiment (best first).",
    )
    board.add_argument("name")
    board.add_argument("--storage", help=STORAGE_HELP)
    board.add_argument("--top", type=positive_int, metavar="K")
    board.add_argument(
        "--pareto",
        action="store_true",
        help="only the trials on the Pareto front (a search of several objectives)",
    )
    board.add_argument(
        "--format", default="table", choices=["table", "csv", "parquet", "json", "markdown"]
    )
    board.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")

    report = sub.add_parser(
        "report",
        help="figures and a summary of an experiment",
        description="Draw learning curves, best val_acc over time, val_acc against each "
        "searched hyperparameter and hyperparameter importance, and write report.md "
        "showing them, under STORAGE/NAME/report/.",
    )
    report.add_argument("name")
    report.add_argument("--storage", help=STORAGE_HELP)

    evaluate = sub.add_parser(
        "evaluate",
        help="test-set metrics of a ranked trial, as JSON",
        description="Evaluate the best checkpoint of a ranked trial on the experiment's test "
        "split (photos no trial saw), or on a labelled photo folder (ImageFolder layout, the "
        "experiment's classes), and print one JSON object: accuracy, per-class "
        "precision/recall/support, confusion matrix, skipped files.",
    )
    add_ranked_trial_args(evaluate)
    evaluate.add_argument(
        "--data", metavar="DIR", help="labelled photo folder (default: the test split)"
    )
    evaluate.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="test-time augmentation: flip averages the probabilities of each photo and its "
        "mirror (default: none)",
    )

    compare = sub.add_parser(
        "compare",
        help="experiments side by side",
        description="For each experiment: status, space, strategy and objectives, best val_acc "
        "and its test_acc, the best made model's test_acc, trials, epochs, trial time and the "
        "top configurations (searched keys). table and markdown put the experiments in "
        "columns; csv and json give one record per experiment.",
    )
    compare.add_argument("names", nargs="+", metavar="NAME", help="experiments in --storage")
    compare.add_argument("--storage", help=STORAGE_HELP)
    compare.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    compare.add_argument(
        "--top", type=positive_int, default=3, metavar="K", help="top configurations shown"
    )

    export = sub.add_parser(
        "export",
        help="export a ranked trial as a standalone model folder",
        description="Write model.pt (state_dict of the stock architecture), model.onnx "
        "(ONNX, checked with onnxruntime), model.pt2 (a torch.export program), model.ts "
        "(TorchScript), labels.json and config.json (trial config, preprocessing and the "
        "input/output contract) for the best checkpoint of a ranked trial; or, with "
        "--ensemble K, one model averaging the probabilities of K trials' best "
        "checkpoints; or, with --distill, one network trained on train + val to answer "
        "like the top-K ensemble.",
    )
    add_ranked_trial_args(export, rank=None)
    export.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="folder to write (absent or empty; it appears whole when the export is done)",
    )
    export.add_argument(
        "--force", action="store_true", help="replace a non-empty --output folder whole"
    )
    export.add_argument(
        "--pick",
        metavar="CONSTRAINTS",
        help="export the most accurate trial on the Pareto front that meets CONSTRAINTS, e.g. "
        '"latency_ms<=5" or "latency_ms<5,params_m<=4" (a search of several objectives; exit 2 '
        "if no front trial does)",
    )
    export.add_argument(
        "--refit",
        action="store_true",
        help="export the refit of the ranked trial (see `refit`) instead of its search "
        "checkpoint, trained first where it has none",
    )
    export.add_argument(
        "--ensemble",
        type=positive_int,
        metavar="K",
        help="export an ensemble of K members instead of one trial (--rank is then ignored); "
        "with --distill: the teacher's size (default 3)",
    )
    export.add_argument(
        "--ensemble-method",
        choices=["top", "greedy"],
        default="top",
        help="top: the K best-ranked trials (the default: on photos no trial saw it did better "
        "than greedy in every measured search); greedy: K picks (with replacement) among the "
        "2K best, each raising val accuracy most",
    )
    export.add_argument(
        "--tta",
        choices=["none", "flip", "auto"],
        default="auto",
        help="test-time augmentation built into the export (recorded in config.json, applied "
        "by predict and the ONNX / torch.export graphs): flip averages the probabilities of "
        "each photo and its mirror; auto (the default) keeps flip only if it raises the "
        "accuracy on the validation photos",
    )
    export.add_argument(
        "--distill",
        action="store_true",
        help="train one network (the --rank configuration, on train + val, as a refit) on "
        "the top-K ensemble's probabilities mixed with the true labels, score it on the "
        "test split and export it (reused when asked again with the same settings)",
    )
    export.add_argument(
        "--student",
        metavar="MODEL",
        help="with --distill: the student's architecture, a model of the registry (default: "
        "the ranked trial's own)",
    )
    export.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help="with --distill: the student's epochs (default: the ranked trial's max_epochs, "
        "the epochs it was given)",
    )
    export.add_argument(
        "--teacher-weight",
        type=float,
        default=0.7,
        metavar="W",
        help="with --distill: each target is W x the teacher's probabilities + (1 - W) x the "
        "true label (default 0.7)",
    )
    export.add_argument(
        "--trust-state",
        action="store_true",
        help="with --refit or --distill: use tuner.json (cluster, resources) even if it does "
        "not carry a signature of your state key for this experiment",
    )

    refit = sub.add_parser(
        "refit",
        help="retrain a ranked configuration on train + val, score it on the test split",
        description="Retrain the configuration of a ranked trial (same seed and schedule, for "
        "the max_epochs it was given) on the training and validation photos together, as a "
        "Ray task with every CPU of one node, and score it on the test split. The model lands "
        "in STORAGE/NAME/refit/TRIAL_ID/ (replacing an earlier refit of that trial); "
        "`export --refit` exports it.",
    )
    add_ranked_trial_args(refit)
    cache_dir_flag(refit)
    refit.add_argument(
        "--epochs",
        type=positive_int,
        metavar="N",
        help="train N epochs (default: the ranked trial's max_epochs, the epochs it was given)",
    )
    refit.add_argument(
        "--trust-state",
        action="store_true",
        help="use tuner.json (the cluster it joins, the resources it asks for) even if it "
        "does not carry a signature of your state key for this experiment",
    )

    predict = sub.add_parser(
        "predict",
        help="classify photos with an exported model",
        description="Print the top classes with probabilities for each image, using an "
        "exported model folder (from `export`). Exit 1 if any image could not be read.",
    )
    predict.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by `export`")
    predict.add_argument(
        "images", nargs="+", metavar="IMAGE|FOLDER", help="photos, or folders searched recursively"
    )
    predict.add_argument(
        "--top", type=positive_int, default=3, metavar="K", help="classes per image (default: 3)"
    )
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.add_argument(
        "--output",
        metavar="FILE",
        help="write one row per photo to FILE.csv (image, class_1, probability_1, ..., error) "
        "or FILE.json instead of printing",
    )
    predict.add_argument(
        "--trust-model",
        action="store_true",
        help="run the folder's TorchScript model.ts (it runs code its author wrote); by "
        "default the project builds the architecture config.json names and loads only the "
        "tensors of model.pt",
    )
    predict.add_argument(
        "--device",
        type=device,
        default="auto",
        metavar="cpu|cuda|cuda:N|auto",
        help="where the model runs and the photos' batches go (default: auto, a CUDA GPU "
        "when there is one, else the CPU)",
    )
