"""The one place that builds how a search searches: the Ray Tune scheduler and the
Optuna sampler named by a space's :class:`~tuner.spaces._strategy.Strategy`.

Per scheduler, it also owns what the rest of the tool asks of it:

* **the scheduler** (:func:`make_scheduler`), on the trials' ``epoch`` and
  ``val_acc``, with the budget's ``max_epochs``, and ``grace_period`` and
  ``reduction_factor`` unless the scheduler's settings give their own; with several
  objectives ASHA's rungs rank by Pareto front (:class:`~tuner.engine._pareto.ParetoASHA`)
  unless ``rungs_by: val_acc``;
* **the work it expects** (:func:`trial_epochs`), for the banner and the time
  estimate: ASHA's and HyperBand's rungs, every epoch of every trial for FIFO,
  and that as an upper bound for the median rule;
* **what a stop is**: every one of them stops a trial only by not running its
  next epoch, so a trial that ended before ``max_epochs`` was stopped early (or
  cut by the time budget). The leaderboard's ``stopped_early`` and the Optuna
  mirror's PRUNED state (:class:`tuner.search._study.MirroredOptunaSearch`)
  both read it that way; FIFO stops nothing, so only a time budget prunes there.
  HyperBand ends a bracket's waiting trials while they are paused, with no
  result: the mirror judges those by the epochs the study holds;
* **how many trials may be live** (:func:`live_trials`): as many as run at
  once, but HyperBand's whole bracket and PBT's whole population;
* **when old checkpoints may go** (:func:`prunes_during_search`): under PBT only
  at the end, since it continues trials from other trials' checkpoints;
* **the banner** (:func:`describe`).

Example:
    >>> from tuner.spaces._spaces import Budget
    >>> from tuner.spaces._strategy import PBT_MUTABLE, Strategy
    >>> trial_epochs(Strategy.parse("fifo"), Budget(num_samples=4, max_epochs=3))
    12.0
"""

from __future__ import annotations

import math
from typing import Any

from tuner.spaces import PBT_MUTABLE, Budget, Strategy

METRIC = "val_acc"  # what schedulers compare: each epoch's val_acc
TIME_ATTR = "epoch"


def _grace(strategy: Strategy, budget: Budget) -> int:
    grace = strategy.scheduler_settings.get("grace_period", budget.grace_period)
    return min(int(grace), budget.max_epochs)


def _eta(strategy: Strategy, budget: Budget) -> float:
    return float(strategy.scheduler_settings.get("reduction_factor", budget.reduction_factor))


def live_trials(strategy: Strategy, running: int, num_samples: int) -> int:
    """How many trials the searcher may have proposed and not seen end, when the
    cluster runs ``running`` at once. HyperBand halves a bracket only among its live
    trials and pauses the rest (they hold no CPU), so it needs the whole bracket live;
    PBT's population is every trial; the others learn from each ended trial before
    proposing the next."""
    return num_samples if strategy.scheduler in ("hyperband", "pbt") else running


def prunes_during_search(strategy: Strategy) -> bool:
    """Whether old checkpoints may go while the search runs: not under PBT, which hands a
    trial's latest checkpoint to another trial while the first writes newer ones (all but
    each trial's best and latest go when the search ends)."""
    return strategy.scheduler != "pbt"


def trial_epochs(strategy: Strategy, budget: Budget) -> float:
    """The trial-epochs the search is expected to run (median: at most; ASHA with Pareto
    rungs: at least, as each rung's front goes on whatever its size)."""
    if strategy.scheduler == "asha":
        return asha_trial_epochs(
            budget.num_samples, budget.max_epochs, _grace(strategy, budget),
            _eta(strategy, budget),
        )  # fmt: skip
    if strategy.scheduler == "hyperband":
        return hyperband_trial_epochs(budget.num_samples, budget.max_epochs, _eta(strategy, budget))
    return float(budget.num_samples * budget.max_epochs)


def describe(strategy: Strategy, budget: Budget, space: Any = None) -> str:
    """The banner's words for the scheduler and the searcher (of ``space``)."""
    eta, grace = _eta(strategy, budget), _grace(strategy, budget)
    rungs = ""
    if space is not None and space.objectives.multi and strategy.scheduler == "asha":
        rungs = (
            " (rungs by Pareto front)" if pareto_rungs(strategy, space) else " (rungs by val_acc)"
        )
    scheduler = {
        "asha": f"ASHA grace {grace} / reduction {eta:g}{rungs}",
        "hyperband": f"HyperBand reduction {eta:g}",
        "median": (
            f"median stopping after epoch {grace}, "
            f"{strategy.scheduler_settings.get('min_samples_required', 3)} trials to compare"
        ),
        "fifo": "FIFO (no early stopping)",
        "pbt": (
            f"PBT every {strategy.scheduler_settings.get('perturbation_interval', 2)} epochs "
            f"(perturbs {', '.join(pbt_mutable(space) or ['lr'])})"
        ),
    }[strategy.scheduler]
    searcher = {
        "tpe": "TPE",
        "random": "random sampling",
        "cmaes": "CMA-ES (choices drawn at random)",
        "gp": "Gaussian-process BO",
        "nsga2": "NSGA-II",
    }[strategy.searcher]
    goal = (
        f"; {space.objectives.describe()}" if space is not None and space.objectives.multi else ""
    )
    return f"{scheduler}, {searcher}{goal}"


def pareto_rungs(strategy: Strategy, space: Any) -> bool:
    """Whether ASHA's rungs rank by Pareto front: in a space of several objectives, unless
    its ``rungs_by: val_acc`` says accuracy alone."""
    multi = space is not None and space.objectives.multi
    by = strategy.scheduler_settings.get("rungs_by", "pareto")
    return strategy.scheduler == "asha" and multi and by == "pareto"


def pbt_mutable(space: Any) -> list[str]:
    """The keys PBT perturbs: those of ``PBT_MUTABLE`` the space searches from a range."""
    return [] if space is None else [k for k in PBT_MUTABLE if k in space.numeric_keys()]


def make_scheduler(strategy: Strategy, budget: Budget, space: Any = None) -> Any:
    """The Ray Tune scheduler, on each epoch's val_acc (PBT: perturbing ``space``'s
    ``PBT_MUTABLE`` keys within their distributions)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    from tuner.engine._internals import LivePopulationTraining, SavedHyperBand

    settings = strategy.scheduler_settings
    common: dict[str, Any] = {"time_attr": TIME_ATTR, "metric": METRIC, "mode": "max"}
    if pareto_rungs(strategy, space):
        from tuner.engine._pareto import ParetoASHA

        objectives = space.objectives
        return ParetoASHA(
            list(objectives.names), list(objectives.modes), max_t=budget.max_epochs,
            grace_period=_grace(strategy, budget), reduction_factor=_eta(strategy, budget),
            time_attr=TIME_ATTR,
        )  # fmt: skip
    if strategy.scheduler == "asha":
        return ASHAScheduler(
            **common,
            max_t=budget.max_epochs,
            grace_period=_grace(strategy, budget),
            reduction_factor=_eta(strategy, budget),
            brackets=int(settings.get("brackets", 1)),
        )
    if strategy.scheduler == "hyperband":
        return SavedHyperBand(
            **common, max_t=budget.max_epochs, reduction_factor=_eta(strategy, budget)
        )
    if strategy.scheduler == "median":
        return MedianStoppingRule(
            **common,
            grace_period=_grace(strategy, budget),
            min_samples_required=int(settings.get("min_samples_required", 3)),
        )
    if strategy.scheduler == "pbt":
        return LivePopulationTraining(
            **common,
            max_t=budget.max_epochs,
            perturbation_interval=int(settings.get("perturbation_interval", 2)),
            hyperparam_mutations={
                key: space.distributions[key].to_tune() for key in pbt_mutable(space)
            },
            quantile_fraction=float(settings.get("quantile_fraction", 0.25)),
            resample_probability=float(settings.get("resample_probability", 0.25)),
        )
    return FIFOScheduler()


def make_sampler(strategy: Strategy, seed: int) -> Any:
    """The Optuna sampler, seeded."""
    import optuna

    settings = dict(strategy.searcher_settings)
    samplers = optuna.samplers
    if strategy.searcher == "tpe":
        return samplers.TPESampler(seed=seed, **settings)
    if strategy.searcher == "random":
        return samplers.RandomSampler(seed=seed)
    if strategy.searcher == "cmaes":
        # Choices (model, optimizer, batch size) are drawn by the independent sampler.
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **settings)
    if strategy.searcher == "gp":
        return samplers.GPSampler(seed=seed, **settings)
    return samplers.NSGAIISampler(seed=seed, **settings)


def asha_trial_epochs(
    num_samples: int, max_epochs: int, grace_period: int, reduction_factor: float
) -> float:
    """Trial-epochs an ASHA search runs when each rung keeps 1/``reduction_factor``.

    Rungs sit at ``grace_period * reduction_factor**k`` below ``max_epochs``;
    every trial runs to the first rung, a ``1/reduction_factor`` share of them
    to the next, and so on; the survivors of the last rung run to ``max_epochs``.

    >>> asha_trial_epochs(12, 6, grace_period=2, reduction_factor=3)  # 12 x 2 + 4 x 4
    40.0
    >>> asha_trial_epochs(4, 3, grace_period=3, reduction_factor=2)  # no cut before the end
    12.0
    """
    rungs = []
    rung = float(min(grace_period, max_epochs))
    while rung < max_epochs:
        rungs.append(rung)
        rung *= reduction_factor
    total, share, done = 0.0, 1.0, 0.0
    for r in [*rungs, float(max_epochs)]:
        total += num_samples * share * (r - done)
        share /= reduction_factor
        done = r
    return total


def hyperband_trial_epochs(num_samples: int, max_epochs: int, eta: float) -> float:
    """Trial-epochs of Ray's HyperBand: trials fill its brackets in order, the least
    aggressive first (every trial to ``max_epochs``); a bracket of ``n`` trials runs
    them to its first milestone, keeps the best ``ceil(n / eta)`` for the next, and so
    on to ``max_epochs``.

    >>> hyperband_trial_epochs(3, 4, 2)  # bracket 0: 3 trials x 4 epochs
    12.0
    >>> hyperband_trial_epochs(6, 4, 2)  # then bracket 1: 3 x 2, and 2 of them x 2 more
    22.0
    """
    s_max_1 = round(math.log(max_epochs) / math.log(eta)) + 1
    total, left = 0.0, num_samples
    while left > 0:
        for s in range(s_max_1):
            planned = math.ceil(s_max_1 / (s + 1) * eta**s)
            live = min(left, planned)
            left -= live
            milestone, done = max(1, int(max_epochs * eta ** (-s))), 0
            while live > 0 and done < max_epochs:
                total += live * (min(milestone, max_epochs) - done)
                done = min(milestone, max_epochs)
                planned = math.ceil(planned / eta)
                live, milestone = min(live, planned), int(milestone * eta)
            if left <= 0:
                break
    return total
