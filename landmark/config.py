"""Frozen configuration dataclasses and the command-line flags generated from them.

Defaults live here, once. Pipelines build their argparse parsers from these fields and the
`MLproject` parameters are checked against them by a test (`tests/test_contract.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

COURSE_DATA_URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"

T = TypeVar("T")


def _param(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _override(base: type, name: str, default: Any) -> Any:
    """The field `name` of `base` with another default (same help text)."""
    return _param(default, base.__dataclass_fields__[name].metadata["help"])


@dataclass(frozen=True)
class DataConfig:
    """Where the photos come from and how they are validated, cached and split."""

    data: str = _param(COURSE_DATA_URL, "data set: a folder, a .zip file or an http(s) URL")
    sha256: str = _param("", "expected sha256 of the downloaded zip (empty: not checked)")
    cache_dir: str = _param("~/.cache/landmark", "downloads, extracted zips and decoded caches")
    cache_size: int = _param(256, "side of the square uint8 images kept in the decode cache")
    val_fraction: float = _param(0.15, "share of each class in train/ held out for validation")
    seed: int = _param(42, "seed of the train/validation split, initialisation and augmentation")
    min_image_side: int = _param(32, "photos with a shorter side are reported and excluded")
    max_image_pixels: int = _param(89_478_485, "photos with more pixels are reported as bombs")


@dataclass(frozen=True)
class TrainConfig:
    """The one training loop's settings. Defaults suit a pretrained backbone (`train_transfer`)."""

    epochs: int = _param(6, "maximum number of epochs")
    batch_size: int = _param(64, "photos per training batch")
    optimizer: str = _param("adamw", "adamw or sgd (with Nesterov momentum 0.9)")
    lr: float = _param(1e-3, "peak learning rate")
    weight_decay: float = _param(0.01, "decoupled weight decay (AdamW) / L2 (SGD)")
    schedule: str = _param("onecycle", "onecycle or cosine (with one warm-up epoch)")
    label_smoothing: float = _param(0.1, "label smoothing of the cross-entropy loss")
    augment: float = _param(0.5, "augmentation strength 0..1 (crop scale and colour jitter)")
    patience: int = _param(5, "stop after this many epochs without a better val accuracy")
    precision: str = _param("auto", "auto (bf16 autocast where the CPU has it), bf16 or fp32")
    num_workers: int = _param(2, "data loader worker processes")
    resume: str = _param("", "checkpoint to resume from (a last.pt of an earlier run)")


@dataclass(frozen=True)
class ScratchTrainConfig(TrainConfig):
    """Training settings for the CNN trained from scratch (more epochs, higher learning rate)."""

    # Only the defaults differ; the help text is TrainConfig's.
    epochs: int = _override(TrainConfig, "epochs", 40)
    lr: float = _override(TrainConfig, "lr", 3e-3)
    weight_decay: float = _override(TrainConfig, "weight_decay", 0.05)
    augment: float = _override(TrainConfig, "augment", 0.7)
    patience: int = _override(TrainConfig, "patience", 10)


@dataclass(frozen=True)
class ScratchConfig:
    """Architecture of `LandmarkCNN`, the CNN trained from scratch."""

    depth: int = _param(4, "stages; each halves the resolution and doubles the channels")
    width: int = _param(32, "channels of the first stage")
    blocks: int = _param(2, "residual blocks per stage")
    norm: str = _param("batch", "batch, group or none")
    dropout: float = _param(0.2, "dropout before the classifier")
    image_size: int = _param(128, "side of the square input crop")


@dataclass(frozen=True)
class TransferConfig:
    """Which pretrained backbone, and how much of it is trained."""

    arch: str = _param("efficientnet_lite0", "efficientnet_lite0/1/2, resnet50, convnext_tiny, ...")
    mode: str = _param("finetune", "finetune (last stages) or frozen (new head only)")
    trainable_blocks: int = _param(3, "finetune: backbone stages trained, counted from the top")
    head_size: int = _param(0, "hidden units of the new head (0: one linear layer)")
    dropout: float = _param(0.2, "dropout before the new classifier")
    views: int = _param(3, "augmented views per photo cached for training (plus the centre)")
    weights: str = _param("DEFAULT", "torchvision weights name (torchvision backbones only)")


@dataclass(frozen=True)
class TuneConfig:
    """The Optuna study run before the final training. Defaults suit `train_transfer`."""

    n_trials: int = _param(20, "trials in the study, counting earlier runs of it (0: no tuning)")
    timeout: float = _param(540.0, "wall-clock budget of the study in seconds (0: none)")
    trial_epochs: int = _param(
        0, "maximum epochs of one trial (0: `epochs`, so the final model repeats the best trial)"
    )
    pruner: str = _param("hyperband", "hyperband, median or none")
    study_name: str = _param("", "rerun with the same name to continue (default: derived)")
    storage: str = _param("", "journal file or SQLAlchemy URL (default: next to the MLflow store)")


@dataclass(frozen=True)
class ScratchTuneConfig(TuneConfig):
    """Tuning settings for the CNN trained from scratch (fewer, longer trials)."""

    n_trials: int = _override(TuneConfig, "n_trials", 8)
    timeout: float = _override(TuneConfig, "timeout", 900.0)
    trial_epochs: int = _override(TuneConfig, "trial_epochs", 6)


@dataclass(frozen=True)
class PromoteConfig:
    """Which registered version becomes the served `champion`."""

    metric: str = _param("test/top1", "version tag to compare (higher is better)")
    version: str = _param("", "promote this version instead of the best one")
    force: bool = _param(False, "promote even if it does not beat the champion on its data set")
    rollback: bool = _param(False, "give champion back to the previous champion instead")


# Which config classes make up the parameters of each MLproject entry point.
ENTRY_POINTS: dict[str, tuple[type, ...]] = {
    "prepare": (DataConfig,),
    "train_transfer": (DataConfig, TransferConfig, TrainConfig, TuneConfig),
    "train_scratch": (DataConfig, ScratchConfig, ScratchTrainConfig, ScratchTuneConfig),
    "promote": (PromoteConfig,),
    "main": (DataConfig, PromoteConfig),
}


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--flag` per field of the dataclass `cls`, with its type, default and help."""
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_field_type(f),
            default=f.default,
            help=f"{f.metadata.get('help', '')} (default: {f.default!r})",
        )


def from_args(cls: type[T], namespace: argparse.Namespace) -> T:
    """Build a `cls` instance from the parsed flags that `add_arguments` declared."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{name: getattr(namespace, name) for name in names})


def to_dict(*configs: Any) -> dict[str, Any]:
    """Flatten config instances into one `{field: value}` dict (e.g. for logging as params)."""
    out: dict[str, Any] = {}
    for cfg in configs:
        out.update(dataclasses.asdict(cfg))
    return out


def mlproject() -> str:
    """The `MLproject` file, generated from `ENTRY_POINTS` (`python -m landmark.config`)."""
    lines = [
        "name: landmark",
        "",
        "conda_env: conda.yaml",
        "",
        "# Generated from landmark/config.py by `python -m landmark.config > MLproject`.",
        "entry_points:",
    ]
    for name, classes in ENTRY_POINTS.items():
        fields = [f for cls in classes for f in dataclasses.fields(cls)]
        lines += [f"  {name}:", "    parameters:"]
        for f in fields:
            kind = "string" if str(f.type) in {"str", "bool"} else "float"
            default = f'"{f.default}"' if isinstance(f.default, str) else f"{f.default}"
            if isinstance(f.default, bool):
                default = f'"{str(f.default).lower()}"'
            lines.append(f"      {f.name}: {{type: {kind}, default: {default}}}")
        words = [f"python pipelines/{name}.py"]
        words += [f"--{f.name.replace('_', '-')} {{{f.name}}}" for f in fields]
        lines += ["    command: >-", *_wrap(words, indent=6, width=100), ""]
    return "\n".join(lines)


def _wrap(words: list[str], indent: int, width: int) -> list[str]:
    lines, line = [], ""
    for word in words:
        if line and indent + len(line) + 1 + len(word) > width:
            lines.append(" " * indent + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, " " * indent + line]


def _field_type(f: dataclasses.Field) -> type:
    # Annotations are strings because of `from __future__ import annotations`.
    types = {"str": str, "int": _parse_int, "float": float, "bool": _parse_bool}
    return types[str(f.type)]


def _parse_int(text: str) -> int:
    # MLproject has no integer type: `mlflow run -P seed=42.0` must still mean 42.
    value = float(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


if __name__ == "__main__":
    print(mlproject(), end="")
