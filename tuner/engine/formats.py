"""The layout of what Ray Tune writes, read by the leaderboard, the pruner and the study.

- The experiment state file (``experiment_state-*.json``): ``trial_data`` holds one
  ``[trial JSON, run metadata JSON]`` pair per trial; each trial JSON has
  ``trial_id``, ``status``, ``config`` and ``experiment_tag``. A config value that is
  not plain JSON is stored as ``{"_type": "CLOUDPICKLE_FALLBACK", "value": HEX}``
  (:func:`plain_config` leaves those out unread).
- A trial's checkpoint folders, ``checkpoint_NNNNNN`` by report index
  (``StorageContext._make_checkpoint_dir_name``), also named in each result as
  ``checkpoint_dir_name``.

- The files ``Tuner.restore`` unpickles or loads (:data:`RESTORED_FILES`).

``tests/test_internals.py`` checks each against the installed Ray. This module sits
below ``storage/`` (``tests/test_layers.py``), which names Ray's files through it.
"""

from __future__ import annotations

import re
from typing import Any

from trainables import parse_json

_CHECKPOINT = re.compile(r"checkpoint_(\d+)$")
EXPERIMENT_STATE = "experiment_state-{}.json"  # the trial list, per session (newest restored)
STATE_GLOB = EXPERIMENT_STATE.format("*")
# What ``Tuner.restore`` unpickles or loads: the tuner, the trial list, the search
# generator's and the variant generator's state.
RESTORED_FILES = ("*.pkl", STATE_GLOB, "search_gen_state-*.json", "basic-variant-state-*.json")


def trial_states(state: Any, where: str) -> list[Any]:
    """The parsed JSON of each trial in a parsed experiment state (``where`` names the
    file in errors). KeyError, TypeError or IndexError where the layout is not Ray's.

    >>> trial_states({"trial_data": [['{"trial_id": "a", "status": "PAUSED"}', "{}"]]}, "s")
    [{'trial_id': 'a', 'status': 'PAUSED'}]
    """
    return [parse_json(entry[0], f"a trial of {where}", nan=True) for entry in state["trial_data"]]


def plain_config(config: Any) -> dict[str, Any]:
    """A trial's config without the values Ray stored as cloudpickle, which are never
    decoded ({} if ``config`` is not a mapping).

    >>> plain_config({"lr": 0.1, "fn": {"_type": "CLOUDPICKLE_FALLBACK", "value": "80"}})
    {'lr': 0.1}
    """
    if not isinstance(config, dict):
        return {}
    return {
        k: v
        for k, v in config.items()
        if not (isinstance(v, dict) and v.get("_type") == "CLOUDPICKLE_FALLBACK")
    }


def checkpoint_name(index: int) -> str:
    """The folder Tune names a trial's checkpoint of report ``index`` (from 0).

    >>> checkpoint_name(3)
    'checkpoint_000003'
    """
    return f"checkpoint_{index:06d}"


def checkpoint_index(path: str) -> int:
    """The report index of a checkpoint folder's path, -1 if it is not one.

    >>> checkpoint_index("s3://b/e/trial_1/checkpoint_000012/"), checkpoint_index("t/x")
    (12, -1)
    """
    match = _CHECKPOINT.search(path.rstrip("/"))
    return int(match.group(1)) if match else -1
