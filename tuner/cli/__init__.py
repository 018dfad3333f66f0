"""The command line, ``python -m tuner COMMAND``: its parser, the commands and the default
photo set. Each command imports what it needs when it runs, so ``--help`` and usage
errors answer without loading Ray or torch (docs/performance.md has the start-up time)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner._lazy import lazy_names

if TYPE_CHECKING:
    from tuner.cli._commands import main

__getattr__ = lazy_names(
    __name__,
    {
        "main": "_commands",
    },
)

__all__ = [
    "main",
]
