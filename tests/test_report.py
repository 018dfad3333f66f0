"""`tuner report` on the shared finished search: figures, report.md, importance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import experiment_at, read_board, run_cli
from PIL import Image

from tuner.cli import main
from tuner.results._figures import Skip, param_importances
from tuner.results._report import _load, draw_report

FIGURES = ("learning_curves", "best_so_far", "hyperparameters", "importance")


@pytest.fixture(scope="module")
def report(finished):
    _, storage, exp = finished
    return run_cli("report", "e2e", "--storage", str(storage)), exp / "report"


def test_report_writes_every_figure_and_a_markdown_summary(report, finished):
    (code, out, err), folder = report
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    markdown = (folder / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert linked == [f"{name}.png" for name in FIGURES]
    for name in FIGURES:
        path = folder / f"{name}.png"
        assert path.stat().st_size > 10_000, name
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width >= 600 and img.height >= 400
        assert str(path) in out

    _, _, exp = finished
    board = read_board(exp / "leaderboard.csv")
    best = json.loads((exp / "best_config.json").read_text())
    counts = board["status"].value_counts()
    assert f"{len(board)} trial(s): " in markdown
    for status, n in counts.items():
        assert f"{n} {status}" in markdown
    assert f"`{best['trial_id']}`" in markdown
    assert f"**{best['val_acc']:.4f}**" in markdown
    # val against test: the winner's score on photos the search never saw.
    assert best["test_acc"] is not None and f"**{best['test_acc']:.4f}**" in markdown
    assert "| val_acc | val_acc_se | test_acc |" in markdown
    assert json.dumps(best["config"], indent=2) in markdown
    for trial_id in board["trial_id"]:
        assert f"| {trial_id} |" in markdown


def test_report_only_adds_the_report_folder(report, finished):
    _, _, exp = finished
    assert {p.name for p in (exp / "report").iterdir()} == {"report.md"} | {
        f"{n}.png" for n in FIGURES
    }


def test_importance_uses_the_search_space_and_every_scored_trial(report, finished):
    _, _, exp = finished
    loaded = _load(experiment_at(exp))
    importances, evaluator, used = param_importances(loaded)
    assert used == len(loaded.scored) == 5
    assert set(importances) <= {"optimizer", "lr", "batch_size", "freeze_depth", "aug_strength"}
    assert sum(importances.values()) == pytest.approx(1.0)
    assert evaluator.endswith("ImportanceEvaluator")


def test_a_figure_that_cannot_be_drawn_is_skipped_with_the_reason(finished, tmp_path):
    _, _, exp = finished
    loaded = _load(experiment_at(exp))
    loaded.board = loaded.board.head(1)  # one trial: no importance can be computed
    with pytest.raises(Skip, match="at least 2"):
        param_importances(loaded)
    report = draw_report(loaded, tmp_path / "report")
    assert "importance" in report.skipped and not (tmp_path / "report/importance.png").exists()
    markdown = Path(report.markdown).read_text()
    assert "## Figures not drawn" in markdown and "importance needs at least 2" in markdown
    assert "importance.png" not in markdown


def test_report_of_an_unknown_experiment_exits_2(finished, capsys):
    _, storage, _ = finished
    assert main(["report", "nope", "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'nope'" in err and "e2e" in err and "Traceback" not in err
