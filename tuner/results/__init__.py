"""What a search leaves and what is made from it: the leaderboard, scores on the test
split, inference, refits, ensembles, exports, predictions, reports and the list of
experiments in a storage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.results._inference import evaluate_folder, evaluate_test_split, load_ranked_trial
    from tuner.results._leaderboard import best_config, build_leaderboard, render, write_leaderboard
    from tuner.results._listing import list_experiments

__getattr__ = lazy_names(
    __name__,
    {
        "best_config": "_leaderboard",
        "build_leaderboard": "_leaderboard",
        "evaluate_folder": "_inference",
        "evaluate_test_split": "_inference",
        "list_experiments": "_listing",
        "load_ranked_trial": "_inference",
        "render": "_leaderboard",
        "write_leaderboard": "_leaderboard",
    },
)

__all__ = [
    "best_config",
    "build_leaderboard",
    "evaluate_folder",
    "evaluate_test_split",
    "list_experiments",
    "load_ranked_trial",
    "render",
    "write_leaderboard",
]
