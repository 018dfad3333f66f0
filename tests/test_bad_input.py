"""Every bad input the service handles, generated here at test time.

Each gets a clear message and the right exit code; good files around bad ones
are still used; nothing reaches Ray when the input is unusable.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, cli, cli_search, make_subset, read_board, run_tuner, search_args
from PIL import Image

from trainables import CheckpointError, decode_one, load_photo, load_state, scan_folder, screen


def smoke_search(data: Path, storage: Path, *extra: str) -> list[str]:
    """The arguments of a `search --space smoke` over ``data`` into ``storage``."""
    return search_args("smoke", data, storage, None, *extra)


def photo(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {
        "RGB": (200, 40, 40),
        "RGBA": (10, 200, 10, 128),
        "L": 90,
        "LA": (90, 200),
        "CMYK": (0, 200, 200, 0),
        "P": 3,
        "I;16": 40000,
    }[mode]
    Image.new(mode, size, colour).save(path, **save)
    return path


def salt(root: Path, real_jpg: Path) -> tuple[set[str], set[str]]:
    """Add one of each bad file and one of each unusual-but-valid image to ``root``.

    Returns (relative paths that must be skipped, relative paths that must be used).
    """
    bad = {
        "daisy/notes.txt": lambda p: p.write_text("not a photo"),
        "daisy/.DS_Store": lambda p: p.write_bytes(b"\x00\x01"),
        "daisy/.hidden.jpg": lambda p: shutil.copy(real_jpg, p),
        "daisy/empty.jpg": lambda p: p.write_bytes(b""),
        "daisy/truncated.jpg": lambda p: p.write_bytes(real_jpg.read_bytes()[:2000]),
        "daisy/text.jpg": lambda p: p.write_text("this is text, not a JPEG"),
        "daisy/broken_link.jpg": lambda p: p.symlink_to(root / "nowhere.jpg"),
        "roses/bomb.png": lambda p: Image.new("1", (9500, 9500)).save(p),
    }
    for rel, make in bad.items():
        make(root / rel)
    good = {
        "daisy/grey.jpg": lambda p: photo(p, "L"),
        "daisy/alpha.png": lambda p: photo(p, "RGBA"),
        "daisy/grey_alpha.png": lambda p: photo(p, "LA"),
        "daisy/palette.png": lambda p: photo(p, "P", transparency=0),
        "daisy/cmyk.jpg": lambda p: photo(p, "CMYK"),
        "daisy/deep.png": lambda p: photo(p, "I;16"),
        "daisy/tiny.jpg": lambda p: photo(p, size=(8, 8)),
        "daisy/UPPER.JPG": lambda p: photo(p),
        "roses/other.jpeg": lambda p: photo(p),
        "roses/lossless.webp": lambda p: photo(p),
        "roses/bitmap.bmp": lambda p: photo(p),
        "roses/nested/deeper/photo.png": lambda p: photo(p),
        "roses/copy_of_daisy.jpg": lambda p: shutil.copy(real_jpg, p),
    }
    for rel, make in good.items():
        make(root / rel)
    return set(bad), set(good)


@pytest.fixture
def salted(flowers: Path, tmp_path: Path) -> tuple[Path, set[str], set[str]]:
    root = make_subset(flowers, tmp_path / "salted", per_class=8)
    real = sorted((flowers / "daisy").glob("*.jpg"))[100]  # not in the subset
    shutil.copy(real, root / "daisy" / "original.jpg")
    bad, good = salt(root, root / "daisy" / "original.jpg")
    return root, bad, good


def test_data_check_lists_every_skipped_file_with_its_reason(salted, capsys):
    root, bad, good = salted
    code, out, _ = cli(capsys, "data", "check", str(root), "--json")
    assert code == 0
    report = json.loads(out)
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == bad
    assert skipped["daisy/empty.jpg"] == "empty file (0 bytes)"
    assert skipped["daisy/broken_link.jpg"] == "broken symbolic link"
    assert "truncated" in skipped["daisy/truncated.jpg"]
    assert "not an image" in skipped["daisy/text.jpg"]
    assert "decompression-bomb" in skipped["roses/bomb.png"]
    assert skipped["daisy/notes.txt"] == "not an image file extension"
    assert skipped["daisy/.DS_Store"] == "hidden file"
    assert report["classes"]["daisy"] == 8 + 1 + sum(g.startswith("daisy/") for g in good)
    assert ["daisy/original.jpg", "roses/copy_of_daisy.jpg"] in report["ambiguous"]
    assert report["problem"] is None
    code, text, _ = cli(capsys, "data", "check", str(root))
    assert "daisy/truncated.jpg: corrupt or truncated" in text
    assert "ambiguous label" in text and "roses/copy_of_daisy.jpg" in text


# Bad hyperparameters too: two learning rates that make the loss non-finite.
SALTED_SPACE = (
    "params:\n  model: efficientnet_lite0\n  image_size: 32\n  optimizer: sgd\n"
    "  freeze_depth: 3\n  aug_strength: 0.0\n  lr: {loguniform: [1.0e-3, 1.0e+31]}\n"
    "budget:\n  num_samples: 3\n  max_epochs: 2\n  grace_period: 2\n"
    "points_to_evaluate:\n  - {lr: 1.0e+30}\n  - {lr: 1.0e-2}\n  - {lr: 1.0e+20}\n"
)


@pytest.mark.slow
def test_a_salted_search_with_diverging_trials_completes_and_skips_exactly_the_bad_files(
    salted, tmp_path
):
    root, bad, good = salted
    space = tmp_path / "salted.yaml"
    space.write_text(SALTED_SPACE)
    proc = cli_search(space, root, tmp_path / "r", "salted")
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = tmp_path / "r" / "salted"
    split = json.loads((exp / "split.json").read_text())
    used = {p for p, _ in split["train"] + split["val"] + split["test"]}
    assert {s["path"] for s in split["skipped"]} == bad
    assert good <= used and not (bad & used)
    assert len(used) == 5 * 8 + 1 + len(good)
    # The first five skipped files with their reasons, then where to see every one.
    assert "Skipped 8 file(s)" in proc.stdout and "... and 3 more (tuner data check" in proc.stdout
    assert sum(f"  {path}: " in proc.stdout for path in bad) == 5, proc.stdout
    # A non-finite loss ends its trial as diverged; the search goes on and ranks it last.
    board = read_board(exp / "leaderboard.csv")
    assert list(board["status"]) == ["completed", "diverged", "diverged"]
    assert board.loc[0, "lr"] == pytest.approx(1e-2)


def test_unusual_images_decode_to_rgb_with_exif_orientation(tmp_path):
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_photo(tmp_path / "rotated.jpg").size == (20, 40)
    for mode in ("L", "LA", "RGBA", "CMYK", "P", "I;16"):
        path = photo(
            tmp_path / f"{mode.replace(';', '')}.png" if mode != "CMYK" else tmp_path / "cmyk.jpg",
            mode,
        )
        array, reason, _ = decode_one(path, 16)
        assert reason is None and array is not None and array.shape == (3, 16, 16), mode
    deep, _, _ = decode_one(tmp_path / "I16.png", 16)
    # 16-bit values are scaled to 8 bits (40000 -> 156), not clipped to white.
    assert deep is not None and int(np.median(deep)) == round(40000 * 255 / 65535)
    transparent, _, _ = decode_one(tmp_path / "RGBA.png", 16)
    assert transparent is not None and int(transparent[0].mean()) > 100  # composited on white


def test_unreadable_permissions_are_skipped(tmp_path):
    path = photo(tmp_path / "locked.jpg")
    path.chmod(0)
    if os.geteuid() != 0:
        assert decode_one(path, 16)[1] == "permission denied"
        return
    # Root reads anything: check in a child without the file-permission override.
    drop = "-dac_override,-dac_read_search"
    code = f"from trainables import decode_one; print(decode_one({str(path)!r}, 16)[1])"
    command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", sys.executable]
    proc = subprocess.run(
        [*command, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.stdout.strip() == "permission denied", proc.stderr[-2000:]


def two_classes(root: Path, per_class: dict[str, int]) -> Path:
    for name, n in per_class.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            photo(root / name / f"{i}.jpg")
    return root


def a_file(tmp: Path) -> Path:
    (tmp / "file.jpg").write_text("x")
    return tmp / "file.jpg"


def an_empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


UNUSABLE_FOLDERS = {
    "missing": (lambda p: p / "missing", "does not exist"),
    "a file": (a_file, "is a file, not a folder"),
    "empty": (an_empty_folder, "has no class folders"),
    "no class folders": (lambda p: photo(p / "flat" / "a.jpg").parent, "has no class folders"),
    "one class": (lambda p: two_classes(p / "one", {"only": 5}), "1 class(es) with usable"),
    "empty class": (lambda p: two_classes(p / "e", {"a": 4, "b": 0}), "1 class(es) with usable"),
    "short class": (lambda p: two_classes(p / "s", {"a": 4, "b": 1}), "fewer than 2 usable"),
}


@pytest.mark.parametrize(("make", "message"), UNUSABLE_FOLDERS.values(), ids=UNUSABLE_FOLDERS)
def test_unusable_folders_exit_2_before_ray(tmp_path, capsys, make, message):
    folder = make(tmp_path)
    code, _, err = cli(capsys, "data", "check", str(folder))
    assert code == 2 and message in err
    code, _, err = cli(
        capsys,
        "search",
        "--space",
        "smoke",
        "--data",
        str(folder),
        "--storage",
        str(tmp_path / "r"),
        "--name",
        "x",
    )
    assert code == 2 and message in err
    assert not (tmp_path / "r" / "x").exists()


def test_class_folder_with_only_broken_files_is_named(tmp_path, capsys):
    root = two_classes(tmp_path / "d", {"good": 4, "bad": 0})
    (root / "bad" / "a.jpg").write_text("nope")
    (root / "bad" / "b.jpg").write_bytes(b"")
    code, _, err = cli(capsys, "data", "check", str(root))
    assert code == 2 and "1 class(es) with usable photos" in err and "bad: 0" in err


def test_class_names_with_spaces_and_non_ascii(tmp_path):
    root = two_classes(tmp_path / "d", {"wild rose": 3, "pâquerette": 3})
    usable, decoded = screen(scan_folder(root), 16)
    assert usable.classes == ["pâquerette", "wild rose"] and len(usable.files) == 6
    assert decoded.pixels.array().shape == (6, 3, 16, 16)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-samples", "0"], "must be >= 1"),
        (["--max-epochs", "0"], "must be >= 1"),
        (["--cpus-per-trial", "64"], "exceeds the"),
        (["--gpus-per-trial", "2.5"], "whole number"),
        (["--gpus-per-trial", "1"], "exceeds the 0 GPUs"),
        (["--name", "a/b"], "invalid experiment name"),
        (["--name", ".."], "invalid experiment name"),
        (["--storage", "foo://bucket/results"], "Unrecognized filesystem type in URI: foo://"),
    ],
)
def test_bad_command_lines_exit_2_with_one_message(small_flowers, tmp_path, capsys, args, message):
    code, _, err = cli(capsys, *smoke_search(small_flowers, tmp_path / "r", *args))
    assert code == 2 and message in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("tuner search: error:")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.parametrize(
    ("args", "usage", "hint"),
    [
        (["search", "--space", "smoke", "--epochs", "1"], "tuner search", "--max-epochs"),
        (["export", "x", "--output", "o", "--rnk", "2"], "tuner export", "--rank"),
        (["data", "check", "d", "--jsn"], "tuner data check", "--json"),
        (["leaderboard", "x", "extra"], "tuner leaderboard", None),
    ],
)
def test_an_unknown_argument_shows_the_commands_usage_and_the_closest_flag(
    capsys, args, usage, hint
):
    from tuner.cli import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(f"usage: {usage} ")
    assert f"{usage}: error: unrecognized arguments: " in err
    assert (f"(did you mean {hint}?)" in err) if hint else "did you mean" not in err


@pytest.mark.slow
def test_bad_input_from_a_real_process_has_no_traceback(small_flowers, tmp_path):
    args = smoke_search(small_flowers, tmp_path / "r", "--cpus-per-trial", "64")
    proc = run_tuner(*args, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("tuner search: error: cpus-per-trial 64 exceeds")


PROBE_USAGE_ERROR = """
import sys
from tuner.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    print(stop.code, sorted(m for m in ("torch", "ray", "optuna", "pandas") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "args", [["--help"], ["search"], ["search", "--space", "x", "--seed", "y"]]
)
def test_help_and_usage_errors_answer_without_loading_the_heavy_libraries(args):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_USAGE_ERROR, *args], capture_output=True, text=True
    )
    assert proc.stdout.splitlines()[-1] == ("0 []" if args == ["--help"] else "2 []"), proc
    assert "Traceback" not in proc.stderr


def test_unwritable_storage_exits_2(small_flowers, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = cli(capsys, *smoke_search(small_flowers, blocker / "results"))
    assert code == 2 and "not writable" in err


def test_corrupt_checkpoint_names_the_file(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(100)}, "epoch": 1}, buffer)
    (folder / "checkpoint.pt").write_bytes(buffer.getvalue()[:50])
    with pytest.raises(CheckpointError, match=str(folder / "checkpoint.pt")):
        load_state(folder)
    np.save(folder / "checkpoint.pt", np.zeros(3))  # not ours either
    with pytest.raises(CheckpointError):
        load_state(folder / "checkpoint.pt")


def test_checkpoints_refuse_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil(), "epoch": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError):
        load_state(tmp_path)
