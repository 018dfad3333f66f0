"""Ensembles of ranked trials: averaged class probabilities, exported as one model.

``tuner export NAME --ensemble K`` picks K members among the ranked trials'
best checkpoints and writes one TorchScript module that averages their
probabilities (weighted by how often each was picked), so ``predict`` uses it
unchanged. Two ways to pick:

- ``top`` (the default): the K best-ranked trials, once each;
- ``greedy`` (Caruana et al., 2004): K rounds over the 2K best-ranked trials;
  each round adds (with replacement) the member that makes the ensemble's
  validation accuracy highest (ties: lowest validation log-loss). On a few
  hundred validation photos it fits their noise: on the test photos the top 3
  beat it in every search of ``benchmarks/vs_recipe.py``.

Selection reads only the validation split; the test split scores the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from tuner._errors import UsageError
from tuner.results._inference import RankedTrial, load_ranked_trial
from tuner.results._together import classify_together
from tuner.storage import Experiment

METHODS = ("greedy", "top")


class ProbabilityMean(nn.Module):
    """Weighted mean of its members' softmax probabilities, returned as log-probabilities.

    ``softmax`` of the output is exactly that mean, so code that turns logits
    into probabilities (``predict``) needs no change.
    """

    def __init__(self, members: list[nn.Module], weights: list[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.weights: torch.Tensor
        self.register_buffer("weights", torch.tensor([w / total for w in weights]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(1) for m in self.members])
        mean = (probs * self.weights.view(-1, 1, 1)).sum(0)
        return mean.clamp_min(1e-12).log()


@dataclass
class Ensemble:
    """Chosen members (ranked trials) with their weights, and the ensemble's val accuracy."""

    members: list[RankedTrial]
    weights: list[float]
    val_acc: float
    method: str

    def module(self) -> ProbabilityMean:
        return ProbabilityMean([m.model for m in self.members], self.weights).eval()


def choose_ensemble(
    exp: Experiment,
    board: pd.DataFrame,
    k: int,
    method: str,
    say: Callable[[str], None] = lambda _: None,
) -> Ensemble:
    """Pick ``k`` members by ``method`` (see the module doc) from ``board``'s ranked trials,
    saying which candidates it scores on the validation photos (in one pass)."""
    if method not in METHODS:
        raise UsageError(f"unknown ensemble method {method!r}; choose one of: {', '.join(METHODS)}")
    ranks = [
        int(r["rank"])
        for _, r in board.iterrows()
        if str(r["checkpoint"] or "") and math.isfinite(float(r["val_acc"]))
    ]
    if len(ranks) < 2:
        raise UsageError(
            f"an ensemble needs at least 2 trials with a checkpoint; found {len(ranks)}"
        )
    pool = ranks[: k if method == "top" else 2 * k]
    trials = [load_ranked_trial(exp, rank, board) for rank in pool]
    sizes = {t.preprocessing for t in trials}
    if len(sizes) > 1:
        raise UsageError(
            "the ensemble's trials prepare photos differently (image size or normalisation); "
            "ensembles need one preprocessing"
        )
    split = exp.split()
    named = ", ".join(str(t.rank) for t in trials)
    say(f"Scoring ranks {named} on the {len(split.val)} validation photos in one pass")
    logits, result = classify_together(trials, [p for p, _ in split.val], split.root)
    probs = [x.softmax(1) for x in logits]
    labels = torch.tensor([split.val[i][1] for i in result.ok], dtype=torch.long)
    counts = [1.0] * len(trials) if method == "top" else _greedy(probs, labels, k)
    chosen = [i for i, c in enumerate(counts) if c > 0]
    weights = [counts[i] for i in chosen]
    mean = torch.stack([probs[i] * counts[i] for i in chosen]).sum(0) / sum(weights)
    val_acc = float((mean.argmax(1) == labels).float().mean())
    return Ensemble([trials[i] for i in chosen], weights, val_acc, method)


def _greedy(probs: list[torch.Tensor], labels: torch.Tensor, k: int) -> list[float]:
    counts = [0.0] * len(probs)
    total = torch.zeros_like(probs[0])
    for step in range(1, k + 1):
        best: tuple[float, float, int] | None = None
        for i, p in enumerate(probs):
            mean = (total + p) / step
            acc = float((mean.argmax(1) == labels).float().mean())
            nll = float(-mean.gather(1, labels.view(-1, 1)).clamp_min(1e-12).log().mean())
            if best is None or (acc, -nll) > (best[0], -best[1]):
                best = (acc, nll, i)
        assert best is not None
        counts[best[2]] += 1
        total += probs[best[2]]
    return counts
