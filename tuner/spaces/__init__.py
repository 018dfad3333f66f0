"""Search spaces: a YAML file (``search_spaces/NAME.yaml`` or any path) checked and turned
into Ray Tune distributions, a budget and the points to try first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.spaces._spaces import Budget, SearchSpace, available_spaces, load_space, parse_space

__getattr__ = lazy_names(
    __name__,
    {
        "Budget": "_spaces",
        "SearchSpace": "_spaces",
        "available_spaces": "_spaces",
        "load_space": "_spaces",
        "parse_space": "_spaces",
    },
)

__all__ = [
    "Budget",
    "SearchSpace",
    "available_spaces",
    "load_space",
    "parse_space",
]
