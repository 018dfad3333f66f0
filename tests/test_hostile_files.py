"""The findings of a review that attacked the tool through a shared experiment folder, one
test each, on real links, FIFOs, sparse files and planted state (no search: fast lane).

tests/test_hostile.py fuzzes every file of a real experiment and export; these pin the
exact moves that were found to work before.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import measured

STATE = "experiment_state-2026-01-01_00-00-00.json"
LEADERBOARD_RSS_MB = 1024


def _experiment(storage: Path, name: str = "e1", trial_id: str = "abc_00000") -> Path:
    """A minimal experiment as Ray Tune leaves it: one trial in the state, one result."""
    exp = storage / name
    (exp / f"trial_{trial_id}").mkdir(parents=True, exist_ok=True)
    state = {"trial_data": [[json.dumps({"trial_id": trial_id, "status": "TERMINATED",
                                         "config": {"lr": 0.01}}), "x"]]}  # fmt: skip
    (exp / STATE).write_text(json.dumps(state))
    result = {"epoch": 1, "val_acc": 0.5, "val_loss": 1.0, "time_total_s": 3.0}
    (exp / f"trial_{trial_id}" / "result.json").write_text(json.dumps(result) + "\n")
    return exp


def _tuner(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> tuple:
    """``python -m tuner ARGS``: exit code, stdout, stderr, seconds, and that process's own
    peak RSS in MB."""
    start = time.perf_counter()
    outcome = measured(*args, timeout=timeout, env=env)
    assert outcome.rc is not None, f"no answer in {timeout} s: {outcome.err[-2000:]}"
    return outcome.rc, outcome.out, outcome.err, time.perf_counter() - start, outcome.peak / 2**20


def _one_error(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"tuner {command}")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_reserve_file_linked_to_the_state_key_is_replaced_not_written_through(tmp_path):
    """Finding 1: ``.tuner-reserve -> state.key`` zero-filled the key, after which a
    payload signed with the all-zero key ran on ``resume``."""
    from tuner import Experiment
    from tuner.search._guard import RESERVE_BYTES, make_reserve
    from tuner.storage._signing import key_path, load_key

    key = load_key()
    exp_dir = tmp_path / "s1"
    exp_dir.mkdir()
    (exp_dir / ".tuner-reserve").symlink_to(key_path())
    make_reserve(Experiment.from_folder(exp_dir))
    assert key_path().read_bytes() == key, "the state key was written through the link"
    reserve = exp_dir / ".tuner-reserve"
    assert not reserve.is_symlink() and reserve.stat().st_size == RESERVE_BYTES
    assert reserve.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_trial_ids_that_climb_out_are_refused_before_they_become_paths(tmp_path):
    """Finding 2: a trial id ``x/../../../P`` made ``export --ensemble`` write outside."""
    storage = tmp_path / "results"
    exp = _experiment(storage)
    state = json.loads((exp / STATE).read_text())
    trial = json.loads(state["trial_data"][0][0])
    trial["trial_id"] = "x/../../../P"
    state["trial_data"][0][0] = json.dumps(trial)
    (exp / STATE).write_text(json.dumps(state))
    for args in (
        ["leaderboard", "e1"],
        ["export", "e1", "--ensemble", "2", "--output", str(tmp_path / "out")],
    ):
        code, _, err, _, _ = _tuner(*args, "--storage", str(storage))
        assert code == 2, err
        assert "x/../../../P" in _one_error(err, args[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


@pytest.mark.slow
@pytest.mark.parametrize("file", ["state", "result"])
def test_leaderboard_refuses_a_file_linked_to_dev_zero_at_once(tmp_path, file):
    """Finding 4: ``result.json -> /dev/zero`` grew until a cap stopped it; the state
    linked to ``/dev/zero`` took all 24 GB of the machine."""
    storage = tmp_path / "results"
    exp = _experiment(storage)
    target = exp / STATE if file == "state" else exp / "trial_abc_00000" / "result.json"
    target.unlink()
    target.symlink_to("/dev/zero")
    code, _, err, seconds, rss = _tuner("leaderboard", "e1", "--storage", str(storage))
    assert code == 2
    assert "is a link" in _one_error(err, "leaderboard")
    assert seconds < 30
    assert rss < LEADERBOARD_RSS_MB, f"peak RSS {rss:.0f} MB"


@pytest.mark.slow
def test_a_sparse_gigabyte_result_is_refused_by_its_size(tmp_path):
    storage = tmp_path / "results"
    exp = _experiment(storage)
    with open(exp / "trial_abc_00000" / "result.json", "r+b") as f:
        f.truncate(2**30)
    code, _, err, _, rss = _tuner("leaderboard", "e1", "--storage", str(storage))
    assert code == 2
    assert "over the" in _one_error(err, "leaderboard")
    assert rss < LEADERBOARD_RSS_MB, f"peak RSS {rss:.0f} MB"


@pytest.mark.slow
def test_fifos_in_an_experiment_are_refused_not_waited_on(tmp_path):
    """Finding 5: a FIFO as ``result.json`` (leaderboard) or ``.writer.json`` hung."""
    storage = tmp_path / "results"
    exp = _experiment(storage)
    result = exp / "trial_abc_00000" / "result.json"
    result.unlink()
    os.mkfifo(result)
    code, _, err, _, _ = _tuner("leaderboard", "e1", "--storage", str(storage), timeout=30)
    assert code == 2 and "FIFO" in _one_error(err, "leaderboard")
    result.unlink()
    _experiment(storage)
    os.mkfifo(exp / ".writer.json")
    code, out, err, _, _ = _tuner("list", "--storage", str(storage), "--format", "json",
                                  timeout=30)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)[0]["status"] == "unreadable"
    assert "FIFO" in _one_error(err, "list")


@pytest.mark.slow
def test_the_half_written_last_line_of_a_running_trial_is_skipped(tmp_path):
    """Finding 9: reading while a search writes met a truncated last line."""
    storage = tmp_path / "results"
    exp = _experiment(storage)
    with open(exp / "trial_abc_00000" / "result.json", "a") as f:
        f.write('{"epoch": 2, "val_acc": 0.7, "val_lo')
    code, out, err, _, _ = _tuner("leaderboard", "e1", "--storage", str(storage),
                                  "--format", "json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)[0]["epochs"] == 1


@pytest.mark.parametrize(
    "line, says",
    [('{"epoch": "NaN", "val_acc": 0.5}', "epoch is str"),
     ("[" * 5000 + "]" * 5000, "nests deeper"),
     ('{"epoch": 1' + "0" * 400 + "}", "too large")],
)  # fmt: skip
@pytest.mark.slow
def test_a_malformed_result_line_before_the_last_is_one_error_line(tmp_path, line, says):
    storage = tmp_path / "results"
    exp = _experiment(storage)
    result = exp / "trial_abc_00000" / "result.json"
    result.write_text(line + "\n" + result.read_text())
    code, _, err, _, _ = _tuner("leaderboard", "e1", "--storage", str(storage))
    assert code == 2
    assert says in _one_error(err, "leaderboard")


@pytest.mark.slow
def test_a_tuner_json_of_the_wrong_types_is_one_error_line(tmp_path):
    """Finding 9: ``"resources": "x"`` in tuner.json was a traceback in ``list``; now the
    experiment is listed as unreadable, with the reason."""
    storage = tmp_path / "results"
    exp = _experiment(storage)
    record = {"name": "e1", "space_name": "s", "space_source": "s", "space": {},
              "data_dir": "/d", "storage": str(storage), "address": None, "resize": 32,
              "resources": "x"}  # fmt: skip
    (exp / "tuner.json").write_text(json.dumps(record))
    code, out, err, _, _ = _tuner("list", "--storage", str(storage), "--format", "json")
    assert code == 0, err
    assert json.loads(out)[0]["status"] == "unreadable"
    assert "tuner.json" in _one_error(err, "list")


def test_a_linked_folder_in_an_experiment_is_never_written_through(tmp_path):
    """A ``report`` folder linked elsewhere would have the report written there."""
    from tuner import Experiment

    exp = Experiment.from_folder(_experiment(tmp_path / "results"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "results" / "e1" / "report").symlink_to(elsewhere)
    from trainables import FileRefused

    with pytest.raises(FileRefused, match="is a link"):
        exp.write_bytes("report/report.md", b"# report")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_an_object_store_that_never_answers_ends_with_one_line(tmp_path):
    """Finding 5: ``--storage gs://...`` without a network was silent until killed."""
    code, _, err, seconds, _ = _tuner(
        "list", "--storage", "gs://flower-tune-unreachable/x", timeout=60,
        env={"TUNER_REACH_TIMEOUT_S": "3", "GCE_METADATA_HOST": "127.0.0.1:9",
             "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"},
    )  # fmt: skip
    assert code == 2
    assert "no answer" in _one_error(err, "list") or "storage" in _one_error(err, "list")
    assert seconds < 30


def test_what_ray_writes_into_an_experiment_never_goes_through_a_planted_link(tmp_path):
    """Ray writes trial results and checkpoints through the signing file system: a link
    planted at a file's name is replaced, a linked folder refused; the outside is intact."""
    from trainables import FileRefused
    from tuner import Experiment
    from tuner.storage._signing import signing_filesystem

    exp_dir = _experiment(tmp_path / "results")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "bashrc").write_text("the user's own file\n")
    result = exp_dir / "trial_abc_00000" / "result.json"
    result.unlink()
    result.symlink_to(outside / "bashrc")
    (exp_dir / "trial_planted").symlink_to(outside)
    fs = signing_filesystem(Experiment.from_folder(exp_dir))
    with fs.open_output_stream(str(result)) as f:
        f.write(b'{"epoch": 1}\n')
    assert not result.is_symlink() and result.read_bytes() == b'{"epoch": 1}\n'
    with pytest.raises(FileRefused, match="is a link"):
        fs.open_output_stream(str(exp_dir / "trial_planted" / "checkpoint.pt"))
    with pytest.raises(FileRefused, match="is a link"):
        fs.create_dir(str(exp_dir / "trial_planted" / "checkpoint_000001"), recursive=True)
    assert sorted(p.name for p in outside.iterdir()) == ["bashrc"]
    assert (outside / "bashrc").read_text() == "the user's own file\n"
