"""Search spaces: YAML files in ``search_spaces/`` -> Ray Tune distributions + a budget.

A space file has these sections (and optionally ``scheduler:`` and ``searcher:``,
see :mod:`tuner.spaces._strategy`, and ``objectives:`` and ``latency_device:``, see
:mod:`tuner.spaces._objectives`)::

    params:                       # trial keys (see trainables.TrialConfig)
      model: efficientnet_lite0   # a constant
      lr: {loguniform: [1.0e-4, 3.0e-3]}
      batch_size: {choice: [16, 32, 64]}
      step_size: {randint: [3, 9]}        # Ray semantics: 3..8, high excluded
      aug_strength: {uniform: [0.0, 1.0]}
    budget:                       # see Budget; command-line flags override it
      num_samples: 8
      max_epochs: 8
    points_to_evaluate:           # optional: configurations tried first
      - {lr: 1.0e-3, batch_size: 32}

Everything is validated when the file is loaded: every edge of every
distribution (low, high, each choice) must make a valid
:class:`trainables.TrialConfig`, so a bad space fails before Ray starts.

Example:
    >>> space = load_space("smoke")
    >>> space.name, space.budget.num_samples >= 4
    ('smoke', True)
    >>> sorted(space.searched)[:2]
    ['aug_strength', 'batch_size']
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trainables import ConfigError, TrialConfig
from tuner._errors import UsageError
from tuner.spaces._distributions import Distribution
from tuner.spaces._objectives import Objectives
from tuner.spaces._strategy import Strategy


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How much searching to do, and with what resources per trial."""

    num_samples: int = 8
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: a share of a GPU when GPUs exist, else 0
    max_concurrent: int | None = None
    time_budget_s: float | None = None
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.15  # held out: never trained on or selected by
    test_top_k: int = 5  # trials scored on the test split when the search ends

    def validate(self) -> None:
        checks = [
            (self.num_samples >= 1, "num_samples must be >= 1"),
            (self.max_epochs >= 1, "max_epochs must be >= 1"),
            (self.grace_period >= 1, "grace_period must be >= 1"),
            (self.reduction_factor >= 2, "reduction_factor must be >= 2"),
            (self.cpus_per_trial > 0, "cpus_per_trial must be > 0"),
            (
                self.gpus_per_trial is None or self.gpus_per_trial >= 0,
                "gpus_per_trial must be >= 0",
            ),
            (
                self.gpus_per_trial is None
                or self.gpus_per_trial <= 1
                or float(self.gpus_per_trial).is_integer(),
                "gpus_per_trial above 1 must be a whole number",
            ),
            (
                self.max_concurrent is None or self.max_concurrent >= 1,
                "max_concurrent must be >= 1",
            ),
            (self.time_budget_s is None or self.time_budget_s > 0, "time budget must be > 0"),
            (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
            (
                0 <= self.test_fraction < 0.5,
                f"test fraction must be in [0, 0.5), got "
                f"{self.test_fraction:g} (0 holds no test photos out)",
            ),
            (
                self.test_fraction + self.val_fraction < 1,
                "test fraction + val_fraction leave no photos to train on",
            ),
            (self.test_top_k >= 0, "test_top_k must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(f"budget: {message}")

    def override(self, **changes: Any) -> Budget:
        """A copy with the given (non-None) fields replaced, validated."""
        out = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        out.validate()
        return out


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """A parsed, validated space: constants, distributions, budget, seed points."""

    name: str
    source: str
    constants: dict[str, Any]
    distributions: dict[str, Distribution]
    budget: Budget
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    strategy: Strategy = field(default_factory=Strategy)
    objectives: Objectives = field(default_factory=Objectives)

    @property
    def searched(self) -> list[str]:
        return list(self.distributions)

    def param_space(self) -> dict[str, Any]:
        """Ray Tune ``param_space``: constants plus ``tune.*`` domains, max_epochs and seed."""
        space: dict[str, Any] = dict(self.constants)
        space |= {key: dist.to_tune() for key, dist in self.distributions.items()}
        space["max_epochs"] = self.budget.max_epochs
        space["seed"] = self.budget.seed
        return space

    def possible_values(self, key: str) -> list[Any]:
        """Every value ``key`` can take, or the edges of its range."""
        if key in self.distributions:
            return self.distributions[key].edges()
        if key in self.constants:
            return [self.constants[key]]
        return [getattr(TrialConfig(), key)]

    def to_dict(self) -> dict[str, Any]:
        """The resolved space, as it would be written back to YAML."""
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "params": {**self.constants, **{k: d.to_yaml() for k, d in self.distributions.items()}},
            "budget": dataclasses.asdict(self.budget),
            "points_to_evaluate": self.points_to_evaluate,
            **self.strategy.to_dict(),
            **self.objectives.to_dict(),
        }

    def numeric_keys(self) -> list[str]:
        """The searched keys drawn from a range (not a choice)."""
        return [k for k, d in self.distributions.items() if d.kind != "choice"]

    def with_strategy(
        self, scheduler: str | None, searcher: str | None, latency_device: str | None = None
    ) -> SearchSpace:
        """The space with the command line's scheduler and searcher names and latency
        device, checked."""
        try:
            strategy = self.strategy.with_names(scheduler, searcher)
            strategy.check(self.numeric_keys(), len(self.objectives.items))
            objectives = self.objectives
            if latency_device is not None:
                objectives = Objectives.parse([{n: m} for n, m in objectives.items], latency_device)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return dataclasses.replace(self, strategy=strategy, objectives=objectives)

    def with_budget(self, budget: Budget) -> SearchSpace:
        space = dataclasses.replace(self, budget=budget)
        _validate_edges(space)
        return space


def spaces_dir() -> Path:
    """The folder of built-in space files."""
    return Path(str(resources.files("search_spaces")))


def available_spaces() -> list[str]:
    return sorted(p.stem for p in spaces_dir().glob("*.yaml"))


def load_space(name_or_path: str) -> SearchSpace:
    """Load a built-in space by name, or a YAML file by path; validate it fully."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") or not path.exists():
        builtin = spaces_dir() / f"{name_or_path}.yaml"
        if not builtin.is_file():
            if path.suffix in (".yaml", ".yml"):
                raise UsageError(f"space file {path} does not exist")
            raise UsageError(
                f"unknown space {name_or_path!r}; known spaces: {', '.join(available_spaces())} "
                "(or give the path of a .yaml file)"
            )
        path = builtin
    if path.is_dir():
        raise UsageError(f"space file {path} is a folder")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise UsageError(f"{where}: YAML syntax error: {problem}") from None
    except OSError as exc:
        raise UsageError(f"cannot read space file {path}: {exc.strerror}") from None
    return parse_space(raw, name=path.stem, source=str(path))


def parse_space(raw: Any, name: str, source: str = "<memory>") -> SearchSpace:
    """Validate a space's parsed YAML and build a :class:`SearchSpace`."""

    def fail(message: str) -> UsageError:
        return UsageError(f"space {name!r} ({source}): {message}")

    if not isinstance(raw, dict):
        raise fail("expected a mapping with 'params' and 'budget'")
    unknown_sections = set(raw) - {
        "params", "budget", "points_to_evaluate", "description", "scheduler", "searcher",
        "objectives", "latency_device",
    }  # fmt: skip
    if unknown_sections:
        raise fail(f"unknown section(s): {', '.join(sorted(unknown_sections))}")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise fail("'params' must be a mapping of trial keys")
    trial_keys = set(TrialConfig.field_names()) - {"max_epochs", "seed"}
    constants: dict[str, Any] = {}
    distributions: dict[str, Distribution] = {}
    for key, value in params.items():
        if key not in trial_keys:
            hint = " (set it under 'budget')" if key in ("max_epochs", "seed") else ""
            raise fail(
                f"unknown key {key!r}{hint}; trial keys are: {', '.join(sorted(trial_keys))}"
            )
        if isinstance(value, dict):
            distributions[key] = Distribution.parse(key, value, fail)
        else:
            constants[key] = value

    budget_raw = raw.get("budget") or {}
    if not isinstance(budget_raw, dict):
        raise fail("'budget' must be a mapping")
    budget_fields = {f.name for f in fields(Budget)}
    unknown_budget = set(budget_raw) - budget_fields
    if unknown_budget:
        raise fail(
            f"unknown budget key(s): {', '.join(sorted(unknown_budget))}; "
            f"known: {', '.join(sorted(budget_fields))}"
        )
    try:
        budget = Budget(**_checked_budget(budget_raw))
        budget.validate()
    except (TypeError, UsageError) as exc:
        raise fail(str(exc)) from None

    points = raw.get("points_to_evaluate") or []
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise fail("'points_to_evaluate' must be a list of mappings")
    for i, point in enumerate(points):
        missing = [key for key in distributions if key not in point]
        if missing:
            raise fail(
                f"points_to_evaluate[{i}] leaves {', '.join(missing)} unset; a point to try "
                "first gives a value to every searched key"
            )
        extra = set(point) - set(distributions)
        if extra:
            raise fail(
                f"points_to_evaluate[{i}] sets {', '.join(sorted(extra))}, "
                "which the space does not search (only searched keys may be given)"
            )
        for key, value in point.items():
            dist = distributions[key]
            if not dist.contains(value):
                raise fail(
                    f"points_to_evaluate[{i}]: {key}={value!r} is outside its distribution "
                    f"{dist.kind} {list(dist.args)}"
                )
        try:
            TrialConfig.from_dict({**constants, **point})
        except ConfigError as exc:
            raise fail(f"points_to_evaluate[{i}]: {exc}") from None

    try:
        strategy = Strategy.parse(raw.get("scheduler"), raw.get("searcher"))
        objectives = Objectives.parse(raw.get("objectives"), raw.get("latency_device"))
    except ValueError as exc:
        raise fail(str(exc)) from None
    space = SearchSpace(
        name=name,
        source=source,
        constants=constants,
        distributions=distributions,
        budget=budget,
        points_to_evaluate=[dict(p) for p in points],
        description=str(raw.get("description", "")).strip(),
        strategy=strategy,
        objectives=objectives,
    )
    try:
        _validate_edges(space)
        strategy.check(space.numeric_keys(), len(objectives.items))
    except (ConfigError, ValueError) as exc:
        raise fail(str(exc)) from None
    return space


def _checked_budget(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with each count a whole int (YAML may write ``2.0``); UsageError for a value
    that is not a number, or not a whole one where the key counts something (None where the
    key may be unset)."""
    hints = typing.get_type_hints(Budget)
    checked = dict(raw)
    for key, value in raw.items():
        kinds = typing.get_args(hints[key]) or (hints[key],)
        if value is None and type(None) in kinds:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"budget: {key} must be a number, got {value!r}")
        if float not in kinds:
            if not float(value).is_integer():
                raise UsageError(f"budget: {key} must be a whole number, got {value!r}")
            checked[key] = int(value)
    return checked


def _validate_edges(space: SearchSpace) -> None:
    """Every extreme value of every key, alone, must make a valid TrialConfig."""
    base = {**space.constants, "max_epochs": space.budget.max_epochs, "seed": space.budget.seed}
    TrialConfig.from_dict(base)
    for key in space.distributions:
        for value in space.possible_values(key):
            try:
                TrialConfig.from_dict({**base, key: value})
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from None
