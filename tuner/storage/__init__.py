"""Where an experiment lives: a folder or a bucket (:class:`Storage`), the experiment's
files and record (:class:`Experiment`, :class:`RunRecord`, every file name), one writer
at a time (:class:`WriterLock`) and the signed state ``resume`` loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.storage._experiment import Experiment, RunRecord, experiment_names, validate_name
    from tuner.storage._lock import WriterLock
    from tuner.storage._signing import check_signed, signing_filesystem
    from tuner.storage._storage import Storage

__getattr__ = lazy_names(
    __name__,
    {
        "Experiment": "_experiment",
        "RunRecord": "_experiment",
        "Storage": "_storage",
        "WriterLock": "_lock",
        "check_signed": "_signing",
        "experiment_names": "_experiment",
        "signing_filesystem": "_signing",
        "validate_name": "_experiment",
    },
)

__all__ = [
    "Experiment",
    "RunRecord",
    "Storage",
    "WriterLock",
    "check_signed",
    "experiment_names",
    "signing_filesystem",
    "validate_name",
]
