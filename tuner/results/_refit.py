"""Refit: retrain a ranked configuration on train + val, then score it on the test split.

The search chose the configuration on the validation photos; a refit trains the
same configuration (same seed and schedule) for the epochs it was given, its
``max_epochs`` (``--epochs N`` for others), on the training and validation photos
together, so the exported model learns from every photo except the held-out
test split, which then scores it. Not the trial's best epoch: a trial that ASHA
stopped at a rung has its best epoch cut there, before its schedule's decay
(``docs/performance.md``, the refit's epochs). It runs as a Ray task on every
CPU of one node (see :func:`train_on_train_val`), on the experiment's cluster,
and writes its checkpoint through the experiment's
storage (a folder or an object store) to ``NAME/refit/TRIAL_ID/`` with
``refit.json`` beside it. ``export --refit`` exports it, and trains it first
where the ranked trial has none (:func:`load_refit`).

``tuner.json`` names the cluster it joins and the resources it asks for: like
``resume``, refit uses it only if it carries a signature of the user's state key
for this experiment (``--trust-state`` skips the check), refuses a cluster that
does not answer within :data:`~tuner.engine._cluster.CONNECT_TIMEOUT_S` and
resources no node has, each with exit 2 and one line, before anything waits.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainables import (
    CHECKPOINT_FILE,
    CheckpointError,
    DataError,
    DecodedSplit,
    Progress,
    TrialConfig,
    decode_for_refit,
    fit,
    parse_json,
)
from tuner._errors import UsageError
from tuner.engine import check_fits, start_ray, whole_node
from tuner.results._inference import (
    RankedTrial,
    load_checkpoint,
    load_ranked_trial,
    model_from_state,
)
from tuner.results._leaderboard import build_leaderboard
from tuner.storage import (
    REFIT_DIR,
    REFIT_RECORD,
    TUNER_FILE,
    Experiment,
    RunRecord,
    Storage,
    read_checked,
)


def _train(
    config: dict[str, Any],
    data: DecodedSplit,
    storage: Storage,
    dest: str,
    threads: int,
    label: str = "refit",
) -> dict[str, Any]:
    """The Ray task: ``fit`` for the chosen epochs, its progress on stderr (a line per
    epoch, with the time left); the last checkpoint is uploaded to ``dest`` (relative to
    ``storage``), from whichever node runs it."""
    cfg = TrialConfig.from_dict(config)
    history: list[dict[str, Any]] = []
    progress = Progress(cfg.max_epochs, label, "epoch", every_s=0)

    def report(metrics: dict[str, Any], folder: Path) -> None:
        history.append(metrics)
        progress.update(1)
        if metrics["epoch"] == cfg.max_epochs or metrics.get("diverged"):
            storage.upload(folder / CHECKPOINT_FILE, f"{dest}/{CHECKPOINT_FILE}")
        shutil.rmtree(folder, ignore_errors=True)

    with progress:
        fit(cfg, data, report, threads=threads)
    return {"history": history}


def train_on_train_val(
    exp: Experiment,
    saved: RunRecord,
    config: dict[str, Any],
    data: DecodedSplit,
    folder: str,
    label: str,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, float], float, dict[str, float]]:
    """Train ``config`` on ``data`` (:func:`refit_data`: train + val to train on, the test
    split to score) as one Ray task on the experiment's cluster, its checkpoint written to
    ``folder`` of ``exp``; the last epoch's ``test_acc`` and ``test_loss``, the wall time
    (s) and the resources it had. UsageError if the training diverged.

    The task runs alone after the search: it asks for every CPU of the largest node that
    has one trial's resources (and a whole GPU where a trial had a share), and trains on
    as many threads."""
    import ray

    start_ray(saved.address, say)
    check_fits(saved.resources, f"{label} (tuner.json's resources for one trial)")
    resources = whole_node(saved.resources)
    t0 = time.perf_counter()
    cpu, gpu = resources.get("cpu", 1.0), resources.get("gpu", 0.0)
    task = ray.remote(_train).options(num_cpus=cpu, num_gpus=gpu)
    threads = max(1, int(cpu))
    result = ray.get(task.remote(config, data, exp.storage, exp.rel(folder), threads, label))
    last: dict[str, Any] = result["history"][-1]
    if last.get("diverged"):
        raise UsageError(f"the {label} diverged at epoch {last['epoch']}")
    # The training loop scores the rows in its "val" slot: here, the test split.
    scores = {"test_acc": float(last["val_acc"]), "test_loss": float(last["val_loss"])}
    return scores, time.perf_counter() - t0, resources


def refit_data(exp: Experiment, saved: RunRecord, say: Callable[[str], None]) -> DecodedSplit:
    """The experiment's train + val photos to train on, its test photos to score."""
    try:
        return decode_for_refit(exp.split(), saved.resize, say=say)
    except DataError as exc:
        raise UsageError(f"{exc}; a model trained on train + val is scored on the test split") \
            from None  # fmt: skip


def checked_record(
    exp: Experiment, rank: int, trust_state: bool = False, command: str | None = None
) -> RunRecord:
    """``tuner.json`` of ``exp``, if it carries a signature of this user's key for this
    experiment (UsageError otherwise, naming ``command``, by default the refit's, to run
    with ``--trust-state``), or as it is if ``trust_state``."""
    if trust_state:
        return exp.record()
    if command is None:
        command = f"{exp.resume_command().replace(' resume ', ' refit ', 1)} --rank {rank}"
    try:
        data = read_checked(exp, TUNER_FILE, command)
    except FileNotFoundError:
        raise UsageError(f"{exp.display(TUNER_FILE)} is missing") from None
    where = exp.display(TUNER_FILE)
    return RunRecord.from_json(parse_json(data, where), where)


def export_command(exp: Experiment, rank: int, flag: str) -> str:
    """The ``export`` of ``exp``'s rank ``rank`` with ``flag`` (``--refit``, ``--distill``)
    that trains a model first: what a refusal of an unsigned ``tuner.json`` names."""
    command = exp.resume_command().replace(" resume ", " export ", 1)
    return f"{command} --rank {rank} {flag} --output DIR"


def refit(
    exp: Experiment,
    rank: int,
    say: Callable[[str], None] = print,
    trust_state: bool = False,
    command: str | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Refit the ``rank``-th trial of ``exp`` (see the module doc) for ``epochs`` (default:
    the ``max_epochs`` its configuration was given); its record. An unsigned
    ``tuner.json`` is refused naming ``command`` (default: this refit's) to run with
    ``--trust-state``."""
    saved = checked_record(exp, rank, trust_state, command)
    trial = load_ranked_trial(exp, rank, build_leaderboard(exp))
    split = exp.split()
    epochs = epochs or int(trial.config["max_epochs"])
    config = {**trial.config, "max_epochs": epochs}
    data = refit_data(exp, saved, say)
    say(
        f"Refit of trial {trial.trial_id} (rank {rank}): {epochs} epoch(s) on "
        f"{len(split.train) + len(split.val)} train + val photos, scored on "
        f"{len(split.test)} test photos"
    )
    folder = f"{REFIT_DIR}/{trial.trial_id}"
    scores, wall, resources = train_on_train_val(exp, saved, config, data, folder, "refit", say)
    record = {
        "trial_id": trial.trial_id,
        "rank": rank,
        "epochs": epochs,
        "search_best_epoch": trial.best_epoch,
        "config": config,
        "search_val_acc": trial.val_acc,
        **scores,
        "n_train": len(split.train) + len(split.val),
        "n_test": len(split.test),
        "checkpoint": exp.display(folder),
        "wall_time_s": wall,
        "resources": resources,
    }
    exp.write_json(f"{folder}/{REFIT_RECORD}", record)
    return record


def load_refit(
    trial: RankedTrial, say: Callable[[str], None] = print, trust_state: bool = False
) -> RankedTrial:
    """``trial`` with the model and checkpoint of its refit, trained first (:func:`refit`)
    where the trial has no refit record yet. A record whose checkpoint cannot be read is
    refused (UsageError), never replaced."""
    exp, folder = trial.experiment, f"{REFIT_DIR}/{trial.trial_id}"
    record = exp.read_json(f"{folder}/{REFIT_RECORD}")
    if record is None:
        say(f"Trial {trial.trial_id} (rank {trial.rank}) has no refit yet: training it first "
            f"(what `python -m tuner refit {exp.name} --rank {trial.rank}` does)")  # fmt: skip
        command = export_command(exp, trial.rank, "--refit")
        record = refit(exp, trial.rank, say, trust_state, command)
    try:
        if not isinstance(record, dict):
            raise CheckpointError("no refit record")
        epochs = record["epochs"]
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
            raise CheckpointError(f"epochs {epochs!r} in the refit record")
        state = load_checkpoint(exp, exp.display(folder))
    except (OSError, CheckpointError, KeyError):
        raise UsageError(
            f"the refit of trial {trial.trial_id} (rank {trial.rank}) in {exp.display(folder)} "
            f"cannot be read; train it again with: python -m tuner refit {exp.name} --rank "
            f"{trial.rank}"
        ) from None
    return dataclasses.replace(
        trial, model=model_from_state(state, len(trial.classes)), checkpoint=exp.display(folder),
        config=dict(state["config"]), val_acc=None, best_epoch=epochs,
    )  # fmt: skip
