"""The body of each MLproject entry point, as a function of its configs (testable without a CLI).

Each step runs inside its own MLflow run (nested when called from `main`).
"""

from __future__ import annotations

import csv
import datetime
import getpass
import io
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landmark import (
    data,
    evaluation,
    export,
    models,
    plots,
    promotion,
    tracking,
    training,
    transfer,
    tuning,
)
from landmark.config import (
    CHAMPION,
    PREVIOUS,
    SCRATCH_ARCH,
    DataConfig,
    PromoteConfig,
    ScratchConfig,
    ScratchTrainConfig,
    ScratchTuneConfig,
    TrainConfig,
    TransferConfig,
    TuneConfig,
    to_dict,
)
from landmark.runtime.contract import ModelMetadata

log = logging.getLogger(__name__)


def prepare(cfg: DataConfig) -> data.LandmarkData:
    """Fetch, validate and cache the data set, and log its summary and pictures to MLflow."""
    with tracking.start_run("prepare"):
        tracking.log_params(to_dict(cfg))
        dataset = data.load_data(cfg)
        summary = data.summarize(dataset, cfg.val_fraction, cfg.seed)
        _log_dataset(cfg, dataset)
        tracking.log_metrics(
            {
                **{f"photos_{split}": n for split, n in summary["counts"].items()},
                "bad_files": summary["num_bad_files"],
                "train_test_duplicates": summary["num_train_test_duplicates"],
            }
        )
        tracking.log_dict(summary, "data/summary.json")
        tracking.log_text(_bad_files_csv(dataset.bad_files), "data/bad_files.csv")
        if (dataset.root / data.LOCATIONS_FILE).is_file():
            tracking.log_artifact(dataset.root / data.LOCATIONS_FILE, "data")
        tracking.log_figure(plots.class_distribution(summary), "plots/class_distribution.png")
        tracking.log_figure(plots.sample_grid(dataset, seed=cfg.seed), "plots/samples.png")
        _log_report(summary)
    return dataset


def train_transfer(
    data_cfg: DataConfig, cfg: TransferConfig, train_cfg: TrainConfig, tune_cfg: TuneConfig
) -> TrainResult:
    """Tune, then fine-tune a pretrained backbone; evaluate on test, export and log the model.

    Our EfficientNet-Lite models train on cached activations of their frozen stages
    (`transfer`), computed once per run and shared by every trial; torchvision backbones train
    end to end with their lower stages frozen.
    """
    device = training.resolve_device(train_cfg.device)
    with tracking.start_run("train_transfer") as run_id:
        tracking.log_params(to_dict(data_cfg, cfg, train_cfg, tune_cfg))
        dataset, split = _load(data_cfg)
        build = transfer.builder(data_cfg, cfg, train_cfg, dataset, split, device)
        space = tuning.transfer_space(0 if cfg.mode == "frozen" else cfg.trainable_blocks)
        study = f"train_transfer-{cfg.arch}-{dataset.fingerprint[:12]}"
        configs = (cfg, train_cfg)
        cfg, train_cfg = tuning.tune_configs(
            study, space, build, configs, tune_cfg, data_cfg.seed, device
        )
        model, net, train_loader, val_loader = build(cfg, train_cfg)
        metadata = export.describe(model, dataset, cfg.arch, train_cfg)
        result = _fit(net, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata, device)
        return _finish(model, metadata, dataset, split, result, device)


def train_scratch(
    data_cfg: DataConfig, cfg: ScratchConfig, train_cfg: ScratchTrainConfig, tune_cfg: TuneConfig
) -> TrainResult:
    """Tune, then train `LandmarkCNN` from scratch; evaluate on test, export and log the model."""
    device = training.resolve_device(train_cfg.device)
    with tracking.start_run("train_scratch") as run_id:
        tracking.log_params(to_dict(data_cfg, cfg, train_cfg, tune_cfg))
        dataset, split = _load(data_cfg)

        def build(cfg: ScratchConfig, train_cfg: TrainConfig) -> tuple:
            training.seed_everything(data_cfg.seed)
            model = models.build_model(SCRATCH_ARCH, dataset.num_classes, **asdict(cfg))
            model = model.to(memory_format=torch.channels_last)
            loaders = data.image_loaders(
                model.preprocessing, dataset, split, train_cfg, data_cfg.seed
            )
            return model, model, *loaders

        study = f"train_scratch-{dataset.fingerprint[:12]}"
        configs = (cfg, train_cfg)
        cfg, train_cfg = tuning.tune_configs(
            study, tuning.scratch_space, build, configs, tune_cfg, data_cfg.seed, device
        )
        model, net, train_loader, val_loader = build(cfg, train_cfg)
        metadata = export.describe(model, dataset, SCRATCH_ARCH, train_cfg)
        result = _fit(net, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata, device)
        return _finish(model, metadata, dataset, split, result, device)


@dataclass
class TrainResult:
    """What a training entry point leaves: the registered model and how it tested."""

    model_uri: str
    version: str
    metadata: ModelMetadata  # as written into the exported model
    test_probs: np.ndarray  # (N, C) calibrated test probabilities, as computed on `device`

    @property
    def metrics(self) -> dict[str, float]:
        return self.metadata.metrics


def promote(cfg: PromoteConfig) -> promotion.Decision:
    """Move the `champion` alias to the best version (or roll back); record why on the version."""
    with tracking.start_run("promote"):
        tracking.log_params(to_dict(cfg))
        versions = tracking.model_versions()
        if cfg.rollback:
            decision = promotion.rollback(versions)
        else:
            decision = promotion.decide(versions, cfg.metric, cfg.version, cfg.force)
        if decision.promote:
            old = next((v for v in versions if CHAMPION in v["aliases"]), None)
            tracking.set_alias(CHAMPION, decision.version)
            if old is not None:
                tracking.set_alias(PREVIOUS, old["version"])
            when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            who = getpass.getuser()
            tracking.record_on_version(
                decision.version,
                {"promoted_at": when, "promoted_by": who, "promotion_reason": decision.reason},
                f"{when} champion (by {who}): {decision.reason}",
            )
        tracking.set_tags({"promotion": decision.reason})
        tracking.log_params({"promoted": decision.promote, "promoted_version": decision.version})
        log.info("%s: %s", "Promoted" if decision.promote else "Not promoted", decision.reason)
        return decision


def main(
    data_cfg: DataConfig,
    promote_cfg: PromoteConfig,
    transfer_cfgs: tuple = (TransferConfig(), TrainConfig(), TuneConfig()),
    scratch_cfgs: tuple = (ScratchConfig(), ScratchTrainConfig(), ScratchTuneConfig()),
) -> None:
    """The whole workflow under one parent run, each step a nested run:
    prepare -> train_transfer -> train_scratch -> promote."""
    with tracking.start_run("main"):
        tracking.log_params(to_dict(data_cfg, promote_cfg))
        prepare(data_cfg)
        train_transfer(data_cfg, *transfer_cfgs)
        train_scratch(data_cfg, *scratch_cfgs)
        promote(promote_cfg)


def _load(cfg: DataConfig) -> tuple[data.LandmarkData, data.TrainValRows]:
    dataset = data.load_data(cfg)
    _log_dataset(cfg, dataset)
    return dataset, data.stratified_split(dataset.train.labels, cfg.val_fraction, cfg.seed)


def _log_dataset(cfg: DataConfig, dataset: data.LandmarkData) -> None:
    tracking.log_dataset(cfg.data, dataset.root.name, dataset.fingerprint)
    tracking.log_params({"fingerprint": dataset.fingerprint, "num_classes": dataset.num_classes})


def _fit(net, train_loader, val_loader, cfg, data_cfg, run_id, metadata, device):
    """`training.fit` with MLflow epoch logging; checkpoints under `cache_dir/checkpoints/<run>`."""
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    tracking.log_params({"trainable_parameters": trainable})
    checkpoints = Path(data_cfg.cache_dir).expanduser() / "checkpoints" / run_id
    tracking.set_tags({"checkpoint_dir": str(checkpoints)})
    result = training.fit(
        net, train_loader, val_loader, cfg, data_cfg.seed, checkpoints, device,
        on_epoch_end=tracking.epoch_logger(),
        metadata=metadata,
    )  # fmt: skip
    tracking.log_metrics({"best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc})
    tracking.log_figure(plots.training_curves(result.history), "plots/training_curves.png")
    return result


def _finish(
    model: nn.Module,
    metadata: ModelMetadata,
    dataset: data.LandmarkData,
    split: data.TrainValRows,
    result: training.FitResult,
    device: torch.device,
) -> TrainResult:
    """Calibrate on validation, evaluate on test (once), export, log and register."""
    inference = models.fuse_for_inference(model).to(memory_format=torch.channels_last)
    val_logits, val_labels = _logits(inference, dataset.train, split.val, device)
    test_logits, test_labels = _logits(inference, dataset.test, None, device)
    calibration = evaluation.calibrate(val_logits, val_labels)
    report = evaluation.evaluate(test_logits, test_labels, calibration, dataset.class_names)
    _log_evaluation(report, calibration, dataset)
    metadata = metadata.with_evaluation(
        calibration.threshold, calibration.temperature, report.metrics
    )
    model_uri = _export(model.cpu(), metadata, dataset.root / dataset.test.paths[0])
    version = tracking.register_model(model_uri, metadata)
    log.info("Test: %s; model %s, version %s", _format(report.metrics), model_uri, version)
    return TrainResult(model_uri, version, metadata, calibration.probabilities(test_logits))


def _logits(model, split, rows, device) -> tuple[np.ndarray, np.ndarray]:
    with training.full_precision():
        loader = data.eval_loader(model.preprocessing, split, rows)
        logits, labels = training.predict(model, loader, device)
    return logits.numpy(), labels.numpy()


def _log_evaluation(
    report: evaluation.Report, calibration: evaluation.Calibration, dataset: data.LandmarkData
) -> None:
    tracking.log_metrics(
        {"unknown_threshold": calibration.threshold, "temperature": calibration.temperature}
    )
    tracking.log_evaluation(report, _evaluation_figures(report, dataset))


def _export(model: nn.Module, metadata: ModelMetadata, example: Path) -> str:
    """The TorchScript file, logged as this run's MLflow model; its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_torchscript(model, metadata, Path(tmp) / "model.pt")
        return tracking.log_model(path, metadata, example.read_bytes())


def _evaluation_figures(report: evaluation.Report, dataset: data.LandmarkData) -> dict:
    return {
        "confusion_matrix": plots.confusion_matrix(report.confusion, dataset.class_names),
        "reliability_diagram": plots.reliability_diagram(
            report.calibration, report.metrics["test/ece"]
        ),
        "worst_mistakes": plots.mistakes_grid(dataset.test.images, report.mistakes[:16]),
    }


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _bad_files_csv(bad_files: list[data.BadFile]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "reason"])
    writer.writerows([bad.path, bad.reason] for bad in bad_files)
    return out.getvalue()


def _log_report(summary: dict) -> None:
    counts = summary["counts"]
    log.info(
        "Data set %s: %d classes, %d train / %d val / %d test photos, fingerprint %s",
        summary["root"],
        summary["num_classes"],
        counts["train"],
        counts["val"],
        counts["test"],
        summary["fingerprint"][:12],
    )
    for bad in summary["bad_files"]:
        log.warning("Excluded %s: %s", bad["path"], bad["reason"])
    for pair in summary["train_test_duplicates"]:
        log.warning("Train/test leak: %s is identical to %s", pair["test"], pair["train"])
