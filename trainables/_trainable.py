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
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainables._checkpoint import load_state
from trainables._config import TrialConfig
from trainables._data import ImageCache, load_image_cache
from trainables._latency import CostSpec, deploy_cost
from trainables._train import fit


class QuietStop:
    """Mixed by Ray Tune into the actor it builds from :func:`train_classifier`.

    When Tune stops a trial's actor for good (a trial ASHA stopped, or the
    last one, with no trial left to reuse the actor for), it runs ``stop`` on
    the actor, then drops the actor and removes its placement group at once;
    the raylet sends the process SIGTERM (then SIGKILL 200 ms later). Ray's
    worker handler turns that SIGTERM into ``SystemExit`` raised in whatever
    Python code the worker runs at that moment, often a finaliser, which
    prints ``Exception ignored ... sigterm_handler ... SystemExit: 1`` on the
    search's stderr. Once the trial has stopped (its results and checkpoints
    reported, nothing left to save), SIGTERM takes its default action: the
    process ends at once, quietly.
    """

    def cleanup(self) -> None:
        try:
            super().cleanup()  # type: ignore[misc]
        finally:
            end_quietly_on_sigterm()


def end_quietly_on_sigterm() -> None:
    """From now on SIGTERM ends this process at once, running no Python handler.

    Needs the main thread (where Ray runs an actor's tasks); elsewhere nothing changes.
    """
    import contextlib
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for stream in (sys.stdout, sys.stderr):  # what the trial printed still reaches the log
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def train_classifier(
    config: Mapping[str, Any], data: ImageCache | None = None, cost: CostSpec | None = None
) -> None:
    """Ray Tune function trainable: one trial of ``config`` on the decoded ``data``.

    Without ``data`` the photos under ``config["data_dir"]`` are decoded here
    (for use without the service). Threads follow the trial's CPU resources,
    the device its GPU resources (Ray sets the visible GPU); a trial restored
    by Tune continues from its last checkpoint. With ``cost``, every result also carries
    the deployed model's ``params_m`` and ``latency_ms`` (:mod:`trainables._latency`),
    measured before the first epoch.
    """
    import ray
    from ray import tune

    # One line per checkpoint from Ray is noise in a search's live table.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
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
        with tempfile.TemporaryDirectory(prefix="tuner-restore-") as folder:
            state = load_state(Path(checkpoint.to_directory(folder)))
    fit(cfg, data, report, resume_state=state, threads=threads)


# Ray Tune's `wrap_function` (and `tune.with_parameters`) put a function's `__mixins__`
# into the actor class it builds for it.
train_classifier.__mixins__ = (QuietStop,)  # type: ignore[attr-defined]
