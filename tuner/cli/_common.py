"""What the commands share: the experiment and ranked trial NAME, --rank and --storage
name, and data printed on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.results import RankedTrial
    from tuner.storage import Experiment


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


def experiment_of(args: argparse.Namespace) -> Experiment:
    """The experiment that NAME and --storage name (UsageError if there is none)."""
    from tuner.storage import Experiment, Storage

    return Experiment.open(Storage.parse(args.storage), args.name)


def ranked_trial(args: argparse.Namespace) -> RankedTrial:
    """The ranked trial that NAME, --rank and --storage name, loaded."""
    from tuner.results import build_leaderboard, load_ranked_trial

    exp = experiment_of(args)
    return load_ranked_trial(exp, args.rank, build_leaderboard(exp))
