"""``tuner compare``: experiments side by side.

For each experiment (a name in one storage: a folder or an object store): its status,
space, strategy (scheduler and searcher) and objectives, the best val_acc and rank 1's
test_acc, the best test_acc of a model made from it (refit, distilled, ensemble), how many
trials ran, their epochs and trial-seconds, and its top configurations (the searched
keys only); for a search of several objectives, its Pareto front. The table puts the
experiments in columns; csv and json give one record per
experiment; markdown is the table.

The strategy and objectives come from the resolved space in ``tuner.json``
(``scheduler``, ``searcher``, ``objectives``; a space without them searched with the
defaults, ASHA and TPE on ``val_acc``).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tuner._errors import UsageError
from tuner.results._holdout import made_models
from tuner.results._leaderboard import build_leaderboard
from tuner.results._listing import status_row
from tuner.spaces import COSTS
from tuner.storage import TUNER_FILE, Experiment

DEFAULT_STRATEGY = {"scheduler": "asha", "searcher": "tpe"}
DEFAULT_OBJECTIVES = [{"val_acc": "max"}]
TOP = 3
FIELDS = [
    "status", "space", "scheduler", "searcher", "objectives", "best_val_acc", "test_acc",
    "best_made_test_acc", "trials", "epochs", "trial_time_s", "front",
]  # fmt: skip


def _name(value: Any) -> str:
    """``asha`` or ``{asha: {...}}`` -> ``asha``."""
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    return str(value)


def _objectives(value: Any) -> str:
    items = value if isinstance(value, list) else DEFAULT_OBJECTIVES
    parts = []
    for item in items:
        if isinstance(item, dict):
            parts += [f"{k} {v}" for k, v in item.items()]
    return ", ".join(parts)


def front_text(board: pd.DataFrame) -> str:
    """A search of several objectives: its front, most accurate first, as
    ``val_acc @ COST (model SIZEpx)`` per trial; "" for one objective."""
    if "pareto" not in board or board.empty:
        return ""
    costs = [c for c in COSTS if c in board]
    unit = {"latency_ms": " ms", "params_m": "M params"}
    points = []
    for _, row in board[board["pareto"]].iterrows():
        cost = ", ".join(f"{float(row[c]):.3g}{unit[c]}" for c in costs if pd.notna(row[c]))
        where = f"{row['model']} {row['image_size']}px"
        points.append(f"{float(row['val_acc']):.4f} @ {cost} ({where})")
    return "; ".join(points)


def _config_text(row: pd.Series, keys: list[str]) -> str:
    cells = []
    for key in keys:
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue  # a key this trial's config lacks
        cells.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(cells)


def summarize(exp: Experiment, top: int = TOP) -> dict[str, Any]:
    """One experiment's column of the comparison (see the module doc)."""
    listed = status_row(exp)
    if not exp.has_record():
        raise UsageError(f"experiment {exp.name!r} has no {TUNER_FILE} yet")
    record = exp.record()
    space = record.space
    keys = record.search_space().searched
    board = build_leaderboard(exp) if exp.has_state() else pd.DataFrame()
    made = [m["test_acc"] for m in made_models(exp) if m["test_acc"] is not None]
    summary: dict[str, Any] = {
        "name": exp.name,
        "status": listed["status"],
        "space": record.space_name,
        "scheduler": _name(space.get("scheduler", DEFAULT_STRATEGY["scheduler"])),
        "searcher": _name(space.get("searcher", DEFAULT_STRATEGY["searcher"])),
        "objectives": _objectives(space.get("objectives")),
        "best_val_acc": listed["best_val_acc"],
        "test_acc": listed["test_acc"],
        "best_made_test_acc": max(made) if made else math.nan,
        "trials": len(board),
        "epochs": int(board["epochs"].fillna(0).sum()) if len(board) else 0,
        "trial_time_s": float(board["wall_time_s"].fillna(0).sum()) if len(board) else 0.0,
        "front": front_text(board),
    }
    ranked = board[board["val_acc"].notna()] if len(board) else board
    for i in range(top):
        summary[f"top_{i + 1}"] = _config_text(ranked.iloc[i], keys) if i < len(ranked) else ""
    return summary


def compare(experiments: list[Experiment], top: int = TOP) -> pd.DataFrame:
    """One row per experiment, in the order given."""
    names = [e.name for e in experiments]
    if len(set(names)) < len(names):
        raise UsageError("compare: an experiment is named twice")
    return pd.DataFrame([summarize(e, top) for e in experiments])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}" if value <= 1 else f"{value:.0f}"
    return str(value) if value != "" else "-"


def render_compare(table: pd.DataFrame, fmt: str) -> str:
    """csv / json: one record per experiment; table / markdown: experiments in columns."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    names = [str(n) for n in table["name"]]
    rows = [[field, *(_cell(v) for v in table[field])] for field in table.columns[1:]]
    if fmt == "markdown":
        lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [["", *names], *rows]) for i in range(len(names) + 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [["", *names], *rows]
    )
