"""The held-out verdict: the top trials scored once on the test split no trial saw.

val_acc picks the winner, so the winner's val_acc is flattered by the pick.
When a search ends (or a resumed one), the best checkpoints of the top-K
trials are evaluated on the experiment's test split and kept in
``test_scores.json`` (trial id -> checkpoint and ``test_acc``); the
leaderboard shows them as ``test_acc``. A trial is scored again only when
its best checkpoint changed.

The models made from the search afterwards are scored on the same split and
listed beside the trials (:func:`made_models`): each refit (``refit.json``), each
distilled model (``distilled/*/distill.json``) and each exported ensemble
(``ensembles.json``, one entry per method and size, the latest export).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from tuner.results._inference import (
    Preprocessing,
    classify_labelled,
    evaluate_test_split,
    load_ranked_trial,
)
from tuner.results._leaderboard import load_scores
from tuner.storage._experiment import (
    DISTILL_DIR,
    DISTILL_RECORD,
    ENSEMBLES,
    REFIT_DIR,
    TEST_SCORES,
    Experiment,
)


def test_lines(board: pd.DataFrame) -> list[str]:
    """The summary line of the scored trials: test against val, by rank."""
    scored = board[board["test_acc"].notna()]
    if scored.empty:
        return []
    cells = ", ".join(
        f"rank {int(r['rank'])} {r['test_acc']:.4f} (val {r['val_acc']:.4f})"
        for _, r in scored.iterrows()
    )
    return [f"Test split (photos no trial saw): {cells}"]


def score_top_trials(exp: Experiment, board: pd.DataFrame, top_k: int) -> dict[str, float]:
    """Evaluate the best checkpoints of the ``top_k`` ranked trials on the test split.

    Returns trial id -> test_acc of the trials scored (now or before); an empty
    dict when the experiment holds no test split.
    """
    split = exp.split()
    if not split.test or top_k <= 0:
        return {}
    scores = load_scores(exp)
    out: dict[str, float] = {}
    for rank in range(1, min(top_k, len(board)) + 1):
        row = board.iloc[rank - 1]
        trial_id, checkpoint = str(row["trial_id"]), str(row["checkpoint"])
        if pd.isna(row["val_acc"]) or not checkpoint:
            continue
        entry = scores.get(trial_id, {})
        if entry.get("checkpoint") != checkpoint:
            metrics = evaluate_test_split(load_ranked_trial(exp, rank, board))
            entry = {
                "checkpoint": checkpoint,
                "test_acc": metrics["accuracy"],
                "n_images": metrics["n_images"],
            }
            scores[trial_id] = entry
        out[trial_id] = float(entry["test_acc"])
    exp.write_json(TEST_SCORES, scores)
    return out


def score_module_on_test(
    exp: Experiment, model: Callable[[torch.Tensor], torch.Tensor], prep: Preprocessing
) -> float | None:
    """Accuracy of ``model`` on the experiment's test split (None without one)."""
    split = exp.split()
    if not split.test:
        return None
    result, labels = classify_labelled(model, split.root, split.test, prep)
    if not result.ok:
        return None
    return float((result.logits.argmax(1) == labels).float().mean())


def record_ensemble(
    exp: Experiment,
    method: str,
    members: list[dict[str, Any]],
    val_acc: float,
    test_acc: float | None,
) -> None:
    """Keep an exported ensemble's scores (replacing an earlier one of the same method and
    size): ``members`` as ``{"trial_id", "rank", "weight"}``."""
    size = int(sum(m["weight"] for m in members))
    entries = [
        e
        for e in exp.read_json(ENSEMBLES, [])
        if not (e.get("method") == method and e.get("size") == size)
    ]
    entries.append(
        {
            "method": method,
            "size": size,
            "members": members,
            "val_acc": val_acc,
            "test_acc": test_acc,
        }
    )
    exp.write_json(ENSEMBLES, entries)


def made_models(exp: Experiment) -> list[dict[str, Any]]:
    """Refits, distilled models and exported ensembles of ``exp``: ``model`` (what it is),
    ``val_acc`` (None for a model trained on the validation photos) and ``test_acc``."""
    rows = []
    for trial_id in exp.storage.list(exp.rel(REFIT_DIR), dirs=True):
        refit = exp.read_json(f"{REFIT_DIR}/{trial_id}/refit.json")
        if isinstance(refit, dict):
            rows.append(
                {
                    "model": f"refit of rank {refit['rank']} ({trial_id}) on train + val, "
                    f"{refit['epochs']} epoch(s)",
                    "val_acc": None,
                    "test_acc": refit["test_acc"],
                }
            )
    for name in exp.storage.list(exp.rel(DISTILL_DIR), dirs=True):
        row = _distilled_row(exp.read_json(f"{DISTILL_DIR}/{name}/{DISTILL_RECORD}"))
        if row is not None:
            rows.append(row)
    for entry in exp.read_json(ENSEMBLES, []):
        picks = ", ".join(f"rank {m['rank']} x{m['weight']:g}" for m in entry["members"])
        rows.append(
            {
                "model": f"{entry['method']} ensemble of {entry['size']} ({picks})",
                "val_acc": entry["val_acc"],
                "test_acc": entry["test_acc"],
            }
        )
    return rows


def _distilled_row(record: Any) -> dict[str, Any] | None:
    """The made-model row of a ``distill.json`` (None if it is not one: a shared folder's
    file is checked, not trusted)."""
    try:
        teacher, acc = record["teacher"], record["test_acc"]
        picks = ", ".join(f"rank {int(m['rank'])}" for m in teacher["members"])
        model = (
            f"{str(record['model'])[:64]} distilled from the {str(teacher['method'])[:16]} "
            f"ensemble of {len(teacher['members'])} ({picks}) on train + val, "
            f"{int(record['epochs'])} epoch(s)"
        )
        if not 0.0 <= float(acc) <= 1.0:  # NaN too
            return None
        return {"model": model, "val_acc": None, "test_acc": float(acc)}
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def accuracy_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def made_model_lines(exp: Experiment) -> list[str]:
    """One line per refit or exported ensemble, with its accuracy on the test split."""
    acc = accuracy_text
    return [
        f"{row['model']}: test_acc {acc(row['test_acc'])} (val_acc {acc(row['val_acc'])})"
        for row in made_models(exp)
    ]
