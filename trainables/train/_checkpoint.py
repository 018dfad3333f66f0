"""A trial checkpoint: one folder holding ``checkpoint.pt``.

The file is a plain dict of tensors, numbers, strings and lists (model,
optimizer, scheduler and grad-scaler state, the epoch, the best val_acc so
far, the RNG state, the trial config and the class names), written
atomically and read back with ``torch.load(..., weights_only=True)``, which
never unpickles arbitrary objects.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trainables._files import write_replacing

CHECKPOINT_FILE = "checkpoint.pt"


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
