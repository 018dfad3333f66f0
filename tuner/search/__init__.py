"""Running a search: the photos checked and split, the Optuna study, ASHA's checkpoints
pruned, the storage guarded, the time estimated, and the driver (:func:`run_search`,
:func:`resume`) that hands it all to Ray Tune."""

from tuner.search._run import SearchRequest, default_name, resume, run_search

__all__ = ["SearchRequest", "default_name", "resume", "run_search"]
