"""The decoded photos on disk: reuse, invalidation, interrupted decodes, sharing, disk space,
and photos read from a bucket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
from conftest import ROOT, S3_BUCKET, cli, cli_search, s3_uri
from PIL import Image

from trainables import (
    DataError,
    decode_files,
    decode_split,
    decode_to_disk,
    prepare_data,
    scan_folder,
)


def photos(root: Path, per_class: int = 6, size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size + i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "decoded").iterdir() if p.is_dir())


def test_the_decoded_photos_are_reused_and_a_changed_photo_is_noticed(tmp_path):
    root, cache = photos(tmp_path / "p"), tmp_path / "cache"
    files = [p for p, _ in scan_folder(root).files]
    first = decode_to_disk(root, files, 16, cache, quiet=True)
    assert not first.reused and not first.failed and first.pixels.path.is_file()
    # The rows are exactly what decoding each photo gives.
    expected, _, _ = decode_files([root / f for f in files], 16)
    assert np.array_equal(first.pixels.array(), expected)
    again = decode_to_disk(root, files, 16, cache, quiet=True)
    assert again.reused and again.key == first.key and len(entries(cache)) == 1
    # A subset (a resume's train + val, a refit's files) is served by the same entry.
    part = decode_to_disk(root, files[3:1:-1], 16, cache, quiet=True)
    assert part.reused and part.key == first.key and part.rows.tolist() == [3, 2]
    # A photo rewritten with other pixels: a new entry, decoded again.
    time.sleep(0.01)
    Image.new("RGB", (50, 50), (255, 0, 0)).save(root / files[0])
    changed = decode_to_disk(root, files, 16, cache, quiet=True)
    assert not changed.reused and changed.key != first.key
    assert (changed.pixels.array()[0, 0] == 255).all()
    assert len(entries(cache)) == 2
    # Another size is another entry.
    assert not decode_to_disk(root, files, 20, cache, quiet=True).reused


def test_unreadable_photos_are_skipped_with_their_reason_and_remembered(tmp_path):
    root, cache = photos(tmp_path / "p", per_class=3), tmp_path / "cache"
    (root / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    split, _ = prepare_data(scan_folder(root), 16, cache_dir=cache)
    assert [s.path for s in split.skipped] == ["a/broken.jpg"]
    files = [p for p, _ in scan_folder(root).files]
    decoded = decode_to_disk(root, files, 16, cache, quiet=True)
    assert decoded.reused and next(iter(decoded.failed.values())).startswith("not an image")


DECODE_SLOWLY = """
import sys, time
import trainables.data._photos as photos
real = photos.decode_bytes
def slow(data, size):
    time.sleep(0.05)
    return real(data, size)
photos.decode_bytes = slow
import trainables.data._source as source
source.decode_bytes = slow
from trainables import decode_to_disk, scan_folder
root, cache = sys.argv[1], sys.argv[2]
files = [p for p, _ in scan_folder(root).files]
decode_to_disk(root, files, 16, cache, workers=1, quiet=True)
"""


def test_an_interrupted_decode_is_never_taken_for_complete_and_is_redone(tmp_path):
    root, cache = photos(tmp_path / "p", per_class=40), tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", DECODE_SLOWLY, str(root), str(cache)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not list((cache / "decoded").glob("*.partial/pixels.u8")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # some rows written, most not
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not entries(cache) or all(p.suffix == ".partial" for p in entries(cache))
    files = [p for p, _ in scan_folder(root).files]
    redone = decode_to_disk(root, files, 16, cache, quiet=True)
    assert not redone.reused and not redone.failed
    expected, _, _ = decode_files([root / f for f in files], 16)
    assert np.array_equal(redone.pixels.array(), expected)
    assert [p.name for p in entries(cache)] == [redone.key]  # the leftovers are gone


MAP_AND_HOLD = """
import sys, time
from pathlib import Path
import torch
from trainables import TrialConfig, prepare_data, scan_folder
from trainables.train._batches import Rows
_, cache = prepare_data(scan_folder(sys.argv[1]), int(sys.argv[2]), seed=0)
rows = Rows(cache.pixels.array(), cache.train_rows)
total = sum(int(rows.gather(torch.arange(i, min(i + 64, len(rows)))).sum() > 0)
            for i in range(0, len(rows), 64))
print("ready", flush=True)
time.sleep(float(sys.argv[3]))
"""


def mapping_of(pid: int, name: str) -> dict[str, int]:
    """The smaps fields (kB) of the mapping of file ``name`` in process ``pid``."""
    fields: dict[str, int] = {}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if not head.endswith(":"):
            inside = line.rstrip().endswith(name)
        elif inside and line.split()[1].isdigit():
            fields[head[:-1]] = fields.get(head[:-1], 0) + int(line.split()[1])
    return fields


@pytest.mark.slow
def test_two_trial_processes_share_one_mapped_copy_of_the_photos(small_flowers, tmp_path):
    """Two processes gather every training row: each maps the file's pages (resident,
    shared, none private or anonymous), and the kernel splits them between the two."""
    size = 160
    env = {**os.environ, "TUNER_CACHE": str(tmp_path)}
    prepare_data(scan_folder(small_flowers), size, seed=0, cache_dir=tmp_path)  # decode once
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MAP_AND_HOLD, str(small_flowers), str(size), "20"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        maps = [mapping_of(proc.pid, "pixels.u8") for proc in procs]
        (entry,) = entries(tmp_path)
        file_kb = (entry / "pixels.u8").stat().st_size // 1024
        train_kb = file_kb * 0.7  # the training rows: ~80 % of the photos, less the test split
        for fields in maps:
            assert fields["Rss"] >= train_kb and fields["Anonymous"] == 0, fields
            assert fields["Private_Dirty"] == 0 and fields["Shared_Clean"] >= train_kb
        # One copy: each process is charged about half of the pages the two share.
        assert sum(f["Pss"] for f in maps) <= file_kb * 1.05
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB file system (tmpfs), unmounted afterwards."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.slow
def test_a_decode_that_does_not_fit_the_cache_disk_is_refused_before_it_starts(
    flowers, small_disk, tmp_path
):
    from conftest import make_subset

    data = make_subset(flowers, tmp_path / "photos", 60)  # 300 photos, ~49 MB at 256 px
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n  model: efficientnet_lite0\n  image_size: 224\n  freeze_depth: 0\n"
        "  lr: {loguniform: [1.0e-3, 1.0e-2]}\nbudget:\n  num_samples: 1\n  max_epochs: 1\n"
    )
    cache = small_disk / "cache"
    proc = cli_search(space, data, tmp_path / "r", "big", "--cache-dir", str(cache))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "300 photos decoded at 256 px (56.2 MiB)" in lines[0]
    assert str(cache) in lines[0] and "--cache-dir" in lines[0]
    assert not list(small_disk.rglob("pixels.u8"))  # nothing decoded
    assert not (tmp_path / "r" / "big").exists()


def test_resume_finds_a_photo_changed_since_the_search(tmp_path):
    root, cache = photos(tmp_path / "p"), tmp_path / "cache"
    split, _ = prepare_data(scan_folder(root), 16, val_fraction=0.3, cache_dir=cache)
    assert decode_split(split, 16, cache_dir=cache).train_x.shape[0] == len(split.train)
    (root / split.train[0][0]).write_bytes(b"broken now")
    with pytest.raises(DataError, match="can no longer be decoded"):
        decode_split(split, 16, cache_dir=cache)


def upload(fs: pafs.FileSystem, local: Path, prefix: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            with fs.open_output_stream(f"{prefix}/{path.relative_to(local).as_posix()}") as out:
                out.write(path.resolve().read_bytes())


@pytest.mark.slow
def test_a_search_reads_its_photos_from_a_bucket(s3, small_flowers, tmp_path, capsys):
    uri = s3_uri(s3, f"{S3_BUCKET}/photos-data")
    fs, prefix = pafs.FileSystem.from_uri(uri)
    upload(fs, small_flowers, prefix)
    with fs.open_output_stream(f"{prefix}/daisy/notes.txt") as out:
        out.write(b"not a photo")
    code, out, err = cli(capsys, "data", "check", uri, "--json")
    assert code == 0, err
    checked = json.loads(out)
    assert checked["usable"] == 60 and checked["root"] == f"s3://{S3_BUCKET}/photos-data"
    assert checked["skipped"] == [
        {"path": "daisy/notes.txt", "reason": "not an image file extension"}
    ]
    space = tmp_path / "space.yaml"
    space.write_text(
        "params:\n  model: efficientnet_lite0\n  image_size: 32\n  freeze_depth: 4\n"
        "  lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
        "budget:\n  num_samples: 2\n  max_epochs: 1\n"
    )
    proc = cli_search(space, uri, tmp_path / "r", "from-bucket", timeout=600)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Decoded 60 photos at 37px" in proc.stdout
    split = json.loads((tmp_path / "r" / "from-bucket" / "split.json").read_text())
    assert split["root"] == uri and len(split["test"]) == 10  # 2 of each class's 12
    # The end-of-search test scoring read the test photos from the bucket too.
    assert "Test split (photos no trial saw)" in proc.stdout
    code, out, err = cli(capsys, "evaluate", "from-bucket", "--storage", str(tmp_path / "r"))
    assert code == 0 and json.loads(out)["n_images"] == 10, err
    shutil.rmtree(tmp_path / "r")
