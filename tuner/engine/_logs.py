"""What Ray Tune logs and writes about failures, read and quietened in one place.

- The logger of Tune's trial loop (``ray.tune.execution.tune_controller``), through
  which it logs a trial's failed checkpoint write with the whole traceback.
- A trial's error file, to which Tune appends each failure under a
  ``Failure # N (occurred at ...)`` header (``Trial.handle_error``).
- The ``ray.tune`` logger, silenced once the tool has said why it stops a search.
- The logger of ``tune.run`` (``ray.tune.tune``), which ends an interrupted search
  with "Resume experiment with: Tuner.restore(...)": the tool says its own
  ``resume`` command instead (:func:`no_restore_hint`).

``tests/test_internals.py`` checks each against the installed Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"
RUN_LOGGER = "ray.tune.tune"
FAILURE_HEADER = "Failure # "
RESTORE_HINT = "Resume experiment with: "


def filter_trial_loop_log(log_filter: logging.Filter) -> None:
    """Pass what Tune's trial loop logs through ``log_filter`` (added once)."""
    controller = logging.getLogger(CONTROLLER_LOGGER)
    if log_filter not in controller.filters:
        controller.addFilter(log_filter)


def last_failure(error_file_text: str) -> str:
    """The newest failure of a trial's error file (the whole text if it has no header).

    >>> last_failure("Failure # 1 (occurred at x)\\nA\\nFailure # 2 (occurred at y)\\nB\\n")
    '2 (occurred at y)\\nB\\n'
    """
    return error_file_text.rsplit(FAILURE_HEADER, 1)[-1]


def silence_tune_logs() -> None:
    """From now on Tune logs nothing below CRITICAL in this process."""
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)


def _drop_restore_hint(record: logging.LogRecord) -> bool:
    return RESTORE_HINT not in record.getMessage()


@contextmanager
def no_restore_hint() -> Iterator[None]:
    """While inside, Tune does not tell an interrupted search's user to call
    ``Tuner.restore`` (the caller says how to resume instead)."""
    run = logging.getLogger(RUN_LOGGER)
    run.addFilter(_drop_restore_hint)
    try:
        yield
    finally:
        run.removeFilter(_drop_restore_hint)
