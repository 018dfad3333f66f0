"""Ray underneath: starting or joining a cluster, checking that every node reaches the
storage, and (``_internals``) every private Ray or Optuna API the tool relies on."""

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
