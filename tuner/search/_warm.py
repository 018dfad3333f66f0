"""Warm starts: a new study seeded with the finished trials of earlier experiments.

``search --warm-start EXP [EXP ...]`` reads each earlier experiment (in the
search's ``--storage``) as its leaderboard does, and hands every trial that
ended (completed, or stopped early) to the new Optuna study before its first
trial is asked, with ``study.add_trials``: a completed trial with its best
val_acc as its value, a stopped one PRUNED, each with every epoch it reported as
an intermediate value and the user attribute ``warm_start`` = ``EXP/TRIAL_ID``.
TPE (and the other samplers) then model them as their own history: the first
trials are proposed where the earlier search found good configurations, not at
random.

A trial is taken only if it fits the new space: it measured every objective the
space has (a search of several objectives takes its trials' values, and no
intermediate values, which Optuna keeps only with one objective); every key the space fixes has
the same value in the trial (keys only one of them has are left alone), and
every key it searches lies inside its distribution. The earlier experiments may
sit on other photos (another split, a subset, a new folder): their val_acc is
then a prior, not a measurement on these photos, and the new trials decide.
What was taken and what was ignored, and why, is printed, and the sources are
recorded in ``tuner.json`` (``warm_start``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuner._errors import UsageError
from tuner.results import build_leaderboard, plain
from tuner.search._study import WARM_ATTR
from tuner.spaces import SearchSpace
from tuner.storage import Experiment, Storage

ENDED = {"completed": "COMPLETE", "stopped_early": "PRUNED"}


@dataclass(frozen=True)
class WarmStart:
    """The trials taken from the earlier experiments, and what they were."""

    trials: list[Any]  # optuna FrozenTrial
    sources: list[dict[str, Any]]  # per experiment: name, storage, taken, ignored, reasons


def _reason(space: SearchSpace, row: dict[str, Any]) -> str | None:
    """Why ``row`` (a leaderboard row) does not fit ``space``; None if it does."""
    for name in space.objectives.costs:
        value = plain(row.get(name))
        if not isinstance(value, int | float) or not math.isfinite(value):
            return f"no {name} (its search did not measure it)"
    for key, fixed in space.constants.items():
        value = plain(row.get(key))
        if value is not None and value != fixed:
            return f"{key} {value!r} (this space fixes {fixed!r})"
    for key, dist in space.distributions.items():
        value = plain(row.get(key))
        if dist.kind == "randint" and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return f"no {key}"
        if not dist.contains(value):
            return f"{key} {value!r} outside {dist.kind} {list(dist.args)}"
    return None


def _frozen(
    space: SearchSpace, exp: Experiment, row: dict[str, Any], distributions: dict[str, Any]
) -> Any:
    from optuna.trial import TrialState, create_trial

    params = {}
    for key, dist in space.distributions.items():
        value = plain(row[key])
        params[key] = int(value) if dist.kind == "randint" else value
    reported = {
        int(r["epoch"]): float(r["val_acc"])
        for r in exp.reports(str(row["trial_id"]))
        if isinstance(r.get("epoch"), int | float)
        and isinstance(r.get("val_acc"), int | float)
        and math.isfinite(float(r["val_acc"]))
    }
    state = getattr(TrialState, ENDED[row["status"]])
    values = [float(row[name]) for name in space.objectives.names]
    if space.objectives.multi:  # a study of several objectives keeps no intermediate values
        reported = {}
    return create_trial(
        params=params,
        distributions=distributions,
        values=values if state == TrialState.COMPLETE else None,
        state=state,
        intermediate_values=reported,
        user_attrs={WARM_ATTR: f"{exp.name}/{row['trial_id']}"},
    )


def warm_start(
    space: SearchSpace, storage: Storage, names: list[str], say: Callable[[str], None]
) -> WarmStart:
    """The trials of the experiments ``names`` (in ``storage``) that fit ``space``."""
    if len(set(names)) < len(names):
        raise UsageError("--warm-start: an experiment is named twice")
    distributions = {k: d.to_optuna() for k, d in space.distributions.items()}
    trials: list[Any] = []
    sources: list[dict[str, Any]] = []
    for name in names:
        exp = Experiment.open(storage, name)  # UsageError naming the others if absent
        board = build_leaderboard(exp)
        ended = board[board["status"].isin(list(ENDED)) & board["val_acc"].notna()]
        taken, reasons = 0, Counter[str]()
        for row in ended.to_dict("records"):
            reason = _reason(space, row)
            if reason is None:
                trials.append(_frozen(space, exp, row, distributions))
                taken += 1
            else:
                reasons[reason] += 1
        unfinished = len(board) - len(ended)
        if unfinished:
            reasons["not ended with a val_acc"] += unfinished
        ignored = sum(reasons.values())
        why = "; ".join(f"{n} with {r}" if r != "not ended with a val_acc" else f"{n} {r}"
                        for r, n in reasons.most_common())  # fmt: skip
        say(
            f"Warm start from {name}: {taken} of its {len(board)} trials taken"
            + (f", {ignored} ignored: {why}" if ignored else "")
        )
        sources.append({"experiment": name, "storage": storage.uri, "taken": taken,
                        "ignored": ignored, "reasons": dict(reasons)})  # fmt: skip
    if names and not trials:
        raise UsageError(
            "--warm-start: no trial of " + ", ".join(names) + " fits this space (see above)"
        )
    return WarmStart(trials, sources)
