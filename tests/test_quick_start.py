"""The README's Quick start, its commands verbatim, in a fresh clone of this repository.

The commands are read from the README itself (the shell blocks of its "Quick start"
section), so the test follows the README as it is. The one variable is the photo folder:
``PHOTOS`` (and the README's ``PHOTO.jpg`` / ``MORE/`` below it) becomes a small set of
real photos, so the search takes a minute instead of the README's minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT


def quick_start_commands() -> list[str]:
    """The shell lines of the README's Quick start, comments dropped."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_the_quick_start_lists_a_search_then_the_five_steps_after_it():
    commands = quick_start_commands()
    assert commands[0] == "uv sync --compile-bytecode"
    assert "--data PHOTOS" in commands[1] and "--name first" in commands[1]
    assert [c.split()[5] for c in commands[2:]] == [
        "list", "leaderboard", "report", "export", "predict"
    ]  # fmt: skip


@pytest.mark.slow
def test_the_quick_start_runs_verbatim_in_a_fresh_clone(small_flowers, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    photo = sorted((small_flowers / "daisy").iterdir())[0]
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    env |= {"PHOTOS": str(small_flowers), "PHOTO": str(photo), "MORE": str(small_flowers / "roses")}
    try:
        outputs = []
        for command in quick_start_commands():
            shell = command.replace("PHOTO.jpg", '"$PHOTO"').replace("MORE/", '"$MORE"/')
            shell = re.sub(r"\bPHOTOS\b", '"$PHOTOS"', shell)
            proc = subprocess.run(["bash", "-c", shell], cwd=clone, env=env, capture_output=True,
                                  text=True, timeout=600)  # fmt: skip
            assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            outputs.append(proc.stdout)
        listed, board, predicted = outputs[2], outputs[3], outputs[6]
        assert re.search(r"^\s*first\s+finished\b", listed, re.M), listed
        assert re.search(r"^\s*rank\s+trial_id\s+status", board, re.M), board
        assert (clone / "results" / "first" / "report" / "report.md").is_file()
        assert (clone / "first-model" / "model.onnx").is_file()
        assert photo.name in predicted and "roses" in predicted, predicted
    finally:
        shutil.rmtree(clone / ".venv", ignore_errors=True)  # hard links to uv's cache
