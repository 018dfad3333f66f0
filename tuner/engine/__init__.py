"""Ray underneath, the one door to it: starting or joining a cluster and checking that
every node reaches the storage (``_cluster``); the schedulers and samplers
(``_strategy``, ``_pareto``); how Tune runs the trial function (``_actor``); the names
and layout of Ray's files (``formats``, the one part below ``storage/``); what Tune
logs (``_logs``); and every private Ray or Optuna API the tool relies on
(``_internals``). ``tests/test_internals.py`` checks each use against the installed
versions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.engine._actor import tune_trainable
    from tuner.engine._cluster import (
        check_fits,
        check_storage_reachable,
        local_resources,
        start_ray,
        whole_node,
    )
    from tuner.engine._internals import (
        PBT_GLOBAL,
        PBT_POLICY,
        HookedOptunaSearch,
        KeptJsonLogger,
        best_checkpoint_results,
        latest_checkpoint_result,
        make_search_alg,
        optuna_trial_id,
        pbt_lineage,
        run_callbacks,
        train_session_dir,
    )
    from tuner.engine._logs import (
        filter_trial_loop_log,
        last_failure,
        no_restore_hint,
        silence_tune_logs,
    )
    from tuner.engine._strategy import (
        describe,
        live_trials,
        make_sampler,
        make_scheduler,
        pareto_rungs,
        prunes_during_search,
        trial_epochs,
    )

__getattr__ = lazy_names(
    __name__,
    {
        "best_checkpoint_results": "_internals",
        "check_fits": "_cluster",
        "check_storage_reachable": "_cluster",
        "describe": "_strategy",
        "filter_trial_loop_log": "_logs",
        "HookedOptunaSearch": "_internals",
        "KeptJsonLogger": "_internals",
        "last_failure": "_logs",
        "latest_checkpoint_result": "_internals",
        "live_trials": "_strategy",
        "local_resources": "_cluster",
        "make_sampler": "_strategy",
        "make_scheduler": "_strategy",
        "make_search_alg": "_internals",
        "no_restore_hint": "_logs",
        "optuna_trial_id": "_internals",
        "pareto_rungs": "_strategy",
        "PBT_GLOBAL": "_internals",
        "pbt_lineage": "_internals",
        "PBT_POLICY": "_internals",
        "prunes_during_search": "_strategy",
        "run_callbacks": "_internals",
        "silence_tune_logs": "_logs",
        "start_ray": "_cluster",
        "train_session_dir": "_internals",
        "trial_epochs": "_strategy",
        "tune_trainable": "_actor",
        "whole_node": "_cluster",
    },
)

__all__ = [
    "PBT_GLOBAL",
    "PBT_POLICY",
    "HookedOptunaSearch",
    "KeptJsonLogger",
    "best_checkpoint_results",
    "check_fits",
    "check_storage_reachable",
    "describe",
    "filter_trial_loop_log",
    "last_failure",
    "latest_checkpoint_result",
    "live_trials",
    "local_resources",
    "make_sampler",
    "make_scheduler",
    "make_search_alg",
    "no_restore_hint",
    "optuna_trial_id",
    "pareto_rungs",
    "pbt_lineage",
    "prunes_during_search",
    "run_callbacks",
    "silence_tune_logs",
    "start_ray",
    "train_session_dir",
    "trial_epochs",
    "tune_trainable",
    "whole_node",
]
