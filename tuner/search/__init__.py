"""Running a search: the photos checked and split, the Optuna study, ASHA's checkpoints
pruned, the storage guarded, the time estimated, and the driver (:func:`run_search`,
:func:`resume`) that hands it all to Ray Tune."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.search._datacheck import describe, summary
    from tuner.search._prepare import SearchRequest, default_name
    from tuner.search._run import resume, run_search

__getattr__ = lazy_names(
    __name__,
    {
        "default_name": "_prepare",
        "describe": "_datacheck",
        "resume": "_run",
        "run_search": "_run",
        "SearchRequest": "_prepare",
        "summary": "_datacheck",
    },
)

__all__ = [
    "SearchRequest",
    "default_name",
    "describe",
    "resume",
    "run_search",
    "summary",
]
