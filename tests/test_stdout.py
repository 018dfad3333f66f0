"""Data on stdout, everything else on stderr: each command whose stdout is data is run
as a user pipes it (a subprocess, stdout not a terminal), long enough for progress lines
to print, and its stdout is parsed strictly."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_tuner

# A progress line at every update, so that even a short step prints some.
LOUD = {"TUNER_PROGRESS_EVERY_S": "0"}
MANY = 300  # over the 256 photos (tuner.results._inference.CHUNK) a quiet step holds


def real_photos(flowers: Path, per_class: int, dest: Path) -> Path:
    """A labelled folder of ``per_class`` distinct real photos (copies) per class."""
    for cls in sorted(p for p in flowers.iterdir() if p.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for photo in sorted(cls.glob("*.jpg"))[-per_class:]:
            shutil.copyfile(photo, dest / cls.name / photo.name)
    return dest


@pytest.fixture(scope="module")
def many_photos(flowers, tmp_path_factory) -> list[Path]:
    """MANY photo files (copies of a few real ones)."""
    folder = tmp_path_factory.mktemp("many")
    sources = sorted((flowers / "roses").glob("*.jpg"))[:5]
    photos = []
    for i in range(MANY):
        photos.append(folder / f"{i:03d}.jpg")
        shutil.copyfile(sources[i % len(sources)], photos[-1])
    return photos


def progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("classifying: ")]


def test_progress_lines_go_to_stderr_and_follow_the_interval_variable(monkeypatch, capsys):
    from trainables._progress import LINE_EVERY_S, Progress

    monkeypatch.setenv("TUNER_PROGRESS_EVERY_S", "0")
    with Progress(4, "counting", "item") as bar:
        assert bar.every_s == 0
        bar.update(2)
        bar.update(2)
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[-1].startswith("counting: 4/4 items")
    monkeypatch.setenv("TUNER_PROGRESS_EVERY_S", "soon")
    assert Progress(1, "x", "y", quiet=True).every_s == LINE_EVERY_S


def test_predict_json_is_valid_json_while_progress_prints(exported, many_photos):
    proc = run_tuner("predict", str(exported), *map(str, many_photos), "--json", env=LOUD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert progress_lines(proc.stderr), proc.stderr[-3000:]  # progress did print, elsewhere
    data = json.loads(proc.stdout)
    assert [r["image"] for r in data["results"]] == [str(p) for p in many_photos]
    assert all(len(r["predictions"]) >= 1 for r in data["results"])


def test_predict_table_holds_only_predictions(exported, many_photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    photos = [*map(str, many_photos), str(broken)]
    proc = run_tuner("predict", str(exported), *photos, "--top", "2", env=LOUD)
    assert proc.returncode == 1, proc.stderr[-3000:]  # 1: one photo could not be read
    assert progress_lines(proc.stderr) and f"{broken}: error:" in proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 * MANY  # the photo, then its top 2, for each readable photo
    assert lines[::3] == photos[:-1]
    for line in lines[1::3] + lines[2::3]:
        percent, _ = line.split(maxsplit=1)
        assert percent.endswith("%") and 0 <= float(percent[:-1]) <= 100


def test_evaluate_prints_one_json_object_while_progress_prints(finished, flowers, tmp_path):
    _, storage, _ = finished
    data = real_photos(flowers, MANY // 5 + 1, tmp_path / "labelled")
    proc = run_tuner("evaluate", "e2e", "--storage", str(storage), "--data", str(data), env=LOUD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert progress_lines(proc.stderr), proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert metrics["n_images"] == 5 * (MANY // 5 + 1) and 0 <= metrics["accuracy"] <= 1


def test_leaderboard_json_and_csv_parse_strictly(finished):
    _, storage, _ = finished
    proc = run_tuner("leaderboard", "e2e", "--storage", str(storage), "--format", "json", env=LOUD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) == 5
    proc = run_tuner("leaderboard", "e2e", "--storage", str(storage), "--format", "csv", env=LOUD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = list(csv.reader(io.StringIO(proc.stdout, newline=""), strict=True))
    header, body = table[0], table[1:]
    assert header[:2] == ["rank", "trial_id"] and len(body) == 5
    assert all(len(row) == len(header) for row in body)
    assert [row[1] for row in body] == [r["trial_id"] for r in rows]


def test_list_json_and_csv_parse_strictly(finished):
    _, storage, _ = finished
    proc = run_tuner("list", "--storage", str(storage), "--format", "json", env=LOUD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(proc.stdout)
    assert row["name"] == "e2e" and row["status"] == "finished"
    proc = run_tuner("list", "--storage", str(storage), "--format", "csv", env=LOUD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, *body = list(csv.reader(io.StringIO(proc.stdout, newline=""), strict=True))
    assert header[:2] == ["name", "status"] and [r[0] for r in body] == ["e2e"]


def test_data_check_json_parses_strictly(synthetic):
    (synthetic / "class0" / "broken.jpg").write_bytes(b"not a photo")
    proc = run_tuner("data", "check", str(synthetic), "--json", env=LOUD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert "broken.jpg" in json.dumps(summary)
