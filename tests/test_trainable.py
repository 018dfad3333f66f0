"""The training loop itself: metrics, checkpoints, resume, divergence."""

import math

import pytest
import torch
from conftest import METRIC_KEYS

from trainables import TrialConfig, fit, load_state, prepare_data, scan_folder
from trainables._data import cache_size_for
from trainables._features import cache_part, prune


@pytest.fixture
def cache(synthetic):
    _, data = prepare_data(scan_folder(synthetic), size=cache_size_for(32), seed=0)
    return data


def run(cfg, data, resume_state=None):
    reports = []

    def report(metrics, folder):
        reports.append((metrics, load_state(folder)))

    fit(cfg, data, report, resume_state=resume_state, threads=1)
    return reports


CFG = dict(
    model="resnet18",
    pretrained=False,
    image_size=32,
    batch_size=8,
    lr=0.05,
    optimizer="sgd",
    step_size=1,
    gamma=0.5,
    aug_strength=0.5,
    max_epochs=3,
    seed=3,
)


def test_reports_every_epoch_with_metrics_and_full_checkpoint(cache):
    reports = run(TrialConfig.from_dict(CFG), cache)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    for metrics, state in reports:
        assert set(metrics) >= METRIC_KEYS
        assert 0.0 <= metrics["val_acc"] <= 1.0 and metrics["images_per_s"] > 0
        assert state["epoch"] == metrics["epoch"]
        assert {"model", "optimizer", "scheduler", "rng_cpu", "config", "classes"} <= set(state)
    # StepLR(step_size=1, gamma=0.5) is stepped once per epoch.
    assert [m["lr"] for m, _ in reports] == pytest.approx([0.05, 0.025, 0.0125])


def test_resumes_from_its_checkpoint_at_the_next_epoch_with_identical_results(cache):
    cfg = TrialConfig.from_dict(CFG)
    straight = run(cfg, cache)
    resumed = run(cfg, cache, resume_state=straight[0][1])
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    for (a, _), (b, _) in zip(straight[1:], resumed, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_acc"] == b["val_acc"] and a["lr"] == b["lr"]


def test_non_finite_loss_ends_the_trial_as_diverged(cache):
    cfg = TrialConfig.from_dict({**CFG, "lr": 1e12, "max_epochs": 4, "aug_strength": 0.0})
    reports = run(cfg, cache)
    last = reports[-1][0]
    assert last["diverged"] is True
    assert len(reports) < 4
    assert math.isnan(last["train_loss"]) and last["val_acc"] == 0.0


def test_learns_something_on_separable_photos(cache):
    cfg = TrialConfig.from_dict(
        {
            **CFG,
            "model": "efficientnet_lite0",
            "pretrained": True,
            "freeze_depth": 3,
            "optimizer": "adam",
            "lr": 0.01,
            "max_epochs": 3,
            "aug_strength": 0.0,
        }
    )
    reports = run(cfg, cache)
    assert max(m["val_acc"] for m, _ in reports) > 0.5  # chance is 1/3


@pytest.mark.parametrize(
    ("model", "depth", "frozen_param", "lr"),
    [
        ("efficientnet_lite0", 4, "_conv_head.weight", 0.01),  # head only, on pooled features
        # Stage 4 on stage 3's maps. At 32 px it trains BatchNorm on 1x1 maps, which
        # blows float rounding up into different training: small steps keep it linear.
        ("efficientnet_lite0", 3, "_blocks.10._project_conv.weight", 1e-4),
        ("resnet18", 2, "layer2.0.conv1.weight", 0.01),  # stages 3-4 on stage 2's maps
    ],
)
def test_frozen_activations_are_computed_once_and_train_like_the_full_network(
    cache, tmp_path, monkeypatch, model, depth, frozen_param, lr
):
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path))
    monkeypatch.delenv("TUNER_FEATURE_CACHE", raising=False)
    cfg = TrialConfig.from_dict(
        {
            **CFG,
            "model": model,
            "pretrained": model == "efficientnet_lite0",  # ResNet weights cannot be downloaded
            "freeze_depth": depth,
            "aug_strength": 0.0,
            # SGD: Adam's normalised steps would blow float rounding up to full-size updates.
            "optimizer": "sgd",
            "lr": lr,
            "max_epochs": 2,
        }
    )
    assert cache_part(cfg) == (6 if depth == 4 else depth + 1)
    assert cache_part(cfg.replace(aug_strength=0.1)) is None
    assert cache_part(cfg.replace(freeze_depth=0)) is None

    cached = run(cfg, cache)
    stored = list((tmp_path / "features").glob("*.pt"))
    # Stored on disk only with pretrained weights (the key names them).
    assert len(stored) == int(cfg.pretrained)
    again = run(cfg, cache)  # loads the stored activations, or computes them again
    # The same training through the whole network every epoch gives the same result.
    import trainables._train as train_module

    monkeypatch.setattr(train_module, "cache_part", lambda cfg: None)
    full = run(cfg, cache)
    # (Up to float rounding: the frozen pass runs in other batch sizes.)
    for a, b, c in zip(cached, again, full, strict=True):
        assert a[0]["train_loss"] == pytest.approx(b[0]["train_loss"], rel=1e-6)
        for key in ("train_loss", "val_loss"):
            assert a[0][key] == pytest.approx(c[0][key], rel=1e-2)
    # The frozen part is byte-identical to its start; the part after it trained.
    first, last = cached[0][1]["model"], cached[-1][1]["model"]
    assert torch.equal(first[frozen_param], last[frozen_param])
    head = "_fc.weight" if model == "efficientnet_lite0" else "fc.weight"
    assert not torch.equal(first[head], last[head])


def test_activations_over_the_size_limit_are_not_cached(cache, tmp_path, monkeypatch):
    import trainables._train as train_module

    monkeypatch.setenv("TUNER_CACHE", str(tmp_path))
    monkeypatch.delenv("TUNER_FEATURE_CACHE", raising=False)
    calls = []
    real = train_module.cached_features
    monkeypatch.setattr(train_module, "cached_features", lambda *a: calls.append(1) or real(*a))
    cfg = TrialConfig.from_dict(
        {**CFG, "model": "efficientnet_lite0", "freeze_depth": 1, "aug_strength": 0.0}
    )
    run(cfg.replace(max_epochs=1), cache)
    assert calls == [1]
    # Stage 1's maps at 32 px: 24 x 8 x 8 floats per photo, ~6 KiB; 1 KiB allowed.
    monkeypatch.setenv("TUNER_FEATURE_CACHE_MB", str(1 / 1024))
    reports = run(cfg.replace(max_epochs=1), cache)
    assert calls == [1] and reports[0][0]["val_acc"] >= 0


def test_disk_cache_keeps_the_most_recently_used_entries(tmp_path):
    import os

    for age, name in enumerate(["new", "mid", "old"]):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1e9 - age * 100, 1e9 - age * 100))
    removed = prune(tmp_path, budget_bytes=2500)
    assert [p.name for p in removed] == ["old.pt"]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["mid.pt", "new.pt"]
