"""Ray underneath: starting or joining a cluster, checking that every node reaches the
storage, and (``_internals``) every private Ray or Optuna API the tool relies on."""

from tuner.engine._cluster import check_storage_reachable, local_resources, start_ray

__all__ = ["check_storage_reachable", "local_resources", "start_ray"]
