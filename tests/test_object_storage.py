"""Experiments on S3-compatible object storage: a real S3 server process (moto) on 127.0.0.1,
real searches, real kills; nothing of an experiment on the local disk."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    S3_BUCKET,
    S3_ENV,
    STATE_OF_STATUS,
    cli_search,
    read_board,
    run_cli,
    run_tuner,
    s3_uri,
    search_args,
    start_s3_server,
)

pytestmark = pytest.mark.slow

SPACE = """
params:
  model: efficientnet_lite0
  pretrained: true
  image_size: SIZE
  optimizer: adam
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  batch_size: 16
  freeze_depth: {randint: [2, 5]}
  aug_strength: 0.0
budget:
  num_samples: 3
  max_epochs: EPOCHS
  grace_period: 1
  reduction_factor: 2
  cpus_per_trial: 1
"""


def write_space(folder: Path, epochs: int, size: int = 32) -> Path:
    path = folder / "space.yaml"
    path.write_text(SPACE.replace("EPOCHS", str(epochs)).replace("SIZE", str(size)))
    return path


def experiment(uri: str, name: str):
    from tuner import Experiment, Storage

    return Experiment(Storage.parse(uri), name)


def board_of(exp) -> pd.DataFrame:
    return read_board(io.BytesIO(exp.storage.read_bytes(exp.rel("leaderboard.csv"))))


def assert_study_agrees(exp, board: pd.DataFrame) -> None:
    from tuner.search._study import load_study

    study = load_study(exp).trials
    # A trial Optuna made after the state a killed driver last saved: the resume marks it
    # FAIL and orphaned; it is no trial of the experiment.
    orphans = [t for t in study if t.user_attrs.get("orphaned")]
    assert all(t.state.name == "FAIL" for t in orphans)
    assert not {t.user_attrs.get("tune_trial_id") for t in orphans} & set(board["trial_id"])
    trials = {t.user_attrs["tune_trial_id"]: t for t in study if t not in orphans}
    assert set(trials) == set(board["trial_id"])
    for _, row in board.iterrows():
        assert trials[row["trial_id"]].state.name == STATE_OF_STATUS[row["status"]], row


@pytest.fixture(scope="module")
def s3_search(s3, small_flowers, tmp_path_factory):
    """One search with ``--storage s3://flowers/results``, run from an empty folder."""
    tmp = tmp_path_factory.mktemp("s3")
    space, cwd = write_space(tmp, epochs=2), tmp / "cwd"
    cwd.mkdir()
    uri = s3_uri(s3, f"{S3_BUCKET}/results")
    staged = set(ray_staging("remote"))
    proc = cli_search(space, small_flowers, uri, "remote", timeout=600, cwd=cwd)
    return proc, uri, experiment(uri, "remote"), cwd, set(ray_staging("remote")) - staged


def ray_staging(name: str) -> list[Path]:
    """Ray Tune's local staging folders of experiments called ``name`` (in its sessions)."""
    ray_tmp = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray"
    return list(ray_tmp.glob(f"session_*/artifacts/*/{name}"))


def test_a_search_on_s3_keeps_every_file_in_the_bucket_and_none_on_disk(s3_search):
    from tuner.search._journal import local_journal

    proc, uri, exp, cwd, staged_now = s3_search
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    files = set(exp.storage.list(exp.name, dirs=False))
    assert files >= {
        "tuner.json",
        "split.json",
        "optuna_journal.log",
        "leaderboard.csv",
        "leaderboard.parquet",
        "best_config.json",
        "test_scores.json",
    }
    assert any(f.startswith("experiment_state-") for f in files)
    board = board_of(exp)
    assert len(board) == 3 and board["trial_id"].is_unique
    for _, row in board.iterrows():
        assert row["checkpoint"].startswith(f"s3://{S3_BUCKET}/results/remote/trial_")
        rel = exp.storage.relative(row["checkpoint"])
        assert exp.storage.exists(f"{rel}/checkpoint.pt"), row["checkpoint"]
    assert exp.record().storage == uri
    assert list(cwd.iterdir()) == []  # nothing written where the search ran
    assert not local_journal(exp).exists()  # the driver's copy of the journal is gone
    assert not staged_now  # nor Ray's staging copy in its session folder
    secret = S3_ENV["AWS_SECRET_ACCESS_KEY"]
    for name in ("tuner.json", "leaderboard.csv", "best_config.json"):
        assert secret not in exp.storage.read_text(exp.rel(name))
    assert secret not in proc.stdout + proc.stderr


def test_reading_the_study_of_an_s3_experiment_leaves_no_download_behind(
    s3_search, tmp_path, monkeypatch
):
    """The journal a study of a bucket is read from is a download of this process's: it
    is removed with the study, not left in the temporary folder for good."""
    import gc

    from tuner.search._study import load_study

    _, _, exp, _, _ = s3_search
    downloads = tmp_path / "tmp"
    downloads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(downloads))
    study = load_study(exp)
    assert study.trials and any(downloads.iterdir())  # read from a download there
    del study
    gc.collect()
    assert not any(downloads.iterdir())


def test_every_command_reads_the_experiment_from_its_uri(s3_search, tmp_path, monkeypatch):
    """Run (in this process) from an empty folder: nothing is read from a local path."""
    import json

    proc, uri, exp, _, _ = s3_search
    assert proc.returncode == 0
    board = board_of(exp)
    monkeypatch.chdir(tmp_path)
    code, csv, err = run_cli("leaderboard", "remote", "--storage", uri, "--format", "csv")
    assert code == 0, err[-2000:]
    assert read_board(io.StringIO(csv))["trial_id"].tolist() == board["trial_id"].tolist()
    code, evaluated, err = run_cli("evaluate", "remote", "--storage", uri)
    assert code == 0, err[-2000:]
    metrics = json.loads(evaluated)
    assert metrics["accuracy"] == pytest.approx(board["test_acc"].iloc[0])
    assert metrics["checkpoint"] == board["checkpoint"].iloc[0]
    out = tmp_path / "model"
    code, _, err = run_cli("export", "remote", "--storage", uri, "--output", str(out))
    assert code == 0, err[-2000:]
    assert (out / "model.pt").is_file() and (out / "model.ts").is_file()
    code, report, err = run_cli("report", "remote", "--storage", uri)
    assert code == 0, err[-2000:]
    assert f"s3://{S3_BUCKET}/results/remote/report/report.md" in report
    assert "![" in exp.storage.read_text(exp.rel("report", "report.md"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing else written here
    assert_study_agrees(exp, board)


def test_kill_9_then_resume_from_a_fresh_folder_given_only_the_uri(s3, small_flowers, tmp_path):
    from tuner.search._journal import local_journal

    uri = s3_uri(s3, f"{S3_BUCKET}/killed")
    space, first, second = write_space(tmp_path, epochs=3, size=96), tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    exp = experiment(uri, "k9")
    args = search_args(space, small_flowers, uri, "k9")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner", *args],
        cwd=first,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # A trial whose results the driver saved, checkpoint included, then a kill.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            saved = [
                t
                for t in exp.trial_ids()
                if exp.reports(t) and exp.storage.list(exp.rel(f"trial_{t}"), "checkpoint_*")
            ]
            if saved and exp.has_state():
                break
            time.sleep(1)
        else:
            pytest.fail("no trial saved a checkpoint to the bucket")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Another machine: no copy of the journal here, another working folder.
    local = local_journal(exp)
    if local.exists():
        local.unlink()
    resumed = run_tuner("resume", "k9", "--storage", uri, timeout=600, cwd=second)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    board = board_of(exp)
    assert len(board) == 3 and board["trial_id"].is_unique
    assert board["status"].isin(list(STATE_OF_STATUS)).all(), board
    assert_study_agrees(exp, board)
    assert list(second.iterdir()) == [] and list(first.iterdir()) == []


@pytest.mark.parametrize(
    "case", ["no such bucket", "wrong credentials", "credentials in the uri", "resume"]
)
def test_unusable_object_storage_exits_2_before_ray_starts(case, s3, small_flowers, tmp_path):
    secret = "wR0ng-S3cret-Value"
    env: dict[str, str] = {}
    server = None
    uri = s3_uri(s3, "no-such-bucket/results")
    if case == "wrong credentials":
        # A second server that checks credentials: it knows no access key at all.
        server, endpoint = start_s3_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
        uri = s3_uri(endpoint, f"{S3_BUCKET}/results")
        env = {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN", "AWS_SECRET_ACCESS_KEY": secret}
    elif case == "credentials in the uri":
        uri = f"s3://AKIAUNKNOWN:{secret}@{S3_BUCKET}/results?endpoint_override={s3}&scheme=http"
    try:
        if case == "resume":
            proc = run_tuner("resume", "x", "--storage", uri, cwd=tmp_path)
        else:
            proc = cli_search("smoke", small_flowers, uri, "x", env=env, cwd=tmp_path)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and "Traceback" not in proc.stderr, proc.stderr
    expected = {
        "no such bucket": "does not exist",
        "wrong credentials": "access denied",
        "credentials in the uri": "must not carry credentials",
        "resume": "does not exist",
    }[case]
    assert expected in message[0]
    assert secret not in proc.stdout + proc.stderr
    assert "Split:" not in proc.stdout and "Ray" not in proc.stdout  # nothing decoded or started
    assert list(tmp_path.iterdir()) == []


def test_storage_reads_and_writes_the_same_way_on_a_folder_and_a_bucket(s3, tmp_path):
    from tuner import Storage

    for storage in (Storage.parse(str(tmp_path)), Storage.parse(s3_uri(s3, f"{S3_BUCKET}/unit"))):
        storage.check_writable()
        storage.write_text("e/a.json", "{}")
        storage.write_bytes("e/sub/b.bin", b"\x00\x01")
        assert storage.read_text("e/a.json") == "{}"
        assert storage.list("e") == ["a.json", "sub"]
        assert storage.list("e", dirs=True) == ["sub"] and storage.list("e", "*.json") == ["a.json"]
        assert storage.is_dir("e/sub") and not storage.exists("e/missing")
        with pytest.raises(FileNotFoundError):
            storage.read_text("e/missing")
        storage.delete("e")
        assert not storage.exists("e/a.json")
    assert Storage.parse(str(tmp_path)).display("x") == f"{tmp_path}/x"
    remote = Storage.parse(s3_uri(s3, f"{S3_BUCKET}/unit"))
    assert remote.display("x") == f"s3://{S3_BUCKET}/unit/x"
    assert remote.relative(remote.display("x/y")) == "x/y"


def test_guard_stops_a_search_whose_uploads_the_store_refuses(s3, tmp_path, monkeypatch):
    """A trial that failed with the store's refusal (the OSError pyarrow raises, as Ray
    writes it to the trial's error file) trips the guard; so does a probe it cannot write."""
    import types

    from tuner import Storage
    from tuner.search._guard import StorageGuard

    signals: list[int] = []
    monkeypatch.setattr("tuner.search._guard.signal.raise_signal", signals.append)
    gone = Storage.parse(s3_uri(s3, "no-such-bucket/results"))
    with pytest.raises(OSError) as refused:
        gone.fs.open_output_stream("no-such-bucket/results/x/checkpoint.pt").close()
    error_file = tmp_path / "error.txt"
    error_file.write_text(f"Failure # 1 (occurred at now)\n{refused.value!r}\n")
    exp = experiment(s3_uri(s3, f"{S3_BUCKET}/guarded"), "g")
    guard = StorageGuard(exp)
    guard.setup()
    guard.on_trial_error(0, [], types.SimpleNamespace(trial_id="t1", error_file=str(error_file)))
    reason = guard.tripped
    assert reason is not None and signals, reason
    assert "refused an upload (AWS Error NO_SUCH_BUCKET)" in reason
    assert f"s3://{S3_BUCKET}/guarded/g" in reason and "trial t1" in reason

    probe = StorageGuard(experiment(s3_uri(s3, "no-such-bucket/results"), "g"))
    probe._last_probe = 0.0  # due now
    problem = probe.problem()
    assert problem is not None and "does not exist" in problem
    writable = StorageGuard(exp)
    writable._last_probe = 0.0
    assert writable.problem() is None  # a writable bucket: nothing to say


def test_compare_reads_experiments_in_a_bucket(s3_search):
    import json

    _, uri, _, _, _ = s3_search
    code, listed, err = run_cli("list", "--storage", uri, "--format", "json")
    assert code == 0, err
    code, out, err = run_cli("compare", "remote", "--storage", uri, "--format", "json")
    assert code == 0, err
    (row,) = json.loads(out)
    (want,) = [r for r in json.loads(listed) if r["name"] == "remote"]
    assert row["best_val_acc"] == want["best_val_acc"] and row["trials"] == want["trials_ended"]
    assert "=" in row["top_1"]


def test_list_reads_experiments_in_a_bucket(s3_search):
    import json

    from test_listing import live_lock

    from tuner.storage._experiment import LOCK_FILE

    _, uri, exp, _, _ = s3_search
    code, out, err = run_cli("list", "--storage", uri, "--format", "json")
    assert code == 0, err
    (row,) = [r for r in json.loads(out) if r["name"] == "remote"]
    assert row["status"] == "finished" and row["trials_ended"] == row["trials_asked"]
    exp.write_json(LOCK_FILE, live_lock())
    try:
        code, out, _ = run_cli("list", "--storage", uri, "--format", "json")
        assert [r["status"] for r in json.loads(out) if r["name"] == "remote"] == ["running"]
    finally:
        exp.delete(LOCK_FILE)
