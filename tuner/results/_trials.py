"""The trials an experiment knows, read from Ray Tune's own trial list (the newest state
file, :mod:`tuner.engine.formats`). Only plain JSON is read from it (trial id, status,
config): the values Ray stores as cloudpickle are never decoded, so an experiment folder
someone else can write to cannot run code here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from trainables import TrialConfig, parse_json, safe_name
from tuner._errors import UsageError
from tuner.engine.formats import STATE_GLOB, plain_config, trial_states
from tuner.storage import (
    STATE_LIMIT,
    Experiment,
)


@dataclass(frozen=True)
class TrialRecord:
    """What the experiment state says of one trial: its id, Ray's status, its config."""

    trial_id: str
    status: str  # Ray's, lower case: pending, running, paused, terminated, error
    config: dict[str, Any]
    tag: str = ""  # Ray's experiment tag: "N_key=value,..." (N counts trials from 1)


def _checked_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """``config`` if each of its trial keys holds a value of its default's type."""
    defaults = TrialConfig()
    for key in TrialConfig.field_names():
        if key not in config:
            continue
        value, default = config[key], getattr(defaults, key)
        kind: tuple[type, ...] = (
            (bool,)
            if isinstance(default, bool)
            else (int,)
            if isinstance(default, int)
            else (int, float)
            if isinstance(default, float)
            else (type(default),)
        )
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kind):
            raise TypeError(f"{key} is {type(value).__name__}, not {kind[-1].__name__}")
    return config


def _newest_state(exp: Experiment) -> tuple[str, bytes]:
    """The name and bytes of ``exp``'s newest saved trial list (UsageError if none)."""
    states = sorted(exp.storage.list(exp.name, STATE_GLOB, dirs=False))
    if not states:
        raise UsageError(
            f"{exp.display()} holds no Ray Tune experiment state (yet); was the search started?"
        )
    return states[-1], exp.storage.read_bytes(exp.rel(states[-1]), STATE_LIMIT)


def state_digest(exp: Experiment) -> str:
    """sha256 of ``exp``'s newest saved trial list: what a summary was written from."""
    return hashlib.sha256(_newest_state(exp)[1]).hexdigest()


def read_trials(exp: Experiment) -> list[TrialRecord]:
    """The trials of ``exp``'s newest saved state (UsageError if there is none)."""
    return read_state(exp)[0]


def read_state(exp: Experiment) -> tuple[list[TrialRecord], str]:
    """The trials of ``exp``'s newest saved state and its :func:`state_digest`."""
    name, raw = _newest_state(exp)
    where = exp.display(name)
    data = parse_json(raw, where, nan=True)
    trials = []
    try:
        for state in trial_states(data, where):
            plain = plain_config(state.get("config"))
            trial_id = safe_name(state["trial_id"], f"trial id in {where}:")
            status = state["status"]
            if not isinstance(status, str):
                raise TypeError(f"status of {trial_id} is {type(status).__name__}")
            tag = state.get("experiment_tag")
            trials.append(
                TrialRecord(trial_id, status.lower(), _checked_config(plain, where),
                            tag if isinstance(tag, str) else "")
            )  # fmt: skip
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise UsageError(
            f"{where} is not an experiment state this tool can read "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    return trials, hashlib.sha256(raw).hexdigest()
