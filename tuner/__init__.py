"""flower-tune: hyperparameter search for fine-tuning image classifiers.

The command line (``python -m tuner``) is a thin layer over these functions.
"""

# Must come first: Ray reads some of these settings when it is imported.
from tuner import _environment  # noqa: F401
from tuner._errors import UsageError
from tuner._experiment import SearchRequest, resume, run_search
from tuner._leaderboard import best_config, build_leaderboard, render, write_leaderboard
from tuner._spaces import Budget, SearchSpace, available_spaces, load_space, parse_space

__all__ = [
    "Budget",
    "SearchRequest",
    "SearchSpace",
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
