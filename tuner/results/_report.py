"""``tuner report``: figures and a Markdown summary of an experiment, under ``NAME/report/``.

Everything is read from the experiment as its storage holds it (Ray Tune's
state, ``tuner.json``), so a report can be made of a finished, interrupted or
running search, in a folder or an object store. Figures are drawn with
matplotlib's Agg canvas (no display) into a temporary folder, then written
to the experiment's storage.

- ``learning_curves.png``: val_acc per epoch of every trial; trials ASHA
  stopped end in an x; the best trial is the thick red line.
- ``best_so_far.png``: the best val_acc found so far against wall-clock time.
- ``hyperparameters.png``: each trial's best val_acc against each searched key.
- ``pareto.png`` (a search of several objectives): val_acc against the first cost
  (latency_ms or params_m), the Pareto front joined, test_acc where scored.
- ``importance.png``: hyperparameter importances by Optuna's evaluators, on an
  Optuna study rebuilt from the trials (skipped, with the reason, when it
  cannot be computed).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tuner._errors import UsageError
from tuner.results._figures import (
    MIN_IMPORTANCE_TRIALS,
    Results,
    Skip,
    best_so_far,
    hyperparameters,
    importance,
    learning_curves,
    pareto,
)
from tuner.results._holdout import accuracy_text, made_models
from tuner.results._leaderboard import best_config, build_leaderboard, render
from tuner.spaces import COSTS
from tuner.storage import REPORT_DIR, REPORT_FILE, Experiment

_TABLE_ROWS = 10


@dataclass
class Report:
    """What was written (paths or URIs): the Markdown file, the figures, what was skipped."""

    markdown: str
    figures: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _load(experiment: Experiment) -> Results:
    every = experiment.histories()
    board = build_leaderboard(experiment, every)
    histories = {
        trial_id: df
        for trial_id, df in every.items()
        if "epoch" in df and "val_acc" in df and not df.empty
    }
    space = experiment.record().search_space() if experiment.has_record() else None
    return Results(experiment.name, board, histories, space, made_models(experiment))


def write_report(experiment: Experiment) -> Report:
    """Draw every figure that the experiment's results allow and write ``report.md``,
    both under ``NAME/report/`` in the experiment's storage."""

    results = _load(experiment)
    if results.board.empty:
        raise UsageError(f"experiment {results.name!r} has no trials yet; nothing to report")
    with tempfile.TemporaryDirectory(prefix="flower-tune-report-") as tmp:
        drawn = draw_report(results, Path(tmp))
        written = Report(experiment.display(REPORT_DIR, REPORT_FILE), skipped=drawn.skipped)
        for path in map(Path, [*drawn.figures, drawn.markdown]):
            experiment.storage.upload(path, experiment.rel(REPORT_DIR, path.name))
            if path.suffix == ".png":
                written.figures.append(experiment.display(REPORT_DIR, path.name))
    return written


def draw_report(exp: Results, folder: Path) -> Report:
    """Draw ``exp``'s figures into ``folder`` and write the ``report.md`` that shows them."""
    folder.mkdir(exist_ok=True)
    report = Report(markdown=str(folder / REPORT_FILE))
    drawers = {
        "learning_curves": learning_curves,
        "best_so_far": best_so_far,
        "hyperparameters": hyperparameters,
        "importance": importance,
    }
    if "pareto" in exp.board:
        drawers["pareto"] = pareto
    for name, draw in drawers.items():
        fig = Figure(figsize=(9, 5.5), layout="constrained")
        FigureCanvasAgg(fig)
        try:
            draw(exp, fig)
        except Skip as reason:
            report.skipped[name] = str(reason)
            continue
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        report.figures.append(str(path))
    Path(report.markdown).write_text(_markdown(exp, report))
    return report


_CAPTIONS = {
    "learning_curves": (
        "Learning curves",
        "Validation accuracy per epoch of every trial. The thick red line is the best trial; "
        "an x, in the trial's colour, marks the last epoch of a trial ASHA stopped early (a "
        "trial stopped after one epoch is that x alone); dotted lines are ASHA's rungs.",
    ),
    "best_so_far": (
        "Best val_acc over time",
        "The best validation accuracy found so far against wall-clock time since the "
        "experiment started; grey dots are single epochs of single trials.",
    ),
    "hyperparameters": (
        "val_acc against each hyperparameter",
        "Each trial's best validation accuracy against each searched hyperparameter.",
    ),
    "pareto": (
        "Accuracy against cost",
        "Each completed trial's best validation accuracy against its first cost objective "
        "(latency_ms: the deployed ONNX graph's time for one photo; or params_m). Red: the "
        "Pareto front, joined; blue diamonds: the test accuracy of front trials scored on the "
        "held-out photos. Trials stopped early ran fewer epochs and are not drawn.",
    ),
    "importance": (
        "Hyperparameter importance",
        "Importances computed by Optuna on a study rebuilt from the trials' best val_acc. "
        f"With fewer than {MIN_IMPORTANCE_TRIALS} trials the title says so: a model of val_acc "
        "fitted to so few points is noise more than a measurement.",
    ),
}


def _markdown(exp: Results, report: Report) -> str:
    board = exp.board
    counts = board["status"].value_counts()
    lines = [f"# Report: {exp.name}", ""]
    if exp.space is not None:
        lines.append(f"Search space `{exp.space.name}` ({exp.space.source}).")
    lines.append(
        f"{len(board)} trial(s): "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + "."
    )
    best = best_config(board)
    lines += ["", "## Best trial", ""]
    if best:
        epochs = int(board.iloc[0]["epochs"])
        lines += [
            f"- trial: `{best['trial_id']}` ({board.iloc[0]['status']})",
            f"- val_acc: **{best['val_acc']:.4f}** (± {best['val_acc_se']:.4f}, one standard "
            f"error) at epoch {best['best_epoch']} of {epochs}",
            "- test_acc (photos no trial trained on or was selected by): "
            + (f"**{best['test_acc']:.4f}**" if best["test_acc"] is not None else "not scored"),
            f"- checkpoint: `{best['checkpoint']}`",
            "",
            "```json",
            json.dumps(best["config"], indent=2),
            "```",
        ]
    else:
        lines.append("No trial has a finite val_acc yet.")
    if exp.made:
        lines += ["", "## Models made from the search (test split)", ""]
        lines += ["| model | val_acc | test_acc |", "|---|---|---|"]
        for row in exp.made:
            val, test = accuracy_text(row["val_acc"]), accuracy_text(row["test_acc"])
            lines.append(f"| {row['model']} | {val} | {test} |")
    for path in map(Path, report.figures):
        title, caption = _CAPTIONS[path.stem]
        lines += ["", f"## {title}", "", f"![{title}]({path.name})", "", caption]
    columns = [
        "rank", "trial_id", "status", "val_acc", "val_acc_se", "test_acc", "best_epoch", "epochs",
        *[c for c in ("pareto", *COSTS) if c in exp.board], *exp.searched,
    ]  # fmt: skip
    lines += ["", f"## Trials (top {min(len(board), _TABLE_ROWS)})", ""]
    lines.append(str(render(board[columns], "markdown", _TABLE_ROWS)).rstrip())
    if report.skipped:
        lines += ["", "## Figures not drawn", ""]
        lines += [f"- {_CAPTIONS[name][0]}: {why}" for name, why in report.skipped.items()]
    return "\n".join(lines) + "\n"
