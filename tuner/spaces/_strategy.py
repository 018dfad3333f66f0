"""What a space file says of how to search: the scheduler that stops trials early and
the Optuna sampler that proposes them, by name, with their settings, checked::

    scheduler: asha          # asha | hyperband | median | fifo | pbt, or {NAME: {settings}}
    searcher: tpe            # tpe | random | cmaes | gp | nsga2, or {NAME: {settings}}

``search --scheduler NAME`` and ``--searcher NAME`` override the names. The Ray
Tune and Optuna objects are built from a :class:`Strategy` in one place,
:mod:`tuner.engine._strategy`. A combination that cannot work is refused with
the reason (:meth:`Strategy.check`): CMA-ES and GP model numeric keys, so a
space that searches none is refused for them; PBT perturbs the learning rate,
so it needs a space that searches ``lr``, and it takes its first population
from TPE or random sampling only.

Example:
    >>> s = Strategy.parse({"asha": {"grace_period": 2}}, "random")
    >>> s.scheduler, s.scheduler_settings, s.searcher, s.to_dict()["searcher"]
    ('asha', {'grace_period': 2}, 'random', 'random')
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _int(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(low: float, high: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low < v <= high


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


RUNGS_BY = ("pareto", "val_acc")
# name -> {setting: (check, what it must be)}
SCHEDULERS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "asha": {
        "grace_period": (_int(1), "an integer >= 1"),
        "reduction_factor": (_number(1), "a number > 1"),
        "brackets": (_int(1), "an integer >= 1"),
        # With several objectives: keep a rung's top share by Pareto front (MO-ASHA's
        # rule) or by val_acc alone.
        "rungs_by": (lambda v: v in RUNGS_BY, "pareto or val_acc"),
    },
    "hyperband": {"reduction_factor": (_number(1), "a number > 1")},
    "median": {
        "grace_period": (_int(1), "an integer >= 1"),
        "min_samples_required": (_int(1), "an integer >= 1"),
    },
    "fifo": {},
    "pbt": {
        "perturbation_interval": (_int(1), "an integer >= 1"),
        "quantile_fraction": (_number(0, 0.5), "a number in (0, 0.5]"),
        "resample_probability": (_number(0, 1), "a number in (0, 1]"),
    },
}
# What PBT perturbs, where the space searches it: values the optimizer is rebuilt with
# when a trial continues from a checkpoint (trainables' Training.restore).
PBT_MUTABLE = ("lr", "weight_decay")
PBT_SEARCHERS = ("tpe", "random")
SEARCHERS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "tpe": {
        "n_startup_trials": (_int(0), "an integer >= 0"),
        "multivariate": (_flag, "true or false"),
        "constant_liar": (_flag, "true or false"),
    },
    "random": {},
    "cmaes": {
        "n_startup_trials": (_int(0), "an integer >= 0"),
        "sigma0": (_number(0), "a number > 0"),
    },
    "gp": {"n_startup_trials": (_int(0), "an integer >= 0")},
    "nsga2": {
        "population_size": (_int(2), "an integer >= 2"),
        "mutation_prob": (_number(0, 1), "a number in (0, 1]"),
        "crossover_prob": (_number(0, 1), "a number in (0, 1]"),
    },
}
# Schedulers that can serve several objectives: ASHA (its rungs by Pareto front) and FIFO.
MULTI_SCHEDULERS = ("asha", "fifo")
MULTI_SEARCHERS = ("tpe", "random", "gp", "nsga2")
DEFAULT_SCHEDULER = "asha"
DEFAULT_SEARCHER = "tpe"
NUMERIC_ONLY = {"cmaes": "CMA-ES", "gp": "the Gaussian process"}


def _parse_one(
    what: str, raw: Any, known: dict[str, dict[str, tuple[Callable[[Any], bool], str]]]
) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``{NAME: {settings}}`` -> (name, settings), checked (ValueError)."""
    names = ", ".join(known)
    if isinstance(raw, dict):
        if len(raw) != 1:
            raise ValueError(f"{what}: give one name, or {{NAME: {{settings}}}}; known: {names}")
        ((name, settings),) = raw.items()
        settings = settings or {}
    else:
        name, settings = raw, {}
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"{what}: unknown {name!r}; known: {names}")
    if not isinstance(settings, dict):
        raise ValueError(f"{what}: the settings of {name} must be a mapping")
    for key, value in settings.items():
        if key not in known[name]:
            allowed = ", ".join(known[name]) or "none"
            raise ValueError(f"{what}: {name} has no setting {key!r} (its settings: {allowed})")
        check, must = known[name][key]
        if not check(value):
            raise ValueError(f"{what}: {name}'s {key} must be {must}, got {value!r}")
    return name, dict(settings)


@dataclass(frozen=True)
class Strategy:
    """A checked scheduler and searcher, with their settings."""

    scheduler: str = DEFAULT_SCHEDULER
    scheduler_settings: dict[str, Any] = field(default_factory=dict)
    searcher: str = DEFAULT_SEARCHER
    searcher_settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, scheduler: Any = None, searcher: Any = None) -> Strategy:
        """From a space file's ``scheduler:`` and ``searcher:`` (None: the default)."""
        sched, sched_settings = _parse_one(
            "scheduler", DEFAULT_SCHEDULER if scheduler is None else scheduler, SCHEDULERS
        )
        search, search_settings = _parse_one(
            "searcher", DEFAULT_SEARCHER if searcher is None else searcher, SEARCHERS
        )
        return cls(sched, sched_settings, search, search_settings)

    def with_names(self, scheduler: str | None, searcher: str | None) -> Strategy:
        """Command-line names over the space's: a new name drops the space's settings."""
        sched = (
            (self.scheduler, self.scheduler_settings)
            if scheduler in (None, self.scheduler)
            else (scheduler, {})
        )
        search = (
            (self.searcher, self.searcher_settings)
            if searcher in (None, self.searcher)
            else (searcher, {})
        )
        return Strategy.parse({sched[0]: sched[1]}, {search[0]: search[1]})

    def to_dict(self) -> dict[str, Any]:
        """The space file's form: a bare name when there are no settings."""

        def form(name: str, settings: dict[str, Any]) -> Any:
            return {name: dict(settings)} if settings else name

        return {
            "scheduler": form(self.scheduler, self.scheduler_settings),
            "searcher": form(self.searcher, self.searcher_settings),
        }

    def check(self, numeric_keys: list[str], objectives: int = 1) -> None:
        """Refuse a combination that cannot work (ValueError with the reason), for a
        space of ``objectives`` objectives."""
        if objectives > 1 and self.scheduler not in MULTI_SCHEDULERS:
            raise ValueError(
                f"scheduler {self.scheduler} with {objectives} objectives: it compares trials "
                "by val_acc alone, and would stop fast models the front needs; use asha "
                "(its rungs keep the best Pareto fronts) or fifo"
            )
        if objectives > 1 and self.searcher not in MULTI_SEARCHERS:
            raise ValueError(
                f"searcher {self.searcher} with {objectives} objectives: it models one "
                f"objective; use {', '.join(MULTI_SEARCHERS)}"
            )
        if objectives == 1 and "rungs_by" in self.scheduler_settings:
            raise ValueError(
                "scheduler asha: rungs_by chooses how rungs rank several objectives, and this "
                "space has one (add objectives: [{val_acc: max}, {latency_ms: min}])"
            )
        if self.searcher in NUMERIC_ONLY and not numeric_keys:
            raise ValueError(
                f"searcher {self.searcher}: {NUMERIC_ONLY[self.searcher]} models numeric keys "
                "and this space searches none (only choices); use tpe or random"
            )
        if self.scheduler == "pbt":
            if self.searcher not in PBT_SEARCHERS:
                raise ValueError(
                    f"scheduler pbt with searcher {self.searcher}: PBT changes a trial's lr "
                    f"mid-run, which {self.searcher}'s model of fixed configurations cannot "
                    "follow; use tpe or random"
                )
            if "lr" not in numeric_keys:
                raise ValueError(
                    "scheduler pbt perturbs lr, which this space does not search from a "
                    "range (give lr a loguniform or uniform distribution)"
                )
