"""flower-tune: hyperparameter search for fine-tuning image classifiers.

The command line (``python -m tuner``) is a thin layer over these functions. They
are imported on first use, so ``tuner --help`` and a mistyped option answer at once
instead of after importing Ray and torch (seconds on a 2-core machine):

>>> import tuner
>>> tuner.available_spaces()[:2]
['default', 'lite']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._errors import UsageError
from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.results import best_config, build_leaderboard, render, write_leaderboard
    from tuner.search import SearchRequest, resume, run_search
    from tuner.spaces import Budget, SearchSpace, available_spaces, load_space, parse_space
    from tuner.storage import Experiment, RunRecord, Storage

# Where the public names live; each package's face imports them on first use.
__getattr__ = lazy_names(
    __name__,
    {
        "Budget": "spaces",
        "Experiment": "storage",
        "RunRecord": "storage",
        "SearchRequest": "search",
        "SearchSpace": "spaces",
        "Storage": "storage",
        "available_spaces": "spaces",
        "best_config": "results",
        "build_leaderboard": "results",
        "load_space": "spaces",
        "parse_space": "spaces",
        "render": "results",
        "resume": "search",
        "run_search": "search",
        "write_leaderboard": "results",
    },
)


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Budget",
    "Experiment",
    "RunRecord",
    "SearchRequest",
    "SearchSpace",
    "Storage",
    "UsageError",
    "available_spaces",
    "best_config",
    "build_leaderboard",
    "load_space",
    "parse_space",
    "render",
    "resume",
    "run_search",
    "write_leaderboard",
]
