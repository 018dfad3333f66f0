"""Running a search: the photos checked and split, the Optuna study, ASHA's checkpoints
pruned, the storage guarded, the time estimated, and the driver (:func:`run_search`,
:func:`resume`) that hands it all to Ray Tune."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.search._run import SearchRequest, default_name, resume, run_search

__getattr__ = lazy_names(
    __name__,
    {
        "SearchRequest": "_run",
        "default_name": "_run",
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
