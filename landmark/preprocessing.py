"""Image preprocessing, defined once: the geometry and normalisation a model's weights expect.

`resize_center_crop` is used to build the decode cache, by the evaluation transform and (later)
inside the exported model, so training, evaluation and serving see the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation geometry and normalisation; it follows the model's weights."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def resize_center_crop(img: torch.Tensor, resize_size: int, crop_size: int) -> torch.Tensor:
    """Resize the shorter side to `resize_size` (antialiased bilinear), centre-crop `crop_size`.

    Works on uint8 or float images, `(3, H, W)` or `(B, 3, H, W)`, and is TorchScript-able.
    """
    batched = img if img.dim() == 4 else img.unsqueeze(0)
    height, width = batched.shape[-2], batched.shape[-1]
    scale = resize_size / min(height, width)
    new_h = max(resize_size, int(round(height * scale)))
    new_w = max(resize_size, int(round(width * scale)))
    if new_h != height or new_w != width:
        batched = F.interpolate(
            batched, size=[new_h, new_w], mode="bilinear", antialias=True, align_corners=False
        )
    top, left = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    out = batched[..., top : top + crop_size, left : left + crop_size]
    return out if img.dim() == 4 else out.squeeze(0)


class ResizeCenterCrop(torch.nn.Module):
    """`resize_center_crop` as a transform."""

    def __init__(self, resize_size: int, crop_size: int) -> None:
        super().__init__()
        self.resize_size, self.crop_size = resize_size, crop_size

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return resize_center_crop(img, self.resize_size, self.crop_size)


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """uint8 `(3, H, W)` photo -> normalised float `(3, crop, crop)`, deterministic."""
    return v2.Compose(
        [
            ResizeCenterCrop(pre.resize_size, pre.crop_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre.mean, pre.std),
        ]
    )


def train_transform(pre: Preprocessing, strength: float = 0.7) -> v2.Compose:
    """Random augmentation of a uint8 `(3, H, W)` photo -> normalised float `(3, crop, crop)`.

    Args:
        pre: the evaluation preprocessing (crop size and normalisation are shared).
        strength: 0 (centre view only, no colour change) .. 1 (crops down to 10 % of the photo,
            strong colour jitter). One number so that tuning has one knob.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
    jitter = 0.4 * strength
    return v2.Compose(
        [
            v2.RandomResizedCrop(pre.crop_size, scale=(1.0 - 0.9 * strength, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(pre.mean, pre.std),
        ]
    )
