"""Hostile export folders (issue 29, finding 3 and predict's parts of 4, 5 and 9).

A real export (written by the export code path, from a randomly initialised
EfficientNet-Lite0 at 32 px: no search needed) is copied and one file of it
replaced by what an attacker with write access to a shared folder could plant.
``predict`` then runs as a user runs it, in a child process whose peak RSS is
measured (``ru_maxrss`` of the children of a small wrapper process): it must
end with exit 2 and one line (exit 1 and one error line for a bad photo), no
traceback, within a timeout, and within the bound ``tuner.results._bounds``
states: no more than 256 MiB over ``predict`` on the intact export, and under
1.5 GB in all.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT, Outcome, measured, run_cli
from PIL import Image

pytestmark = pytest.mark.slow  # each runs predict in its own process, measured

GB = 10**9
MIB = 2**20
PEAK_LIMIT = 1.5 * GB
OVER_INTACT = 256 * MIB
TIMEOUT = 120
MODEL = "efficientnet_lite0"
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def predict(folder: Path, *photos: Path, timeout: int = TIMEOUT) -> Outcome:
    """``python -m tuner predict FOLDER PHOTOS...`` in a child process, measured."""
    return measured("predict", str(folder), *map(str, photos), timeout=timeout)


def write_tiny_export(output: Path) -> Path:
    """A real export of a randomly initialised Lite0 at 32 px, written by ``export``'s own
    code path (state_dict, TorchScript, ONNX, torch.export program, labels, config)."""
    from trainables import build_model
    from tuner.results._export import MODEL_STATE, PREPROCESSING, _write_export
    from tuner.results._inference import Preprocessing

    torch.manual_seed(0)
    net = build_model(MODEL, len(CLASSES), pretrained=False, image_size=32).eval()
    prep = Preprocessing.for_model(MODEL, 32)
    config = {
        "model": MODEL,
        **prep.to_dict(),
        "preprocessing": PREPROCESSING,
        "num_classes": len(CLASSES),
    }
    _write_export(output, net, prep, CLASSES, config, {MODEL_STATE: net})
    return output


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_export(tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "photo.jpg"
    Image.effect_noise((64, 48), 40).convert("RGB").save(path)
    return path


@pytest.fixture(scope="module")
def intact_peak(export: Path, photo: Path) -> int:
    """Peak RSS of ``predict`` on the intact export (which must work)."""
    outcome = predict(export, photo)
    assert outcome.rc == 0, outcome
    assert "Traceback" not in outcome.err
    return outcome.peak


@pytest.fixture
def hostile(export: Path, tmp_path: Path) -> Path:
    """A copy of the export to tamper with (the large deployment files left out)."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    for name in ("model.pt", "labels.json", "config.json"):
        shutil.copy2(export / name, folder / name)
    return folder


def config_of(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def assert_held(outcome: Outcome, intact_peak: int, message: str, code: int = 2) -> None:
    """Exit ``code`` with one line saying ``message``, no traceback, in time, in bounds."""
    print(f"peak RSS {outcome.peak / MIB:.0f} MiB (intact export: {intact_peak / MIB:.0f} MiB)")
    assert outcome.rc is not None, f"still running after {TIMEOUT} s: {outcome}"
    assert outcome.rc == code, outcome
    assert "Traceback" not in outcome.err, outcome
    assert len(outcome.err.strip().splitlines()) == 1, outcome
    assert message in outcome.err, outcome
    assert outcome.peak < PEAK_LIMIT, outcome
    assert outcome.peak < intact_peak + OVER_INTACT, f"intact {intact_peak / MIB:.0f}: {outcome}"


def test_200k_labels_are_refused_before_the_head_is_built(hostile, photo, intact_peak):
    labels = [f"class{i}" for i in range(200_000)]
    (hostile / "labels.json").write_text(json.dumps(labels))
    config = config_of(hostile) | {"num_classes": len(labels)}
    (hostile / "config.json").write_text(json.dumps(config))
    assert_held(predict(hostile, photo), intact_peak, "200000 labels, over the 10000 allowed")


def test_60_members_on_one_state_file_are_refused(hostile, photo, intact_peak):
    member = {"model": MODEL, "state_dict": "model.pt", "weight": 1.0, "trial_id": "t"}
    config = config_of(hostile) | {"ensemble": {"members": [member] * 60}}
    (hostile / "config.json").write_text(json.dumps(config))
    assert_held(predict(hostile, photo), intact_peak, "60 members, over the 16 allowed")


@pytest.mark.parametrize("second", ["same path", "hard link"])
def test_two_members_on_one_state_file_are_refused(hostile, photo, intact_peak, second):
    other = "model.pt"
    if second == "hard link":
        (hostile / "members").mkdir()
        os.link(hostile / "model.pt", hostile / "members" / "model.pt")
        other = "members/model.pt"
    members = [
        {"model": MODEL, "state_dict": "model.pt", "weight": 1.0},
        {"model": MODEL, "state_dict": other, "weight": 1.0},
    ]
    config = config_of(hostile) | {"ensemble": {"members": members}}
    (hostile / "config.json").write_text(json.dumps(config))
    assert_held(predict(hostile, photo), intact_peak, "is the state of another member too")


def test_an_ensemble_of_distinct_member_files_still_predicts(hostile, photo):
    code, single, err = run_cli("predict", str(hostile), str(photo), "--json", "--top", "5")
    assert code == 0, err
    (hostile / "members").mkdir()
    shutil.copy2(hostile / "model.pt", hostile / "members" / "b.pt")
    members = [
        {"model": MODEL, "state_dict": "model.pt", "weight": 1.0},
        {"model": MODEL, "state_dict": "members/b.pt", "weight": 2},
    ]
    config = config_of(hostile) | {"ensemble": {"members": members}}
    (hostile / "config.json").write_text(json.dumps(config))
    code, out, err = run_cli("predict", str(hostile), str(photo), "--json", "--top", "5")
    assert code == 0, err
    mean = json.loads(out)["results"][0]["predictions"]
    alone = json.loads(single)["results"][0]["predictions"]
    assert [p["class"] for p in mean] == [p["class"] for p in alone]
    for a, b in zip(mean, alone, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def deflate_bomb(path: Path, key: str = "_fc.weight", numel: int = 1 << 27) -> None:
    """A ``torch.save`` zip re-written with deflate whose one tensor, ``key``, holds
    ``numel`` float32 zeros (512 MiB): a ~0.5 MB file. The pickle is torch's own for a
    12,345-element tensor, its size patched; the zeros are streamed, never held."""
    buffer = io.BytesIO()
    torch.save({key: torch.zeros(12_345)}, buffer)
    source = zipfile.ZipFile(buffer)
    small, big = b"M" + (12_345).to_bytes(2, "little"), b"J" + numel.to_bytes(4, "little")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                assert data.count(small) == 2  # the storage's size and the tensor's shape
                out.writestr(info.filename, data.replace(small, big))
            elif "/data/" in info.filename:
                with out.open(info.filename, "w", force_zip64=True) as f:
                    zeros = bytes(MIB)
                    for _ in range(numel * 4 // MIB):
                        f.write(zeros)
            else:
                out.writestr(info.filename, data)


def test_a_deflated_state_dict_bomb_is_refused_before_it_is_inflated(hostile, photo, intact_peak):
    deflate_bomb(hostile / "model.pt")
    assert (hostile / "model.pt").stat().st_size < 2 * MIB
    assert_held(predict(hostile, photo), intact_peak, "is compressed")


def test_a_state_dict_weights_only_rejects_is_one_line(hostile, photo, intact_peak):
    import argparse

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"_fc.weight": argparse.Namespace(payload=1)}, hostile / "model.pt")
    outcome = predict(hostile, photo)
    assert_held(outcome, intact_peak, "is not a plain state_dict torch loads safely")
    assert "UnpicklingError" in outcome.err


def test_a_fifo_state_dict_is_refused_at_once(hostile, photo, intact_peak):
    (hostile / "model.pt").unlink()
    os.mkfifo(hostile / "model.pt")
    assert_held(predict(hostile, photo, timeout=90), intact_peak, "is a FIFO")


@pytest.mark.parametrize("name", ["labels.json", "config.json"])
def test_deeply_nested_json_is_one_line(hostile, photo, intact_peak, name):
    (hostile / name).write_text("[" * 100_000 + "]" * 100_000)
    assert_held(predict(hostile, photo), intact_peak, f"{name} nests deeper than")


def test_a_fifo_photo_is_an_error_row_at_once(export, photo, tmp_path, intact_peak):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    outcome = predict(export, fifo, photo, timeout=90)
    assert_held(outcome, intact_peak, "fifo.jpg: error: not a regular file", code=1)
    assert str(photo) in outcome.out  # the other photo is still predicted


def test_a_sparse_giant_photo_is_an_error_row_unread(export, photo, tmp_path, intact_peak):
    giant = tmp_path / "giant.jpg"
    shutil.copy2(photo, giant)
    os.truncate(giant, int(1.5 * 2**30))
    outcome = predict(export, giant, photo)
    assert_held(outcome, intact_peak, "giant.jpg: error: larger than 268435456 bytes", code=1)
    assert str(photo) in outcome.out


def test_an_export_to_a_dangling_link_is_refused_before_it_runs(tmp_path):
    from tuner._errors import UsageError

    target = tmp_path / "elsewhere" / "planted"
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "out"
    link.symlink_to(target)
    with pytest.raises(UsageError, match="is a link"):
        write_tiny_export(link)
    assert link.is_symlink() and not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]  # no staging
    code, _, err = run_cli("export", "nope", "--output", str(link), "--storage", str(tmp_path))
    assert code == 2 and "is a link" in err and len(err.strip().splitlines()) == 1, err


def test_cli_export_to_a_dangling_link_exits_2_and_writes_nothing(finished, tmp_path):
    _, storage, _ = finished
    target = tmp_path / "planted"
    link = tmp_path / "out"
    link.symlink_to(target)
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "export", "e2e", "--storage", str(storage),
         "--output", str(link)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "is a link" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert link.is_symlink() and not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
