"""The command line's grammar: every subcommand, flag, default and help text.

Imports nothing heavy, so ``tuner --help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any

from tuner.cli._flags import (
    STORAGE_HELP,
    cache_dir_flag,
    follow_links_flag,
    non_negative_float,
    positive_float,
    positive_int,
)
from tuner.cli._parser_results import add_result_commands
from tuner.spaces import LATENCY_DEVICES, SCHEDULERS, SEARCHERS


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
    cache_dir_flag(exp)
    follow_links_flag(exp)
    budget = search.add_argument_group("budget (overrides the space's)")
    budget.add_argument("--num-samples", type=positive_int, help="number of trials")
    budget.add_argument("--max-epochs", type=positive_int, help="epochs per trial at most")
    budget.add_argument(
        "--time-budget",
        type=positive_float,
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
    res.add_argument("--cpus-per-trial", type=positive_float, metavar="C")
    res.add_argument(
        "--gpus-per-trial",
        type=non_negative_float,
        metavar="G",
        help="fractions share a GPU, e.g. 0.25 runs four trials per GPU",
    )
    res.add_argument("--max-concurrent", type=positive_int, metavar="M")

    resume = sub.add_parser(
        "resume",
        help="continue an interrupted search",
        description="Continue an interrupted search where it stopped.",
    )
    resume.add_argument("name")
    resume.add_argument("--storage", help=STORAGE_HELP)
    cache_dir_flag(resume)
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

    spaces = sub.add_parser(
        "spaces",
        help="list the search spaces, or show one resolved",
        description="List the built-in spaces, or show one resolved.",
    )
    spaces.add_argument("name", nargs="?", help="a built-in space or a YAML file: show it resolved")
    spaces.add_argument(
        "--schema",
        action="store_true",
        help="print the JSON Schema of a space file instead, for editors that check YAML",
    )

    add_result_commands(sub)

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
    follow_links_flag(check)
    return parser
