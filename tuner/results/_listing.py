"""``tuner list``: the experiments of a storage, newest first, with how far each got.

Status: **running** while a live ``search`` or ``resume`` holds the experiment's
writer lock; **finished** when every trial the budget asked for has ended (or a
time budget ended the search); **interrupted** otherwise (Ctrl-C, a killed
driver, a full disk): ``resume`` continues it; **unreadable** when a file of it is one this
tool refuses to read (a link, a FIFO, malformed): the reason goes to stderr and the other
experiments are still listed.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import pandas as pd

from trainables import FileRefused
from tuner._errors import UsageError
from tuner.results._leaderboard import build_leaderboard, summary
from tuner.results._trials import read_state
from tuner.storage import (
    LOCK_FILE,
    NAME_RE,
    TUNER_FILE,
    Experiment,
    Observations,
    Storage,
    experiment_names,
    is_stale,
)

COLUMNS = ["name", "status", "trials_ended", "trials_asked", "best_val_acc", "test_acc"]
COLUMNS += ["space", "created"]
_ENDED = {"terminated", "error"}


def is_finished(exp: Experiment) -> bool:
    """Whether every trial the budget asked for has ended (see the module doc)."""
    return _row(exp, lock=False)["status"] == "finished"


def _unreadable(exp: Experiment, reason: str) -> dict[str, Any]:
    """The row of an experiment whose files this tool refuses to read (one stays listed)."""
    print(f"tuner list: {exp.name}: {reason}", file=sys.stderr)
    return {"name": exp.name, "status": "unreadable", "trials_ended": 0, "trials_asked": 0,
            "best_val_acc": math.nan, "test_acc": math.nan, "space": "", "created": ""}  # fmt: skip


def _row(exp: Experiment, lock: bool = True) -> dict[str, Any]:
    try:
        return _read_row(exp, lock)
    except (UsageError, FileRefused) as exc:
        if not lock:
            raise
        return _unreadable(exp, str(exc))


def status_row(exp: Experiment) -> dict[str, Any]:
    """``exp``'s row of the list; UsageError or FileRefused if a file of it is refused."""
    return _read_row(exp)


def _read_row(exp: Experiment, lock: bool = True) -> dict[str, Any]:
    record = exp.record_if_written()
    budget = record.search_space().budget if record else None
    holder = exp.read_json(LOCK_FILE) if lock else None
    seen = Observations().get(exp.display(LOCK_FILE)) if isinstance(holder, dict) else None
    running = isinstance(holder, dict) and not is_stale(holder, seen)
    row: dict[str, Any] = {
        "name": exp.name,
        "status": "running" if running else "interrupted",
        "trials_ended": 0,
        "trials_asked": budget.num_samples if budget else 0,
        "best_val_acc": math.nan,
        "test_acc": math.nan,
        "space": record.space_name if record else "",
        "created": record.created if record else "",
    }
    try:
        trials, digest = read_state(exp)  # UsageError before Ray saved a state
        # The summary written with the leaderboard spares reading every trial's results.
        best = summary(exp, digest, len(trials))
        if best is None:
            board = build_leaderboard(exp, trials=trials)
            if len(board):
                best = float(board["val_acc"].iloc[0]), float(board["test_acc"].iloc[0])
    except UsageError:
        return row
    ended = sum(t.status in _ENDED for t in trials)
    row["trials_ended"] = ended
    if best is not None:
        row["best_val_acc"], row["test_acc"] = best
    timed = budget is not None and budget.time_budget_s is not None
    complete = ended == len(trials) and (timed or ended >= row["trials_asked"])
    if not running and complete:
        row["status"] = "finished"
    return row


def list_experiments(storage: Storage) -> pd.DataFrame:
    """One row per experiment in ``storage`` (a started search counts), newest first."""
    names = set(experiment_names(storage))
    for name in storage.list(dirs=True):
        if NAME_RE.fullmatch(name) and ".." not in name and storage.exists(f"{name}/{TUNER_FILE}"):
            names.add(name)
    rows = [_row(Experiment(storage, name)) for name in sorted(names)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["created", "name"], ascending=False).reset_index(drop=True)


def render_list(table: pd.DataFrame, fmt: str) -> str:
    """The list as a table (``-`` where nothing is known yet), csv, json or markdown."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2)
    if table.empty:
        return "(no experiments)"
    cells = table.astype(object).map(
        lambda v: (
            "-"
            if (isinstance(v, float) and math.isnan(v)) or v == ""
            else (f"{v:.4f}" if isinstance(v, float) else str(v))
        )
    )
    if fmt == "markdown":
        lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
        return "\n".join(lines)
    return cells.to_string(index=False)
