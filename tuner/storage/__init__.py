"""Where an experiment lives: a folder or a bucket (:class:`Storage`), the experiment's
files and record (:class:`Experiment`, :class:`RunRecord`, every file name), one writer
at a time (:class:`WriterLock`) and the signed state ``resume`` loads."""

from tuner.storage._experiment import Experiment, RunRecord, experiment_names, validate_name
from tuner.storage._lock import WriterLock
from tuner.storage._signing import check_signed, signing_filesystem
from tuner.storage._storage import Storage

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
