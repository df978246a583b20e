"""The body of each MLproject entry point, as a function of its configs (testable without a CLI).

Each step runs inside its own MLflow run (nested when called from `main`).
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landmark import (
    data,
    evaluation,
    export,
    models,
    openset,
    plots,
    promotion,
    scratch,
    tracking,
    training,
    transfer,
    tuning,
)
from landmark.config import (
    SCRATCH_ARCH,
    DataConfig,
    OpenSetConfig,
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
    data_cfg: DataConfig,
    cfg: TransferConfig,
    train_cfg: TrainConfig,
    tune_cfg: TuneConfig,
    open_cfg: OpenSetConfig = OpenSetConfig(),
) -> TrainResult:
    """Tune, then fine-tune a pretrained backbone; evaluate on test, export and log the model.

    Our EfficientNet-Lite models train on cached activations of their frozen stages
    (`transfer`), computed once per run and shared by every trial; torchvision backbones train
    end to end with their lower stages frozen.
    """
    device = training.resolve_device(train_cfg.device)
    with tracking.start_run("train_transfer") as run_id:
        tracking.log_params(to_dict(data_cfg, cfg, train_cfg, tune_cfg, open_cfg))
        dataset, split = _load(data_cfg)
        build = transfer.Builder(data_cfg, cfg, train_cfg, dataset, split, device)
        space = tuning.transfer_space(0 if cfg.mode == "frozen" else cfg.trainable_blocks)
        study = f"train_transfer-{cfg.arch}-{dataset.fingerprint[:12]}"
        configs = (cfg, train_cfg)
        cfg, train_cfg = tuning.tune_configs(
            study, space, build, configs, tune_cfg, data_cfg.seed, device
        )
        model, net, train_loader, val_loader = build(cfg, train_cfg)
        metadata = export.describe(model, dataset, cfg.arch, train_cfg)
        _fit(net, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata, device)
        rotations = _rotations(open_cfg, dataset, data_cfg.seed)
        if build.caches:  # EfficientNet-Lite: proxies train stages without the held-out classes
            open_set = _open_set(lambda: build.open_set(cfg, train_cfg, rotations), open_cfg)
        else:  # torchvision backbones: proxies on the trained model's features
            open_set = _open_set_on_features(model, dataset, split, rotations, device, open_cfg)
        return _finish(model, metadata, dataset, split, device, open_set)


def train_scratch(
    data_cfg: DataConfig,
    cfg: ScratchConfig,
    train_cfg: ScratchTrainConfig,
    tune_cfg: TuneConfig,
    open_cfg: OpenSetConfig = OpenSetConfig(),
) -> TrainResult:
    """Tune, then train `LandmarkCNN` from scratch; evaluate on test, export and log the model."""
    device = training.resolve_device(train_cfg.device)
    with tracking.start_run("train_scratch") as run_id:
        tracking.log_params(to_dict(data_cfg, cfg, train_cfg, tune_cfg, open_cfg))
        dataset, split = _load(data_cfg)
        build = scratch.Builder(data_cfg.seed, dataset, split)
        study = f"train_scratch-{dataset.fingerprint[:12]}"
        configs = (cfg, train_cfg)
        cfg, train_cfg = tuning.tune_configs(
            study, tuning.scratch_space, build, configs, tune_cfg, data_cfg.seed, device
        )
        model, net, train_loader, val_loader = build(cfg, train_cfg)
        metadata = export.describe(model, dataset, SCRATCH_ARCH, train_cfg)
        _fit(net, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata, device)
        rotations = _rotations(open_cfg, dataset, data_cfg.seed)
        open_set = _open_set_on_features(model, dataset, split, rotations, device, open_cfg)
        return _finish(model, metadata, dataset, split, device, open_set)


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
            decision = promotion.decide(
                versions, cfg.metric, cfg.version, cfg.force, cfg.open_set_tolerance
            )
        if decision.promote:
            tracking.make_champion(decision.version, decision.reason)
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
    device: torch.device,
    open_set: dict[str, float | str],
) -> TrainResult:
    """After training and the open-set evaluation: calibrate on validation (the write threshold
    at the recall the proxies allowed), evaluate on test (once), export, register."""
    val, test = _predict(model, dataset, split, device)
    calibration = _calibrate(*val, open_set.get("known_recall"))
    report = _evaluate(*test, calibration, dataset)
    thresholds = calibration.threshold, calibration.show_threshold
    metadata = metadata.with_evaluation(
        thresholds, calibration.temperature, report.metrics, open_set
    )
    model_uri = _export(model.cpu(), metadata, dataset.root / dataset.test.paths[0])
    version = _register(model_uri, metadata)
    return TrainResult(model_uri, version, metadata, calibration.probabilities(test[0]))


def _predict(model, dataset, split, device) -> tuple[tuple, tuple]:
    """(logits, labels) of the validation and the test photos, on `device` in full fp32."""
    inference = models.fuse_for_inference(model).to(memory_format=torch.channels_last)
    with training.full_precision():
        out = []
        for images, rows in ((dataset.train, split.val), (dataset.test, None)):
            loader = data.eval_loader(model.preprocessing, images, rows)
            logits, labels = training.predict(inference, loader, device)
            out.append((logits.numpy(), labels.numpy()))
    return out[0], out[1]


def _calibrate(val_logits, val_labels, write_recall: float | None) -> evaluation.Calibration:
    calibration = evaluation.calibrate(val_logits, val_labels, write_recall)
    tracking.log_metrics(
        {
            "unknown_threshold": calibration.threshold,
            "show_threshold": calibration.show_threshold,
            "temperature": calibration.temperature,
        }
    )
    return calibration


def _rotations(cfg: OpenSetConfig, dataset: data.LandmarkData, seed: int) -> list[np.ndarray]:
    return openset.rotations_for(dataset.num_classes, cfg.held_out, cfg.rotations, seed)


def _open_set_on_features(model, dataset, split, rotations, device, cfg: OpenSetConfig) -> dict:
    """Proxies that are linear heads on the trained model's frozen pooled features."""

    def proxies() -> list[openset.RotationResult]:
        if not rotations:
            return []
        features = {}
        for name, rows in (("train", split.train), ("val", split.val)):
            loader = data.eval_loader(model.preprocessing, dataset.train, rows)
            x, y = training.extract_features(model, loader, device)
            features[name] = (x.numpy(), y.numpy())
        return openset.frozen_feature_proxies(*features["train"], *features["val"], rotations)

    return _open_set(proxies, cfg)


def _open_set(proxies: Callable[[], list], cfg: OpenSetConfig) -> dict[str, float | str]:
    """Run the proxies, log every score's figures and the plots; the shipped score's figures
    (empty without rotations)."""
    start = time.perf_counter()
    rotations = proxies()
    if not rotations:
        log.info("No open-set evaluation (held_out=0 or too few classes)")
        return {}
    summary = openset.summarise(rotations, cfg.max_false_accept)
    seconds = time.perf_counter() - start
    tracking.log_metrics(
        {f"open_set/{score}/{k}": v for score, row in summary.items() for k, v in row.items()}
    )
    tracking.log_dict(
        {"held_out": [r.held_out for r in rotations], "scores": summary}, "open_set/summary.json"
    )
    score = openset.SHIPPED_SCORE
    row = summary[score]
    known = np.concatenate([r.known[score] for r in rotations])
    unknown = np.concatenate([r.unknown[score] for r in rotations])
    correct = np.concatenate([r.known_correct for r in rotations])
    threshold = openset.threshold_for_recall(known, row["recall_at_max_false_accept"])
    tracking.log_figure(
        plots.open_set_scores(known, unknown, score, threshold), "plots/open_set_scores.png"
    )
    tracking.log_figure(
        plots.precision_coverage(known, correct, unknown, score), "plots/precision_coverage.png"
    )
    figures = {
        "auroc": row["auroc"],
        "false_accept": row["carried_false_accept_mean"],
        "known_recall": row["recall_at_max_false_accept"],
        "max_false_accept": cfg.max_false_accept,
        "seconds": seconds,
    }
    tracking.log_metrics({f"open_set/{k}": v for k, v in figures.items()})
    log.info("Open set (%s, %d rotations): %s", score, len(rotations), figures)
    return {"score": score, **figures}


def _evaluate(
    logits: np.ndarray,
    labels: np.ndarray,
    calibration: evaluation.Calibration,
    dataset: data.LandmarkData,
) -> evaluation.Report:
    report = evaluation.evaluate(logits, labels, calibration, dataset.class_names)
    tracking.log_evaluation(report, _evaluation_figures(report, dataset))
    log.info("Test: %s", _format(report.metrics))
    return report


def _export(model: nn.Module, metadata: ModelMetadata, example: Path) -> str:
    """The TorchScript file, logged as this run's MLflow model; its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_torchscript(model, metadata, Path(tmp) / "model.pt")
        return tracking.log_model(path, metadata, example.read_bytes())


def _register(model_uri: str, metadata: ModelMetadata) -> str:
    version = tracking.register_model(model_uri, metadata)
    log.info("Model %s is version %s of the registry", model_uri, version)
    return version


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
