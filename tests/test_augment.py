"""Batched augmentation: exact at strength 0, per-photo random draws, seeded, any device."""

import math

import pytest
import torch

import trainables
from trainables import (
    AugmentParams,
    apply_params,
    augment_batch,
    draw_params,
    eval_transform,
    resize_for,
)


@pytest.fixture
def photos():
    torch.manual_seed(0)
    return torch.randint(0, 256, (6, 3, 73, 73), dtype=torch.uint8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def identity(n: int) -> AugmentParams:
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(n, 2, 3)
    return AugmentParams(theta, torch.ones(n), torch.ones(n), torch.eye(3).expand(n, 3, 3))


def test_strength_zero_is_exactly_the_evaluation_transform(photos):
    a, b = augment_batch(photos, 64, 0.0, gen(0)), augment_batch(photos, 64, 0.0, gen(1))
    assert a.shape == (6, 3, 64, 64) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert torch.equal(a, eval_transform(64)(photos))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_strength_above_zero_keeps_shape_and_dtype_and_draws_per_photo(photos, dtype):
    x = photos if dtype == torch.uint8 else photos.float() / 255
    same = x[:1].expand(4, -1, -1, -1).contiguous()  # one photo, four times in a batch
    out = augment_batch(same, 64, 0.5, gen())
    assert out.shape == (4, 3, 64, 64) and out.dtype == dtype
    # Each photo of the batch gets its own crop, flip, rotation and colours.
    assert all(not torch.equal(out[0], out[i]) for i in range(1, 4))
    params = draw_params(4, 0.5, gen())
    assert len(set(params.theta[:, 0, 0].tolist())) == 4
    if dtype == torch.float32:
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_same_seed_same_batch_other_seed_other_batch(photos):
    a = augment_batch(photos, 64, 1.0, gen(7))
    assert torch.equal(a, augment_batch(photos, 64, 1.0, gen(7)))
    assert not torch.equal(a, augment_batch(photos, 64, 1.0, gen(8)))


def test_randomness_grows_with_strength(photos):
    base = eval_transform(64)(photos).float().repeat(8, 1, 1, 1)
    batch = photos.repeat(8, 1, 1, 1)

    def mean_change(strength: float) -> float:
        return float((augment_batch(batch, 64, strength, gen()).float() - base).abs().mean())

    assert mean_change(0.1) < mean_change(0.5) < mean_change(1.0)


def test_identity_parameters_return_the_photo_and_a_flip_mirrors_it():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(apply_params(x, 16, identity(2)), x, atol=1e-5)
    flip = identity(2)
    flip = AugmentParams(
        flip.theta * torch.tensor([[-1.0, 1, 1], [1, 1, 1]]), flip.brightness,
        flip.contrast, flip.colour,
    )  # fmt: skip
    assert torch.allclose(apply_params(x, 16, flip), x.flip(3), atol=1e-5)


def test_colour_draws_stay_in_their_ranges_and_hue_keeps_grey_grey():
    p = draw_params(500, 1.0, gen())
    for factor in (p.brightness, p.contrast):
        assert float(factor.min()) >= 0.6 - 1e-6 and float(factor.max()) <= 1.4 + 1e-6
    # Row 2 of the map is h fy (sin, cos): the rotation, up to a vertical flip.
    angles = torch.rad2deg(torch.atan2(p.theta[:, 1, 0].abs(), p.theta[:, 1, 1].abs()))
    assert float(angles.max()) <= 30.0 + 1e-3 and float(angles.max()) > 20.0
    # Saturation and hue act on colour only: a grey photo stays grey.
    grey = torch.full((1, 3, 8, 8), 0.5)
    only_colour = AugmentParams(identity(1).theta, torch.ones(1), torch.ones(1), p.colour[:1])
    out = apply_params(grey, 8, only_colour)
    assert torch.allclose(out, grey, atol=1e-4)
    assert math.isclose(float(p.colour[:, 0].sum(1).mean()), 1.0, abs_tol=1e-3)


def test_out_of_range_strength_is_rejected(photos):
    with pytest.raises(ValueError):
        augment_batch(photos, 64, 1.5, gen())
    with pytest.raises(ValueError):
        draw_params(4, 0.0, gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_seed_gives_the_same_batch_on_the_gpu(photos):
    cpu = augment_batch(photos, 64, 0.7, gen(3))
    gpu = augment_batch(photos.cuda(), 64, 0.7, gen(3))
    assert gpu.device.type == "cuda"
    assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1


def test_normalize_uses_the_given_statistics():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = trainables.normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), torch.float32)
    assert torch.allclose(out, torch.ones_like(out))


@pytest.mark.parametrize("shape", [(3, 37, 37), (2, 3, 37, 50), (2, 3, 60, 90), (1, 3, 300, 256)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_eval_transform_is_torchvisions_resize_and_centre_crop(shape, dtype):
    """Photos at the decoded side are only cropped, others resized first: both exactly as
    torchvision's Resize(side, antialias) + CenterCrop(size)."""
    from torchvision.transforms import v2

    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    if dtype.is_floating_point:
        images /= 255
    size = 32
    reference = v2.Compose([v2.Resize(resize_for(size), antialias=True), v2.CenterCrop(size)])
    assert torch.equal(eval_transform(size)(images), reference(images))
