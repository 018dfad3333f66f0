"""The command line, ``python -m tuner COMMAND``: its parser, the commands and the default
photo set. Each command imports what it needs when it runs, so ``--help`` and usage
errors answer without loading Ray or torch (``python -m tuner --help``: 0.04 s; with
every command's modules imported first: 4.5 s on a 2-core machine)."""

from tuner.cli._commands import main

__all__ = ["main"]
