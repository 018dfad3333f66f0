"""Ray settings the service depends on, applied before Ray is first imported.

Several of them are read by Ray at import time, so importing this module
(``tuner/__init__.py`` does it first) applies them. Each is only a default:
a value already in the environment wins.
"""

import os

RAY_DEFAULTS = {
    # The compact CLIReporter table instead of Ray's verbose new output.
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "1",
    # Save the experiment state (trials, checkpoints, Optuna study) at most 2 s
    # after each result, so a killed driver loses at most the epochs in flight.
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # Those frequent snapshots are intended; Ray would warn about each burst.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Workers run this interpreter as it is; Ray must not rebuild it with `uv run`.
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    # No usage-statistics prompt or upload.
    "RAY_USAGE_STATS_ENABLED": "0",
}


for _key, _value in RAY_DEFAULTS.items():
    os.environ.setdefault(_key, _value)
