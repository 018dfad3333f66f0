"""Assemble and run a search (or resume one): data, Ray, Optuna, ASHA, results.

The order matters for users: everything that can be wrong with the input
(name, storage, space, data, pretrained weights) is checked before Ray
starts, and every file needed to resume is written before the first trial.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables import (
    SPLIT_FILE,
    DataError,
    ImageCache,
    Split,
    WeightsUnavailableError,
    cache_size_for,
    decode_split,
    ensure_pretrained_weights,
    scan_folder,
    screen,
    split_screened,
    train_classifier,
)
from tuner._cluster import check_storage_reachable, local_resources, start_ray
from tuner._datacheck import describe
from tuner._errors import UsageError
from tuner._holdout import attach_test_scores, score_top_trials, test_lines
from tuner._leaderboard import best_config, build_leaderboard, tie_note, write_leaderboard
from tuner._pruning import CheckpointPruner
from tuner._spaces import Budget, SearchSpace, parse_space
from tuner._storage_guard import StorageGuard, make_reserve, release_reserve, tripped
from tuner._study import JOURNAL_FILE, make_searcher

TUNER_FILE = "tuner.json"
METRIC = "val_acc"
SEARCH_METRIC = "best_val_acc"  # Optuna learns from each trial's best epoch
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Print = Callable[[str], None]


@dataclass(frozen=True)
class SearchRequest:
    """Everything ``search`` needs, resolved and validated by the CLI layer."""

    space: SearchSpace
    name: str
    storage: str
    data_dir: Path
    address: str | None = None


def default_storage(storage: str | None) -> str:
    """``--storage``, else ``$TUNER_STORAGE``, else ``./results``, as an absolute path."""
    chosen = storage or os.environ.get("TUNER_STORAGE") or "results"
    if "://" in chosen:
        raise UsageError(
            f"storage {chosen}: URI storage (s3://, gs://, ...) is not supported yet; "
            "use a folder every node mounts (NFS, a shared volume)"
        )
    return str(Path(chosen).expanduser().resolve())


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name) or ".." in name:
        raise UsageError(
            f"invalid experiment name {name!r}: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..')"
        )
    return name


def experiment_dir(storage: str, name: str) -> Path:
    return Path(storage) / name


def ensure_writable(storage: str) -> None:
    root = Path(storage)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"storage {root} is not writable: {exc.strerror or exc}") from None


def is_experiment(path: Path) -> bool:
    return path.is_dir() and any(path.glob("experiment_state-*.json"))


def default_name(space: SearchSpace) -> str:
    return f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def resume_command(name: str, storage: str) -> str:
    return f"python -m tuner resume {name} --storage {storage}"


def check_weights(space: SearchSpace) -> None:
    """Fail before Ray starts if a pretrained model's weights cannot be had."""
    if True not in space.possible_values("pretrained"):
        return
    for model in space.possible_values("model"):
        try:
            ensure_pretrained_weights(model)
        except WeightsUnavailableError as exc:
            raise UsageError(str(exc)) from None


def prepare_split(req: SearchRequest, say: Print) -> tuple[Split, ImageCache]:
    """Scan, decode once and split (in memory; nothing written yet)."""
    size = cache_size_for(max(req.space.possible_values("image_size")))
    t0 = time.perf_counter()
    try:
        usable, decoded = screen(scan_folder(req.data_dir), size)
        for line in describe(usable):
            say(line)
        split, cache = split_screened(
            usable,
            decoded,
            size,
            val_fraction=req.space.budget.val_fraction,
            seed=req.space.budget.seed,
            test_fraction=req.space.budget.test_fraction,
        )
    except DataError as exc:
        raise UsageError(f"data: {exc}") from None
    say(
        f"Split: {len(split.train)} train / {len(split.val)} val / {len(split.test)} test "
        f"photos (test held out: no trial sees it), decoded at {size}px "
        f"in {time.perf_counter() - t0:.1f}s ({cache.nbytes / 2**20:.0f} MiB, one copy "
        "shared by all trials)"
    )
    return split, cache


def _resources(space: SearchSpace, cluster: dict[str, float]) -> dict[str, float]:
    budget = space.budget
    cpus_available = cluster.get("CPU", 0.0)
    if budget.cpus_per_trial > cpus_available:
        raise UsageError(
            f"cpus-per-trial {budget.cpus_per_trial:g} exceeds the {cpus_available:g} CPUs "
            "available to Ray"
        )
    gpus = budget.gpus_per_trial
    gpus_available = cluster.get("GPU", 0.0)
    if gpus is None:
        # Several trials share a GPU: small models four to a GPU, ResNet-50 two.
        gpus = (
            0.0
            if not gpus_available
            else (0.5 if "resnet50" in space.possible_values("model") else 0.25)
        )
    elif gpus > gpus_available:
        raise UsageError(f"gpus-per-trial {gpus:g} exceeds the {gpus_available:g} GPUs available")
    return {"cpu": budget.cpus_per_trial, "gpu": gpus}


def _fits(cluster: dict[str, float], resources: dict[str, float]) -> int:
    """How many trials the cluster runs at once (Tune then starts them all together).

    Ray Tune starts one trial at a time for a searcher unless told this number.
    """
    fits = cluster.get("CPU", 0.0) / resources["cpu"]
    if resources["gpu"]:
        fits = min(fits, cluster.get("GPU", 0.0) / resources["gpu"])
    return max(1, int(fits + 1e-9))


def _trainable(cache: ImageCache, resources: dict[str, float]) -> Any:
    from ray import tune

    return tune.with_resources(tune.with_parameters(train_classifier, data=cache), resources)


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _reporter(space: SearchSpace) -> Any:
    from ray import tune

    return tune.CLIReporter(
        metric_columns={
            "epoch": "ep",
            "val_acc": "val_acc",
            "best_val_acc": "best",
            "train_loss": "loss",
            "images_per_s": "img/s",
        },
        parameter_columns=space.searched,
        max_report_frequency=30,
        # Ray sorts finished trials by their last metric, which a trial that never
        # reported (a time budget ended first) does not have: a TypeError at the end.
        # The leaderboard ranks them; the live table lists trials in start order.
        sort_by_metric=False,
        metric=SEARCH_METRIC,
        mode="max",
        max_column_length=12,
    )


def _run_config(
    req_name: str, storage: str, space: SearchSpace, concurrent: int, say: Print
) -> Any:
    from ray import tune

    from tuner._estimate import TimeEstimate

    budget = space.budget
    estimate = TimeEstimate(_trial_epochs(budget), concurrent, say)
    return tune.RunConfig(
        callbacks=[StorageGuard(experiment_dir(storage, req_name)), CheckpointPruner(), estimate],
        name=req_name,
        storage_path=storage,
        # Every checkpoint is registered; CheckpointPruner deletes old ones once no saved
        # experiment state can point at them (Ray's num_to_keep deletes them too early).
        checkpoint_config=tune.CheckpointConfig(
            checkpoint_score_attribute=METRIC, checkpoint_score_order="max"
        ),
        failure_config=tune.FailureConfig(max_failures=2),
        progress_reporter=_reporter(space),
        verbose=1,
    )


def _trial_epochs(budget: Budget) -> float:
    from tuner._estimate import expected_trial_epochs

    return expected_trial_epochs(
        budget.num_samples, budget.max_epochs, budget.grace_period, budget.reduction_factor
    )


def run_search(req: SearchRequest, say: Print = print) -> int:
    """Run a new search to the end; return the exit code."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    exp_dir = experiment_dir(req.storage, req.name)
    if (exp_dir / TUNER_FILE).exists() or is_experiment(exp_dir):
        raise UsageError(
            f"experiment {req.name!r} already exists in {req.storage}; continue it with: "
            f"{resume_command(req.name, req.storage)} (or choose another --name)"
        )
    if not (req.address or os.environ.get("RAY_ADDRESS")):
        _resources(req.space, local_resources())  # fail before decoding or starting Ray
    check_weights(req.space)
    split, cache = prepare_split(req, say)
    cluster = start_ray(req.address, say)
    resources = _resources(req.space, cluster)
    check_storage_reachable(req.storage)
    exp_dir.mkdir(parents=True, exist_ok=True)
    split.save(exp_dir / SPLIT_FILE)
    _write_tuner_file(req, exp_dir, cache.size, resources)
    make_reserve(exp_dir)
    budget = req.space.budget
    concurrent = budget.max_concurrent or _fits(cluster, resources)
    say(
        f"Search: space {req.space.name!r}, {budget.num_samples} trials of up to "
        f"{budget.max_epochs} epochs, ASHA grace {budget.grace_period} / reduction "
        f"{budget.reduction_factor} (~{_trial_epochs(budget):.0f} trial-epochs), "
        f"{resources['cpu']:g} CPU + {resources['gpu']:g} GPU per trial, {concurrent} at once; "
        "a time estimate follows the first epochs"
    )
    say(f"Results: {exp_dir}")
    searcher = make_searcher(
        req.name,
        exp_dir,
        SEARCH_METRIC,
        budget.seed,
        req.space.points_to_evaluate,
        budget.max_epochs,
    )
    scheduler = ASHAScheduler(
        time_attr="epoch",
        metric=METRIC,
        mode="max",
        max_t=budget.max_epochs,
        grace_period=min(budget.grace_period, budget.max_epochs),
        reduction_factor=budget.reduction_factor,
    )
    tuner = tune.Tuner(
        _trainable(cache, resources),
        param_space=req.space.param_space(),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=budget.num_samples,
            max_concurrent_trials=concurrent,
            time_budget_s=budget.time_budget_s,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            # A new trial starts in the worker process of one that ended: no new
            # process, no second torch import (5 trials at 32 px: 68 s -> 40 s).
            reuse_actors=True,
        ),
        run_config=_run_config(req.name, req.storage, req.space, concurrent, say),
    )
    return _fit_and_finish(tuner, exp_dir, req.name, req.storage, budget, say)


def resume(name: str, storage: str, restart_errored: bool = False, say: Print = print) -> int:
    """Continue an interrupted experiment exactly as it was set up."""
    from ray import tune

    exp_dir = experiment_dir(storage, validate_name(name))
    if (exp_dir / TUNER_FILE).is_file() and not is_experiment(exp_dir):
        return _start_again(exp_dir, say)
    if not is_experiment(exp_dir) or not (exp_dir / TUNER_FILE).is_file():
        root = Path(storage)
        known = sorted(p.name for p in root.iterdir() if is_experiment(p)) if root.is_dir() else []
        raise UsageError(
            f"no experiment {name!r} in {storage}; experiments there: "
            f"{', '.join(known) if known else '(none)'}"
        )
    saved = json.loads((exp_dir / TUNER_FILE).read_text())
    space = parse_space(saved["space"], name=saved["space_name"], source=saved["space_source"])
    split = Split.load(exp_dir / SPLIT_FILE)
    try:
        cache = decode_split(split, int(saved["cache_size"]))
    except DataError as exc:
        raise UsageError(f"data: {exc}") from None
    ensure_writable(str(exp_dir))
    say(
        f"Resuming {name} from {exp_dir} ({len(split.train)} train / {len(split.val)} val / "
        f"{len(split.test)} test)"
    )
    start_ray(saved.get("address"), say)
    make_reserve(exp_dir)
    resources = {k: float(v) for k, v in saved["resources"].items()}
    tuner = tune.Tuner.restore(
        str(exp_dir),
        trainable=_trainable(cache, resources),
        resume_unfinished=True,
        resume_errored=not restart_errored,
        restart_errored=restart_errored,
    )
    return _fit_and_finish(tuner, exp_dir, name, storage, space.budget, say)


def _start_again(exp_dir: Path, say: Print) -> int:
    """Run a search whose driver died before Ray saved any state: no trial ran, so it
    starts again from its recorded request."""
    saved = json.loads((exp_dir / TUNER_FILE).read_text())
    space = parse_space(saved["space"], name=saved["space_name"], source=saved["space_source"])
    request = SearchRequest(
        space, saved["name"], saved["storage"], Path(saved["data_dir"]), saved.get("address")
    )
    say(f"{saved['name']} was stopped before its first trial was recorded; starting it again")
    for leftover in (TUNER_FILE, SPLIT_FILE, JOURNAL_FILE):
        (exp_dir / leftover).unlink(missing_ok=True)
    return run_search(request, say)


def _fit_and_finish(
    tuner: Any, exp_dir: Path, name: str, storage: str, budget: Budget, say: Print
) -> int:
    """Run the search, then summarise it (or say why the storage stopped it)."""
    try:
        if not _fit(tuner, name, storage, say):
            return 130
        problem = tripped(exp_dir)
        if problem:
            say(
                f"\nStopped: {problem}.\nThe experiment state and each trial's last checkpoint "
                "are saved. Free some space (or restore write access) and continue with:\n"
                f"  {resume_command(name, storage)}"
            )
            return 1
        return finish(exp_dir, name, storage, budget, say)
    finally:
        release_reserve(exp_dir)


def _fit(tuner: Any, name: str, storage: str, say: Print) -> bool:
    """``tuner.fit()``; False if a second Ctrl-C cut Ray's own graceful stop short.

    SIGTERM is handled like a first Ctrl-C: Ray saves the experiment state,
    stops the trials and returns.
    """
    import signal

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        tuner.fit()
    except KeyboardInterrupt:
        say(f"\nInterrupted. Continue the search with:\n  {resume_command(name, storage)}")
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    return True


def finish(exp_dir: Path, name: str, storage: str, budget: Budget, say: Print) -> int:
    """Write the leaderboard files and print the summary; 0 if the search completed.

    A search is unfinished when a trial is still running, pending or paused,
    or when fewer than ``num_samples`` trials exist without a time budget
    that could explain it.
    """
    board = build_leaderboard(exp_dir)
    unfinished = bool(board["status"].isin(["running", "pending", "paused"]).any()) or (
        budget.time_budget_s is None and len(board) < budget.num_samples
    )
    if not unfinished and score_top_trials(exp_dir, board, budget.test_top_k):
        board = attach_test_scores(board, exp_dir)
    written = write_leaderboard(exp_dir, board)
    counts = board["status"].value_counts().to_dict()
    say("")
    say(f"Trials: {len(board)} ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    best = best_config(board)
    if best:
        say(
            f"Best trial {best['trial_id']}: val_acc {best['val_acc']:.4f} "
            f"(± {best['val_acc_se']:.4f}) at epoch {best['best_epoch']}{tie_note(board)}"
        )
        say("  " + json.dumps(best["config"]))
        say(f"  checkpoint: {best['checkpoint']}")
    for line in test_lines(board):
        say(line)
    say("Wrote " + ", ".join(str(p) for p in written))
    if unfinished:
        say(f"The search was interrupted. Continue it with:\n  {resume_command(name, storage)}")
        return 1
    return 0


def _write_tuner_file(
    req: SearchRequest, exp_dir: Path, cache_size: int, resources: dict[str, float]
) -> None:
    """The resolved configuration of the run, enough to reproduce or resume it."""
    import ray

    resolved = req.space.to_dict()
    record = {
        "name": req.name,
        "space_name": req.space.name,
        "space_source": req.space.source,
        "space": {
            "description": resolved["description"],
            "params": resolved["params"],
            "budget": resolved["budget"],
            "points_to_evaluate": resolved["points_to_evaluate"],
        },
        "data_dir": str(req.data_dir),
        "storage": req.storage,
        "address": req.address,
        "cache_size": cache_size,
        "resources": resources,
        "command": " ".join(sys.argv),
        "ray_version": ray.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = exp_dir / f".{TUNER_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, exp_dir / TUNER_FILE)  # never half a file, whenever the driver dies
