"""The CNN trained from scratch: what `fit` and the tuning trials train, from a configuration.

Its counterpart for pretrained backbones is `transfer.Builder`.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from landmark import data, models, training
from landmark.config import SCRATCH_ARCH, ScratchConfig, TrainConfig


class Builder:
    """A `training.Builder` for `LandmarkCNN`: a freshly seeded model and its image loaders."""

    def __init__(self, seed: int, dataset: data.LandmarkData, split: data.TrainValRows) -> None:
        self.seed, self.dataset, self.split = seed, dataset, split

    def __call__(
        self, cfg: ScratchConfig, train_cfg: TrainConfig, rows: data.TrainValRows | None = None
    ) -> tuple:
        """Model and loaders, training and validating on `rows` (default: the split's)."""
        training.seed_everything(self.seed)
        model: nn.Module = models.build_model(SCRATCH_ARCH, self.dataset.num_classes, **asdict(cfg))
        model = model.to(memory_format=torch.channels_last)
        loaders = data.image_loaders(
            model.preprocessing, self.dataset, rows or self.split, train_cfg, self.seed
        )
        return model, model, *loaders
