"""`refit` uses tuner.json (the cluster it joins, the resources it asks for) only if it is
signed for this experiment, as `resume` does, and never waits for ever on what it names."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from conftest import cli, experiment_at, free_port, run_tuner

from tuner import UsageError
from tuner.results._refit import refit
from tuner.storage._signing import write_signed

UNROUTABLE = "10.255.255.1:6379"


@pytest.fixture
def copy(finished, tmp_path):
    _, _, exp = finished
    dest = tmp_path / "r" / "e2e"
    shutil.copytree(exp, dest, ignore=shutil.ignore_patterns("refit"))
    return dest


def test_refit_refuses_a_tuner_json_changed_to_join_another_cluster(copy, capsys):
    """Finding 6: an address changed in tuner.json made refit try to join it (20 s of
    Ray warnings, then exit 2)."""
    record = json.loads((copy / "tuner.json").read_text())
    (copy / "tuner.json").write_text(json.dumps({**record, "address": UNROUTABLE}))
    t0 = time.monotonic()
    code, out, err = cli(capsys, "refit", "e2e", "--storage", str(copy.parent))
    assert code == 2 and time.monotonic() - t0 < 10, err
    assert "signature of your state key" in err and "--trust-state" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "Refit of trial" not in out  # refused before decoding or starting Ray


def test_export_refit_refuses_an_unsigned_tuner_json_naming_the_export_to_trust_it(
    copy, capsys, tmp_path
):
    """`export --refit` trains a missing refit with refit's checks, and its refusal names
    the export to run again with --trust-state."""
    record = json.loads((copy / "tuner.json").read_text())
    (copy / "tuner.json").write_text(json.dumps({**record, "address": UNROUTABLE}))
    out = tmp_path / "x"
    code, _, err = cli(capsys, "export", "e2e", "--storage", str(copy.parent), "--output",
                       str(out), "--refit")  # fmt: skip
    assert code == 2 and "signature of your state key" in err, err
    assert "export e2e" in err and "--refit --output DIR" in err and "--trust-state" in err
    assert not out.exists() and not (copy / "refit").exists()


def test_refit_trusting_the_state_gives_up_on_an_address_that_does_not_answer(copy):
    record = json.loads((copy / "tuner.json").read_text())
    (copy / "tuner.json").write_text(json.dumps({**record, "address": UNROUTABLE}))
    t0 = time.monotonic()
    # Unroutable: no answer within CONNECT_TIMEOUT_S. (Where a proxy accepts every
    # connection, the port answers and Ray's own connection attempt gives up instead.)
    with pytest.raises(UsageError, match=r"cannot (reach|connect to) the Ray cluster at 10\.255"):
        refit(experiment_at(copy), 1, say=lambda line: None, trust_state=True)
    assert time.monotonic() - t0 < 60
    # A port nobody listens on is refused at once, before Ray is tried.
    record["address"] = f"127.0.0.1:{free_port()}"
    (copy / "tuner.json").write_text(json.dumps(record))
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1"):
        refit(experiment_at(copy), 1, say=lambda line: None, trust_state=True)
    assert time.monotonic() - t0 < 5


def test_refit_refuses_resources_no_node_has_instead_of_waiting_for_ever(copy):
    """Finding 5: resources {"cpu": 1000} made refit wait for ever (autoscaler errors).
    Signed, as a record from a larger cluster is."""
    record = json.loads((copy / "tuner.json").read_text())
    record["resources"] = {"cpu": 1000.0, "gpu": 0.0}
    write_signed(experiment_at(copy), "tuner.json", json.dumps(record).encode())
    t0 = time.monotonic()
    proc = run_tuner("refit", "e2e", "--storage", str(copy.parent), timeout=180)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1000 CPU" in proc.stderr and "more than any node" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 120
