"""Signatures bound to their experiment and their order, and every read of them bounded.

A file signed for one experiment fails in another, copied with its digest or with
the whole signatures record; a folder rolled back to an earlier signed save is
refused on the machine that saw the later one; a record from before the binding,
a malformed one, deeply nested JSON or a FIFO where the record or a state file
should be is refused with one line, never a traceback or a hang."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from conftest import cli, experiment_at

from trainables import FileRefused
from tuner import Experiment, Storage, UsageError
from tuner.search._journal import journal_length
from tuner.storage import _signing as signing

RECORD = ".state-signatures"


def signed(folder: Path, name: str, files: dict[str, bytes]) -> Experiment:
    exp = Experiment(Storage.parse(str(folder)), name)
    for file, data in files.items():
        signing.write_signed(exp, file, data)
    return exp


def tuner_json(name: str, address: str) -> bytes:
    return json.dumps({"name": name, "address": address, "data_dir": f"/data/{name}"}).encode()


def one_line_refusal(capsys, folder: Path, name: str) -> str:
    code, out, err = cli(capsys, "resume", name, "--storage", str(folder))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "Resuming" not in out
    return err


def test_a_file_signed_for_another_experiment_fails_with_its_digest_or_its_whole_record(
    tmp_path, capsys
):
    """Finding 7: the victim's own signed tuner.json of experiment `a` (another address
    and data), copied into experiment `b` with its digest, passed `resume b`."""
    storage = tmp_path / "r"
    a = signed(storage, "a", {"tuner.json": tuner_json("a", "10.255.255.1:6379")})
    b = signed(storage, "b", {"tuner.json": tuner_json("b", "")})
    assert signing.unverified(a) == [] and signing.unverified(b) == []
    (storage / "b" / "tuner.json").write_bytes((storage / "a" / "tuner.json").read_bytes())
    assert signing.unverified(b) == ["tuner.json"]

    # Its digest copied into b's record too: the record's own MAC no longer matches.
    record_a = json.loads((storage / "a" / RECORD).read_text())
    record_b = json.loads((storage / "b" / RECORD).read_text())
    record_b["files"]["tuner.json"] = record_a["files"]["tuner.json"]
    (storage / "b" / RECORD).write_text(json.dumps(record_b))
    assert signing.unverified(b) == ["tuner.json"]
    assert "tuner.json is not signed with your state key" in one_line_refusal(capsys, storage, "b")

    # The whole record copied with it: it names experiment a.
    shutil.copy(storage / "a" / RECORD, storage / "b" / RECORD)
    assert signing.unverified(b) == ["tuner.json"]
    err = one_line_refusal(capsys, storage, "b")
    assert "--trust-state" in err and "copied from another experiment" in err

    # Two experiments of one name are two ids: files of one fail in the other.
    c = signed(tmp_path / "elsewhere", "a", {"tuner.json": tuner_json("a", "")})
    (tmp_path / "elsewhere" / "a" / "tuner.json").write_bytes(
        (storage / "a" / "tuner.json").read_bytes()
    )
    assert signing.unverified(c) == ["tuner.json"]
    folders = (storage / "a", tmp_path / "elsewhere" / "a")
    assert len({json.loads((f / RECORD).read_text())["experiment"] for f in folders}) == 2


def test_a_folder_rolled_back_to_an_earlier_signed_save_is_refused(tmp_path, environ, capsys):
    storage = tmp_path / "r"
    exp = signed(storage, "s", {"tuner.json": tuner_json("s", ""), "tuner.pkl": b"save 1"})
    old = tmp_path / "old"
    shutil.copytree(storage / "s", old)
    signing.write_signed(exp, "tuner.pkl", b"save 2")
    signing.check_signed(exp)  # the current save verifies
    shutil.rmtree(storage / "s")
    shutil.copytree(old, storage / "s")  # every file and the record, as they were
    assert signing.unverified(exp) == []  # each one was signed ...
    with pytest.raises(UsageError, match=r"rolled back to an earlier signed save"):
        signing.check_signed(exp)  # ... but in an older save than this machine wrote
    with pytest.raises(UsageError, match=r"rolled back"):
        signing.read_checked(exp, "tuner.json")
    err = one_line_refusal(capsys, storage, "s")
    assert "rolled back" in err and "--trust-state" in err

    # --trust-state and signing anew continue above the highest save seen.
    signing.write_signed(exp, "tuner.pkl", b"save 3")
    signing.check_signed(exp)

    # A machine that never saw the experiment (its key copied there) has no mark.
    key = signing.load_key()
    other = tmp_path / "other-machine"
    (other / "flower-tune").mkdir(parents=True)
    (other / "flower-tune" / "state.key").write_bytes(key)
    environ.set("XDG_CONFIG_HOME", str(other))
    shutil.rmtree(storage / "s")
    shutil.copytree(old, storage / "s")
    signing.check_signed(exp)


def test_a_record_from_before_the_binding_verifies_nothing(tmp_path, capsys):
    """Version 1 records held HMAC(key, name NUL bytes): no experiment id, no MAC."""
    storage = tmp_path / "r"
    folder = storage / "old"
    folder.mkdir(parents=True)
    data = tuner_json("old", "")
    (folder / "tuner.json").write_bytes(data)
    digest = hmac.new(signing.load_key(), b"tuner.json\0" + data, hashlib.sha256).hexdigest()
    (folder / RECORD).write_text(json.dumps({"version": 1, "files": {"tuner.json": [digest]}}))
    assert signing.unverified(experiment_at(folder)) == ["tuner.json"]
    assert "older than state signing" in one_line_refusal(capsys, storage, "old")


@pytest.mark.parametrize(
    "record",
    [
        b"[" * 100_000 + b"]" * 100_000,  # RecursionError before
        b'{"version": 2, "files": {"tuner.json": "x"}}',  # wrong types
        b'{"version": 2, "experiment": 7, "name": "s", "save": -1, "files": [], "journal": 1}',
        b"\xff\xfe not json",
        b"",
    ],
    ids=["deep", "types", "more-types", "binary", "empty"],
)
def test_a_malformed_record_is_no_signatures_not_a_traceback(tmp_path, capsys, record):
    storage = tmp_path / "r"
    exp = signed(storage, "s", {"tuner.json": tuner_json("s", "")})
    (storage / "s" / RECORD).write_bytes(record)
    assert signing.unverified(exp) == ["tuner.json"]
    assert signing.stored_record(exp) is None
    assert "is not signed with your state key" in one_line_refusal(capsys, storage, "s")
    signing.write_signed(exp, "tuner.json", tuner_json("s", ""))  # --trust-state re-signs
    assert signing.unverified(exp) == []


def _within(seconds: float, call) -> BaseException | None:
    """Run ``call`` in a thread; its exception (None if none). Fails if it hangs."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"{call} hung"
    return outcome[0]


@pytest.mark.parametrize("where", [RECORD, "tuner.pkl"])
def test_a_fifo_for_the_record_or_a_state_file_is_refused_at_once(tmp_path, capsys, where):
    """Finding 5: `resume` with `.state-signatures` a FIFO waited for ever."""
    storage = tmp_path / "r"
    exp = signed(storage, "s", {"tuner.json": tuner_json("s", ""), "tuner.pkl": b"state"})
    (storage / "s" / where).unlink()
    os.mkfifo(storage / "s" / where)
    error = _within(10, lambda: signing.check_signed(exp))
    assert isinstance(error, FileRefused) and "FIFO" in str(error), error
    # Ray's reads through the signing file system are refused as fast.
    fs = signing.signing_filesystem(exp)
    error = _within(10, lambda: fs.open_input_stream(exp.path("tuner.pkl")).read())
    assert isinstance(error, FileRefused), error
    code, _, err = _cli_within(capsys, storage)
    assert code == 2 and "FIFO" in err and len(err.strip().splitlines()) == 1, err


def _cli_within(capsys, storage: Path) -> tuple[int, str, str]:
    result: list[tuple[int, str, str]] = []
    error = _within(
        20, lambda: result.append(cli(capsys, "resume", "s", "--storage", str(storage)))
    )
    assert error is None, error
    return result[0]


def test_a_signed_state_keeps_the_journal_length_it_was_saved_with(tmp_path):
    exp = signed(tmp_path / "r", "s", {"tuner.json": tuner_json("s", "")})
    first, second = b'{"trial_data": [1]}', b'{"trial_data": [1, 2]}'
    signing.note_journal(first, 1234)
    signing.write_signed(exp, "experiment_state-2026-01-01_00-00-00.json", first)
    assert journal_length(exp) == 1234
    signing.note_journal(second, 2345)
    signing.write_signed(exp, "experiment_state-2026-01-01_00-00-00.json", second)
    assert journal_length(exp) == 2345
    # A newer session's list, saved without a note (as Ray copying it): no length known.
    signing.write_signed(exp, "experiment_state-2026-02-01_00-00-00.json", first + b" ")
    assert journal_length(exp) is None
    # A list changed after it was signed: its length is not used.
    (tmp_path / "r" / "s" / "experiment_state-2026-02-01_00-00-00.json").unlink()
    (tmp_path / "r" / "s" / "experiment_state-2026-01-01_00-00-00.json").write_bytes(first)
    assert journal_length(exp) == 1234  # an earlier signed version: its own length
    (tmp_path / "r" / "s" / "experiment_state-2026-01-01_00-00-00.json").write_bytes(b"{}")
    assert journal_length(exp) is None
