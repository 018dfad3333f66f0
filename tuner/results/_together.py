"""Several ranked trials run over the same photos in one pass, sharing what they share.

A search freezes the stem and the first stages of a pretrained network and trains the
rest, so its trials of one model hold the same frozen weights. Scored one at a time
(the top trials on the test split when a search ends, an ensemble's candidates on the
validation photos), each trial decodes every photo again and runs that frozen prefix
again. :class:`Together` runs the prefix once per batch for every trial whose first
stages hold equal weights (compared tensor by tensor, never assumed from a config),
then each trial's own later stages on its output; :func:`classify_together` decodes
each photo once for all of them. Each trial's logits are those it gives alone: the
network split at a part computes what it computes whole (:func:`trainables.run_parts`).

How many models are held at once is bounded (:data:`MODEL_BYTES`): a longer list is
scored in windows of ranks, each one pass over the photos.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from trainables import PhotoSource, run_parts, stages
from tuner.results._inference import Classified, RankedTrial, classify

# The weights of the models held at once while scoring together.
MODEL_BYTES = 1 << 30
N_PARTS = 7  # stem, stages 1-4, pooling, head: trainables.run_parts


def shared_parts(a: nn.Module, b: nn.Module, model: str) -> int:
    """How many parts of the network, from the stem on, ``a`` and ``b`` (two ``model``
    networks) compute alike: every weight and buffer of their first stages equal. All
    five (stem and stages 1-4) take the parameter-free pooling after them too."""
    parts_a, parts_b = stages(a, model), stages(b, model)
    same = 0
    for group_a, group_b in zip(parts_a, parts_b, strict=True):
        if not all(_equal(x, y) for x, y in zip(group_a, group_b, strict=True)):
            break
        same += 1
    return same + 1 if same == len(parts_a) else same


def _equal(x: nn.Module, y: nn.Module) -> bool:
    sx, sy = x.state_dict(), y.state_dict()
    return sx.keys() == sy.keys() and all(
        sx[k].shape == sy[k].shape and sx[k].dtype == sy[k].dtype and torch.equal(sx[k], sy[k])
        for k in sx
    )


class Together(nn.Module):
    """``nets`` (eval mode, each a network of ``models[i]``) as one module whose output is
    their logits side by side, trial ``i``'s in the ``i``-th block of columns
    (:meth:`split`).

    Part by part from the stem, the trials of one model that still agree run the next part
    once; where they part ways, each branch goes on alone (a tree: the head-only trials
    of a search share stage 4 and the pooling, and with its other trials stages 0-3)."""

    def __init__(self, nets: Sequence[nn.Module], models: Sequence[str]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.models = list(models)
        self._shared: dict[tuple[int, int], int] = {}
        self.widths: list[int] = []  # each trial's number of logits, from the last pass
        self.runs = 0  # parts run in the last pass, for the tests and benchmarks

    def _agree(self, i: int, j: int) -> int:
        """The parts trials ``i`` and ``j`` compute alike, from the stem."""
        key = (min(i, j), max(i, j))
        if key not in self._shared:
            self._shared[key] = shared_parts(self.nets[i], self.nets[j], self.models[i])
        return self._shared[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: dict[int, torch.Tensor] = {}
        self.runs = 0
        for model in dict.fromkeys(self.models):
            members = [i for i, m in enumerate(self.models) if m == model]
            self._descend(x, members, 0, out)
        logits = [out[i].float() for i in range(len(self.nets))]
        self.widths = [t.shape[1] for t in logits]
        return torch.cat(logits, 1)

    def _descend(
        self, x: torch.Tensor, members: list[int], part: int, out: dict[int, torch.Tensor]
    ) -> None:
        """Run ``members`` (which computed parts 0 .. part - 1 alike, giving ``x``) on."""
        left = list(members)
        while left:
            lead, rest = left[0], left[1:]
            same = [lead, *[j for j in rest if self._agree(lead, j) > part]]
            left = [j for j in rest if j not in same]
            model = self.models[lead]
            if len(same) == 1:
                out[lead] = run_parts(self.nets[lead], model, x, part)
                self.runs += N_PARTS - part
                continue
            y = run_parts(self.nets[lead], model, x, part, part + 1)
            self.runs += 1
            self._descend(y, same, part + 1, out)

    def split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """Each trial's logits, in the order of ``nets``."""
        return list(logits.split(self.widths, dim=1))


def classify_together(
    trials: Sequence[RankedTrial], paths: Sequence[str], source: PhotoSource
) -> tuple[list[torch.Tensor], Classified]:
    """Each trial's fp32 logits for the readable photos of ``paths`` under ``source``,
    every photo decoded once and the trials' shared frozen parts run once (all trials
    must prepare photos alike); and the pass's ``ok``/``failed`` (its ``logits`` all
    trials' side by side)."""
    preps = {t.preprocessing for t in trials}
    if len(preps) != 1:
        raise ValueError("trials scored together must prepare photos alike")
    (prep,) = preps
    together = Together([t.model for t in trials], [str(t.config["model"]) for t in trials])
    result = classify(together, paths, prep, source)
    if not result.ok:
        return [torch.empty(0, 0) for _ in trials], result
    return together.split(result.logits), result


def windows(
    trials: Iterable[RankedTrial], budget: int | None = None
) -> Iterator[list[RankedTrial]]:
    """``trials`` (loaded as they are drawn) in runs of one preprocessing whose weights
    fit ``budget`` (default :data:`MODEL_BYTES`) together, at least one trial each, in
    order: no more than a window and the next trial are held at once."""
    limit = MODEL_BYTES if budget is None else budget
    window: list[RankedTrial] = []
    held = 0
    for trial in trials:
        size = sum(t.numel() * t.element_size() for t in trial.model.state_dict().values())
        if window and (held + size > limit or trial.preprocessing != window[0].preprocessing):
            yield window
            window, held = [], 0
        window.append(trial)
        held += size
    if window:
        yield window
