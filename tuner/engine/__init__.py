"""Ray underneath, the one door to it: starting or joining a cluster and checking that
every node reaches the storage (``_cluster``); the schedulers and samplers
(``_strategy``, ``_pareto``); how Tune runs the trial function (``_actor``); the names
and layout of Ray's files (``_formats``, the one part below ``storage/``); what Tune
logs (``_logs``); and every private Ray or Optuna API the tool relies on
(``_internals``). ``tests/test_internals.py`` checks each use against the installed
versions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.engine._cluster import check_storage_reachable, local_resources, start_ray

__getattr__ = lazy_names(
    __name__,
    {
        "check_storage_reachable": "_cluster",
        "local_resources": "_cluster",
        "start_ray": "_cluster",
    },
)

__all__ = [
    "check_storage_reachable",
    "local_resources",
    "start_ray",
]
