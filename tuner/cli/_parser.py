"""The command line's grammar: every subcommand, flag, default and help text.

Imports nothing heavy, so ``tuner --help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any

from tuner.spaces import LATENCY_DEVICES, SCHEDULERS, SEARCHERS

STORAGE_HELP = (
    "where experiments live: a folder or a URI such as s3://BUCKET/PREFIX "
    "(?endpoint_override=HOST:PORT&scheme=http for MinIO/Ceph), gs://BUCKET/PREFIX "
    "(default: $TUNER_STORAGE or ./results)"
)


def _number(kind: type[int] | type[float], minimum: float, inclusive: bool) -> Any:
    """An argparse ``type=`` that parses ``kind`` and enforces a lower bound."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (whether the machine has it is checked later)."""
    value = text.strip().lower()
    index = value.removeprefix("cuda:")
    if value in ("cpu", "cuda", "auto") or (index != value and index.isascii() and index.isdigit()):
        return value if index == value else f"cuda:{int(index)}"
    raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")


_positive_int = _number(int, 1, inclusive=True)
_positive_float = _number(float, 0, inclusive=False)
_non_negative_float = _number(float, 0, inclusive=True)


def _cache_dir(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="local folder of the decoded photos and frozen activations, reused by later "
        "commands (default: $TUNER_CACHE, else ~/.cache/flower-tune)",
    )


def _follow_links(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--follow-links",
        action="store_true",
        help="also follow folder links that lead out of the photo folder (each folder is "
        "still listed once)",
    )


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: an argument it does not know is refused with this command's
    usage and the closest flag it has (argparse hands unknown arguments to the top
    parser, whose usage names no flag of the command)."""

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            message = f"unrecognized arguments: {' '.join(extras)}"
            flags = [f for a in self._actions for f in a.option_strings if f.startswith("--")]
            unknown = next((e.split("=", 1)[0] for e in extras if e.startswith("-")), None)
            close = difflib.get_close_matches(unknown, flags, n=1, cutoff=0.6) if unknown else []
            self.error(message + (f" (did you mean {close[0]}?)" if close else ""))
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuner",
        description="Hyperparameter search for fine-tuning image classifiers (Ray Tune + Optuna).",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )

    search = sub.add_parser(
        "search",
        help="run a new search",
        description="Run an Optuna-guided, ASHA-pruned search and write a ranked leaderboard.",
    )
    exp = search.add_argument_group("experiment")
    exp.add_argument("--space", required=True, help="built-in space name or a YAML file")
    exp.add_argument("--name", help="experiment name (default: SPACE-DATE-TIME)")
    exp.add_argument("--data", help="photo folder, ImageFolder layout (default: $TUNER_DATA)")
    exp.add_argument("--storage", help=STORAGE_HELP)
    exp.add_argument("--address", help="existing Ray cluster to use (default: $RAY_ADDRESS)")
    _cache_dir(exp)
    _follow_links(exp)
    budget = search.add_argument_group("budget (overrides the space's)")
    budget.add_argument("--num-samples", type=_positive_int, help="number of trials")
    budget.add_argument("--max-epochs", type=_positive_int, help="epochs per trial at most")
    budget.add_argument(
        "--time-budget",
        type=_positive_float,
        metavar="SECONDS",
        help="stop starting/continuing trials after this long",
    )
    budget.add_argument("--seed", type=int, help="seed of the split, Optuna and the trials")
    budget.add_argument(
        "--test-fraction",
        type=float,
        metavar="F",
        help="share of each class's photos held out as the test split, never seen by a trial "
        "and scoring the top trials at the end (default 0.15; 0: none)",
    )
    strategy = search.add_argument_group("strategy (overrides the space's)")
    strategy.add_argument(
        "--scheduler",
        choices=list(SCHEDULERS),
        help="what stops weak trials early (default: the space's, else asha)",
    )
    strategy.add_argument(
        "--searcher",
        choices=list(SEARCHERS),
        help="the Optuna sampler that proposes trials (default: the space's, else tpe)",
    )
    strategy.add_argument(
        "--latency-device",
        choices=list(LATENCY_DEVICES),
        help="where latency_ms is timed, with objectives [{val_acc: max}, {latency_ms: min}]: "
        "cpu (the ONNX graph under onnxruntime, one thread) or cuda (the torch.export "
        "program on the trial's GPU); default: the space's, else cpu",
    )
    strategy.add_argument(
        "--warm-start",
        nargs="+",
        metavar="EXP",
        help="seed the study with the ended trials of these earlier experiments (in "
        "--storage) that fit this space; they may have searched other photos",
    )
    search.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray Tune's status table of every trial every 30 s (by default one line "
        "per trial that ends)",
    )
    res = search.add_argument_group("resources (override the space's)")
    res.add_argument("--cpus-per-trial", type=_positive_float, metavar="C")
    res.add_argument(
        "--gpus-per-trial",
        type=_non_negative_float,
        metavar="G",
        help="fractions share a GPU, e.g. 0.25 runs four trials per GPU",
    )
    res.add_argument("--max-concurrent", type=_positive_int, metavar="M")

    resume = sub.add_parser(
        "resume",
        help="continue an interrupted search",
        description="Continue an interrupted search where it stopped.",
    )
    resume.add_argument("name")
    resume.add_argument("--storage", help=STORAGE_HELP)
    _cache_dir(resume)
    resume.add_argument(
        "--restart-errored",
        action="store_true",
        help="start errored trials over instead of from their checkpoints",
    )
    resume.add_argument(
        "--trust-state",
        action="store_true",
        help="load the saved state even if it does not carry a signature of your state key "
        "(it was written on another machine or account, or changed by someone else: loading "
        "it runs code whoever can write to the storage put there)",
    )

    listing = sub.add_parser(
        "list",
        help="the experiments in a storage, newest first",
        description="Each experiment in the storage: status (running, interrupted, finished), "
        "trials ended of those asked, best val_acc and its test_acc, space, created.",
    )
    listing.add_argument("--storage", help=STORAGE_HELP)
    listing.add_argument("--format", default="table", choices=["table", "csv", "json", "markdown"])

    board = sub.add_parser(
        "leaderboard",
        help="show or export the ranked trials",
        description="Ranked trials of an experiment (best first).",
    )
    board.add_argument("name")
    board.add_argument("--storage", help=STORAGE_HELP)
    board.add_argument("--top", type=_positive_int, metavar="K")
    board.add_argument(
        "--pareto",
        action="store_true",
        help="only the trials on the Pareto front (a search of several objectives)",
    )
    board.add_argument(
        "--format", default="table", choices=["table", "csv", "parquet", "json", "markdown"]
    )
    board.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")

    spaces = sub.add_parser(
        "spaces",
        help="list the search spaces, or show one resolved",
        description="List the built-in spaces, or show one resolved.",
    )
    spaces.add_argument("name", nargs="?")

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
    _add_ranked_trial_args(evaluate)
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
        "--top", type=_positive_int, default=3, metavar="K", help="top configurations shown"
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
    _add_ranked_trial_args(export, rank=None)
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
        help="export the refit of the ranked trial (see `refit`) instead of its search checkpoint",
    )
    export.add_argument(
        "--ensemble",
        type=_positive_int,
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
        help="with --distill: use tuner.json (cluster, resources) even if it does not carry a "
        "signature of your state key for this experiment",
    )

    refit = sub.add_parser(
        "refit",
        help="retrain a ranked configuration on train + val, score it on the test split",
        description="Retrain the configuration of a ranked trial (same seed and schedule, its "
        "best epoch count) on the training and validation photos together, as a Ray task with "
        "every CPU of one node, and score it on the test split. The model lands in "
        "STORAGE/NAME/refit/TRIAL_ID/; `export --refit` exports it.",
    )
    _add_ranked_trial_args(refit)
    _cache_dir(refit)
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
        "--top", type=_positive_int, default=3, metavar="K", help="classes per image (default: 3)"
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
        type=_device,
        default="auto",
        metavar="cpu|cuda|cuda:N|auto",
        help="where the model runs and the photos' batches go (default: auto, a CUDA GPU "
        "when there is one, else the CPU)",
    )

    data = sub.add_parser(
        "data",
        help="inspect a photo folder",
        description="Inspect a photo folder before searching it.",
    )
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = data_sub.add_parser(
        "check",
        help="what a search would use and skip, and why",
        description="List classes with photo counts, every file a search would skip and why, "
        "and identical photos filed under different classes. Exit 2 if a search could not "
        "use the folder.",
    )
    check.add_argument("dir", metavar="DIR", help="photo folder or URI (s3://BUCKET/PREFIX, ...)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    _follow_links(check)
    return parser


def _add_ranked_trial_args(parser: argparse.ArgumentParser, rank: int | None = 1) -> None:
    """NAME, --rank and --storage: which experiment's which ranked trial."""
    parser.add_argument("name")
    parser.add_argument("--rank", type=_positive_int, default=rank, help="trial rank (default: 1)")
    parser.add_argument("--storage", help=STORAGE_HELP)
