"""A synthetic experiment folder, as Ray Tune and a search leave one, written in
milliseconds: the trial list, each trial's ``result.json`` and checkpoint folders, and
``split.json``. For fast tests of what reads an experiment (leaderboard, list), without
running a search."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.engine.formats import EXPERIMENT_STATE, checkpoint_name


@dataclass
class FakeTrial:
    """One trial: Ray's status, its config, and per epoch (val_acc, val_loss), with a
    checkpoint folder kept for the epochs in ``kept`` (default: every epoch)."""

    trial_id: str
    status: str = "TERMINATED"
    epochs: list[tuple[float, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    kept: list[int] | None = None
    diverged_at: int | None = None  # the epoch whose result says diverged
    extra: dict[str, Any] = field(default_factory=dict)  # added to every result line


def write_experiment(
    storage: Path,
    name: str,
    trials: list[FakeTrial],
    n_val: int = 20,
    max_epochs: int = 3,
    weights: bool = False,
) -> Path:
    """``storage/name`` holding ``trials``; every config gets ``max_epochs``. With
    ``weights``, each kept checkpoint holds a real one: a random-init EfficientNet-Lite0
    at 32 px for the two classes ``a`` and ``b``."""
    folder = storage / name
    folder.mkdir(parents=True)
    entries = []
    for trial in trials:
        config = {"max_epochs": max_epochs, **trial.config}
        if weights:
            config = {"model": "efficientnet_lite0", "image_size": 32, **config}
        state = {"trial_id": trial.trial_id, "status": trial.status, "config": config,
                 "experiment_tag": f"0_{trial.trial_id}"}  # fmt: skip
        entries.append([json.dumps(state), "{}"])
        trial_dir = folder / f"trial_{trial.trial_id}"
        trial_dir.mkdir()
        lines = []
        for index, (acc, loss) in enumerate(trial.epochs):
            epoch = index + 1
            lines.append(
                json.dumps({"epoch": epoch, "training_iteration": epoch, "val_acc": acc,
                            "val_loss": loss, "train_loss": loss, "time_total_s": 10.0 * epoch,
                            "diverged": epoch == trial.diverged_at,
                            "checkpoint_dir_name": checkpoint_name(index), **trial.extra})
            )  # fmt: skip
            if trial.kept is None or epoch in trial.kept:
                (trial_dir / checkpoint_name(index)).mkdir()
                if weights:
                    _save_weights(trial_dir / checkpoint_name(index), config, epoch, acc)
        (trial_dir / "result.json").write_text("".join(line + "\n" for line in lines))
    state_file = folder / EXPERIMENT_STATE.format("2026-12-06_10-00-00")
    state_file.write_text(json.dumps({"trial_data": entries}))
    val = [[f"a/{i}.jpg", 0] for i in range(n_val)]
    split = {"root": str(storage), "classes": ["a", "b"], "seed": 0, "val_fraction": 0.2,
             "test_fraction": 0.0, "train": [], "val": val, "test": []}  # fmt: skip
    (folder / "split.json").write_text(json.dumps(split))
    return folder


def _save_weights(folder: Path, config: dict[str, Any], epoch: int, acc: float) -> None:
    import torch

    from trainables import TrialConfig, build_model
    from trainables.train._checkpoint import save_state

    full = TrialConfig.from_dict(config).to_dict()
    torch.manual_seed(epoch)
    model = build_model(full["model"], 2, pretrained=False, image_size=full["image_size"])
    state = {"model": model.state_dict(), "epoch": epoch, "best_val_acc": acc}
    save_state(folder, state, config=full, classes=["a", "b"])
