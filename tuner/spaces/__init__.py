"""Search spaces: a YAML file (``search_spaces/NAME.yaml`` or any path) checked and turned
into Ray Tune distributions, a budget and the points to try first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.spaces._objectives import (
        COSTS,
        LATENCY_DEVICES,
        Constraint,
        Objectives,
        front_ranks,
        objectives_of,
    )
    from tuner.spaces._schema import space_schema
    from tuner.spaces._spaces import Budget, SearchSpace, available_spaces, load_space, parse_space
    from tuner.spaces._strategy import PBT_MUTABLE, SCHEDULERS, SEARCHERS, Strategy

__getattr__ = lazy_names(
    __name__,
    {
        "available_spaces": "_spaces",
        "Budget": "_spaces",
        "Constraint": "_objectives",
        "COSTS": "_objectives",
        "front_ranks": "_objectives",
        "LATENCY_DEVICES": "_objectives",
        "load_space": "_spaces",
        "Objectives": "_objectives",
        "objectives_of": "_objectives",
        "parse_space": "_spaces",
        "PBT_MUTABLE": "_strategy",
        "SCHEDULERS": "_strategy",
        "space_schema": "_schema",
        "SEARCHERS": "_strategy",
        "SearchSpace": "_spaces",
        "Strategy": "_strategy",
    },
)

__all__ = [
    "COSTS",
    "LATENCY_DEVICES",
    "PBT_MUTABLE",
    "SCHEDULERS",
    "SEARCHERS",
    "Budget",
    "Constraint",
    "Objectives",
    "SearchSpace",
    "Strategy",
    "available_spaces",
    "front_ranks",
    "load_space",
    "objectives_of",
    "parse_space",
    "space_schema",
]
