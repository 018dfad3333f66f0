"""What a search optimises: ``val_acc`` alone, or it against the deployed model's cost::

    objectives: [{val_acc: max}, {latency_ms: min}]   # also params_m: min
    latency_device: cpu                               # or cuda; search --latency-device

``latency_ms`` is the deployed graph's time for one photo, measured once per trial
configuration on the machine that runs the trial (see :mod:`trainables.models._latency`);
``params_m`` its millions of parameters. With more than one objective the Optuna
study has one direction per objective and the leaderboard ranks trials by
Pareto front (:func:`front_ranks`), then val_acc.

This module imports neither Ray nor Optuna: the leaderboard reads it too.

Example:
    >>> o = Objectives.parse([{"val_acc": "max"}, "latency_ms"])
    >>> o.names, o.modes, o.multi, o.to_dict()["objectives"][1]
    (('val_acc', 'latency_ms'), ('max', 'min'), True, {'latency_ms': 'min'})
    >>> front_ranks([(0.9, 10.0), (0.8, 5.0), (0.8, 6.0), (0.7, 7.0)], ("max", "min"))
    [1, 1, 2, 3]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# name -> the one direction that makes sense for it
OBJECTIVES = {"val_acc": "max", "latency_ms": "min", "params_m": "min"}
COSTS = ("latency_ms", "params_m")  # what the trainable measures of the deployed model
LATENCY_DEVICES = ("cpu", "cuda")
PRIMARY = "val_acc"


@dataclass(frozen=True)
class Objectives:
    """The checked objectives of a space, ``val_acc`` first, and where latency is timed."""

    items: tuple[tuple[str, str], ...] = ((PRIMARY, "max"),)
    latency_device: str = "cpu"

    @classmethod
    def parse(cls, raw: Any = None, latency_device: Any = None) -> Objectives:
        """From a space file's ``objectives:`` and ``latency_device:`` (ValueError)."""
        device = "cpu" if latency_device is None else latency_device
        if device not in LATENCY_DEVICES:
            raise ValueError(
                f"latency_device: unknown {device!r}; known: {', '.join(LATENCY_DEVICES)}"
            )
        if raw is None:
            return cls(latency_device=device)
        if not isinstance(raw, list) or not raw:
            raise ValueError("objectives: give a list, e.g. [{val_acc: max}, {latency_ms: min}]")
        items: list[tuple[str, str]] = []
        for entry in raw:
            if isinstance(entry, dict) and len(entry) == 1:
                ((name, direction),) = entry.items()
            elif isinstance(entry, str):
                name, direction = entry, OBJECTIVES.get(entry)
            else:
                raise ValueError(f"objectives: {entry!r} is not NAME or {{NAME: max|min}}")
            if name not in OBJECTIVES:
                raise ValueError(f"objectives: unknown {name!r}; known: {', '.join(OBJECTIVES)}")
            if direction != OBJECTIVES[name]:
                raise ValueError(
                    f"objectives: {name} can only be {OBJECTIVES[name]}imised, got {direction!r}"
                )
            if name in dict(items):
                raise ValueError(f"objectives: {name} is given twice")
            items.append((name, direction))
        if items[0][0] != PRIMARY:
            raise ValueError(
                f"objectives: the first must be {{{PRIMARY}: max}} (what the scheduler compares "
                "and checkpoints are kept by)"
            )
        return cls(tuple(items), device)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.items)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(mode for _, mode in self.items)

    @property
    def multi(self) -> bool:
        return len(self.items) > 1

    @property
    def costs(self) -> tuple[str, ...]:
        """The objectives the trainable measures (latency_ms, params_m)."""
        return tuple(n for n in self.names if n in COSTS)

    @property
    def times_latency(self) -> bool:
        return "latency_ms" in self.names

    def to_dict(self) -> dict[str, Any]:
        """The space file's form (empty for val_acc alone, as before objectives existed)."""
        if not self.multi:
            return {}
        out: dict[str, Any] = {"objectives": [{n: m} for n, m in self.items]}
        if self.times_latency:
            out["latency_device"] = self.latency_device
        return out

    def describe(self) -> str:
        """E.g. ``val_acc (max) against latency_ms (min, cpu)``."""
        words = [
            f"{n} ({m}" + (f", {self.latency_device})" if n == "latency_ms" else ")")
            for n, m in self.items
        ]
        return " against ".join(words)


def objectives_of(space: Any) -> Objectives:
    """The objectives of a resolved space dict (``tuner.json``'s ``space``), leniently: a
    record this tool did not write ranks by val_acc alone."""
    if not isinstance(space, dict):
        return Objectives()
    try:
        return Objectives.parse(space.get("objectives"), space.get("latency_device"))
    except ValueError:
        return Objectives()


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether point ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    signs = [1.0 if m == "max" else -1.0 for m in modes]
    better = [s * x >= s * y for s, x, y in zip(signs, a, b, strict=True)]
    return all(better) and any(x != y for x, y in zip(a, b, strict=True))


def front_ranks(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Each point's Pareto front by non-dominated sorting: 1 for the points nothing
    dominates, 2 for those only front 1 dominates, and so on. Equal points share a front
    (as in Optuna's ``best_trials``)."""
    n = len(points)
    beats: list[list[int]] = [[] for _ in range(n)]  # i -> the points i dominates
    beaten = [0] * n  # how many points dominate i
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j], modes):
                beats[i].append(j)
                beaten[j] += 1
            elif dominates(points[j], points[i], modes):
                beats[j].append(i)
                beaten[i] += 1
    ranks = [0] * n
    front = [i for i in range(n) if not beaten[i]]
    rank = 1
    while front:
        following = []
        for i in front:
            ranks[i] = rank
            for j in beats[i]:
                beaten[j] -= 1
                if not beaten[j]:
                    following.append(j)
        front, rank = following, rank + 1
    return ranks


_PICK = re.compile(r"^\s*([a-z_]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Constraint:
    """``KEY OP NUMBER`` from ``export --pick``, e.g. ``latency_ms<=5``."""

    key: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> list[Constraint]:
        """Comma-separated constraints (ValueError naming the bad one)."""
        out = []
        for part in text.split(","):
            match = _PICK.match(part)
            if not match:
                raise ValueError(
                    f"--pick: cannot read {part.strip()!r}; write KEY<=NUMBER (also <, >=, >), "
                    "e.g. latency_ms<=5, comma-separated"
                )
            key, op, number = match.groups()
            if key not in OBJECTIVES:
                raise ValueError(f"--pick: unknown key {key!r}; known: {', '.join(OBJECTIVES)}")
            try:
                out.append(cls(key, op, float(number)))
            except ValueError:
                raise ValueError(f"--pick: {number!r} is not a number") from None
        return out

    def holds(self, value: float) -> bool:
        return {
            "<=": value <= self.value,
            "<": value < self.value,
            ">=": value >= self.value,
            ">": value > self.value,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value:g}"
