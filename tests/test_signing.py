"""`resume` loads only state signed with this user's key: a planted pickle is refused (exit 2)
and never run, `--trust-state` loads it anyway, and a driver killed at any step of a signed
write leaves state that resumes unattended."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import threading
from pathlib import Path

import pytest
from conftest import S3_BUCKET, cli, experiment_at, read_board, run_tuner, s3_uri
from test_resume import killed_with_a_saved_checkpoint
from test_trust import Payload, plant

from tuner import Experiment, Storage, UsageError
from tuner.results._listing import is_finished
from tuner.storage import _record
from tuner.storage import _signing as signing


def test_the_key_is_made_once_0600_in_the_config_folder(environ, tmp_path):
    environ.set("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    key = signing.load_key()
    path = tmp_path / "cfg" / "flower-tune" / "state.key"
    assert signing.key_path() == path and path.read_bytes() == key and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["state.key"]  # no temporary left
    assert _record._read_or_create(path) == key  # found, not made again


def test_a_write_killed_at_any_step_leaves_state_that_verifies(environ, tmp_path, monkeypatch):
    environ.set("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    exp = Experiment(Storage.parse(str(tmp_path / "r")), "x")
    signing.write_signed(exp, "tuner.pkl", b"v1")
    real = signing.write_whole
    for steps in (0, 1):  # killed before the signature is written, then before the file
        done: list[str] = []

        def dies(fs, path, data, steps=steps, done=done):
            if len(done) == steps:
                raise KeyboardInterrupt("killed")
            done.append(path)
            real(fs, path, data)

        monkeypatch.setattr(signing, "write_whole", dies)
        with pytest.raises(KeyboardInterrupt):
            signing.write_signed(exp, "tuner.pkl", b"v2")
        monkeypatch.setattr(signing, "write_whole", real)
        assert (tmp_path / "r" / "x" / "tuner.pkl").read_bytes() == b"v1"
        assert signing.unverified(exp) == []
    for version in (b"v2", b"v3", b"v4", b"v5"):  # the last KEEP versions stay valid
        signing.write_signed(exp, "tuner.pkl", version)
        assert signing.unverified(exp) == []
    names = sorted(p.name for p in (tmp_path / "r" / "x").iterdir())
    assert names == [".state-signatures", "tuner.pkl"]  # no temporary file left
    (tmp_path / "r" / "x" / "tuner.pkl").write_bytes(b"v2")  # too old: rewritten by someone
    (tmp_path / "r" / "x" / "searcher-state-1.pkl").write_bytes(b"never signed")
    (tmp_path / "r" / "x" / "split.json").write_bytes(b"{}")  # not signed, not checked
    assert sorted(signing.unverified(exp)) == ["searcher-state-1.pkl", "tuner.pkl"]
    with pytest.raises(
        UsageError, match=r"searcher-state-1\.pkl, tuner\.pkl are not signed with your state key"
    ):
        signing.check_signed(exp)


def test_an_unsigned_tuner_json_is_refused_before_anything_is_read(tmp_path, capsys):
    """tuner.json names the Ray cluster a resume joins (a cluster runs code on its
    drivers) and the photos: someone else's is not followed."""
    folder = tmp_path / "r" / "early"
    folder.mkdir(parents=True)
    (folder / "tuner.json").write_text(json.dumps({"address": "elsewhere:6379"}))
    code, _, err = cli(capsys, "resume", "early", "--storage", str(tmp_path / "r"))
    assert code == 2 and "tuner.json is not signed with your state key" in err, err
    assert err.strip().endswith("--trust-state")


def test_trial_workers_write_through_it_without_the_key(tmp_path):
    exp = Experiment(Storage.parse(str(tmp_path / "r")), "x")
    fs = signing.signing_filesystem(exp)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    fs.handler.key_file = str(blocker / "state.key")  # as on a worker: no key there
    shipped = pickle.loads(pickle.dumps(fs))
    assert shipped.handler.key_file == fs.handler.key_file and "_key" not in vars(shipped.handler)
    shipped.create_dir(exp.path("trial_1", "checkpoint_000000"))
    with shipped.open_output_stream(exp.path("trial_1", "checkpoint_000000", "a.pkl")) as f:
        f.write(b"weights")
    assert (tmp_path / "r" / "x" / "trial_1" / "checkpoint_000000" / "a.pkl").exists()
    stream = shipped.open_output_stream(exp.path("tuner.pkl"))
    stream.write(b"state")
    with pytest.raises(UsageError, match="state key"):  # a state file needs the key
        stream.close()


def test_only_a_module_or_class_of_the_pickled_state_counts_as_another_version(tmp_path):
    from tuner.search._run import _saved_by_this_version

    exp = Experiment(Storage.parse(str(tmp_path)), "e")
    for missing in (
        ModuleNotFoundError("No module named 'tuner.search._gone'", name="tuner.search._gone"),
        AttributeError("Can't get attribute 'Gone' on <module 'tuner.search._guard'>"),
    ):
        with pytest.raises(UsageError, match="written by another version"), \
                _saved_by_this_version(exp):  # fmt: skip
            raise missing
    for other in (
        ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib"),
        AttributeError("'NoneType' object has no attribute 'fit'"),
    ):
        with pytest.raises(type(other)) as raised, _saved_by_this_version(exp):
            raise other
        assert raised.value is other


@pytest.mark.slow
def test_many_signed_files_upload_to_an_object_store_with_threads(s3, tmp_path):
    """Ray uploads its staging folder with ``copy_files(use_threads=True)`` when the file
    system is not an ``S3FileSystem`` (ours wraps one): each signed file is written while
    an IO thread waits, which hung with S3's background writes (8 IO threads)."""
    import pyarrow.fs as pafs

    exp = Experiment(Storage.parse(s3_uri(s3, f"{S3_BUCKET}/threads")), "x")
    staging = tmp_path / "staging"
    for i in range(12):
        (staging / f"trial_{i}").mkdir(parents=True)
        (staging / f"trial_{i}" / "result.json").write_text("{}")
        (staging / f"experiment_state-{i}.json").write_text("{}")
        (staging / f"searcher-state-{i}.pkl").write_bytes(os.urandom(100))
    fs = signing.signing_filesystem(exp)
    copy = threading.Thread(
        target=pafs.copy_files,
        args=(str(staging), exp.path()),
        kwargs={"destination_filesystem": fs, "use_threads": True},
        daemon=True,
    )
    copy.start()
    copy.join(120)
    assert not copy.is_alive(), "the upload hung"
    assert len([n for n in exp.storage.list(exp.name) if signing.is_signed(n)]) == 24
    assert signing.unverified(exp) == []


@pytest.mark.slow
def test_resume_runs_no_planted_pickle_unless_told_to_trust_the_state(
    small_flowers, tmp_path, capsys
):
    """A search killed -9 after a checkpoint; copies of it with a payload (it creates a
    marker file when unpickled) in tuner.pkl, in the searcher's pickle and in the experiment
    state are refused before anything is loaded; --trust-state loads one (the marker
    appears); a copy without signatures (from before signing) resumes to the end with
    --trust-state, which signs it. (A signed state resumes unattended in every kill -9
    test of tests/test_resume.py and tests/test_object_storage.py.)"""
    # 10 epochs a trial, 20 in all: the search is still running when its first checkpoint
    # is saved (9 epochs of 32 px photos once all ended before a state with one was saved).
    storage = tmp_path / "r"
    exp = killed_with_a_saved_checkpoint(small_flowers, storage, "sig")
    assert not is_finished(experiment_at(exp)), "the search ended before it was killed"

    def payload(marker: Path) -> bytes:
        return pickle.dumps(Payload(marker))

    def in_tuner_pkl(folder: Path, marker: Path) -> str:
        (folder / "tuner.pkl").write_bytes(payload(marker))
        return "tuner.pkl"

    def in_the_searcher(folder: Path, marker: Path) -> str:
        searcher = sorted(folder.glob("searcher-state-*.pkl"))[-1]
        searcher.write_bytes(payload(marker))
        return searcher.name

    def in_the_experiment_state(folder: Path, marker: Path) -> str:
        plant(folder, marker)
        return sorted(folder.glob("experiment_state-*.json"))[-1].name

    for tamper in (in_tuner_pkl, in_the_searcher, in_the_experiment_state):
        copy, marker = tmp_path / tamper.__name__ / "sig", tmp_path / f"{tamper.__name__}.marker"
        shutil.copytree(exp, copy)
        file = tamper(copy, marker)
        code, out, err = cli(capsys, "resume", "sig", "--storage", str(copy.parent))
        assert code == 2, out[-2000:] + err[-2000:]
        assert file in err and "--trust-state" in err and "state key" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not marker.exists(), tamper.__name__
        assert "Resuming" not in out  # refused before decoding or starting Ray

    # Signed, but saved by a version whose modules this one does not have (Ray pickles
    # the search's callbacks by module and name): one line saying so, no traceback.
    other = tmp_path / "other_version" / "sig"
    shutil.copytree(exp, other)
    saved = (other / "tuner.pkl").read_bytes()
    assert b"tuner.search._guard" in saved
    renamed = saved.replace(b"tuner.search._guard", b"tuner.search._gone_")  # same length
    signing.write_signed(experiment_at(other), "tuner.pkl", renamed)
    moved = run_tuner("resume", "sig", "--storage", str(other.parent), timeout=400)
    assert moved.returncode == 2, moved.stdout[-2000:] + moved.stderr[-3000:]
    assert "written by another version of this tool" in moved.stderr, moved.stderr[-3000:]
    assert "tuner.search._gone_" in moved.stderr and "Traceback" not in moved.stderr

    trusted = run_tuner(
        "resume", "sig", "--storage", str(tmp_path / "in_tuner_pkl"), "--trust-state", timeout=400
    )
    detail = f"exit {trusted.returncode}\n{trusted.stdout[-2000:]}\n{trusted.stderr[-3000:]}"
    assert (tmp_path / "in_tuner_pkl.marker").exists(), detail  # it loads

    # An experiment from before signing (no signatures) is refused, then loaded once with
    # --trust-state; the search signs its state as it saves it.
    legacy = tmp_path / "legacy" / "sig"
    shutil.copytree(exp, legacy)
    (legacy / ".state-signatures").unlink()
    code, _, err = cli(capsys, "resume", "sig", "--storage", str(legacy.parent))
    assert code == 2 and "older than state signing" in err, err

    # The killed driver's lock is taken over and its state, signed as it is saved again,
    # resumes to the end.
    resumed = run_tuner("resume", "sig", "--storage", str(legacy.parent), "--trust-state",
                        timeout=400)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    # Every trial the search asked for ended (a trial folder the killed driver made
    # after its last saved state is no trial of the experiment).
    board = read_board(legacy / "leaderboard.csv")
    assert len(board) == 2 and not board["status"].isin(["running", "pending"]).any()
    assert signing.unverified(experiment_at(legacy)) == []
