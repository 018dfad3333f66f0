"""Search spaces: a YAML file (``search_spaces/NAME.yaml`` or any path) checked and turned
into Ray Tune distributions, a budget and the points to try first."""

from tuner.spaces._spaces import Budget, SearchSpace, available_spaces, load_space, parse_space

__all__ = ["Budget", "SearchSpace", "available_spaces", "load_space", "parse_space"]
