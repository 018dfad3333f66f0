"""The report's figures, each drawn on a matplotlib figure from an experiment's results
(:class:`Results`): learning curves, best so far, hyperparameters, importance, the
Pareto front. A figure the results do not allow raises :class:`Skip` with the reason."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from tuner.results._front import draw_front
from tuner.results._leaderboard import plain
from tuner.spaces import Objectives, SearchSpace

_LOG_KEYS = ("lr", "weight_decay")


_BEST_COLOUR = "tab:red"


_MAX_LABELLED_TRIALS = 10


class Skip(Exception):
    """A figure that cannot be drawn from this experiment; the message says why."""


@dataclass
class Results:
    """What the figures are drawn from: the leaderboard, the histories, the space."""

    name: str
    board: pd.DataFrame
    histories: dict[str, pd.DataFrame]
    space: SearchSpace | None
    made: list[dict[str, Any]] = field(default_factory=list)  # refits, exported ensembles

    @property
    def searched(self) -> list[str]:
        if self.space is not None:
            return self.space.searched
        config_keys = list(self.board.columns[self.board.columns.get_loc("wall_time_s") + 1 : -1])
        return [k for k in config_keys if self.board[k].nunique() > 1]

    def kind(self, key: str) -> str:
        """The distribution of ``key`` in the space (``choice`` when unknown and not numeric)."""
        if self.space is not None and key in self.space.distributions:
            return self.space.distributions[key].kind
        numeric = pd.api.types.is_numeric_dtype(self.board[key])
        return (
            "uniform" if numeric and not pd.api.types.is_bool_dtype(self.board[key]) else "choice"
        )

    @property
    def scored(self) -> pd.DataFrame:
        """Trials with a finite best val_acc."""
        return self.board[np.isfinite(self.board["val_acc"].to_numpy(dtype=float))]


def pareto(exp: Results, fig: Figure) -> None:
    objectives = exp.space.objectives if exp.space is not None else Objectives()
    why = draw_front(exp.board, objectives, fig)
    if why:
        raise Skip(why)


def learning_curves(exp: Results, fig: Figure) -> None:
    rows = [r for _, r in exp.board.iterrows() if r["trial_id"] in exp.histories]
    if not rows:
        raise Skip("no trial has reported an epoch yet")
    ax = fig.add_subplot()
    best_id = exp.board.iloc[0]["trial_id"] if len(exp.scored) else None
    colours = _colours(len(rows))
    labelled = len(rows) <= _MAX_LABELLED_TRIALS
    for colour, row in reversed(list(zip(colours, rows, strict=True))):  # best drawn last
        df = exp.histories[row["trial_id"]]
        best = row["trial_id"] == best_id
        label = f"#{row['rank']} {row['trial_id']}" if labelled or best else None
        ax.plot(
            df["epoch"],
            df["val_acc"],
            color=_BEST_COLOUR if best else colour,
            lw=3.2 if best else 1.3,
            alpha=1.0 if best else 0.75,
            marker="o",
            ms=3,
            zorder=3 if best else 2,
            label=f"{label} (best)" if best else label,
        )
        if row["stopped_early"]:  # its last epoch, in its own colour
            last = df.iloc[-1]
            ax.plot(
                last["epoch"], last["val_acc"], "x", ms=10, mew=2.5, zorder=4,
                color=_BEST_COLOUR if best else colour,
            )  # fmt: skip
    rungs = []
    if exp.space is not None:
        budget = exp.space.budget
        rung = min(budget.grace_period, budget.max_epochs)
        while rung < budget.max_epochs:
            ax.axvline(rung, color="grey", ls=":", lw=1)
            rungs.append(rung)
            rung *= budget.reduction_factor
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], ls="none", marker="x", ms=9, mew=2.5, color="grey"))
    labels.append("x: last epoch of a trial ASHA stopped (in its colour)")
    if rungs:
        handles.append(Line2D([], [], ls=":", lw=1, color="grey"))
        labels.append(f"ASHA rung (epoch {', '.join(map(str, rungs))})")
    ax.legend(handles, labels, fontsize="small", loc="best")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val_acc")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{exp.name}: validation accuracy per epoch ({len(rows)} trials)")
    ax.grid(alpha=0.3)


def best_so_far(exp: Results, fig: Figure) -> None:
    events, starts = [], []
    for trial_id, df in exp.histories.items():
        if not {"timestamp", "time_total_s"} <= set(df.columns):
            continue
        # The trial's clock started at (its first report's time - the time it had spent by then).
        starts.append(float(df["timestamp"].iloc[0] - df["time_total_s"].iloc[0]))
        for t, acc in zip(df["time_total_s"], df["val_acc"], strict=True):
            if math.isfinite(acc):
                events.append((starts[-1] + float(t), float(acc), trial_id))
    if not events:
        raise Skip("no trial reported a timestamp with a finite val_acc")
    t0 = min(starts)
    events.sort()
    scale, unit = (60.0, "min") if events[-1][0] - t0 > 600 else (1.0, "s")
    times = np.array([(t - t0) / scale for t, _, _ in events])
    accs = np.array([a for _, a, _ in events])
    ax = fig.add_subplot()
    ax.scatter(times, accs, s=14, color="grey", alpha=0.6, label="an epoch of a trial")
    best = np.maximum.accumulate(accs)
    ax.step(times, best, where="post", color=_BEST_COLOUR, lw=2.2, label="best so far")
    i = int(np.argmax(accs))
    ax.annotate(
        f"{accs[i]:.3f} ({events[i][2]})",
        (times[i], accs[i]),
        textcoords="offset points",
        xytext=(6, -14),
        fontsize="small",
    )
    ax.set_xlim(left=0)
    ax.set_xlabel(f"wall-clock time since the experiment started ({unit})")
    ax.set_ylabel("val_acc")
    ax.set_title(f"{exp.name}: best val_acc found over time")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)


def hyperparameters(exp: Results, fig: Figure) -> None:
    keys = exp.searched
    scored = exp.scored
    if not keys:
        raise Skip("the space searches no hyperparameter (every key is a constant)")
    if scored.empty:
        raise Skip("no trial has a finite val_acc yet")
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig.set_size_inches(4.2 * ncols, 3.4 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    best_id = exp.board.iloc[0]["trial_id"]
    for ax, key in zip(axes.flat, keys, strict=False):
        values = scored[key].tolist()
        if exp.kind(key) == "choice":
            categories = _categories(exp, key, values)
            x = np.array([categories.index(v) for v in values], dtype=float)
            x += rng.uniform(-0.08, 0.08, len(x))
            ax.set_xticks(range(len(categories)), [str(c) for c in categories])
            ax.set_xlim(-0.5, len(categories) - 0.5)
        else:
            x = np.array(values, dtype=float)
            if exp.kind(key) == "loguniform" or (key in _LOG_KEYS and (x > 0).all()):
                ax.set_xscale("log")
            elif exp.kind(key) == "randint":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        early = scored["stopped_early"].to_numpy(dtype=bool)
        best = (scored["trial_id"] == best_id).to_numpy()
        y = scored["val_acc"].to_numpy(dtype=float)
        groups: list[tuple[np.ndarray, dict[str, Any]]] = [
            (~early & ~best, {"marker": "o", "label": "ran to the end"}),
            (early & ~best, {"marker": "x", "color": "black", "label": "stopped early by ASHA"}),
            (best, {"marker": "*", "s": 160, "color": _BEST_COLOUR, "label": "best trial"}),
        ]
        for mask, style in groups:
            if mask.any():
                ax.scatter(x[mask], y[mask], **style)
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("best val_acc")
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"{exp.name}: each trial's best val_acc against the searched hyperparameters")


def _categories(exp: Results, key: str, values: list[Any]) -> list[Any]:
    dist = exp.space.distributions.get(key) if exp.space is not None else None
    if dist is not None and dist.kind == "choice" and all(dist.contains(v) for v in values):
        return list(dist.args)
    return sorted(set(values), key=str)


# Below this many trials with a val_acc, importances are drawn with a caveat: fANOVA and
# PED-ANOVA fit a model of val_acc on the trials, which a handful of points cannot pin down.
MIN_IMPORTANCE_TRIALS = 10


def param_importances(exp: Results) -> tuple[dict[str, float], str, int]:
    """(importance per searched key, evaluator name, trials used), or raise ``Skip``."""
    import optuna

    if exp.space is None:
        raise Skip("tuner.json (the experiment's search space) is missing")
    dists = {key: dist.to_optuna() for key, dist in exp.space.distributions.items()}
    if not dists:
        raise Skip("the space searches no hyperparameter")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, row in exp.scored.iterrows():
        params = {k: plain(row[k]) for k in dists}
        try:
            trial = optuna.trial.create_trial(
                params=params, distributions=dists, value=row["val_acc"]
            )
        except ValueError:  # a value outside the space (e.g. the space file was edited)
            continue
        study.add_trial(trial)
    used = len(study.trials)
    if used < 2:
        raise Skip(f"{used} trial(s) with a finite val_acc; importance needs at least 2")
    failures = []
    for make in (_fanova, optuna.importance.PedAnovaImportanceEvaluator):
        try:
            evaluator = make()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except Exception as exc:  # optional dependency missing, degenerate data, ...
            failures.append(f"{make.__name__}: {type(exc).__name__}: {exc}")
            continue
        finite = {k: float(v) for k, v in importances.items() if math.isfinite(v)}
        if finite:
            return finite, type(evaluator).__name__, used
        failures.append(f"{make.__name__}: no finite importance")
    raise Skip("importance could not be computed (" + "; ".join(failures) + ")")


def _fanova() -> Any:
    import optuna

    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def importance(exp: Results, fig: Figure) -> None:
    importances, evaluator, used = param_importances(exp)
    keys = list(importances)[::-1]  # largest at the top
    ax = fig.add_subplot()
    ax.barh(keys, [importances[k] for k in keys], color="tab:blue")
    for i, key in enumerate(keys):
        ax.text(importances[key], i, f" {importances[key]:.2f}", va="center", fontsize="small")
    ax.set_xlabel(f"importance for val_acc ({evaluator}, normalised to sum 1)")
    ax.set_ylabel("hyperparameter")
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    caveat = "" if used >= MIN_IMPORTANCE_TRIALS else ": too few to rely on"
    ax.set_title(f"{exp.name}: hyperparameter importance ({used} trials{caveat})")
    ax.grid(alpha=0.3, axis="x")


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(n - 1, 1)) for i in range(n)]
