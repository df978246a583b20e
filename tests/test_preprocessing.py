"""Preprocessing: geometry of resize + centre crop, scripting, crops, fused colour jitter."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from landmark import preprocessing
from landmark.preprocessing import (
    Collate,
    ColourJitter,
    Normalize,
    Preprocessing,
    eval_transform,
    resize_center_crop,
    train_transform,
)


def test_resize_center_crop_keeps_the_centre_of_a_wide_photo():
    img = torch.zeros(3, 100, 300, dtype=torch.uint8)
    img[0, :, 100:200] = 255  # a red middle third
    out = resize_center_crop(img, 50, 50)
    assert out.shape == (3, 50, 50) and out.dtype == torch.uint8
    assert out[0].float().mean() > 250  # the crop is exactly the red middle


def test_resize_center_crop_batches_and_scripts():
    batch = torch.randint(0, 256, (2, 3, 90, 70), dtype=torch.uint8)
    scripted = torch.jit.script(resize_center_crop)
    eager = resize_center_crop(batch, 64, 56)
    assert eager.shape == (2, 3, 56, 56)
    assert torch.equal(scripted(batch, 64, 56), eager)
    assert torch.equal(resize_center_crop(batch[0], 64, 56), eager[0])


def test_normalize_uses_the_weights_mean_and_std():
    pre = Preprocessing(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    white = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = Normalize(pre)(white)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 4, 4)
    expected = torch.tensor([1.0, 3.0, 1.0]).view(1, 3, 1, 1)
    assert torch.allclose(out, expected.expand_as(out))
    as_float = white.float()
    assert torch.allclose(Normalize(pre)(as_float), out)
    assert torch.all(as_float == 255)  # a float input is not modified in place


def test_fused_colour_jitter_matches_torchvision(monkeypatch):
    """The fused matrix equals brightness -> contrast -> saturation done one after another."""
    img = torch.randint(60, 190, (2, 3, 32, 32), dtype=torch.uint8)  # nothing saturates
    factors = torch.tensor([[1.2, 0.9], [0.8, 1.1], [1.3, 0.7]])  # brightness, contrast, sat.
    jitter = ColourJitter(strength=1.0)
    uniform = (factors - 1) / (2 * jitter.amount) + 0.5  # what torch.rand must give
    monkeypatch.setattr(torch, "rand", lambda *size: uniform.view(size))
    fused = jitter(img)
    assert fused.dtype == torch.uint8 and fused.shape == img.shape
    for i in range(2):
        x = img[i].float() / 255
        x = TF.adjust_brightness(x, float(factors[0, i]))
        # torchvision takes the mean of the whole grayscale image; ours is subsampled 4x.
        mean = TF.rgb_to_grayscale(x)[..., ::4, ::4].mean()
        x = (float(factors[1, i]) * x + (1 - float(factors[1, i])) * mean).clamp(0, 1)
        x = TF.adjust_saturation(x, float(factors[2, i]))
        assert (fused[i].float() - x * 255).abs().max() <= 1.0


def test_jitter_saturates_and_zero_strength_is_identity(monkeypatch):
    torch.manual_seed(0)
    img = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    assert ColourJitter(0.0)(img) is img
    out = ColourJitter(1.0)(img)
    assert out.dtype == torch.uint8 and not torch.equal(out, img)
    # On a uniform grey only brightness acts (contrast and saturation keep it): 250 becomes
    # 250 * 0.6..1.4, clamped to 150..255; a value past 255 must not wrap around to dark.
    grey = torch.full((16, 3, 8, 8), 250, dtype=torch.uint8)
    assert ColourJitter(1.0)(grey).min() >= round(250 * 0.6)
    monkeypatch.setattr(torch, "rand", lambda *size: torch.ones(size))  # every factor 1.4
    assert torch.all(ColourJitter(1.0)(grey) == 255)


def test_train_transform_crops_flips_and_is_seeded():
    pre = Preprocessing(resize_size=64, crop_size=48)
    hwc = torch.randint(0, 256, (64, 80, 3), dtype=torch.uint8)
    img = hwc.permute(2, 0, 1)  # channels-last, as the decode cache gives
    transform = train_transform(pre, strength=1.0)
    preprocessing.random.seed(0)
    a = transform(img)
    preprocessing.random.seed(0)
    b = transform(img)
    c = transform(img)
    assert a.shape == (3, 48, 48) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_zero_strength_crop_is_whole_photo():
    crop = train_transform(Preprocessing(crop_size=20), strength=0.0)
    img = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)  # square, as cached photos are
    whole = resize_center_crop(img, 20, 20)  # all of the photo, resized to the crop
    preprocessing.random.seed(0)
    outs = [crop(img) for _ in range(8)]
    flipped = [torch.equal(out, whole.flip(-1)) for out in outs]
    assert all(torch.equal(out, whole) or flip for out, flip in zip(outs, flipped, strict=True))
    assert any(flipped) and not all(flipped)  # only the flip is random


def test_eval_transform_and_collate():
    pre = Preprocessing(resize_size=32, crop_size=28)
    photo = eval_transform(pre)(torch.full((3, 40, 60), 200, dtype=torch.uint8))
    images, labels = Collate()([(photo, 1)] * 3)
    assert images.shape == (3, 3, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [1, 1, 1]
    assert torch.all(images == 200)


def test_augmentation_strength_is_checked():
    with pytest.raises(ValueError, match="strength"):
        train_transform(Preprocessing(), strength=1.5)
    with pytest.raises(ValueError, match="strength"):
        ColourJitter(-0.1)
