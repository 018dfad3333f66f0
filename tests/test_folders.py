"""Photo folders that could hang, exhaust or fool a scan: link loops, a link to /dev/zero,
a FIFO, a huge 16-bit PNG, a photo too large to decode, a folder link out of the root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli_search, make_subset
from PIL import Image

from trainables import decode_one

CHECK_WITH_PEAK_RSS = """
import json, resource, subprocess, sys
proc = subprocess.run([sys.executable, "-m", "tuner", "data", "check", *sys.argv[1:]],
                      capture_output=True, text=True, timeout=120)
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": proc.returncode, "out": proc.stdout, "err": proc.stderr,
                  "peak_mib": peak_kib / 1024}))
"""


@pytest.fixture(scope="module")
def hostile(flowers: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("hostile")
    root = make_subset(flowers, tmp / "photos", 4)
    (root / "daisy" / "up").symlink_to("..")  # one loop
    (root / "tulips" / "a").symlink_to("../tulips")  # two more, crossing each other
    (root / "tulips" / "b").symlink_to("../tulips/a")
    (root / "daisy" / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "roses" / "pipe.jpg")
    outside = tmp / "outside"
    outside.mkdir()
    Image.new("RGB", (20, 20)).save(outside / "far.jpg")
    (root / "dandelion" / "out").symlink_to(outside)
    # 157 KB on disk, 162 MB of 16-bit pixels once decoded: converted without float64.
    gradient = np.linspace(0, 65535, 9000, dtype=np.uint16)[None, :].repeat(9000, axis=0)
    Image.fromarray(gradient).save(root / "sunflowers" / "deep.png")
    # 324 MB decoded (RGBA): over the limit, skipped before its pixels are decoded.
    Image.new("RGBA", (9000, 9000)).save(root / "sunflowers" / "huge.png")
    return root


@pytest.mark.slow
def test_data_check_lists_every_bad_file_with_its_reason_in_seconds_and_little_memory(hostile):
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_WITH_PEAK_RSS, str(hostile), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=180,
    )
    seconds = time.monotonic() - t0
    run = json.loads(proc.stdout)
    assert run["code"] == 0, run["err"]
    report = json.loads(run["out"])
    # The loops added nothing: 4 photos a class, plus the 16-bit PNG.
    assert report["classes"] == {
        "daisy": 4,
        "dandelion": 4,
        "roses": 4,
        "sunflowers": 5,
        "tulips": 4,
    }
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons["daisy/zero.jpg"] == "not a regular file"
    assert reasons["roses/pipe.jpg"] == "not a regular file"
    assert reasons["dandelion/out"].startswith("link leaves the data folder")
    assert reasons["sunflowers/huge.png"].startswith("too large: 9000 x 9000 RGBA")
    assert len(reasons) == 4, reasons
    assert run["peak_mib"] < 500, run
    assert seconds < 60


def test_a_16_bit_photo_maps_onto_8_bits_without_a_float64_copy(hostile):
    array, reason, _ = decode_one(hostile / "sunflowers" / "deep.png", 64)
    assert reason is None and array is not None and array.shape == (3, 64, 64)
    row = array[0, 32]
    assert row[0] <= 8 and row[-1] >= 247 and (np.diff(row.astype(int)) >= 0).all()


@pytest.mark.slow
def test_a_search_on_the_folder_runs_on_its_usable_photos(hostile, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n  model: efficientnet_lite0\n  image_size: 32\n  freeze_depth: 4\n"
        "  lr: {loguniform: [1.0e-3, 1.0e-2]}\nbudget:\n  num_samples: 1\n  max_epochs: 1\n"
    )
    proc = cli_search(space, hostile, tmp_path / "r", "hostile", "--test-fraction", "0")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    split = json.loads((tmp_path / "r" / "hostile" / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 21
    assert {s["path"] for s in split["skipped"]} >= {"daisy/zero.jpg", "roses/pipe.jpg"}


def test_names_with_control_characters_or_bytes_that_are_not_utf8_print_on_one_line(tmp_path):
    root = tmp_path / "photos"
    for cls in ("plain", "red\x1b[31m\nfake line"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(root / cls / f"{i}.jpg")
    bad_name = os.path.join(os.fsencode(root / "plain"), b"caf\xe9.jpg")
    with open(bad_name, "wb") as f:
        f.write(b"not a photo")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    for extra in ([], ["--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "tuner", "data", "check", str(root), *extra],
            capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout and "fake line" in proc.stdout
        assert not any(line.startswith("fake line") for line in proc.stdout.splitlines())
        assert "caf\\udce9.jpg" in proc.stdout
    assert json.loads(proc.stdout)["skipped"][0]["path"] == "plain/caf\udce9.jpg"
