"""What PBT did to each trial: the lineage of its weights, for the leaderboard.

PBT continues a weak trial from a better trial's checkpoint (exploit) with perturbed
values (explore). Ray logs each trial's lineage beside the experiment state; the
leaderboard's ``pbt_history`` column reads it as, e.g.,
``epoch 2: weights of 8f3a1c2e, lr 0.00091; epoch 4: weights of 0b77d1aa, lr 0.0011``:
at each epoch the trial took another trial's weights and continued at the new values.
The leaderboard's config columns are the trial's last values.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from trainables import FileRefused, safe_name
from tuner.engine import PBT_GLOBAL, PBT_POLICY, pbt_lineage

if TYPE_CHECKING:
    from tuner.storage import Experiment

POLICY_LIMIT = 1 << 20  # one line per exploit of the trial's lineage
_TAG_NUMBER = re.compile(r"(\d+)_")


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in new if new.get(k) != old.get(k))
    return ", ".join(
        f"{k} {new[k]:.3g}" if isinstance(new[k], float) else f"{k} {new[k]}" for k in keys
    )


def pbt_histories(exp: Experiment, tags: dict[str, str]) -> dict[str, str]:
    """trial id -> its PBT lineage as text ("" if PBT never touched it), for the trials
    of ``tags`` (trial id -> Ray's experiment tag) of an experiment that ran PBT."""
    if not exp.storage.exists(exp.rel(PBT_GLOBAL)):
        return dict.fromkeys(tags, "")  # no exploit yet
    by_number = {}
    for trial_id, tag in tags.items():
        match = _TAG_NUMBER.match(tag)
        if match:
            by_number[match.group(1)] = trial_id
    out = {}
    for trial_id in tags:
        rel = exp.rel(PBT_POLICY.format(safe_name(trial_id, "trial id")))
        try:
            text = exp.storage.read_text(rel, POLICY_LIMIT)
        except (FileNotFoundError, FileRefused, UnicodeDecodeError):
            text = ""
        steps = []
        for epoch, donor, old, new in pbt_lineage(text):
            match = _TAG_NUMBER.match(donor)
            source = by_number.get(match.group(1), donor[:16]) if match else donor[:16]
            change = _changes(old, new)
            steps.append(f"epoch {epoch}: weights of {source}" + (f", {change}" if change else ""))
        out[trial_id] = "; ".join(steps)
    return out
