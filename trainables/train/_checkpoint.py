"""A trial checkpoint: one folder holding ``checkpoint.pt``.

The file is a plain dict of tensors, numbers, strings and lists (model,
optimizer, scheduler and grad-scaler state, the epoch, the best val_acc so
far, the RNG state, the trial config and the class names), written
atomically and read back with ``torch.load(..., weights_only=True)``, which
never unpickles arbitrary objects.

A trial writes each checkpoint to a temporary folder of its own
(:func:`temporary_folder`, named after its process), which Ray Tune copies to
the experiment before the trial's report returns; the caller then removes it.
A worker killed meanwhile (kill -9, a lost node, a search ended under it) never
does, and each such folder is a checkpoint's size:
:func:`sweep_temporary_folders`, at each trial's start, removes those of
processes that are gone, and any its own process left.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trainables._files import process_alive, write_replacing

CHECKPOINT_FILE = "checkpoint.pt"
TEMPORARY_PREFIXES = ("tuner-ckpt-", "tuner-restore-")


def temporary_folder(prefix: str = TEMPORARY_PREFIXES[0]) -> Path:
    """A new temporary folder for one checkpoint, named after this process."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def sweep_temporary_folders() -> int:
    """Remove the temporary checkpoint folders of this process (call it where no
    checkpoint of this process is being written: a trial's start) and of processes that
    are gone; never a link, nor another user's. Returns how many were removed."""
    removed, me, uid = 0, os.getpid(), os.getuid()
    for prefix in TEMPORARY_PREFIXES:
        for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
            pid = folder.name.removeprefix(prefix).split("-", 1)[0]
            if not pid.isdigit() or (int(pid) != me and process_alive(int(pid))):
                continue
            try:
                found = folder.lstat()  # a link is no folder here
            except OSError:
                continue
            if not stat.S_ISDIR(found.st_mode) or found.st_uid != uid:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or not one of ours."""


def save_state(
    folder: Path, state: Mapping[str, Any], *, config: Mapping[str, Any], classes: list[str]
) -> Path:
    """Write ``state`` plus the trial config and class names to ``folder/checkpoint.pt``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    buffer = io.BytesIO()
    torch.save({**state, "config": dict(config), "classes": list(classes)}, buffer)
    write_replacing(path, buffer.getbuffer())
    return path


def load_state(folder: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint folder (or the ``checkpoint.pt`` file itself) safely."""
    path = Path(folder)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not a flower-tune checkpoint")
    return state
