"""`tuner compare`: experiments side by side, in every format, on folders (S3: in
tests/test_object_storage.py)."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from conftest import read_board, run_cli
from synthetic import FakeTrial, write_experiment


@pytest.fixture(scope="module")
def two(finished, tmp_path_factory):
    """A storage holding the shared search twice: as ``e2e``, and as ``other`` whose
    tuner.json names another space."""
    _, _, exp = finished
    storage = tmp_path_factory.mktemp("compare")
    shutil.copytree(exp, storage / "e2e")
    shutil.copytree(exp, storage / "other")
    record = json.loads((exp / "tuner.json").read_text())
    record["space_name"] = "tiny-copy"
    (storage / "other" / "tuner.json").write_text(json.dumps(record))
    return storage, read_board(exp / "leaderboard.csv")


def test_compare_puts_each_experiments_figures_side_by_side(two):
    storage, board = two
    code, out, err = run_cli("compare", "e2e", "other", "--storage", str(storage), "--format",
                             "json")  # fmt: skip
    assert code == 0, err
    full, other = json.loads(out)
    assert (full["name"], other["name"]) == ("e2e", "other")
    assert full["best_val_acc"] == pytest.approx(board.loc[0, "val_acc"])
    code, listed, _ = run_cli("list", "--storage", str(storage), "--format", "json")
    assert code == 0
    assert full["test_acc"] == {r["name"]: r for r in json.loads(listed)}["e2e"]["test_acc"]
    assert full["trials"] == len(board) == other["trials"]
    assert full["epochs"] == board["epochs"].sum()
    assert full["trial_time_s"] == pytest.approx(board["wall_time_s"].sum())
    assert (full["scheduler"], full["searcher"], full["objectives"]) == ("asha", "tpe",
                                                                      "val_acc max")  # fmt: skip
    assert (full["space"], other["space"]) == ("tiny", "tiny-copy")
    assert f"lr={board.loc[0, 'lr']:.3g}" in full["top_1"]
    assert f"lr={board.loc[1, 'lr']:.3g}" in full["top_2"]
    assert full["status"] == "finished"
    # The other formats hold the same figures.
    code, csv, _ = run_cli("compare", "e2e", "other", "--storage", str(storage), "--format", "csv")
    assert code == 0
    table = read_board(io.StringIO(csv))
    assert list(table["name"]) == ["e2e", "other"] and list(table["space"]) == ["tiny", "tiny-copy"]
    code, md, _ = run_cli("compare", "e2e", "other", "--storage", str(storage), "--format",
                          "markdown")  # fmt: skip
    assert code == 0 and md.splitlines()[0] == "| | e2e | other |"
    assert f"| best_val_acc | {full['best_val_acc']:.4f} | {other['best_val_acc']:.4f} |" in md
    assert "| scheduler | asha | asha |" in md and "| space | tiny | tiny-copy |" in md
    code, text, _ = run_cli("compare", "e2e", "other", "--storage", str(storage), "--top", "1")
    assert code == 0 and "top_1" in text and "top_2" not in text
    assert text.splitlines()[0].split() == ["e2e", "other"]


@pytest.mark.parametrize(
    ("names", "message"),
    [(("e2e", "nosuch"), "nosuch"), (("e2e", "e2e"), "an experiment is named twice")],
)
def test_bad_compare_requests_exit_2_with_one_message(tmp_path, names, message):
    storage = tmp_path  # a synthetic experiment: no search
    write_experiment(storage, "e2e", [FakeTrial("t", epochs=[(0.8, 0.5)])], max_epochs=1)
    code, _, err = run_cli("compare", *names, "--storage", str(storage))
    assert code == 2 and message in err and "Traceback" not in err, err
