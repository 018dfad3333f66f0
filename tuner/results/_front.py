"""The accuracy/cost front of a search of several objectives: which trials are on it,
which one a deployment constraint picks, and its figure.

The leaderboard's ``pareto`` column marks the front (see
:func:`tuner.results._leaderboard.fronts`); ``leaderboard --pareto`` shows only it;
``export NAME --pick "latency_ms<=5"`` exports the most accurate front trial that
meets every constraint; ``report`` draws ``pareto.png``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tuner._errors import UsageError
from tuner.spaces import Constraint, Objectives


def require_front(board: pd.DataFrame, what: str) -> None:
    """UsageError unless ``board`` is of a search of several objectives."""
    if "pareto" not in board:
        raise UsageError(
            f"{what}: this experiment optimised val_acc alone, so it has no Pareto front "
            "(search with objectives: [{val_acc: max}, {latency_ms: min}])"
        )


def front(board: pd.DataFrame) -> pd.DataFrame:
    """The rows on the front, in leaderboard order (most accurate first)."""
    require_front(board, "--pareto")
    return board[board["pareto"]]


def pick_rank(board: pd.DataFrame, text: str) -> int:
    """The leaderboard rank of the most accurate front trial meeting the constraints in
    ``text`` (``latency_ms<=5``, comma-separated); UsageError if none does."""
    require_front(board, "--pick")
    try:
        constraints = Constraint.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for c in constraints:
        if c.key not in board:
            raise UsageError(f"--pick: this experiment did not measure {c.key}")
    on_front = front(board)
    if on_front.empty:
        raise UsageError("--pick: no trial has completed yet, so the front is empty")
    fits = on_front
    for c in constraints:
        fits = fits[[c.holds(float(v)) for v in fits[c.key]]]
    if fits.empty:
        spans = "; ".join(
            f"{c.key} runs {on_front[c.key].min():g} to {on_front[c.key].max():g}"
            for c in constraints
        )
        raise UsageError(
            f"--pick: no trial on the front ({len(on_front)} trials) has "
            f"{', '.join(map(str, constraints))}: on the front {spans}"
        )
    return int(fits.iloc[0]["rank"])


def draw_front(board: pd.DataFrame, objectives: Objectives, fig: Any) -> str | None:
    """Draw val_acc against the first cost onto ``fig``: every completed trial, the front
    joined, test_acc where scored. Returns why nothing could be drawn, or None."""
    if "pareto" not in board or len(objectives.names) < 2:
        return "the search optimised val_acc alone (no front)"
    cost = objectives.names[1]
    done = board[(board["status"] == "completed") & board[cost].notna() & board["val_acc"].notna()]
    if done.empty:
        return "no trial has completed yet"
    on = done[done["pareto"]].sort_values(cost)
    off = done[~done["pareto"]]
    ax = fig.add_subplot()
    ax.scatter(off[cost], off["val_acc"], color="0.6", s=28, label="completed trial")
    ax.plot(on[cost], on["val_acc"], color="#d62728", marker="o", lw=2, ms=7,
            label="Pareto front (val_acc)", drawstyle="steps-post")  # fmt: skip
    scored = on[on["test_acc"].notna()] if "test_acc" in on else on.iloc[:0]
    if not scored.empty:
        ax.scatter(scored[cost], scored["test_acc"], marker="D", color="#1f77b4", s=36,
                   label="test_acc (front trials scored)", zorder=3)  # fmt: skip
    for _, row in on.iterrows():
        ax.annotate(
            f"#{row['rank']} {row['model']} {row['image_size']}px",
            (row[cost], row["val_acc"]), fontsize=7, xytext=(4, -10), textcoords="offset points",
        )  # fmt: skip
    unit = {"latency_ms": "latency (ms, one photo)", "params_m": "parameters (millions)"}
    ax.set_xlabel(unit.get(cost, cost))
    ax.set_ylabel("accuracy")
    where = f" on {objectives.latency_device}" if cost == "latency_ms" else ""
    ax.set_title(f"val_acc against {cost}{where}: {len(on)} of {len(done)} completed on the front")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if math.isfinite(float(done[cost].max())) and float(done[cost].max()) > 0:
        ax.set_xlim(left=0)
    return None
