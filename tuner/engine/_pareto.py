"""Asynchronous successive halving on several objectives (the rung rule of MO-ASHA,
Schmucker et al., 2021), as a Ray Tune scheduler.

ASHA keeps a trial past a rung when its val_acc is in the top ``1/reduction_factor``
of the values recorded there. On accuracy alone that stops a fast model of lower
accuracy, which may belong on the accuracy/latency front. :class:`ParetoASHA` ranks
the points recorded at a rung (each trial's objectives there: val_acc, latency_ms,
...) by Pareto front. A trial on the rung's first front always continues: nothing seen
there beats it on every objective, so stopping it could cut the search's front. Any
other trial continues if it ranks in the top ``ceil(n / reduction_factor)`` of the
``n`` points, its own included, ranked by front, then within a front by NSGA-II's
crowding distance (a front's ends first, then the points in its sparsest stretches),
then by val_acc. As in Ray's ASHA, the first trial at a rung always continues.

Built only through :func:`tuner.engine._strategy.make_scheduler`.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuner.spaces import front_ranks


def crowding_distances(points: list[tuple[float, ...]], ranks: list[int]) -> list[float]:
    """NSGA-II's crowding distance of each point within its front: the ends of a front on
    each objective are infinitely far; an inner point scores the gaps between its
    neighbours on each objective, each over that objective's span in the front."""
    out = [0.0] * len(points)
    for rank in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == rank]
        for k in range(len(points[0])):
            members.sort(key=lambda i: points[i][k])
            span = points[members[-1]][k] - points[members[0]][k]
            out[members[0]] = out[members[-1]] = math.inf
            for before, i, after in zip(members, members[1:], members[2:], strict=False):
                if span > 0:
                    out[i] += (points[after][k] - points[before][k]) / span
    return out


class ParetoASHA(FIFOScheduler):
    """ASHA whose rungs keep the best Pareto fronts of ``metrics`` (with ``modes``)."""

    def __init__(
        self,
        metrics: list[str],
        modes: list[str],
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        time_attr: str = "epoch",
    ) -> None:
        super().__init__()
        self._metrics, self._modes = list(metrics), list(modes)
        self._metric = metrics[0]  # what Tune shows; the rungs read all of them
        self._time_attr, self._max_t, self._eta = time_attr, max_t, reduction_factor
        milestones, rung = [], float(min(grace_period, max_t))
        while rung < max_t:
            milestones.append(int(rung))
            rung *= reduction_factor
        # Highest milestone first, as Ray's ASHA reads its rungs.
        self._rungs: list[tuple[int, dict[str, tuple[float, ...]]]] = [
            (m, {}) for m in sorted(set(milestones), reverse=True)
        ]
        self.stopped = 0

    @property
    def milestones(self) -> list[int]:
        return sorted(m for m, _ in self._rungs)

    def set_search_properties(self, metric: Any, mode: Any, **spec: Any) -> bool:
        return not (metric or mode)  # its own metrics, never Tune's

    def _point(self, result: dict[str, Any]) -> tuple[float, ...] | None:
        try:
            point = tuple(float(result[m]) for m in self._metrics)
        except (KeyError, TypeError, ValueError):
            return None
        return point if all(math.isfinite(v) for v in point) else None

    def keeps(self, point: tuple[float, ...], recorded: list[tuple[float, ...]]) -> bool:
        """Whether ``point`` ranks in the top share of ``recorded`` plus itself."""
        points = [*recorded, point]
        ranks = front_ranks(points, self._modes)
        crowding = crowding_distances(points, ranks)
        sign = 1.0 if self._modes[0] == "max" else -1.0
        order = sorted(
            range(len(points)), key=lambda i: (ranks[i], -crowding[i], -sign * points[i][0], i)
        )
        if ranks[-1] == 1:
            return True  # on the rung's front: cutting it would cut the search's front
        kept = math.ceil(len(points) / self._eta)
        return order.index(len(points) - 1) < kept

    def _on_result(self, trial_id: str, result: dict[str, Any]) -> str:
        point = self._point(result)
        t = result.get(self._time_attr)
        if point is None or not isinstance(t, int | float):
            return TrialScheduler.CONTINUE
        for milestone, recorded in self._rungs:
            if t >= milestone and trial_id in recorded:
                break  # decided at the highest rung it passed
            if t < milestone:
                continue
            action = (
                TrialScheduler.CONTINUE
                if self.keeps(point, list(recorded.values()))
                else TrialScheduler.STOP
            )
            recorded[trial_id] = point
            return action
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE  # its last epoch: it ends by itself
        action = self._on_result(trial.trial_id, result)
        self.stopped += action == TrialScheduler.STOP
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        if result:
            self._on_result(trial.trial_id, result)

    def debug_string(self) -> str:
        rungs = ", ".join(f"epoch {m}: {len(r)}" for m, r in reversed(self._rungs)) or "none"
        return f"Pareto ASHA on {', '.join(self._metrics)}: {self.stopped} stopped; rungs {rungs}"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
