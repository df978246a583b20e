"""The body of each MLproject entry point, as a function of its configs (testable without a CLI).

Each step runs inside its own MLflow run (nested when called from `main`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landmark import data, evaluation, export, models, plots, tracking, training, transfer
from landmark.config import (
    DataConfig,
    ScratchConfig,
    ScratchTrainConfig,
    TrainConfig,
    TransferConfig,
    to_dict,
)
from landmark.preprocessing import eval_transform, train_transform

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


def train_transfer(data_cfg: DataConfig, cfg: TransferConfig, train_cfg: TrainConfig) -> dict:
    """Fine-tune a pretrained backbone; evaluate on test, export and log the model.

    Our EfficientNet-Lite models train on cached activations of their frozen stages
    (`transfer`); torchvision backbones train end to end with their lower stages frozen.
    """
    if cfg.mode not in {"frozen", "finetune"}:
        raise ValueError(f"mode must be 'frozen' or 'finetune', got {cfg.mode!r}")
    trainable = 0 if cfg.mode == "frozen" else cfg.trainable_blocks
    with tracking.start_run("train_transfer") as run_id:
        tracking.log_params(to_dict(data_cfg, cfg, train_cfg))
        dataset, train_rows, val_rows = _load(data_cfg)
        training.seed_everything(data_cfg.seed)
        kwargs = {"dropout": cfg.dropout}
        if cfg.arch not in models.efficientnet_lite.VARIANTS:
            kwargs["weights"] = cfg.weights or None
        model = models.build_model(cfg.arch, dataset.num_classes, **kwargs)
        if isinstance(model, models.TorchvisionClassifier):
            models.freeze(model, trainable)
            net, train_loader, val_loader = (
                model,
                *_image_loaders(model, dataset, train_rows, val_rows, train_cfg),
            )
        else:
            net, train_loader, val_loader = transfer.build_cached_loaders(
                model, dataset, train_rows, val_rows, trainable, train_cfg.augment, cfg.views,
                train_cfg.batch_size,
            )  # fmt: skip
        metadata = export.model_metadata(model, dataset, cfg.arch)
        result = _fit(net, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata)
        return _finish(model, cfg.arch, dataset, val_rows, result, train_cfg)


def train_scratch(data_cfg: DataConfig, cfg: ScratchConfig, train_cfg: ScratchTrainConfig) -> dict:
    """Train `LandmarkCNN` from scratch; evaluate on test, export and log the model."""
    with tracking.start_run("train_scratch") as run_id:
        tracking.log_params(to_dict(data_cfg, cfg, train_cfg))
        dataset, train_rows, val_rows = _load(data_cfg)
        training.seed_everything(data_cfg.seed)
        model = models.build_model("landmark_cnn", dataset.num_classes, **dataclasses.asdict(cfg))
        model = model.to(memory_format=torch.channels_last)
        train_loader, val_loader = _image_loaders(model, dataset, train_rows, val_rows, train_cfg)
        metadata = export.model_metadata(model, dataset, "landmark_cnn")
        result = _fit(model, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata)
        return _finish(model, "landmark_cnn", dataset, val_rows, result, train_cfg)


def main(cfg: DataConfig) -> None:
    """The whole workflow under one parent run; each step is a nested run.

    Today: `prepare`. Training, tuning and promotion steps join here as they land.
    """
    with tracking.start_run("main"):
        tracking.log_params(to_dict(cfg))
        prepare(cfg)


def _load(cfg: DataConfig) -> tuple[data.LandmarkData, np.ndarray, np.ndarray]:
    dataset = data.load_data(cfg)
    _log_dataset(cfg, dataset)
    train_rows, val_rows = data.stratified_split(dataset.train.labels, cfg.val_fraction, cfg.seed)
    return dataset, train_rows, val_rows


def _log_dataset(cfg: DataConfig, dataset: data.LandmarkData) -> None:
    tracking.log_dataset(cfg.data, dataset.root.name, dataset.fingerprint)
    tracking.log_params({"fingerprint": dataset.fingerprint, "num_classes": dataset.num_classes})


def _image_loaders(model, dataset, train_rows, val_rows, cfg: TrainConfig):
    pre = model.preprocessing
    train_set = data.CachedImages(dataset.train, train_rows, train_transform(pre, cfg.augment))
    val_set = data.CachedImages(dataset.train, val_rows, eval_transform(pre))
    return (
        data.make_loader(train_set, cfg.batch_size, True, cfg.augment, cfg.num_workers),
        data.make_loader(val_set, cfg.batch_size, False, num_workers=cfg.num_workers),
    )


def _fit(net, train_loader, val_loader, cfg, data_cfg, run_id, metadata):
    """`training.fit` with MLflow epoch logging; checkpoints under `cache_dir/checkpoints/<run>`."""
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    tracking.log_params({"trainable_parameters": trainable})
    checkpoints = Path(data_cfg.cache_dir).expanduser() / "checkpoints" / run_id
    tracking.set_tags({"checkpoint_dir": str(checkpoints)})
    return training.fit(
        net, train_loader, val_loader, cfg, data_cfg.seed, checkpoints,
        on_epoch_end=tracking.epoch_logger(),
        metadata=metadata,
    )  # fmt: skip


def _finish(
    model: nn.Module,
    arch: str,
    dataset: data.LandmarkData,
    val_rows: np.ndarray,
    result: training.FitResult,
    train_cfg: TrainConfig,
) -> dict:
    """Evaluate on test (once), pick the unknown-landmark threshold on val, export and log."""
    tracking.log_metrics({"best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc})
    tracking.log_figure(plots.training_curves(result.history), "plots/training_curves.png")
    inference = models.fuse_for_inference(model).to(memory_format=torch.channels_last)
    test_probs, test_labels = _probabilities(inference, dataset.test, None, model.preprocessing)
    val_probs, val_labels = _probabilities(inference, dataset.train, val_rows, model.preprocessing)
    report = evaluation.evaluate_predictions(test_probs, test_labels, dataset.class_names)
    threshold = evaluation.unknown_threshold(val_probs, val_labels)
    tracking.log_metrics({"unknown_threshold": threshold})
    tracking.log_evaluation(report, _evaluation_figures(report, dataset))
    metadata = export.model_metadata(
        model, dataset, arch,
        {"threshold": threshold, "metrics": report.metrics, "train_config": to_dict(train_cfg)},
    )  # fmt: skip
    example = (dataset.root / dataset.test.paths[0]).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_torchscript(model, metadata, Path(tmp) / "model.pt")
        model_uri = tracking.log_model(path, metadata, example)
    log.info("Test: %s; model %s", _format(report.metrics), model_uri)
    return {"metrics": report.metrics, "model_uri": model_uri, "threshold": threshold}


def _probabilities(model, split, rows, pre) -> tuple[np.ndarray, np.ndarray]:
    loader = data.make_loader(
        data.CachedImages(split, rows, eval_transform(pre)), 64, train=False, num_workers=1
    )
    logits, labels = training.predict(model, loader, torch.device("cpu"))
    return logits.softmax(dim=1).numpy(), labels.numpy()


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
