"""Trials scored together: the frozen stages they share run once, and each trial's logits
are those it gives alone (real photos, real EfficientNet-Lite weights, at 64 px)."""

from __future__ import annotations

import pytest
import torch

import trainables
from tuner.results._inference import Preprocessing, classify
from tuner.results._together import Together, shared_parts, windows

MODEL, SIZE, CLASSES = "efficientnet_lite0", 64, 5


def trained(stage_from: int, seed: int) -> torch.nn.Module:
    """The pretrained network as a trial frozen below ``stage_from`` leaves it: those
    stages as loaded, every later one (and the head) changed."""
    torch.manual_seed(seed)
    net = trainables.build_model(MODEL, CLASSES, pretrained=True, image_size=SIZE)
    parts = trainables.stages(net, MODEL)
    changed = [m for group in parts[stage_from:] for m in group]
    changed.append(trainables.head(net, MODEL))
    with torch.no_grad():
        for module in changed:
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return net.eval().to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def photos(flowers):
    return sorted(str(p) for p in flowers.glob("*/*.jpg"))[::97][:12]


def test_shared_parts_counts_equal_stages_from_the_stem_and_one_changed_buffer_ends_them():
    a, b = trained(4, seed=1), trained(4, seed=2)  # stage 4 and the head trained
    assert shared_parts(a, b, MODEL) == 4  # stem, stages 1-3
    head_only = trained(5, seed=3)
    assert shared_parts(head_only, trained(5, seed=4), MODEL) == 6  # every stage, and pooling
    bn = next(m for m in trainables.stages(head_only, MODEL)[2][0].modules()
              if isinstance(m, torch.nn.BatchNorm2d))  # fmt: skip
    bn.running_mean[0] += 1e-3  # a statistic a trial unfreezing stage 2 would have moved
    assert shared_parts(head_only, a, MODEL) == 2


def test_trials_together_run_shared_stages_once_and_give_each_trials_own_logits(photos):
    nets = [trained(4, 1), trained(5, 2), trained(4, 3), trained(5, 4), trained(2, 5)]
    other = trainables.build_model("efficientnet_lite1", CLASSES, pretrained=False,
                                   image_size=SIZE).eval()  # fmt: skip
    models = [MODEL] * len(nets) + ["efficientnet_lite1"]
    together = Together([*nets, other], models)
    prep = Preprocessing.for_model(MODEL, SIZE)
    result = classify(together, photos, prep)
    assert result.ok == list(range(len(photos)))
    for net, logits in zip([*nets, other], together.split(result.logits), strict=True):
        alone = classify(net, photos, prep).logits
        assert torch.allclose(logits, alone, atol=1e-5), (logits - alone).abs().max()
    # One batch of photos. Lite0: the stem and stage 1 once for all five (2 parts); stages
    # 2-3 once for the four that froze them (2); stage 4 and the pooling once for the two
    # head-only trials (2), then each one's head (2); stage 4, pooling and head for each of
    # the two stage-4 trials (6); stages 2 on for the stage-2 trial (5). Lite1 whole (7).
    # 26 parts run, where scoring each trial alone runs 6 * 7 = 42.
    assert together.runs == 26


def test_windows_keep_one_preprocessing_within_the_weight_budget():
    class Trial:
        def __init__(self, size: int, n: int) -> None:
            self.preprocessing = Preprocessing.for_model(MODEL, size)
            self.model = torch.nn.Linear(n, 1, bias=False)  # n float32 weights

    trials = [Trial(64, 10), Trial(64, 10), Trial(64, 10), Trial(96, 10), Trial(64, 30)]
    got = [[trials.index(t) for t in w] for w in windows(iter(trials), budget=80)]
    # 40 bytes each: two fit 80; a new size starts a window; one over the budget goes alone.
    assert got == [[0, 1], [2], [3], [4]]
