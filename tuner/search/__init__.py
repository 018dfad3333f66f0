"""Running a search: the photos checked and split, the Optuna study, ASHA's checkpoints
pruned, the storage guarded, the time estimated, and the driver (:func:`run_search`,
:func:`resume`) that hands it all to Ray Tune."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.search._prepare import SearchRequest, default_name
    from tuner.search._run import resume, run_search

__getattr__ = lazy_names(
    __name__,
    {
        "SearchRequest": "_prepare",
        "default_name": "_prepare",
        "resume": "_run",
        "run_search": "_run",
    },
)

__all__ = [
    "SearchRequest",
    "default_name",
    "resume",
    "run_search",
]
