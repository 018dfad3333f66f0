"""The trial keys that change what a training step sees: mixup, cutmix, train_size (FixRes).

Real flower photos and EfficientNet-Lite0's real ImageNet weights, at a small size.
Each key's default trains exactly as before the key existed; each non-default
changes the batches in the documented way and the trained weights.
"""

import numpy as np
import pytest
import torch
from conftest import decoded, fit_reports

from trainables import (
    TrialConfig,
    build_inputs,
    build_model,
    choose_precision,
    freeze,
)
from trainables.train._augment import augment_batch, eval_transform
from trainables.train._features import feature_key, rows_key
from trainables.train._mixing import Mixing

SIZE = 64
BASE = dict(
    model="efficientnet_lite0",
    pretrained=True,
    image_size=SIZE,
    batch_size=16,
    optimizer="sgd",
    lr=0.05,
    aug_strength=0.5,
    freeze_depth=0,
    max_epochs=1,
    seed=1,
)
DEFAULTS = {"mixup": 0.0, "cutmix": 0.0, "train_size": 0}
ON = {"mixup": 0.4, "cutmix": 1.0, "train_size": 32}


@pytest.fixture(scope="module")
def data(small_flowers):
    """12 real photos per class (5 classes), decoded for 64 px."""
    return decoded(small_flowers, SIZE)


def run(cfg, data):
    """(last metrics, last state) of ``fit``."""
    return fit_reports(cfg, data)[-1]


def prepared(cfg, data):
    """The trial's inputs as ``fit`` prepares them (on the CPU)."""
    model = build_model(cfg.model, len(data.classes), cfg.pretrained, cfg.image_size)
    freeze(model, cfg.model, cfg.freeze_depth)
    precision = choose_precision(cfg.precision, torch.device("cpu"), cfg.model)
    return build_inputs(cfg, data, model, precision)


def photos(data, idx):
    """The decoded training photos ``idx`` (uint8 NCHW)."""
    return torch.from_numpy(data.pixels.array()[data.train_rows[idx.numpy()]])


def first_batch(inputs, idx, seed=7):
    """(x, labels) of the batch ``idx`` from the trial's streamed path, and a generator in the
    state that batch's draws started from."""
    generator = torch.Generator().manual_seed(seed)
    x, labels = next(iter(inputs.train_batches([idx], generator, epoch=1)))
    return x, labels, torch.Generator().manual_seed(seed)


def weights_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def baseline(data):
    """A full fine-tuning epoch with none of the keys set."""
    return run(TrialConfig.from_dict(BASE), data)


@pytest.mark.parametrize(
    "key, value", [("mixup", 0.0), ("cutmix", 0.0), ("train_size", 0), ("train_size", SIZE)]
)
def test_each_default_trains_bit_for_bit_as_before(data, baseline, key, value):
    cfg = TrialConfig.from_dict({**BASE, key: value})
    metrics, state = run(cfg, data)
    for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert metrics[name] == baseline[0][name]
    assert weights_equal(state["model"], baseline[1]["model"])
    # The old path: no mixing, crops at image_size, class-index labels, and the batch
    # is exactly the augmented photos (no extra draw from the epoch's generator).
    inputs = prepared(cfg, data)
    assert inputs.mixing is None and inputs.train_crop == SIZE and inputs.kind == "images"
    idx = torch.arange(16)
    x, labels, generator = first_batch(inputs, idx)
    assert labels.dtype == torch.long and labels.shape == (16,)
    assert torch.equal(labels, torch.from_numpy(data.train_y[:16]))
    expected = inputs.to_network(augment_batch(photos(data, idx), SIZE, 0.5, generator))
    assert x.shape == (16, 3, SIZE, SIZE) and torch.equal(x, expected)
    # Then the epoch's generator is where it was: the next draws are the same.
    after = torch.Generator().manual_seed(7)
    list(inputs.train_batches([idx], after, epoch=1))
    assert torch.equal(torch.rand(3, generator=after), torch.rand(3, generator=generator))


@pytest.mark.parametrize("key", ["mixup", "cutmix", "train_size"])
def test_defaults_keep_the_activation_cache_exactly_as_before(data, key):
    plain = TrialConfig.from_dict({**BASE, "freeze_depth": 3, "aug_strength": 0.0})
    cfg = plain.replace(**{key: DEFAULTS[key]})
    before, now = prepared(plain, data), prepared(cfg, data)
    assert now.kind == before.kind == "activations" and now.mixing is None
    assert np.array_equal(now.train.array, before.train.array)
    assert now.train.shape[2:] == now.val.shape[2:]  # train and val crops at image_size
    views = cfg.replace(aug_strength=0.5)
    assert prepared(views, data).kind == "views"
    assert feature_key(views, data, "w") == feature_key(plain.replace(aug_strength=0.5), data, "w")
    x, labels, _ = first_batch(now, torch.arange(8))
    assert labels.dtype == torch.long and torch.equal(x, now.train.gather(torch.arange(8)).float())


def soft_rows_ok(soft, labels, lam, perm, classes):
    """Soft targets are lam * onehot(y) + (1 - lam) * onehot(y[perm]), rows summing to 1."""
    assert soft.shape == (len(labels), classes) and soft.dtype == torch.float32
    assert torch.allclose(soft.sum(1), torch.ones(len(labels)))
    onehot = torch.nn.functional.one_hot(labels, classes).float()
    assert torch.allclose(soft, lam * onehot + (1 - lam) * onehot[perm])
    pairs = labels != labels[perm]
    assert bool(pairs.any())
    for row in soft[pairs]:
        assert int((row > 0).sum()) == 2
        assert sorted(row[row > 0].tolist()) == pytest.approx(sorted([lam, 1 - lam]))


def test_mixup_mixes_augmented_pixels_of_pairs_with_soft_targets(data):
    cfg = TrialConfig.from_dict({**BASE, "mixup": 0.4})
    inputs = prepared(cfg, data)
    assert inputs.kind == "images" and inputs.mixing is not None
    idx = torch.arange(20)
    x, soft, generator = first_batch(inputs, idx)
    # Replayed: augment, then draw the mix from the same generator.
    plain = inputs.to_network(augment_batch(photos(data, idx), SIZE, 0.5, generator))
    draw = inputs.mixing.draw(plain, generator)
    assert draw.mode == "mixup" and draw.box is None and 0.0 < draw.lam < 1.0
    assert torch.allclose(x, draw.lam * plain + (1 - draw.lam) * plain[draw.perm], atol=1e-5)
    assert not torch.allclose(x, plain, atol=1e-3)
    labels = torch.from_numpy(data.train_y[:20])
    soft_rows_ok(soft, labels, draw.lam, draw.perm, len(data.classes))


def test_cutmix_pastes_a_box_whose_share_is_one_minus_lambda(data):
    cfg = TrialConfig.from_dict({**BASE, "cutmix": 1.0, "aug_strength": 0.0})
    inputs = prepared(cfg, data)
    idx = torch.arange(20)
    for seed in range(5):
        x, soft, generator = first_batch(inputs, idx, seed)
        plain = inputs.to_network(eval_transform(SIZE)(photos(data, idx)))
        draw = inputs.mixing.draw(plain, generator)
        assert draw.mode == "cutmix" and draw.box is not None
        top, bottom, left, right = draw.box
        inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        assert draw.lam == pytest.approx(1 - float(inside.float().mean()))
        assert torch.equal(x[..., inside], plain[draw.perm][..., inside])
        assert torch.equal(x[..., ~inside], plain[..., ~inside])
        if 0 < draw.lam < 1:
            soft_rows_ok(
                soft, torch.from_numpy(data.train_y[:20]), draw.lam, draw.perm, len(data.classes)
            )


def test_with_both_on_each_batch_picks_mixup_or_cutmix_by_a_fair_coin():
    mixing = Mixing(mixup=0.4, cutmix=1.0, num_classes=5)
    generator = torch.Generator().manual_seed(0)
    modes = [mixing.draw(torch.zeros(4, 3, 8, 8), generator).mode for _ in range(400)]
    assert 160 < modes.count("cutmix") < 240 and modes.count("mixup") == 400 - modes.count("cutmix")


@pytest.mark.parametrize("key", ["mixup", "cutmix"])
def test_mixing_cached_activations_keeps_the_cache(data, key):
    """Manifold mixup: with a frozen prefix and no augmentation the cached activations are
    mixed (feature maps at depth 3; pooled features at depth 4, where cutmix mixes like
    mixup), never recomputed from mixed photos."""
    for depth in (3, 4):
        cfg = TrialConfig.from_dict({**BASE, "freeze_depth": depth, "aug_strength": 0.0, key: 1.0})
        inputs = prepared(cfg, data)
        assert inputs.kind == "activations" and inputs.mixing is not None
        idx = torch.arange(16)
        x, soft, generator = first_batch(inputs, idx)
        cached = inputs.train.gather(idx).float()
        draw = inputs.mixing.draw(cached, generator)
        if draw.box is None:
            expected = draw.lam * cached + (1 - draw.lam) * cached[draw.perm]
        else:
            top, bottom, left, right = draw.box
            expected = cached.clone()
            expected[..., top:bottom, left:right] = cached[draw.perm][..., top:bottom, left:right]
        assert (draw.box is None) == (key == "mixup" or depth == 4)
        assert torch.allclose(x, expected, atol=1e-6) and soft.shape == (16, 5)


def test_train_size_crops_training_photos_smaller_and_evaluates_at_image_size(data):
    cfg = TrialConfig.from_dict({**BASE, "train_size": 32, "aug_strength": 0.0})
    inputs = prepared(cfg, data)
    idx = torch.arange(8)
    x, labels, _ = first_batch(inputs, idx)
    assert x.shape == (8, 3, 32, 32) and labels.dtype == torch.long
    assert torch.equal(x, inputs.to_network(eval_transform(32)(photos(data, idx))))
    augmented, _, _ = first_batch(prepared(cfg.replace(aug_strength=0.5), data), idx)
    assert augmented.shape == (8, 3, 32, 32)
    val_x, _ = next(inputs.val_batches(8))
    assert val_x.shape == (8, 3, SIZE, SIZE)
    # Cached activations: the train split's of 32 px crops, val's of 64 px, under their own key.
    cached = prepared(cfg.replace(freeze_depth=3), data)
    assert cached.kind == "activations"
    assert cached.train.shape[2:] == (2, 2) and cached.val.shape[2:] == (4, 4)
    rows = data.train_rows
    assert rows_key(cfg, data, "w", rows, 32) != rows_key(cfg, data, "w", rows, SIZE)
    augmented_cfg = cfg.replace(freeze_depth=3, aug_strength=0.5)
    views = prepared(augmented_cfg, data)
    assert views.kind == "views"
    assert feature_key(augmented_cfg, data, "w") != feature_key(
        augmented_cfg.replace(train_size=0), data, "w"
    )
    assert views.train_batch(idx, torch.Generator(), epoch=1)[0].shape[2:] == (2, 2)


@pytest.mark.parametrize("key", ["mixup", "cutmix", "train_size"])
def test_each_key_on_changes_the_trained_weights(data, baseline, key):
    metrics, state = run(TrialConfig.from_dict({**BASE, key: ON[key]}), data)
    assert 0.0 <= metrics["train_acc"] <= 1.0 and metrics["train_loss"] > 0
    assert not weights_equal(state["model"], baseline[1]["model"])
    assert metrics["val_loss"] != baseline[0]["val_loss"]


def test_mixup_training_is_reproducible_from_the_seed(data):
    cfg = TrialConfig.from_dict({**BASE, "mixup": 0.4, "cutmix": 1.0})
    _, first = run(cfg, data)
    _, again = run(cfg, data)
    assert weights_equal(first["model"], again["model"])
    _, other = run(cfg.replace(seed=2), data)
    assert not weights_equal(first["model"], other["model"])


def test_mixed_batches_train_from_cached_activations(data):
    cfg = TrialConfig.from_dict({**BASE, "freeze_depth": 3, "aug_strength": 0.0, "mixup": 0.4})
    metrics, state = run(cfg, data)
    plain, plain_state = run(cfg.replace(mixup=0.0), data)
    assert metrics["train_loss"] != plain["train_loss"]
    assert not weights_equal(state["model"], plain_state["model"])
