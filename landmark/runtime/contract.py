"""What travels inside a model file: `ModelMetadata`, written and read here and nowhere else.

The exported TorchScript file carries it as `landmark.json`; checkpoints carry it too. Every
consumer (predictor, pyfunc, app, tagger, Spark engine, registry tags) uses its fields. Files
written before the schema had a version (plain dicts, schema 1) are read as well.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from landmark import __version__

METADATA_FILE = "landmark.json"
SCHEMA_VERSION = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Location:
    """Where a landmark is: display name, WGS84 coordinates and country."""

    name: str
    latitude: float
    longitude: float
    country: str


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation geometry and normalisation; it follows the model's weights."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a copy of the model needs to explain itself and to answer like it was tested.

    `threshold` (the write threshold: it decides `known`) is None until `train_*` chose it on
    validation photos (a checkpoint's copy); an exported model always has one.
    `show_threshold` is the laxer one below which a guess is not worth showing. `open_set`
    holds the held-out-classes figures the write threshold came from (empty when not
    measured). The served probabilities are already divided by `temperature` inside the
    model: it is recorded here to explain them.
    """

    arch: str
    class_folders: tuple[str, ...]
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    locations: dict[str, Location] = field(default_factory=dict)
    data_fingerprint: str = ""
    threshold: float | None = None
    show_threshold: float | None = None
    temperature: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)
    open_set: dict[str, float | str] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    landmark_version: str = __version__

    def __post_init__(self) -> None:
        if len(self.class_folders) != len(self.class_names):
            raise ValueError(
                f"{len(self.class_folders)} class folders but {len(self.class_names)} names"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_folders)

    def location(self, label: str | None) -> Location | None:
        """The place of class folder `label`, if the data set had one."""
        return self.locations.get(label or "")

    def with_evaluation(
        self,
        thresholds: tuple[float, float],
        temperature: float,
        metrics: dict[str, float],
        open_set: dict[str, float | str],
    ) -> ModelMetadata:
        """This metadata with what calibration (write and show `thresholds`, temperature),
        the open-set evaluation and the test evaluation found."""
        threshold, show_threshold = thresholds
        return dataclasses.replace(
            self,
            threshold=threshold,
            show_threshold=show_threshold,
            temperature=temperature,
            metrics=dict(metrics),
            open_set=dict(open_set),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Read what `to_json` wrote, or a schema-1 dict of a model logged before versions."""
        raw = json.loads(text)
        if not isinstance(raw, dict) or "class_folders" not in raw:
            raise ValueError(f"not landmark model metadata: {text[:80]!r}")
        version = raw.get("schema_version", 1)
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"model metadata schema {version} is newer than this landmark "
                f"({__version__} reads up to {SCHEMA_VERSION}): upgrade landmark"
            )
        return cls(
            arch=raw["arch"],
            class_folders=tuple(raw["class_folders"]),
            class_names=tuple(raw["class_names"]),
            preprocessing=_preprocessing(raw["preprocessing"]),
            locations={k: Location(**v) for k, v in (raw.get("locations") or {}).items()},
            data_fingerprint=raw.get("data_fingerprint", ""),
            threshold=raw.get("threshold"),
            show_threshold=raw.get("show_threshold"),
            open_set=dict(raw.get("open_set") or {}),
            # Schema 1 files from before calibration had no temperature: they used none.
            temperature=float(raw.get("temperature", 1.0)),
            metrics=dict(raw.get("metrics") or {}),
            train_config=dict(raw.get("train_config") or {}),
            schema_version=SCHEMA_VERSION,
            landmark_version=raw.get("landmark_version", ""),
        )


def _preprocessing(raw: dict[str, Any]) -> Preprocessing:
    known = {f.name for f in dataclasses.fields(Preprocessing)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
    return Preprocessing(**values)
