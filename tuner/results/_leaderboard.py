"""The ranked record of every trial of an experiment, and its file formats.

The trials are those of Ray Tune's own trial list (:mod:`tuner.results._trials`), so it
works on finished, interrupted and running experiments without writing to them, and
lists exactly the trials the experiment knows. Results and checkpoints come from each
trial's ``result.json`` and folder.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import pandas as pd

from trainables import SPLIT_FILE, FileRefused, TrialConfig
from tuner._errors import UsageError
from tuner.results._history import pbt_histories
from tuner.results._trials import TrialRecord, read_trials, state_digest
from tuner.spaces import COSTS, Objectives, front_ranks, objectives_of
from tuner.storage import (
    BEST_CONFIG,
    LEADERBOARD_CSV,
    LEADERBOARD_PARQUET,
    SUMMARY_FILE,
    TEST_SCORES,
    TRIAL_PREFIX,
    TUNER_FILE,
    Experiment,
)

FORMATS = ("table", "csv", "parquet", "json", "markdown")


# Ranking order of statuses: usable results first, failures last.
_STATUS_ORDER = {
    "completed": 0,
    "stopped_early": 0,
    "running": 1,
    "paused": 1,
    "pending": 2,
    "diverged": 3,
    "error": 4,
    "not_started": 5,
}
_BASE_COLUMNS = [
    "rank",
    "trial_id",
    "status",
    "val_acc",
    "val_acc_se",
    "test_acc",
    "best_epoch",
    "epochs",
    "stopped_early",
    "val_loss",
    "wall_time_s",
]


def build_leaderboard(
    exp: Experiment,
    histories: dict[str, pd.DataFrame] | None = None,
    trials: list[TrialRecord] | None = None,
) -> pd.DataFrame:
    """One row per trial, best first, with the columns of docs/design.md.

    ``histories`` (trial id -> :meth:`Experiment.history`) and ``trials``
    (:func:`read_trials`) save reading them again when the caller has them.
    """
    rows, known = [], histories or {}
    defaults = TrialConfig()
    trials = read_trials(exp) if trials is None else trials
    for trial in trials:
        df = known[trial.trial_id] if trial.trial_id in known else exp.history(trial.trial_id)
        cfg = {k: trial.config.get(k, getattr(defaults, k)) for k in TrialConfig.field_names()}
        rows.append(_trial_row(exp, trial, df, cfg))
    space = recorded_space(exp)
    objectives = objectives_of(space)
    costs = [c for c in COSTS if any(c in row for row in rows) or c in objectives.names]
    columns = _BASE_COLUMNS[:-1] + costs + ["wall_time_s", *TrialConfig.field_names(), "checkpoint"]
    if objectives.multi:
        columns.insert(columns.index("status") + 1, "pareto")
    board = pd.DataFrame(rows, columns=[c for c in columns if c not in ("rank", "pareto")])
    if board.empty:
        return pd.DataFrame(columns=columns)
    # Ties on val_acc are common (one photo is a step): the lower val_loss ranks first.
    board["_order"] = board["status"].map(_STATUS_ORDER).fillna(6)
    order = ["_order", "val_acc", "val_loss"]
    if objectives.multi:
        board["_front"] = fronts(board, objectives)
        board.insert(board.columns.get_loc("status") + 1, "pareto", board["_front"] == 1)
        order.insert(1, "_front")
    board = board.sort_values(
        order, ascending=[o != "val_acc" for o in order], na_position="last"
    ).drop(columns=[c for c in ("_order", "_front") if c in board])
    board.insert(0, "rank", range(1, len(board) + 1))
    n_val = len((exp.read_json(SPLIT_FILE) or {}).get("val", []))
    board["val_acc_se"] = [standard_error(acc, n_val) for acc in board["val_acc"]]
    board = attach_test_scores(board, exp)
    if _scheduler_of(space) == "pbt":
        lineage = pbt_histories(exp, {t.trial_id: t.tag for t in trials})
        board.insert(board.columns.get_loc("checkpoint"), "pbt_history",
                     [lineage.get(str(t), "") for t in board["trial_id"]])  # fmt: skip
    return _typed(board.reset_index(drop=True))


def recorded_space(exp: Experiment) -> dict[str, Any]:
    """The resolved space ``tuner.json`` records (empty if unreadable): what the
    leaderboard needs of it is its objectives and scheduler, for display only."""
    try:
        record = exp.read_json(TUNER_FILE, {})
    except FileRefused:
        return {}
    space = record.get("space") if isinstance(record, dict) else None
    return space if isinstance(space, dict) else {}


def _scheduler_of(space: dict[str, Any]) -> str:
    scheduler = space.get("scheduler")
    if isinstance(scheduler, dict) and len(scheduler) == 1:
        scheduler = next(iter(scheduler))
    return scheduler if isinstance(scheduler, str) else ""


def fronts(board: pd.DataFrame, objectives: Objectives) -> list[float]:
    """Each row's Pareto front (1: on the front) among the trials that completed every
    epoch with every objective measured, as Optuna's ``best_trials`` holds only COMPLETE
    trials; the others (stopped early, so of fewer epochs, or unfinished): infinity."""
    names = list(objectives.names)
    values = board[names].to_numpy(dtype="float64", na_value=math.nan)
    whole = [
        i for i, status in enumerate(board["status"])
        if status == "completed" and all(math.isfinite(v) for v in values[i])
    ]  # fmt: skip
    ranks = front_ranks([tuple(values[i]) for i in whole], objectives.modes)
    out = [math.inf] * len(board)
    for i, rank in zip(whole, ranks, strict=True):
        out[i] = float(rank)
    return out


def load_scores(exp: Experiment) -> dict[str, dict[str, Any]]:
    """trial id -> {"checkpoint", "test_acc", "n_images"} of the trials scored so far."""
    scores = exp.read_json(TEST_SCORES, {})
    return scores if isinstance(scores, dict) else {}


def attach_test_scores(board: pd.DataFrame, exp: Experiment) -> pd.DataFrame:
    """``board`` with ``test_acc`` (NaN where the best checkpoint was not scored)."""
    scores = load_scores(exp)

    def score(row: pd.Series) -> float:
        entry = scores.get(str(row["trial_id"]), {})
        same = entry.get("checkpoint") == str(row["checkpoint"])
        return float(entry["test_acc"]) if same and "test_acc" in entry else math.nan

    board = board.copy()
    board["test_acc"] = board.apply(score, axis=1) if len(board) else pd.Series(dtype="float64")
    return board.astype({"test_acc": "float64"})


def kept_checkpoints(exp: Experiment, trial_id: str) -> list[tuple[int, float, str]]:
    """(epoch, val_acc, folder) of every checkpoint ``trial_id`` reported that is still on
    storage (the folder as a path of the storage's file system)."""
    folder = exp.rel(f"{TRIAL_PREFIX}{trial_id}")
    present = set(exp.storage.list(folder, "checkpoint_*", dirs=True))
    return [
        (int(r["epoch"]), float(r["val_acc"]), exp.storage.path(folder, r["checkpoint_dir_name"]))
        for r in exp.reports(trial_id)
        if r.get("checkpoint_dir_name") in present and "epoch" in r and "val_acc" in r
    ]


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` photos (NaN if unknown)."""
    if not n or not math.isfinite(accuracy):
        return math.nan
    return math.sqrt(accuracy * (1 - accuracy) / n)


def _trial_row(
    exp: Experiment, trial: TrialRecord, df: pd.DataFrame, cfg: dict[str, Any]
) -> dict[str, Any]:
    ray_status = trial.status
    has_results = not df.empty and "val_acc" in df
    diverged = bool(
        has_results and "diverged" in df and df["diverged"].fillna(False).astype(bool).any()
    )
    epochs = int(df["epoch"].max()) if has_results else 0
    if diverged:
        status = "diverged"
    elif ray_status == "terminated" and not has_results:
        status = "not_started"  # a time budget ended before it reported
    elif ray_status == "terminated":
        status = "completed" if epochs >= int(cfg["max_epochs"]) else "stopped_early"
    else:
        status = ray_status
    row: dict[str, Any] = {
        "trial_id": trial.trial_id,
        "status": status,
        "val_acc": math.nan,
        "val_acc_se": math.nan,
        "test_acc": math.nan,
        "best_epoch": 0,
        "epochs": epochs,
        "stopped_early": status == "stopped_early",
        "val_loss": math.nan,
        "wall_time_s": float(df["time_total_s"].max()) if has_results else 0.0,
        "checkpoint": "",
        **cfg,
    }
    for cost in COSTS:  # constant over a trial's epochs: its last value
        if cost in df and df[cost].notna().any():
            row[cost] = float(df[cost].dropna().iloc[-1])
    if has_results:
        flags = df.get("diverged", pd.Series(False, index=df.index))
        valid = df[~flags.fillna(False).astype(bool)]
        if not valid.empty:
            top = float(valid["val_acc"].max())
            # The checkpoint Ray kept for a best epoch; among tied epochs, the latest.
            kept = kept_checkpoints(exp, trial.trial_id)
            tied = [(epoch, path) for epoch, acc, path in kept if acc == top]
            epoch, path = (
                max(tied) if tied else (int(valid.loc[valid["val_acc"] == top, "epoch"].max()), "")
            )
            best = valid[valid["epoch"] == epoch].iloc[-1]
            shown = exp.storage.display(exp.storage.relative(path)) if path else ""
            row.update(
                val_acc=top, best_epoch=epoch, val_loss=float(best["val_loss"]), checkpoint=shown
            )
    return row


def _typed(board: pd.DataFrame) -> pd.DataFrame:
    """Give every column a stable dtype so CSV and Parquet round-trip cleanly."""
    defaults = TrialConfig()
    dtypes: dict[str, Any] = {
        "rank": "int64",
        "trial_id": "string",
        "status": "string",
        "val_acc": "float64",
        "val_acc_se": "float64",
        "test_acc": "float64",
        "best_epoch": "int64",
        "epochs": "int64",
        "stopped_early": "bool",
        "val_loss": "float64",
        "wall_time_s": "float64",
        "checkpoint": "string",
        "pareto": "bool",
        **dict.fromkeys(COSTS, "float64"),
    }
    for key in TrialConfig.field_names():
        default = getattr(defaults, key)
        dtypes[key] = (
            "bool"
            if isinstance(default, bool)
            else "int64"
            if isinstance(default, int)
            else "float64"
            if isinstance(default, float)
            else "string"
        )
    return board.astype({k: v for k, v in dtypes.items() if k in board})


def best_config(board: pd.DataFrame) -> dict[str, Any]:
    """The rank-1 trial's full configuration, its score and checkpoint."""
    if board.empty or pd.isna(board.iloc[0]["val_acc"]):
        return {}
    top = board.iloc[0]
    test_acc = float(top["test_acc"])
    return {
        "trial_id": str(top["trial_id"]),
        "val_acc": float(top["val_acc"]),
        "val_acc_se": float(top["val_acc_se"]),
        "test_acc": test_acc if math.isfinite(test_acc) else None,
        "best_epoch": int(top["best_epoch"]),
        "checkpoint": str(top["checkpoint"]),
        "config": {k: plain(top[k]) for k in TrialConfig.field_names()},
    }


def tie_note(board: pd.DataFrame) -> str:
    """Says when rank 1 shares its val_acc with others (then val_loss ranked it first)."""
    tied = int((board["val_acc"] == board["val_acc"].iloc[0]).sum()) - 1
    if tied <= 0:
        return ""
    return f"; tied on val_acc with {tied} other trial(s), ranked first by its lower val_loss"


def plain(value: Any) -> Any:
    """A leaderboard cell as the JSON value a trial config has (numpy scalars unwrapped)."""
    return value.item() if hasattr(value, "item") else value


def write_leaderboard(exp: Experiment, board: pd.DataFrame) -> list[str]:
    """Write leaderboard.csv, leaderboard.parquet and best_config.json, each whole, then
    the summary ``list`` reads (:func:`summary`); the first three's names as a user
    gives them."""
    parquet = io.BytesIO()
    board.to_parquet(parquet, index=False)
    contents = {
        LEADERBOARD_CSV: board.to_csv(index=False).encode(),
        LEADERBOARD_PARQUET: parquet.getvalue(),
        BEST_CONFIG: json.dumps(best_config(board), indent=2).encode(),
    }
    for name, data in contents.items():
        exp.write_bytes(name, data)
    top = board.iloc[0] if len(board) else None
    exp.write_json(
        SUMMARY_FILE,
        {
            "state_sha256": state_digest(exp),
            "trials": len(board),
            "best_val_acc": float(top["val_acc"]) if top is not None else None,
            "test_acc": float(top["test_acc"]) if top is not None else None,
        },
    )
    return [exp.display(name) for name in contents]


def summary(exp: Experiment, digest: str, trials: int) -> tuple[float, float] | None:
    """Rank 1's (val_acc, test_acc) from the summary written with the leaderboard, if it
    was written from the trial list of sha256 ``digest`` holding ``trials`` trials; None
    where there is none, it is stale, or it is not one this tool wrote."""
    try:
        data = exp.read_json(SUMMARY_FILE)
    except FileRefused:
        return None

    def number(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    if not (
        isinstance(data, dict)
        and data.get("state_sha256") == digest
        and data.get("trials") == trials
        and number(data.get("best_val_acc"))
        and number(data.get("test_acc"))
    ):
        return None
    val, test = data["best_val_acc"], data["test_acc"]
    return (math.nan if val is None else float(val), math.nan if test is None else float(test))


def render(board: pd.DataFrame, fmt: str, top: int | None = None) -> str | bytes:
    """The leaderboard as text (table, csv, json, markdown) or parquet bytes."""
    if top is not None:
        board = board.head(top)
    if fmt == "csv":
        return board.to_csv(index=False)
    if fmt == "json":
        return board.to_json(orient="records", indent=2)
    if fmt == "parquet":
        buf = io.BytesIO()
        board.to_parquet(buf, index=False)
        return buf.getvalue()
    if fmt == "markdown":
        return _markdown(board)
    if fmt == "table":
        return _table(board)
    raise UsageError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def _cell(value: Any) -> str:
    """A value as the table and markdown show it: ``-`` when missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(board: pd.DataFrame) -> str:
    """The varying columns as a table; the configuration shared by every trial listed once
    above it (every column stays in csv, parquet and json)."""
    shown = board.drop(columns=["checkpoint"])
    fields = [c for c in TrialConfig.field_names() if c in shown]
    constant = [c for c in fields if len(shown) and shown[c].nunique(dropna=False) == 1]
    table = shown.drop(columns=constant).astype(object).map(_cell).to_string(index=False)
    if not constant:
        return table
    same = ", ".join(f"{c}={_cell(plain(board[c].iloc[0]))}" for c in constant)
    return f"Same in every trial: {same}\n\n{table}"


def _markdown(board: pd.DataFrame) -> str:
    cols = list(board.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in board.iterrows():
        cells = [_cell(plain(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
