"""Predicting landmarks for encoded photos: what the served model, the app and the tagger do.

`Predictor` wraps the exported TorchScript file and its `ModelMetadata`; it decodes each photo
safely, runs the model and returns the top-k landmarks, the location of the top one, and
whether the model knows it. Bad photos raise `BadRequestError` naming the offending row.
MLflow-free (see `tracking`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from landmark.config import ServeConfig
from landmark.runtime import images
from landmark.runtime.contract import METADATA_FILE, ModelMetadata

DEFAULT = ServeConfig()
# The answer for a bad photo when errors are reported (same fields as a real answer).
NO_ANSWER = {
    "label": None, "name": None, "probability": None, "known": False, "novelty": None,
    "location": None, "top_k": [],
}  # fmt: skip


class BadRequestError(ValueError):
    """The request cannot be answered as given; the message names the row and the fix."""


class Predictor:
    """The exported classifier and its metadata, ready to answer requests."""

    def __init__(self, module: torch.jit.ScriptModule, metadata: ModelMetadata) -> None:
        self.module, self.metadata = module, metadata
        self.threshold = DEFAULT.threshold if metadata.threshold is None else metadata.threshold
        # torch's OpenMP workers belong to the thread that calls the model. Servers call from
        # whichever pool thread is free (MLflow's scoring server alternates two), and two teams
        # spinning on two cores made each forward pass twice as slow. One thread runs them all.
        self._torch = ThreadPoolExecutor(1, thread_name_prefix="landmark-torch")

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        return cls(*load_torchscript(path))

    def probabilities(self, photo: bytes, row: int = 0) -> np.ndarray:
        """Class probabilities `(C,)` of one encoded photo."""
        return self.scores(photo, row)[0]

    def scores(self, photo: bytes, row: int = 0) -> tuple[np.ndarray, float]:
        """Class probabilities `(C,)` of one encoded photo, and how known its landmark is
        (the score `threshold` applies to: metadata `open_set["score"]`)."""
        try:
            img = images.load_rgb(photo, draft_size=self.metadata.preprocessing.resize_size)
        except images.BadImageError as e:
            raise BadRequestError(f"row {row}: {e}") from e
        tensor = torch.from_numpy(np.array(central(img), dtype=np.uint8)).permute(2, 0, 1)
        return self._torch.submit(self._forward, tensor).result()

    def _forward(self, tensor: torch.Tensor) -> tuple[np.ndarray, float]:
        with torch.inference_mode():
            if hasattr(self.module, "answer"):
                probs, known = self.module.answer(tensor)
                return probs.numpy(), float(known)
            probs = self.module(tensor).numpy()  # files exported before `answer` existed
            return probs, float(probs.max())

    def predict(
        self,
        photos: list[bytes],
        top_k: int = DEFAULT.top_k,
        threshold: float | None = None,
        errors: str = "raise",
    ) -> list[dict[str, Any]]:
        """One answer per photo: `top_k`, `label`, `name`, `probability`, `location`, `known`.

        A bad photo raises `BadRequestError` naming its row; with `errors="report"` its answer
        is `{"error": reason}` instead and every answer has an `error` field (batch jobs).
        """
        if top_k < 1:
            raise BadRequestError(f"top_k must be at least 1, got {top_k}")
        if errors not in {"raise", "report"}:
            raise BadRequestError(f"errors must be 'raise' or 'report', got {errors!r}")
        top_k = min(top_k, self.metadata.num_classes)
        threshold = self.threshold if threshold is None else float(threshold)
        answers = []
        for row, photo in enumerate(photos):
            try:
                answer = self.describe(*self.scores(photo, row), top_k, threshold)
            except BadRequestError as e:
                if errors == "raise":
                    raise
                answer = {**NO_ANSWER, "error": str(e).removeprefix(f"row {row}: ")}
            else:
                if errors == "report":
                    answer["error"] = None
            answers.append(answer)
        return answers

    def describe(
        self, probs: np.ndarray, known: float, top_k: int, threshold: float
    ) -> dict[str, Any]:
        """The answer for class probabilities `probs` `(C,)` and known-ness `known`; its
        `novelty` is 1 - known-ness (higher: less like any landmark the model knows)."""
        folders, names = self.metadata.class_folders, self.metadata.class_names
        order = np.argsort(-probs)[:top_k]
        ranked = [
            {"label": folders[c], "name": names[c], "probability": float(probs[c])} for c in order
        ]
        best = ranked[0]
        location = self.metadata.location(best["label"])
        return {
            "label": best["label"],
            "name": best["name"],
            "probability": best["probability"],
            "known": bool(known >= threshold),
            "novelty": 1.0 - known,
            "location": dataclasses.asdict(location) if location else None,
            "top_k": ranked,
        }


def central(img: Image.Image, margin: float = 4.0) -> Image.Image:
    """The middle of a very elongated photo (over 4:1): what the centre crop sees, and more.

    A 20,000 x 60 px panorama would otherwise be resized at full width (its short side
    scaled up to the model's size) only to have all but the middle cropped away.
    """
    width, height = img.size
    keep = int(min(width, height) * margin)
    if width > keep:
        left = (width - keep) // 2
        return img.crop((left, 0, left + keep, height))
    if height > keep:
        top = (height - keep) // 2
        return img.crop((0, top, width, top + keep))
    return img


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelMetadata]:
    """The exported classifier (on the CPU) and its metadata."""
    extra = {METADATA_FILE: ""}
    with torchscript_on_purpose():
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), ModelMetadata.from_json(extra[METADATA_FILE])


@contextlib.contextmanager
def torchscript_on_purpose() -> Iterator[None]:
    """Silence torch's TorchScript deprecation notice: TorchScript is the format we ship."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        yield
