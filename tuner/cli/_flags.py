"""The flags several commands share, and the argparse types that check numbers and devices."""

from __future__ import annotations

import argparse
from typing import Any

STORAGE_HELP = (
    "where experiments live: a folder or a URI such as s3://BUCKET/PREFIX "
    "(?endpoint_override=HOST:PORT&scheme=http for MinIO/Ceph), gs://BUCKET/PREFIX "
    "(default: $TUNER_STORAGE or ./results)"
)


def number(kind: type[int] | type[float], minimum: float, inclusive: bool) -> Any:
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


def device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (whether the machine has it is checked later)."""
    value = text.strip().lower()
    index = value.removeprefix("cuda:")
    if value in ("cpu", "cuda", "auto") or (index != value and index.isascii() and index.isdigit()):
        return value if index == value else f"cuda:{int(index)}"
    raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")


positive_int = number(int, 1, inclusive=True)
positive_float = number(float, 0, inclusive=False)
non_negative_float = number(float, 0, inclusive=True)


def cache_dir_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="local folder of the decoded photos and frozen activations, reused by later "
        "commands (default: $TUNER_CACHE, else ~/.cache/flower-tune)",
    )


def follow_links_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--follow-links",
        action="store_true",
        help="also follow folder links that lead out of the photo folder (each folder is "
        "still listed once)",
    )


def add_ranked_trial_args(parser: argparse.ArgumentParser, rank: int | None = 1) -> None:
    """NAME, --rank and --storage: which experiment's which ranked trial."""
    parser.add_argument("name")
    parser.add_argument("--rank", type=positive_int, default=rank, help="trial rank (default: 1)")
    parser.add_argument("--storage", help=STORAGE_HELP)
