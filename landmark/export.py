"""TorchScript export with preprocessing inside, and the metadata that travels with it.

The exported module takes uint8 RGB photos of any size, one `(3, H, W)` or a batch
`(B, 3, H, W)`, resizes and centre-crops them exactly as evaluation does, normalises (inside the
model) and returns class probabilities, calibrated by the temperature fitted on validation data.
Class names, locations, preprocessing, metrics and the unknown-landmark threshold are stored in
the file as `landmark.json`.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landmark import models
from landmark.data import LandmarkData
from landmark.preprocessing import resize_center_crop

METADATA_FILE = "landmark.json"


class ExportedClassifier(nn.Module):
    """uint8 photos -> class probabilities, preprocessing included."""

    def __init__(self, model: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = models.fuse_for_inference(model).requires_grad_(False)
        self.resize_size = model.preprocessing.resize_size
        self.crop_size = model.preprocessing.crop_size
        self.temperature = float(temperature)  # logits are divided by it before the softmax

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`(3, H, W)` -> `(C,)`, or `(B, 3, H, W)` -> `(B, C)` probabilities."""
        if images.dtype != torch.uint8:
            raise ValueError("expected uint8 RGB images (0..255)")
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        batch = resize_center_crop(batch, self.resize_size, self.crop_size)
        logits = self.model(batch.contiguous(memory_format=torch.channels_last))
        probs = (logits / self.temperature).softmax(dim=-1)
        return probs[0] if single else probs


def model_metadata(
    model: nn.Module, dataset: LandmarkData, arch: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What any copy of the model needs to explain itself: classes, places, preprocessing."""
    return {
        "arch": arch,
        "class_folders": dataset.class_folders,
        "class_names": dataset.class_names,
        "locations": {folder: asdict(loc) for folder, loc in dataset.locations.items()},
        "preprocessing": asdict(model.preprocessing),
        "data_fingerprint": dataset.fingerprint,
        **(extra or {}),
    }


def export_torchscript(
    model: nn.Module, metadata: dict[str, Any], path: Path, temperature: float = 1.0
) -> Path:
    """Script `ExportedClassifier(model, temperature)` and save it with `metadata` inside."""
    with _torchscript_on_purpose():
        scripted = torch.jit.script(ExportedClassifier(model, temperature).eval())
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})
    return path


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The scripted classifier and its metadata."""
    extra = {METADATA_FILE: ""}
    with _torchscript_on_purpose():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[METADATA_FILE])


@contextlib.contextmanager
def _torchscript_on_purpose() -> Iterator[None]:
    """Silence torch's TorchScript deprecation notice: TorchScript is the format we ship."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        yield
