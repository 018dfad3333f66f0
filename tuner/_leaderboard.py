"""The ranked record of every trial of an experiment, and its file formats.

Read from Ray Tune's own experiment state (``ExperimentAnalysis``), so it
works on finished, interrupted and running experiments without writing to
them, and lists exactly the trials the experiment knows.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from trainables import SPLIT_FILE, TrialConfig
from tuner._errors import UsageError
from tuner._holdout import attach_test_scores

LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_PARQUET = "leaderboard.parquet"
BEST_CONFIG = "best_config.json"
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


def build_leaderboard(experiment_dir: Path) -> pd.DataFrame:
    """One row per trial, best first, with the columns of DESIGN.md."""
    import logging

    from ray.tune import ExperimentAnalysis

    # A trial that has not reported yet has no result file; that is not worth a warning.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        analysis = ExperimentAnalysis(str(experiment_dir))
    except ValueError:
        raise UsageError(
            f"{experiment_dir} holds no Ray Tune experiment state (yet); was the search started?"
        ) from None
    rows = []
    for trial in analysis.trials:
        df = analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame())
        if "epoch" in df:
            # An epoch re-run after a restore from an older checkpoint counts once.
            df = df.drop_duplicates(subset="epoch", keep="last")
        cfg = {k: trial.config.get(k, getattr(TrialConfig(), k)) for k in TrialConfig.field_names()}
        rows.append(_trial_row(trial, df, cfg))
    columns = _BASE_COLUMNS + list(TrialConfig.field_names()) + ["checkpoint"]
    board = pd.DataFrame(rows, columns=columns[1:])
    if board.empty:
        return pd.DataFrame(columns=columns)
    # Ties on val_acc are common (one photo is a step): the lower val_loss ranks first.
    board["_order"] = board["status"].map(_STATUS_ORDER).fillna(6)
    board = board.sort_values(
        ["_order", "val_acc", "val_loss"], ascending=[True, False, True], na_position="last"
    ).drop(columns="_order")
    board.insert(0, "rank", range(1, len(board) + 1))
    n_val = _validation_photos(experiment_dir)
    board["val_acc_se"] = [standard_error(acc, n_val) for acc in board["val_acc"]]
    board = attach_test_scores(board, experiment_dir)
    return _typed(board.reset_index(drop=True))


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` photos (NaN if unknown)."""
    if not n or not math.isfinite(accuracy):
        return math.nan
    return math.sqrt(accuracy * (1 - accuracy) / n)


def _validation_photos(experiment_dir: Path) -> int:
    try:
        return len(json.loads((experiment_dir / SPLIT_FILE).read_text())["val"])
    except (OSError, ValueError, KeyError):
        return 0


def _trial_row(trial: Any, df: pd.DataFrame, cfg: dict[str, Any]) -> dict[str, Any]:
    ray_status = str(trial.status).lower()
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
    if has_results:
        flags = df.get("diverged", pd.Series(False, index=df.index))
        valid = df[~flags.fillna(False).astype(bool)]
        if not valid.empty:
            top = float(valid["val_acc"].max())
            # The checkpoint Ray kept for a best epoch; among tied epochs, the latest.
            tied = [(epoch, path) for epoch, acc, path in kept_checkpoints(trial) if acc == top]
            epoch, path = (
                max(tied) if tied else (int(valid.loc[valid["val_acc"] == top, "epoch"].max()), "")
            )
            best = valid[valid["epoch"] == epoch].iloc[-1]
            row.update(
                val_acc=top, best_epoch=epoch, val_loss=float(best["val_loss"]), checkpoint=path
            )
    return row


def kept_checkpoints(trial: Any) -> list[tuple[int, float, str]]:
    """(epoch, val_acc, folder) of every checkpoint of ``trial`` still on storage."""
    kept = []
    for result in trial.run_metadata.checkpoint_manager.best_checkpoint_results:
        metrics = result.metrics
        if "epoch" in metrics and "val_acc" in metrics and Path(result.checkpoint.path).is_dir():
            kept.append((int(metrics["epoch"]), float(metrics["val_acc"]), result.checkpoint.path))
    return kept


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
    return board.astype(dtypes)


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
        "config": {k: _plain(top[k]) for k in TrialConfig.field_names()},
    }


def tie_note(board: pd.DataFrame) -> str:
    """Says when rank 1 shares its val_acc with others (then val_loss ranked it first)."""
    tied = int((board["val_acc"] == board["val_acc"].iloc[0]).sum()) - 1
    if tied <= 0:
        return ""
    return f"; tied on val_acc with {tied} other trial(s), ranked first by its lower val_loss"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def write_leaderboard(experiment_dir: Path, board: pd.DataFrame) -> list[Path]:
    """Write leaderboard.csv, leaderboard.parquet and best_config.json atomically."""
    written = []
    targets = {
        LEADERBOARD_CSV: lambda p: board.to_csv(p, index=False),
        LEADERBOARD_PARQUET: lambda p: board.to_parquet(p, index=False),
        BEST_CONFIG: lambda p: Path(p).write_text(json.dumps(best_config(board), indent=2)),
    }
    for name, write in targets.items():
        path = experiment_dir / name
        tmp = path.with_name(f".{name}.tmp")
        write(tmp)
        os.replace(tmp, path)
        written.append(path)
    return written


def render(board: pd.DataFrame, fmt: str, top: int | None = None) -> str | bytes:
    """The leaderboard as text (table, csv, json, markdown) or parquet bytes."""
    if top is not None:
        board = board.head(top)
    if fmt == "csv":
        return board.to_csv(index=False)
    if fmt == "json":
        return board.to_json(orient="records", indent=2)
    if fmt == "parquet":
        import io

        buf = io.BytesIO()
        board.to_parquet(buf, index=False)
        return buf.getvalue()
    shown = board.drop(columns=["checkpoint"]) if fmt == "table" else board
    if fmt == "markdown":
        return _markdown(board)
    if fmt == "table":
        return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    raise UsageError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def _markdown(board: pd.DataFrame) -> str:
    cols = list(board.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in board.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
