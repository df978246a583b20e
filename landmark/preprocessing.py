"""Image preprocessing, defined once: the geometry and normalisation a model's weights expect.

Per photo, on uint8 `(3, H, W)` tensors: `resize_center_crop` for evaluation; a random resized
crop and flip for training. Per uint8 batch: fused colour jitter for training (`Collate`), and
`Normalize` as the first module of every model. `resize_center_crop` also builds the decode
cache and (later) runs inside the exported model: every stage sees the same pixels.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

from landmark.runtime.contract import Preprocessing

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as torchvision's grayscale


def resize_center_crop(img: torch.Tensor, resize_size: int, crop_size: int) -> torch.Tensor:
    """Resize the shorter side to `resize_size` (antialiased bilinear), centre-crop `crop_size`.

    Works on uint8 or float images, `(3, H, W)` or `(B, 3, H, W)`, and is TorchScript-able.
    """
    batched = img if img.dim() == 4 else as_batch(img)
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


def square_crop(hwc: np.ndarray, size: int) -> np.ndarray:
    """`resize_center_crop` to a `size` square for a uint8 `(H, W, 3)` array (PIL/cache layout)."""
    chw = torch.from_numpy(np.array(hwc, dtype=np.uint8)).permute(2, 0, 1)
    return resize_center_crop(chw, size, size).permute(1, 2, 0).numpy()


def as_batch(img: torch.Tensor) -> torch.Tensor:
    """`(3, H, W)` -> `(1, 3, H, W)` view with the batch stride of a whole image.

    `unsqueeze(0)` of a channels-last image gives the new dimension stride 3, which makes
    torch's uint8 resize leave its fast channels-last path (2x slower).
    """
    return img.as_strided([1] + list(img.shape), [img.numel()] + list(img.stride()))


class CenterCrop(torch.nn.Module):
    """Evaluation geometry of one uint8 `(3, H, W)` photo -> uint8 `(3, crop, crop)`."""

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        self.resize_size, self.crop_size = pre.resize_size, pre.crop_size

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return resize_center_crop(img, self.resize_size, self.crop_size).contiguous()


class RandomCropFlip(torch.nn.Module):
    """Training geometry: random resized crop (area share in `[scale_min, 1]`, aspect 3:4..4:3)
    and a horizontal flip half of the time, on one uint8 `(3, H, W)` photo.

    An HWC-stored photo (as the decode cache gives) is channels-last, where torch's uint8
    antialiased resize is fastest; no float copy is made.
    """

    def __init__(self, crop_size: int, scale_min: float) -> None:
        super().__init__()
        self.crop_size, self.scale_min = crop_size, scale_min

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self._box(img.shape[-2], img.shape[-1])
        crop = as_batch(img)[..., top : top + h, left : left + w]
        out = F.interpolate(
            crop, size=[self.crop_size] * 2, mode="bilinear", antialias=True, align_corners=False
        )[0]
        return out.flip(-1) if random.random() < 0.5 else out

    def _box(self, height: int, width: int) -> tuple[int, int, int, int]:
        area = height * width
        for _ in range(10):
            target = area * random.uniform(self.scale_min, 1.0)
            aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        side = min(height, width)  # fall back to the centre square
        return (height - side) // 2, (width - side) // 2, side, side


class ColourJitter(torch.nn.Module):
    """Random brightness, contrast and saturation per photo of a uint8 `(B, 3, H, W)` batch.

    Factors in `1 +- 0.4 * strength`, applied in that order as in torchvision's ColorJitter.
    All three are linear in RGB, so each photo gets one fused 3x3 colour matrix and offset:
    one pass over the pixels instead of three. Chunks of a few photos keep the float
    temporaries small enough to stay in cache and be reused (large fresh buffers page-fault).
    """

    chunk = 4  # photos per pass: measured fastest on a 2-core x86 (1-4 equal, 16 is 4x slower)

    def __init__(self, strength: float) -> None:
        super().__init__()
        _check_strength(strength)
        self.amount = 0.4 * strength
        self.register_buffer("luma", torch.tensor(LUMA))  # (3,)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.amount == 0.0:
            return images
        matrix, offset = self._colour_matrices(images)
        out = torch.empty_like(images, memory_format=torch.contiguous_format)
        for i in range(0, len(images), self.chunk):
            part = images[i : i + self.chunk]
            flat = part.reshape(len(part), 3, -1).float()  # (b, 3, H*W)
            mixed = torch.baddbmm(offset[i : i + self.chunk], matrix[i : i + self.chunk], flat)
            mixed.clamp_(0.0, 255.0).round_()
            # float -> int32 -> uint8 is 3x faster than float -> uint8; values are in range.
            out[i : i + self.chunk] = mixed.to(torch.int32).view(part.shape)
        return out

    def _colour_matrices(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Random colour matrices `(B, 3, 3)` and offsets `(B, 3, 1)`, in 0..255 units."""
        batch = len(images)
        b, c, s = 1.0 + self.amount * (2.0 * torch.rand(3, batch, 1, 1) - 1.0)  # each (B, 1, 1)
        # Mean luminance from a 4x-subsampled view: plenty for a mean, 16x cheaper.
        mean_luma = images[..., ::4, ::4].float().mean(dim=(2, 3)) @ self.luma  # (B,)
        saturation = s * torch.eye(3) + (1.0 - s) * self.luma.view(1, 1, 3)
        matrix = b * c * saturation  # contrast and saturation keep the mean luminance
        offset = ((1.0 - c) * b).view(batch, 1, 1) * mean_luma.view(batch, 1, 1)
        return matrix, offset.expand(batch, 3, 1)


class Collate:
    """DataLoader `collate_fn`: stack uint8 photos, then `ColourJitter` the batch."""

    def __init__(self, jitter_strength: float = 0.0) -> None:
        self.jitter = ColourJitter(jitter_strength)

    def __call__(
        self, samples: list[tuple[torch.Tensor, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([image for image, _ in samples])
        labels = torch.tensor([label for _, label in samples])
        return self.jitter(images), labels


class Normalize(torch.nn.Module):
    """uint8 (or 0..255 float) `(B, 3, H, W)` -> float normalised with the weights' mean/std.

    Every model starts with this module, so training, evaluation and the exported model all
    normalise in one place, and data loaders move compact uint8 batches.
    """

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        std, mean = torch.tensor(pre.std), torch.tensor(pre.mean)
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32, copy=True).mul_(self.scale).add_(self.shift)


def eval_transform(pre: Preprocessing) -> torch.nn.Module:
    """Per-photo evaluation transform: uint8 `(3, H, W)` -> uint8 `(3, crop, crop)`."""
    return CenterCrop(pre)


def train_transform(pre: Preprocessing, strength: float = 0.7) -> torch.nn.Module:
    """Per-photo training geometry: uint8 `(3, H, W)` -> uint8 `(3, crop, crop)`.

    Colour jitter of the same `strength` is applied per batch by `Collate`.

    Args:
        strength: 0 (whole photo, no colour change) .. 1 (crops down to 10 % of the photo's
            area, colour factors 0.6..1.4). One number so that tuning has one knob.
    """
    _check_strength(strength)
    return RandomCropFlip(pre.crop_size, scale_min=1.0 - 0.9 * strength)


def _check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augmentation strength must be in [0, 1], got {strength}")
