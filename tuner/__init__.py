"""flower-tune: hyperparameter search for fine-tuning image classifiers.

The command line (``python -m tuner``) is a thin layer over these functions. They
are imported on first use, so ``tuner --help`` and a mistyped option answer at once
instead of after importing Ray and torch (seconds on a 2-core machine):

>>> import tuner
>>> tuner.available_spaces()[:2]
['default', 'lite']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tuner._errors import UsageError

if TYPE_CHECKING:
    from tuner.results._leaderboard import best_config, build_leaderboard, render, write_leaderboard
    from tuner.search._run import SearchRequest, resume, run_search
    from tuner.spaces._spaces import Budget, SearchSpace, available_spaces, load_space, parse_space
    from tuner.storage._experiment import Experiment, RunRecord
    from tuner.storage._storage import Storage

# Where the public names live, lightest first.
_MODULES = (
    "tuner.spaces._spaces",
    "tuner.storage._storage",
    "tuner.storage._experiment",
    "tuner.results._leaderboard",
    "tuner.search._run",
)


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used (PEP 562)."""
    if name in __all__:
        for module in map(importlib.import_module, _MODULES):
            if hasattr(module, name):
                globals()[name] = value = getattr(module, name)
                return value
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")


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
