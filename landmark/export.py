"""TorchScript export with preprocessing inside, and the metadata that travels with it.

The exported module takes uint8 RGB photos of any size, one `(3, H, W)` or a batch
`(B, 3, H, W)`, resizes and centre-crops them exactly as evaluation does, normalises (inside the
model) and returns class probabilities, calibrated by the temperature fitted on validation data.
Class names, locations, preprocessing, metrics and the unknown-landmark threshold are stored in
the file as `landmark.json`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from landmark import models
from landmark.config import TrainConfig
from landmark.data import LandmarkData
from landmark.preprocessing import resize_center_crop
from landmark.runtime.contract import METADATA_FILE, ModelMetadata
from landmark.runtime.predictor import torchscript_on_purpose


class ExportedClassifier(nn.Module):
    """uint8 photos -> class probabilities (`forward`), or probabilities and how known the
    landmark is (`answer`), preprocessing included.

    With `prototypes` (unit class means of the training photos' pooled features, `(C, F)`) the
    known-ness is the cosine similarity to the nearest one; without, the top probability.
    """

    def __init__(
        self, model: nn.Module, temperature: float = 1.0, prototypes: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.model = models.fuse_for_inference(model).requires_grad_(False)
        self.resize_size = model.preprocessing.resize_size
        self.crop_size = model.preprocessing.crop_size
        self.temperature = float(temperature)  # logits are divided by it before the softmax
        unit = torch.zeros(0, 1) if prototypes is None else F.normalize(prototypes.float(), dim=1)
        self.register_buffer("prototypes", unit)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`(3, H, W)` -> `(C,)`, or `(B, 3, H, W)` -> `(B, C)` probabilities."""
        return self.answer(images)[0]

    @torch.jit.export
    def answer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities `(C,)` / `(B, C)` and known-ness `()` / `(B,)` of uint8 photos."""
        if images.dtype != torch.uint8:
            raise ValueError("expected uint8 RGB images (0..255)")
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        batch = resize_center_crop(batch, self.resize_size, self.crop_size)
        features = self.model.forward_features(batch.contiguous(memory_format=torch.channels_last))
        probs = (self.model.forward_head(features) / self.temperature).softmax(dim=-1)
        if self.prototypes.shape[0] == 0:
            known = probs.max(dim=-1).values
        else:
            known = (F.normalize(features, dim=1) @ self.prototypes.T).max(dim=-1).values
        return (probs[0], known[0]) if single else (probs, known)


def describe(
    model: nn.Module, dataset: LandmarkData, arch: str, train_cfg: TrainConfig
) -> ModelMetadata:
    """What any copy of the model needs to explain itself: classes, places, preprocessing;
    the threshold, temperature and metrics are added once they are known."""
    return ModelMetadata(
        arch=arch,
        class_folders=tuple(dataset.class_folders),
        class_names=tuple(dataset.class_names),
        preprocessing=model.preprocessing,
        locations=dict(dataset.locations),
        data_fingerprint=dataset.fingerprint,
        train_config=dataclasses.asdict(train_cfg),
    )


def export_torchscript(
    model: nn.Module,
    metadata: ModelMetadata,
    path: Path,
    prototypes: torch.Tensor | None = None,
) -> Path:
    """Script `ExportedClassifier(model, metadata.temperature, prototypes)` on the CPU
    (wherever the model trained) and save it with `metadata` inside."""
    with torchscript_on_purpose():
        exported = ExportedClassifier(model, metadata.temperature, prototypes).cpu().eval()
        scripted = torch.jit.script(exported)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: metadata.to_json()})
    return path
