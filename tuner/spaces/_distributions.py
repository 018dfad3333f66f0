"""A searched key's distribution in a space file (``{loguniform: [LOW, HIGH]}``,
``{uniform: ...}``, ``{choice: [...]}``, ``{randint: [LOW, HIGH]}``): checked, and turned into
Ray Tune's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import tune

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint")


@dataclass(frozen=True)
class Distribution:
    """How one searched key is drawn: ``kind`` (one of :data:`DISTRIBUTIONS`) and its
    ``args`` (the values of a choice; ``(low, high)`` otherwise, randint's high excluded,
    as in Ray Tune).

    >>> d = Distribution("randint", (2, 5))
    >>> d.edges(), d.contains(4), d.contains(5), d.to_yaml()
    ([2, 4], True, False, {'randint': [2, 5]})
    """

    kind: str
    args: tuple[Any, ...]

    @classmethod
    def parse(cls, key: str, spec: dict[str, Any], fail: Any) -> Distribution:
        """``{kind: args}`` from a space file, checked (``fail(message)`` makes the error)."""
        if len(spec) != 1:
            raise fail(f"{key}: give exactly one of {', '.join(DISTRIBUTIONS)}")
        ((kind, args),) = spec.items()
        if kind not in DISTRIBUTIONS:
            raise fail(
                f"{key}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}"
            )
        if not isinstance(args, list) or not args:
            raise fail(f"{key}: {kind} needs a list, e.g. {kind}: [low, high]")
        if kind == "choice":
            return cls(kind, tuple(args))
        if len(args) != 2 or not all(
            isinstance(a, int | float) and not isinstance(a, bool) for a in args
        ):
            raise fail(f"{key}: {kind} needs two numbers [low, high], got {args!r}")
        low, high = args
        if low >= high:
            raise fail(f"{key}: {kind} low must be < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise fail(f"{key}: loguniform needs low > 0, got {low}")
        if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
            raise fail(f"{key}: randint bounds must be integers, got [{low}, {high}]")
        if kind == "randint":
            return cls(kind, (int(low), int(high)))
        return cls(kind, (float(low), float(high)))

    def to_tune(self) -> Any:
        """The Ray Tune domain (``tune.loguniform(low, high)``, ``tune.choice([...])``...)."""
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return getattr(tune, self.kind)(*self.args)

    def to_optuna(self) -> Any:
        """The same distribution as Optuna's (an int range includes its high there)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "choice":
            return CategoricalDistribution(list(self.args))
        if self.kind == "randint":
            return IntDistribution(self.args[0], self.args[1] - 1)
        low, high = self.args
        return FloatDistribution(low, high, log=self.kind == "loguniform")

    def edges(self) -> list[Any]:
        """Every value of a choice, else the lowest and highest value that can be drawn."""
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.args
        low, high = self.args
        if self.kind == "randint":
            return isinstance(value, int) and low <= value < high
        return isinstance(value, int | float) and low <= value <= high

    def to_yaml(self) -> dict[str, list[Any]]:
        """The ``{kind: [args]}`` form of a space file."""
        return {self.kind: list(self.args)}
