"""The Ray Tune function trainable: one trial of a configuration, a plain function of ``config``.

:func:`train_classifier` can be used by plain Ray Tune code::

    from ray import tune
    from trainables import load_image_cache, train_classifier

    cache = load_image_cache("photos/", image_size=160)
    trainable = tune.with_resources(
        tune.with_parameters(train_classifier, data=cache), {"cpu": 2}
    )
    tune.Tuner(trainable, param_space={"model": "efficientnet_lite0", "lr": 1e-3}).fit()
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainables.data import DecodedSplit, load_image_cache
from trainables.models import CostSpec, deploy_cost
from trainables.train._checkpoint import (
    TEMPORARY_PREFIXES,
    load_state,
    sweep_temporary_folders,
    temporary_folder,
)
from trainables.train._config import TrialConfig
from trainables.train._train import fit


def train_classifier(
    config: Mapping[str, Any], data: DecodedSplit | None = None, cost: CostSpec | None = None
) -> None:
    """Ray Tune function trainable: one trial of ``config`` on the decoded ``data``.

    Without ``data`` the photos under ``config["data_dir"]`` are decoded here
    (for use without the service). Threads follow the trial's CPU resources,
    the device its GPU resources (Ray sets the visible GPU); a trial restored
    by Tune continues from its last checkpoint. With ``cost``, every result also carries
    the deployed model's ``params_m`` and ``latency_ms`` (:mod:`trainables.models._latency`),
    measured before the first epoch.
    """
    import ray
    from ray import tune

    # One line per checkpoint from Ray is noise in a search's live table.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    # Checkpoint folders an earlier trial of this worker, or a killed worker, left.
    sweep_temporary_folders()
    cfg = TrialConfig.from_dict(config)
    if data is None:
        data = load_image_cache(config["data_dir"], cfg.image_size, seed=cfg.seed)

    resources = tune.get_context().get_trial_resources().required_resources
    threads = int(resources.get("CPU", 0)) or None
    node_id = ray.get_runtime_context().get_node_id()
    costs = deploy_cost(cfg.model, cfg.image_size, len(data.classes), cost) if cost else {}

    def report(metrics: dict[str, Any], folder: Path) -> None:
        try:
            tune.report(
                metrics | costs | {"node_id": node_id},
                checkpoint=tune.Checkpoint.from_directory(str(folder)),
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        # A folder of this trial's own: PBT continues several trials from one checkpoint
        # at once, and `as_directory()` shares one download among them, deleted under
        # the others ("corrupt or truncated" checkpoints).
        folder = temporary_folder(TEMPORARY_PREFIXES[1])
        try:
            state = load_state(Path(checkpoint.to_directory(str(folder))))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    fit(cfg, data, report, resume_state=state, threads=threads)
