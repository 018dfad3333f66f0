"""Run a search (or resume one): Ray, Optuna, a scheduler, the trials.

The order matters for users: everything that can be wrong with the input
(name, storage, space, data, pretrained weights) is checked before Ray
starts (:mod:`tuner.search._prepare`), and every file needed to resume is written
before the first trial; :mod:`tuner.search._finish` writes the results.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Iterator
from typing import Any

from trainables import (
    SPLIT_FILE,
    CostSpec,
    DataError,
    DecodedSplit,
    decode_split,
    settings,
    train_classifier,
)
from tuner._errors import UsageError
from tuner.engine import (
    KeptJsonLogger,
    check_fits,
    check_storage_reachable,
    describe,
    live_trials,
    local_resources,
    make_sampler,
    make_scheduler,
    make_search_alg,
    no_restore_hint,
    pareto_rungs,
    prunes_during_search,
    run_callbacks,
    start_ray,
    trial_epochs,
    tune_trainable,
)
from tuner.results import is_finished
from tuner.search._estimate import TimeEstimate
from tuner.search._finish import finish
from tuner.search._guard import StorageGuard, make_reserve, release_reserve
from tuner.search._journal import JournalUpload, cut_journal, fetch_journal, forget_journal
from tuner.search._lines import Quiet, TrialLines, status_table
from tuner.search._prepare import (
    Print,
    SearchRequest,
    check_weights,
    prepare_split,
    resources_per_trial,
    run_record,
    trials_at_once,
)
from tuner.search._pruning import CheckpointPruner
from tuner.search._study import BEST_METRIC, make_searcher
from tuner.search._warm import warm_start
from tuner.spaces import Budget, SearchSpace
from tuner.storage import (
    BEST_CONFIG,
    JOURNAL_FILE,
    TUNER_FILE,
    Experiment,
    RunRecord,
    Storage,
    check_signed,
    load_key,
    read_checked,
    signing_filesystem,
    write_signed,
)

METRIC = "val_acc"
SEARCH_METRIC = BEST_METRIC


def _trainable(cache: DecodedSplit, resources: dict[str, float], space: SearchSpace) -> Any:
    objectives = space.objectives
    cost = (
        CostSpec(latency=objectives.times_latency, device=objectives.latency_device)
        if objectives.multi
        else None
    )
    return tune_trainable(train_classifier, resources, data=cache, cost=cost)


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _run_config(
    exp: Experiment, space: SearchSpace, concurrent: int, say: Print, verbose: bool = False
) -> Any:
    from ray import tune

    budget = space.budget
    estimate = TimeEstimate(_trial_epochs(space), concurrent, say, trials=budget.num_samples)
    return tune.RunConfig(
        callbacks=[
            StorageGuard(exp),
            CheckpointPruner(during_search=prunes_during_search(space.strategy)),
            estimate,
            TrialLines(budget.max_epochs, budget.num_samples, space.searched, say),
            JournalUpload(exp),
            KeptJsonLogger(),
        ],
        name=exp.name,
        # Ray Tune writes through the same file system as every file of ours, signing the
        # state that `resume` loads.
        storage_path=exp.storage.root,
        storage_filesystem=signing_filesystem(exp),
        # Every checkpoint is registered; CheckpointPruner deletes old ones once no saved
        # experiment state can point at them (Ray's num_to_keep deletes them too early).
        checkpoint_config=tune.CheckpointConfig(
            checkpoint_score_attribute=METRIC, checkpoint_score_order="max"
        ),
        failure_config=tune.FailureConfig(max_failures=2),
        progress_reporter=(
            status_table(space.searched, space.objectives.costs, SEARCH_METRIC)
            if verbose
            else Quiet()
        ),
        verbose=1,
    )


def _trial_epochs(space: SearchSpace) -> float:
    return trial_epochs(space.strategy, space.budget)


def run_search(req: SearchRequest, say: Print = print) -> int:
    """Run a new search to the end; return the exit code."""
    from ray import tune

    exp = Experiment(req.storage, req.name)
    if exp.exists():
        where = f"experiment {req.name!r} already exists in {req.storage.display()}"
        if _is_done(exp):
            raise UsageError(
                f"{where} and is finished; its results: python -m tuner leaderboard "
                f"{req.name} --storage {shlex.quote(req.storage.uri)} (or choose another --name)"
            )
        raise UsageError(
            f"{where}; continue it with: {exp.resume_command()} (or choose another --name)"
        )
    req.storage.check_writable()
    load_key()  # the key that signs the state: made (or found unreadable) now, not mid-search
    if not (req.address or settings().ray_address):
        resources_per_trial(req.space, local_resources())  # fail before decoding or starting Ray
    check_weights(req.space)
    warm = warm_start(req.space, req.storage, list(req.warm_start), say)
    split, cache = prepare_split(req, say)
    cluster = start_ray(req.address, say)
    resources = resources_per_trial(req.space, cluster)
    objectives = req.space.objectives
    if objectives.times_latency and objectives.latency_device == "cuda" and not resources["gpu"]:
        raise UsageError(
            "--latency-device cuda times each trial's model on its GPU, and this search gives "
            "trials none; use --latency-device cpu, or run where Ray has GPUs"
        )
    check_storage_reachable(req.storage)
    exp.write_split(split)
    record = run_record(req, cache.resize, resources, warm.sources)
    write_signed(exp, TUNER_FILE, record.encode())
    make_reserve(exp)
    budget, strategy = req.space.budget, req.space.strategy
    at_once = trials_at_once(cluster, resources)
    concurrent = min(budget.max_concurrent or at_once, budget.num_samples)
    say(
        f"Search: space {req.space.name!r}, {budget.num_samples} trials of up to "
        f"{budget.max_epochs} epochs, {describe(strategy, budget, req.space)} "
        f"({'at least ' if pareto_rungs(strategy, req.space) else ''}"
        f"~{_trial_epochs(req.space):.0f} trial-epochs), "
        f"{resources['cpu']:g} CPU + {resources['gpu']:g} GPU per trial, {concurrent} at once; "
        "a time estimate follows the first epochs"
    )
    say(f"Results: {exp.display()}")
    searcher = make_searcher(
        exp,
        SEARCH_METRIC,
        make_sampler(strategy, budget.seed),
        req.space.points_to_evaluate,
        budget.max_epochs,
        warm.trials,
        req.space.objectives,
    )
    tuner = tune.Tuner(
        _trainable(cache, resources, req.space),
        param_space=req.space.param_space(),
        tune_config=tune.TuneConfig(
            # Tune's own wrapping for max_concurrent_trials, in a generator that keeps
            # a resume's trial count and searcher in step with its trials.
            search_alg=make_search_alg(
                searcher,
                live_trials(strategy, concurrent, budget.num_samples),
                population=strategy.scheduler == "pbt",
            ),
            scheduler=make_scheduler(strategy, budget, req.space),
            num_samples=budget.num_samples,
            time_budget_s=budget.time_budget_s,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
            # A new trial starts in the worker process of one that ended: no new
            # process, no second torch import.
            reuse_actors=True,
        ),
        run_config=_run_config(exp, req.space, concurrent, say, req.verbose),
    )
    return _fit_and_finish(tuner, exp, budget, say)


def _is_done(exp: Experiment) -> bool:
    """Whether ``exp`` has ended and written its leaderboard (False where unsure)."""
    try:
        return exp.has_state() and is_finished(exp) and exp.read_json(BEST_CONFIG) is not None
    except Exception:  # an unreadable state: resume is what may still mend it
        return False


def resume(
    name: str,
    storage: Storage,
    restart_errored: bool = False,
    say: Print = print,
    trust_state: bool = False,
) -> int:
    """Continue an interrupted experiment exactly as it was set up, from any machine that
    reaches its storage and its photos.

    Its state (Ray's pickles and ``tuner.json``) is loaded only if it carries a signature
    of this user's key (:mod:`tuner.storage._signing`), unless ``trust_state``.
    """
    from ray import tune

    storage.check_writable()  # a resume writes: fail first on a missing bucket or a bad key
    exp = Experiment(storage, name)
    if exp.has_record() and not exp.has_state():
        return _start_again(exp, _checked_record(exp, trust_state, say), say)
    exp = Experiment.open(storage, name)
    if is_finished(exp):
        if exp.read_json(BEST_CONFIG) is None:
            # Killed after Ray's last save but before the leaderboard was written.
            say(f"{name}: every trial has ended; writing its leaderboard")
            record = _checked_record(exp, trust_state, say)
            return finish(exp, record.search_space().budget, say)
        where = f" --storage {shlex.quote(storage.uri)}"
        say(
            f"{name} is finished: every trial it asked for has ended; nothing to resume. "
            f"Its results: python -m tuner leaderboard {name}{where}"
        )
        return 0
    record = _checked_record(exp, trust_state, say)
    space = record.search_space()
    split = exp.split()
    try:
        cache = decode_split(split, record.resize, say=say)
    except DataError as exc:
        raise UsageError(f"data: {exc}") from None
    say(
        f"Resuming {name} from {exp.display()} ({len(split.train)} train / {len(split.val)} "
        f"val / {len(split.test)} test)"
    )
    fetch_journal(exp)
    cut_journal(exp, say)  # the study as of the trial list Ray restores
    start_ray(record.address, say)
    check_fits(record.resources)  # not waiting for ever for a node that has them
    make_reserve(exp)
    with _saved_by_this_version(exp):
        tuner = tune.Tuner.restore(
            exp.path(),
            trainable=_trainable(cache, record.resources, space),
            resume_unfinished=True,
            resume_errored=not restart_errored,
            restart_errored=restart_errored,
            # Checks each signed file again as Ray reads it (unless trusted).
            storage_filesystem=signing_filesystem(exp, verify=not trust_state),
        )
    with _saved_by_this_version(exp):  # Tune loads the searcher's and callbacks' state here
        return _fit_and_finish(tuner, exp, space.budget, say)


# The packages whose objects Ray's saved state pickles by module and name.
_PICKLED_PACKAGES = ("tuner", "trainables", "ray", "optuna")


@contextlib.contextmanager
def _saved_by_this_version(exp: Experiment) -> Iterator[None]:
    """UsageError, not a traceback, when Ray's pickled state names a module or a class that
    this version of the tool does not have: the state was saved by another version. Any
    other missing module (an optional dependency) is raised as it is."""
    try:
        yield
    except (ModuleNotFoundError, AttributeError) as exc:
        if isinstance(exc, ModuleNotFoundError):
            moved = (exc.name or "").split(".")[0] in _PICKLED_PACKAGES
        else:
            moved = "Can't get attribute" in str(exc)
        if not moved:
            raise
        raise UsageError(
            f"{exp.display()}: its saved state was written by another version of this tool "
            f"({exc}); resume it with the version that started it"
        ) from None


def _checked_record(exp: Experiment, trust_state: bool, say: Print) -> RunRecord:
    """``tuner.json``, once every signed file of ``exp`` verified (read once, checked)."""
    if trust_state:
        say("--trust-state: loading the saved state without checking its signatures")
        return exp.record()
    check_signed(exp)
    try:
        return RunRecord.from_json(json.loads(read_checked(exp, TUNER_FILE)))
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{exp.display(TUNER_FILE)} is unreadable") from None


def _start_again(exp: Experiment, record: RunRecord, say: Print) -> int:
    """Run a search whose driver died before Ray saved any state: no trial ran, so it
    starts again from its recorded request."""
    request = SearchRequest(
        space=record.search_space(),
        name=exp.name,
        storage=exp.storage,
        data_dir=record.data_dir,
        address=record.address,
        follow_links=record.follow_links,
        warm_start=tuple(s["experiment"] for s in record.warm_start),
    )
    say(f"{exp.name} was stopped before its first trial was recorded; starting it again")
    for leftover in (TUNER_FILE, SPLIT_FILE, JOURNAL_FILE):
        exp.delete(leftover)
    forget_journal(exp)
    return run_search(request, say)


def _fit_and_finish(tuner: Any, exp: Experiment, budget: Budget, say: Print) -> int:
    """Run the search, then summarise it (or say why the storage stopped it)."""
    try:
        if not _fit(tuner, exp, say):
            return 130
        problem = next(
            (c.tripped for c in run_callbacks(tuner) if isinstance(c, StorageGuard)), None
        )
        if problem:
            say(
                f"\nStopped: {problem}.\nThe experiment state and each trial's last checkpoint "
                "are saved. Free some space (or restore write access) and continue with:\n"
                f"  {exp.resume_command()}"
            )
            return 1
        return finish(exp, budget, say)
    finally:
        release_reserve(exp)


def _fit(tuner: Any, exp: Experiment, say: Print) -> bool:
    """``tuner.fit()``; False if a second Ctrl-C cut Ray's own graceful stop short.

    SIGTERM is handled like a first Ctrl-C: Ray saves the experiment state,
    stops the trials and returns.
    """
    import signal

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with no_restore_hint():  # finish() and the handler below say `tuner resume`
            tuner.fit()
    except KeyboardInterrupt:
        say(f"\nInterrupted. Continue the search with:\n  {exp.resume_command()}")
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)
    return True
