"""The training loop itself: metrics, checkpoints, resume, divergence."""

import math

import pytest
import torch
from conftest import METRIC_KEYS

from trainables import TrialConfig, fit, load_state, prepare_data, scan_folder
from trainables._data import cache_size_for
from trainables._features import uses_feature_cache


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


def test_head_only_without_augmentation_trains_on_features_computed_once(
    cache, tmp_path, monkeypatch
):
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path))
    head_only = {
        **CFG,
        "model": "efficientnet_lite0",
        "pretrained": True,
        "freeze_depth": 4,
        "aug_strength": 0.0,
        "optimizer": "adam",
        "lr": 0.01,
        "max_epochs": 2,
    }
    cfg = TrialConfig.from_dict(head_only)
    assert uses_feature_cache(cfg)
    assert not uses_feature_cache(cfg.replace(aug_strength=0.1))
    assert not uses_feature_cache(cfg.replace(freeze_depth=3))

    cached = run(cfg, cache)
    stored = list((tmp_path / "features").glob("*.pt"))
    assert len(stored) == 1  # keyed by model, weights, image size and photos
    again = run(cfg, cache)  # loads the stored features
    monkeypatch.setenv("TUNER_FEATURE_CACHE", "off")
    # The same training through the whole network every epoch gives the same result.
    import trainables._train as train_module

    monkeypatch.setattr(train_module, "uses_feature_cache", lambda cfg: False)
    full = run(cfg, cache)
    for a, b, c in zip(cached, again, full, strict=True):
        assert a[0]["train_loss"] == pytest.approx(b[0]["train_loss"], rel=1e-6)
        assert a[0]["train_loss"] == pytest.approx(c[0]["train_loss"], rel=1e-3)
        assert a[0]["val_acc"] == c[0]["val_acc"]
    # Only the head moved; the frozen backbone is byte-identical to its start.
    first, last = cached[0][1]["model"], cached[-1][1]["model"]
    assert torch.equal(first["_conv_stem.weight"], last["_conv_stem.weight"])
