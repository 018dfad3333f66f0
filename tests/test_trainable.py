"""The training loop itself: metrics, checkpoints, resume, divergence."""

import math

import pytest
from conftest import METRIC_KEYS

from trainables import TrialConfig, fit, load_state, prepare_data, scan_folder
from trainables._data import cache_size_for


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
