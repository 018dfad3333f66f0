"""Package faces that import a name's module on first use (PEP 562).

Importing ``tuner.search._datacheck`` runs ``tuner/search/__init__.py`` first; a face
that imported its modules eagerly would load Ray and torch for ``data check``
(1.1 GB resident instead of 80 MB). Each face lists where its names live instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_names(package: str, sources: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``name`` imported from
    ``package.sources[name]`` when first asked for."""
    namespace = importlib.import_module(package).__dict__

    def getattr_(name: str) -> Any:
        module = sources.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return getattr_
