"""Reading an experiment someone else could write to runs none of their code."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from conftest import run_cli


class Payload:
    """Unpickled, it creates ``marker``: what a planted cloudpickle value could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mknod, (self.marker,))


def plant(experiment: Path, marker: Path) -> None:
    """Put the payload into every pickled slot of the newest experiment state."""
    newest = sorted(experiment.glob("experiment_state-*.json"))[-1]
    data = json.loads(newest.read_text())
    value = {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(Payload(marker)).hex()}
    for entry in data["trial_data"]:
        state, meta = json.loads(entry[0]), json.loads(entry[1])
        state["storage"] = value
        state["config"]["planted"] = value
        meta["checkpoint_manager"] = value
        entry[0], entry[1] = json.dumps(state), json.dumps(meta)
    newest.write_text(json.dumps(data))


@pytest.fixture
def planted(finished, tmp_path) -> tuple[Path, Path]:
    exp = finished[2]
    copy = tmp_path / "shared" / "e2e"
    shutil.copytree(exp, copy)
    marker = tmp_path / "marker"
    plant(copy, marker)
    return copy, marker


@pytest.mark.slow
def test_reading_a_planted_experiment_runs_none_of_its_code(planted, tmp_path):
    """Each command runs in this process: a payload it unpickled would create the marker."""
    experiment, marker = planted
    storage = str(experiment.parent)
    commands = [
        ["leaderboard", "e2e"],
        ["report", "e2e"],
        ["evaluate", "e2e"],
        ["export", "e2e", "--output", str(tmp_path / "out")],
    ]
    for command in commands:
        code, _, err = run_cli(*command, "--storage", storage)
        assert code == 0, (command, err[-2000:])
        assert not marker.exists(), command
    # The leaderboard still lists every trial, from the plain fields of the state.
    code, board, err = run_cli("leaderboard", "e2e", "--storage", storage, "--format", "json")
    assert code == 0, err[-2000:]
    assert len(json.loads(board)) == 5
    # The payload is real: Ray's own reader of the state runs it.
    from ray.tune import ExperimentAnalysis

    with contextlib.suppress(Exception):  # what it unpickled is no trial
        ExperimentAnalysis(str(experiment))
    assert marker.exists()
