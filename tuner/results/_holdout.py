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

import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch

from trainables import describe_duration
from tuner._errors import UsageError
from tuner.results._inference import (
    Preprocessing,
    classification_metrics,
    classify_labelled,
    experiment_split,
    load_ranked_trial,
)
from tuner.results._leaderboard import load_scores
from tuner.results._together import classify_together, windows
from tuner.storage import (
    DISTILL_DIR,
    DISTILL_RECORD,
    ENSEMBLES,
    REFIT_DIR,
    TEST_SCORES,
    Experiment,
)


def holdout_lines(board: pd.DataFrame) -> list[str]:
    """The summary line of the scored trials: test against val, by rank."""
    scored = board[board["test_acc"].notna()]
    if scored.empty:
        return []
    cells = ", ".join(
        f"rank {int(r['rank'])} {r['test_acc']:.4f} (val {r['val_acc']:.4f})"
        for _, r in scored.iterrows()
    )
    return [f"Test split (photos no trial saw): {cells}"]


def score_top_trials(
    exp: Experiment,
    board: pd.DataFrame,
    top_k: int,
    say: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Evaluate the best checkpoints of the ``top_k`` ranked trials on the test split,
    saying (``say``) which ones are scored as each pass starts.

    The trials to score are run together (:mod:`tuner.results._together`): each test photo
    is decoded once, and the trials of one model whose frozen stages are equal run those
    once per photo. Returns trial id -> test_acc of the trials scored (now or before); an
    empty dict when the experiment holds no test split.
    """
    split = exp.split()
    if not split.test or top_k <= 0:
        return {}
    scores = load_scores(exp)
    last = min(top_k, len(board))
    # rank -> (trial id, best checkpoint) of the top trials that have one
    ranked = {
        rank: (str(row["trial_id"]), str(row["checkpoint"]))
        for rank, (_, row) in enumerate(board.head(last).iterrows(), 1)
        if not pd.isna(row["val_acc"]) and str(row["checkpoint"])
    }
    stale = [r for r, (t, c) in ranked.items() if scores.get(t, {}).get("checkpoint") != c]
    loaded = (load_ranked_trial(exp, rank, board) for rank in stale)
    done, took = 0, 0.0  # trials scored so far, and the seconds they took
    for window in windows(loaded):
        if say is not None:
            ranks = [t.rank for t in window]
            left = describe_duration(took / done * (len(stale) - done)) if done else ""
            say(f"Scoring {_ranks(ranks)} of {last} on the {len(split.test)} test photos"
                + (f" (about {left} left)" if left else ""))  # fmt: skip
        for trial in window:
            experiment_split(trial)  # UsageError unless it was trained on the split's classes
        started = time.monotonic()
        logits, result = classify_together(window, [p for p, _ in split.test], split.root)
        if not result.ok:
            raise UsageError(f"the test split holds no readable photos ({len(result.failed)} "
                             "file(s) skipped)")  # fmt: skip
        labels = [split.test[i][1] for i in result.ok]
        for trial, trial_logits in zip(window, logits, strict=True):
            metrics = classification_metrics(labels, trial_logits.argmax(1).tolist(), trial.classes)
            scores[trial.trial_id] = {
                "checkpoint": trial.checkpoint,
                "test_acc": metrics["accuracy"],
                "n_images": len(labels),
            }
        took += time.monotonic() - started
        done += len(window)
        exp.write_json(TEST_SCORES, scores)  # each pass kept as it ends
    exp.write_json(TEST_SCORES, scores)
    return {t: float(scores[t]["test_acc"]) for t, _ in ranked.values()}


def _ranks(ranks: list[int]) -> str:
    """``rank 3``, ``ranks 1-5`` or ``ranks 1, 2, 4``."""
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    if ranks == list(range(ranks[0], ranks[-1] + 1)):
        return f"ranks {ranks[0]}-{ranks[-1]}"
    return "ranks " + ", ".join(map(str, ranks))


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
    ``val_acc`` (None for a model trained on the validation photos) and ``test_acc``.
    Each record is a shared folder's file: one that is not what it should be is left out."""
    rows = []
    for trial_id in exp.storage.list(exp.rel(REFIT_DIR), dirs=True):
        refit = exp.read_json(f"{REFIT_DIR}/{trial_id}/refit.json")
        rows.append(_checked(_refit_row, trial_id, refit))
    for name in exp.storage.list(exp.rel(DISTILL_DIR), dirs=True):
        distilled = exp.read_json(f"{DISTILL_DIR}/{name}/{DISTILL_RECORD}")
        rows.append(_checked(_distilled_row, name, distilled))
    entries = exp.read_json(ENSEMBLES, [])
    for entry in entries if isinstance(entries, list) else []:
        rows.append(_checked(_ensemble_row, "", entry))
    return [row for row in rows if row is not None]


def _checked(
    make: Callable[[str, Any], tuple[str, float | None, float]], name: str, record: Any
) -> dict[str, Any] | None:
    """The made-model row ``make`` builds from ``record``, or None if the record is not one
    (a missing key, a wrong type, an accuracy outside [0, 1])."""
    try:
        model, val, test = make(name[:64], record)
        if not all(0.0 <= float(a) <= 1.0 for a in (test, *([] if val is None else [val]))):
            return None  # NaN too
        return {"model": model, "val_acc": None if val is None else float(val),
                "test_acc": float(test)}  # fmt: skip
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
        return None


def _refit_row(trial_id: str, record: Any) -> tuple[str, float | None, float]:
    model = (
        f"refit of rank {int(record['rank'])} ({trial_id}) on train + val, "
        f"{int(record['epochs'])} epoch(s)"
    )
    return model, None, record["test_acc"]


def _distilled_row(_: str, record: Any) -> tuple[str, float | None, float]:
    teacher = record["teacher"]
    picks = ", ".join(f"rank {int(m['rank'])}" for m in teacher["members"])
    model = (
        f"{str(record['model'])[:64]} distilled from the {str(teacher['method'])[:16]} "
        f"ensemble of {len(teacher['members'])} ({picks}) on train + val, "
        f"{int(record['epochs'])} epoch(s)"
    )
    return model, None, record["test_acc"]


def _ensemble_row(_: str, entry: Any) -> tuple[str, float | None, float]:
    picks = ", ".join(f"rank {int(m['rank'])} x{float(m['weight']):g}" for m in entry["members"])
    model = f"{str(entry['method'])[:16]} ensemble of {int(entry['size'])} ({picks})"
    return model, entry["val_acc"], entry["test_acc"]


def accuracy_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def made_model_lines(exp: Experiment) -> list[str]:
    """One line per refit or exported ensemble, with its accuracy on the test split."""
    acc = accuracy_text
    return [
        f"{row['model']}: test_acc {acc(row['test_acc'])} (val_acc {acc(row['val_acc'])})"
        for row in made_models(exp)
    ]
