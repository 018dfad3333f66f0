"""How Ray Tune runs the trial function: its parameters, resources, and an actor that
ends quietly.

``tune.with_parameters`` and ``tune.with_resources`` are public. Ray Tune's
``wrap_function`` (and ``tune.with_parameters``) put a function's ``__mixins__`` into
the actor class it builds for it, an undocumented hook ``tests/test_internals.py``
checks: :class:`QuietStop` is mixed in that way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def tune_trainable(fn: Callable[..., None], resources: dict[str, float], **params: Any) -> Any:
    """``fn`` with ``params`` bound and ``resources`` asked for each trial, as Tune takes
    it, its actor mixed with :class:`QuietStop`."""
    from ray import tune

    trainable = tune.with_parameters(fn, **params)
    trainable.__mixins__ = (QuietStop,)
    return tune.with_resources(trainable, resources)


class QuietStop:
    """Mixed by Ray Tune into the actor it builds for a trial (:func:`tune_trainable`).

    When Tune stops a trial's actor for good (a trial ASHA stopped, or the
    last one, with no trial left to reuse the actor for), it runs ``stop`` on
    the actor, then drops the actor and removes its placement group at once;
    the raylet sends the process SIGTERM (then SIGKILL 200 ms later). Ray's
    worker handler turns that SIGTERM into ``SystemExit`` raised in whatever
    Python code the worker runs at that moment, often a finaliser, which
    prints ``Exception ignored ... sigterm_handler ... SystemExit: 1`` on the
    search's stderr. Once the trial has stopped (its results and checkpoints
    reported, nothing left to save), SIGTERM takes its default action: the
    process ends at once, quietly.
    """

    def cleanup(self) -> None:
        try:
            super().cleanup()  # type: ignore[misc]
        finally:
            end_quietly_on_sigterm()


def end_quietly_on_sigterm() -> None:
    """From now on SIGTERM ends this process at once, running no Python handler.

    Needs the main thread (where Ray runs an actor's tasks); elsewhere nothing changes.
    """
    import contextlib
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for stream in (sys.stdout, sys.stderr):  # what the trial printed still reaches the log
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
