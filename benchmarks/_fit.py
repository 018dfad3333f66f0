"""One ``trainables.fit`` run timed outside Ray, for the benchmarks that compare trials."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FitRun:
    """What one ``fit`` reported: each epoch's val_acc and val_loss, and its wall time (s)."""

    seconds: float = 0.0
    accs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def timed_fit(cfg: Any, data: Any, threads: int | None) -> FitRun:
    """``trainables.fit(cfg, data)`` on ``threads`` torch threads, every checkpoint removed
    as it is reported (the benchmark keeps none). ``trainables`` is imported here, so a
    caller can set ``TUNER_CACHE`` before its first use."""
    import trainables

    run = FitRun()

    def report(metrics: dict[str, Any], folder: Path) -> None:
        run.accs.append(float(metrics["val_acc"]))
        run.losses.append(float(metrics["val_loss"]))
        shutil.rmtree(folder, ignore_errors=True)

    t0 = time.perf_counter()
    trainables.fit(cfg, data, report, threads=threads)
    run.seconds = time.perf_counter() - t0
    return run
