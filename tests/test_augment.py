import pytest
import torch

from trainables import apply_batch, build_transform, eval_transform, normalize


@pytest.fixture
def photos():
    torch.manual_seed(0)
    return torch.randint(0, 256, (6, 3, 73, 73), dtype=torch.uint8)


def test_strength_zero_is_deterministic_resize_and_centre_crop(photos):
    tf = build_transform(64, 0.0)
    a, b = apply_batch(tf, photos), apply_batch(tf, photos)
    assert a.shape == (6, 3, 64, 64) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert torch.equal(a, eval_transform(64)(photos))


def test_strength_one_is_random(photos):
    tf = build_transform(64, 1.0)
    a, b = apply_batch(tf, photos), apply_batch(tf, photos)
    assert a.shape == (6, 3, 64, 64)
    assert not torch.equal(a, b)


def test_randomness_grows_with_strength(photos):
    torch.manual_seed(1)
    base = eval_transform(64)(photos).float()

    def mean_change(strength: float) -> float:
        out = apply_batch(build_transform(64, strength), photos.repeat(4, 1, 1, 1)).float()
        return float((out - base.repeat(4, 1, 1, 1)).abs().mean())

    assert mean_change(0.1) < mean_change(1.0)


def test_out_of_range_strength_is_rejected():
    with pytest.raises(ValueError):
        build_transform(64, 1.5)


def test_normalize_uses_the_given_statistics():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), torch.float32)
    assert torch.allclose(out, torch.ones_like(out))
