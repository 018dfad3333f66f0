"""One writer per experiment: two `search` (or `resume`) of one name, on a folder and on S3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, S3_BUCKET, cli_search, s3_uri, search_args

from tuner import Experiment, Storage
from tuner._errors import UsageError
from tuner.storage._experiment import GUARD_FILE, LOCK_FILE
from tuner.storage._lock import (
    OBSERVATIONS_FILE,
    STALE_S,
    Observations,
    Sighting,
    WriterLock,
    is_stale,
)

SPACE = (
    "params:\n  model: efficientnet_lite0\n  image_size: 32\n  freeze_depth: 4\n"
    "  lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
    "budget:\n  num_samples: 1\n  max_epochs: 1\n  grace_period: 1\n"
)


def search_command(space: Path, data: Path, storage: str, name: str) -> list[str]:
    args = search_args(space, data, storage, name, "--test-fraction", "0")
    return [sys.executable, "-m", "tuner", *args]


def race(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(c, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    return [
        subprocess.CompletedProcess(c, p.returncode, o, e)
        for c, p, (o, e) in zip(commands, procs, outs, strict=True)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["folder", "s3"])
def test_two_searches_of_one_name_started_together_one_runs(where, s3, small_flowers, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = str(tmp_path / "r") if where == "folder" else s3_uri(s3, f"{S3_BUCKET}/race")
    command = search_command(space, small_flowers, storage, "race")
    first, second = race([command, command], ROOT)
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], (first.stderr[-2000:], second.stderr[-2000:])
    loser = first if first.returncode == 2 else second
    lines = loser.stderr.strip().splitlines()
    assert len(lines) == 1 and "is being written by `tuner search" in lines[0], lines
    assert f"on {socket.gethostname()}" in lines[0] and "Traceback" not in loser.stderr
    exp = Experiment(Storage.parse(storage), "race")
    assert len(exp.trial_ids()) == 1 and exp.read_json(LOCK_FILE) is None  # released
    # A resume while another holds the experiment is refused the same way.
    holder = WriterLock(exp)
    holder.acquire()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tuner", "resume", "race", "--storage", storage],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.release()
    assert proc.returncode == 2 and "is being written by" in proc.stderr, proc.stderr[-2000:]


def plant(folder: Path, **fields: object) -> dict[str, object]:
    """A lock as another writer leaves it, written straight into ``folder``."""
    now = time.time()
    holder = {"token": "t0ken", "beats": 7, "host": "another-machine", "pid": 1,
              "command": "tuner x", "since": now, "beat": now} | fields  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps(holder))
    return holder


def held_by(folder: Path) -> str:
    return json.loads((folder / LOCK_FILE).read_text())["token"]


def attempt(exp: Experiment, seen: Path, at: float) -> WriterLock:
    """Take ``exp``'s lock as a command of this machine at time ``at`` (its clock)."""
    lock = WriterLock(exp, observations=Observations(seen), clock=lambda: at)
    lock.acquire()
    return lock


def after(at: float) -> str:
    return f"run again after {time.strftime('%H:%M:%S', time.localtime(at + STALE_S))}"


def test_a_lock_of_a_dead_process_on_this_host_or_not_written_by_the_tool_is_taken_over(
    tmp_path,
):
    exp = Experiment(Storage.parse(str(tmp_path)), "held")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    now = time.time()
    here = {"token": "t", "beats": 0, "host": socket.gethostname(), "since": now, "beat": now,
            "command": "tuner x"}  # fmt: skip
    elsewhere = here | {"host": "another-machine", "pid": 1}
    assert is_stale(here | {"pid": int(dead)})  # killed -9: taken over at once
    assert not is_stale(elsewhere)  # alive for all we know
    assert not is_stale(here | {"pid": 1})  # a live process of this host
    assert is_stale({"garbage": True}) and is_stale(elsewhere | {"beats": "7"}) and is_stale([])
    plant(tmp_path / "held", **elsewhere)
    with pytest.raises(UsageError, match=r"being written by `tuner x` \(process 1 on another"):
        attempt(exp, tmp_path / "seen.json", now)
    plant(tmp_path / "held", **(here | {"pid": int(dead)}))
    with WriterLock(exp, observations=Observations(tmp_path / "seen.json")) as lock:
        assert exp.read_json(LOCK_FILE)["token"] == lock.token
    assert not (tmp_path / "held").exists()  # nothing else was written: no trace left
    (tmp_path / "held").mkdir()
    (tmp_path / "held" / LOCK_FILE).write_text("{not json")
    with WriterLock(exp, observations=Observations(tmp_path / "seen.json")) as lock:
        assert held_by(tmp_path / "held") == lock.token


def test_staleness_compares_heartbeats_seen_on_this_machine_never_clocks():
    now = time.time()
    holder = {"token": "a", "beats": 3, "host": "another-machine", "pid": 1, "beat": now - 1e6}
    seen = Sighting("a", 3, seen=1000.0)
    assert not is_stale(holder)  # a heartbeat stamped long ago proves nothing by itself
    assert not is_stale(holder, seen, now=1000.0 + STALE_S - 1)
    assert is_stale(holder, seen, now=1000.0 + STALE_S)
    assert not is_stale(holder | {"beats": 4}, seen, now=1e9)  # it beat since: alive
    assert not is_stale(holder | {"token": "b"}, seen, now=1e9)  # another holder
    assert is_stale(holder | {"beat": now + 1e6}, seen, now=1000.0 + STALE_S)  # the future too
    older = {k: v for k, v in holder.items() if k != "beats"}  # an older version's lock:
    assert not is_stale(older, Sighting("a", older["beat"], 1000.0), now=1000.0 + STALE_S - 1)
    assert is_stale(older, Sighting("a", older["beat"], 1000.0), now=1000.0 + STALE_S)


def test_a_lock_of_another_host_with_a_130_s_old_heartbeat_is_not_taken_over_on_first_sight(
    tmp_path,
):
    exp = Experiment(Storage.parse(str(tmp_path)), "held")
    now = time.time()
    plant(tmp_path / "held", beat=now - 130)  # its clock 130 s behind, or it just stopped
    with pytest.raises(UsageError) as refused:
        attempt(exp, tmp_path / "seen.json", now)
    message = str(refused.value)
    assert "unchanged for 120 s as seen from this machine" in message and after(now) in message
    assert "\n" not in message and held_by(tmp_path / "held") == "t0ken"
    # A minute later, still unchanged: refused, with the same time to come back.
    with pytest.raises(UsageError, match=after(now)):
        attempt(exp, tmp_path / "seen.json", now + 60)
    assert held_by(tmp_path / "held") == "t0ken"
    # The holder was alive after all: it beat, so the wait starts again from this sighting.
    plant(tmp_path / "held", beat=now - 130, beats=8)
    with pytest.raises(UsageError, match=after(now + STALE_S + 1)):
        attempt(exp, tmp_path / "seen.json", now + STALE_S + 1)
    # Then silent for STALE_S by this machine's clock: taken over.
    lock = attempt(exp, tmp_path / "seen.json", now + 2 * STALE_S + 1)
    try:
        assert held_by(tmp_path / "held") == lock.token
    finally:
        lock.release()


def test_a_heartbeat_from_the_future_is_taken_over_after_the_same_wait(tmp_path):
    exp = Experiment(Storage.parse(str(tmp_path)), "held")
    now = time.time()
    plant(tmp_path / "held", beat=now + 10 * 365 * 86400, since=now + 10 * 365 * 86400)
    with pytest.raises(UsageError, match=after(now)):
        attempt(exp, tmp_path / "seen.json", now)
    with pytest.raises(UsageError, match=after(now)):
        attempt(exp, tmp_path / "seen.json", now + STALE_S - 1)
    lock = attempt(exp, tmp_path / "seen.json", now + STALE_S)
    try:
        assert held_by(tmp_path / "held") == lock.token
    finally:
        lock.release()


@pytest.mark.slow
def test_the_cli_says_when_a_silent_holder_may_be_taken_over_and_then_takes_it(tmp_path):
    """Two real `resume` commands: the first is refused and records its sighting in the
    user's config folder; one STALE_S later (its record aged by hand) takes the lock."""
    config = tmp_path / "config"
    env = {**os.environ, "XDG_CONFIG_HOME": str(config)}
    plant(tmp_path / "held", beat=time.time() + 86400)
    command = [sys.executable, "-m", "tuner", "resume", "held", "--storage", str(tmp_path)]
    first = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    lines = first.stderr.strip().splitlines()
    assert first.returncode == 2 and len(lines) == 1, first.stderr[-2000:]
    assert (
        "unchanged for 120 s as seen from this machine; if it has stopped, run again" in (lines[0])
    )
    seen_file = config / "flower-tune" / OBSERVATIONS_FILE
    seen = json.loads(seen_file.read_text())
    (key,) = seen
    assert seen[key]["token"] == "t0ken" and seen[key]["beats"] == 7
    seen[key]["seen"] -= STALE_S  # this machine saw it unchanged STALE_S ago
    seen_file.write_text(json.dumps(seen))
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert second.returncode == 2 and "being written" not in second.stderr  # the lock was won;
    assert "Traceback" not in second.stderr  # "held" is no experiment: resume ends there
    assert not (tmp_path / "held" / LOCK_FILE).exists()  # and released


def test_an_unreadable_record_of_sightings_is_replaced_never_written_through(tmp_path):
    exp = Experiment(Storage.parse(str(tmp_path)), "held")
    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    seen = tmp_path / "seen.json"
    seen.symlink_to(outside)
    now = time.time()
    plant(tmp_path / "held")
    with pytest.raises(UsageError, match=after(now)):
        attempt(exp, seen, now)
    assert outside.read_text() == "keep" and not seen.is_symlink()
    seen.write_text("[" * 10_000)  # not a record: this sighting starts the wait again
    with pytest.raises(UsageError, match=after(now + 5)):
        attempt(exp, seen, now + 5)
    assert json.loads(seen.read_text())[exp.display(LOCK_FILE)]["seen"] == now + 5


@pytest.mark.slow
def test_a_planted_guard_link_is_refused_and_nothing_is_created_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "r" / "held"
    folder.mkdir(parents=True)
    (folder / GUARD_FILE).symlink_to(outside / "made-by-the-lock")
    exp = Experiment(Storage.parse(str(tmp_path / "r")), "held")
    with pytest.raises(UsageError, match="is a link; not following it"):
        WriterLock(exp, observations=Observations(tmp_path / "seen.json")).acquire()
    assert list(outside.iterdir()) == [] and not (folder / LOCK_FILE).exists()
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "resume", "held", "--storage", str(tmp_path / "r")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "is a link; not following it" in proc.stderr and list(outside.iterdir()) == []


@pytest.mark.slow
def test_a_failed_search_leaves_no_folder_and_no_lock(small_flowers, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("image_size: 32", "image_size: 8"))
    proc = cli_search(space, small_flowers, tmp_path / "r", "bad")
    assert proc.returncode == 2
    assert not (tmp_path / "r" / "bad").exists()


def test_a_name_with_a_trailing_newline_is_refused(tmp_path):
    from tuner.storage._experiment import validate_name

    with pytest.raises(UsageError, match="invalid experiment name"):
        validate_name("ok\n")
    assert json.dumps(validate_name("ok.1-a_b")) == '"ok.1-a_b"'
