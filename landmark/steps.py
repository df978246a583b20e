"""The body of each MLproject entry point, as a function of its configs (testable without a CLI).

Each step runs inside its own MLflow run (nested when called from `main`).
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
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
    search,
    selection,
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
        space = search.transfer_space(0 if cfg.mode == "frozen" else cfg.trainable_blocks)
        study = tuning.study_name_for(
            f"train_transfer-{cfg.arch}", dataset.fingerprint, tune_cfg, data_cfg, cfg, train_cfg
        )
        splits = tuning.splits_for(tune_cfg, split, dataset.train.labels, data_cfg.seed)
        tuned = tuning.tune_configs(
            study, space, build, (cfg, train_cfg), tune_cfg, splits, data_cfg.seed, device
        )
        cfg, train_cfg = tuned.configs
        model, net, train_loader, val_loader = build(cfg, train_cfg)
        metadata = export.describe(model, dataset, cfg.arch, train_cfg)
        result = _fit(net, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata, device)
        _compare_with_estimate(tuned.selection, result)
        rotations = openset.rotations_for(
            dataset.num_classes, open_cfg.held_out, open_cfg.rotations, data_cfg.seed
        )
        if build.caches:  # EfficientNet-Lite: proxies train stages without the held-out classes
            open_set = openset.measure(lambda: build.open_set(cfg, train_cfg, rotations), open_cfg)
        else:  # torchvision backbones: proxies on the trained model's features
            open_set = openset.measure_on_features(
                model, dataset, split, rotations, device, open_cfg
            )
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
        study = tuning.study_name_for(
            "train_scratch", dataset.fingerprint, tune_cfg, data_cfg, cfg, train_cfg
        )
        splits = tuning.splits_for(tune_cfg, split, dataset.train.labels, data_cfg.seed)
        tuned = tuning.tune_configs(
            study, search.scratch_space, build, (cfg, train_cfg), tune_cfg, splits,
            data_cfg.seed, device, keep=_checkpoints(data_cfg, "trials"),
        )  # fmt: skip
        cfg, train_cfg = tuned.configs
        model, net, train_loader, val_loader = build(cfg, train_cfg)
        metadata = export.describe(model, dataset, SCRATCH_ARCH, train_cfg)
        if tuned.checkpoint:  # the chosen trial is the final model
            result = _restore(net, tuned.checkpoint)
        else:
            result = _fit(
                net, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata, device
            )
        _compare_with_estimate(tuned.selection, result)
        rotations = openset.rotations_for(
            dataset.num_classes, open_cfg.held_out, open_cfg.rotations, data_cfg.seed
        )
        open_set = openset.measure_on_features(model, dataset, split, rotations, device, open_cfg)
        return _finish(model, metadata, dataset, split, device, open_set)


@dataclass
class TrainResult:
    """What a training entry point leaves: the registered model and how it tested."""

    model_uri: str
    version: str
    metadata: ModelMetadata  # as written into the exported model
    test_probs: np.ndarray  # (N, C) calibrated test probabilities, as computed on `device`
    test_known: np.ndarray  # (N,) the shipped known-ness score of the test photos

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


def _checkpoints(data_cfg: DataConfig, name: str) -> Path:
    return Path(data_cfg.cache_dir).expanduser() / "checkpoints" / name


def _fit(net, train_loader, val_loader, cfg, data_cfg, run_id, metadata, device):
    """`training.fit` with MLflow epoch logging; checkpoints under `cache_dir/checkpoints/<run>`."""
    _log_trainable(net)
    checkpoints = _checkpoints(data_cfg, run_id)
    tracking.set_tags({"checkpoint_dir": str(checkpoints)})
    result = training.fit(
        net, train_loader, val_loader, cfg, data_cfg.seed, checkpoints, device,
        on_epoch_end=tracking.epoch_logger(),
        metadata=metadata,
    )  # fmt: skip
    _log_fit(result)
    return result


def _restore(net: nn.Module, weights: Path) -> training.FitResult:
    """The chosen trial's weights as the final model, its epochs logged as if trained here."""
    _log_trainable(net)
    tracking.set_tags({"checkpoint_dir": str(weights.parent)})
    result = training.load_weights(weights, net)
    log_epoch = tracking.epoch_logger()
    for row in result.history:
        log_epoch(int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"})
    log.info("The final model is the chosen trial's, from %s", weights)
    _log_fit(result)
    return result


def _log_trainable(net: nn.Module) -> None:
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    tracking.log_params({"trainable_parameters": trainable})


def _log_fit(result: training.FitResult) -> None:
    tracking.log_metrics({"best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc})
    tracking.log_figure(plots.training_curves(result.history), "plots/training_curves.png")


def _compare_with_estimate(chosen: selection.Selection, result: training.FitResult) -> None:
    """The final model's validation accuracy next to the study's estimate of its configuration
    (k folds: an estimate on other photos; one split: the same training)."""
    if chosen.score is None:
        return
    tracking.log_metrics({"tuning/final_val_acc": result.best_val_acc})
    log.info(
        "Final model: validation accuracy %.4f; the study's estimate of its configuration %s",
        result.best_val_acc, chosen.score,
    )  # fmt: skip


def _finish(
    model: nn.Module,
    metadata: ModelMetadata,
    dataset: data.LandmarkData,
    split: data.TrainValRows,
    device: torch.device,
    open_set: dict[str, float | str],
) -> TrainResult:
    """After training and the open-set evaluation: calibrate on validation, set the write
    threshold on the shipped score at the recall the proxies allowed, evaluate on test (once),
    export, register."""
    # The training photos are needed only for the prototypes of the prototype score.
    with_train = open_set.get("score") == "prototype"
    photos = _predict(model, dataset, split, device, with_train)
    calibration = _calibrate(photos["val"][0], photos["val"][2])
    known, prototypes = _known_ness(photos, calibration, open_set)
    threshold = _write_threshold(known["val"], calibration, open_set)
    report = _evaluate(photos["test"][0], photos["test"][2], calibration, dataset)
    metrics = {**report.metrics, **_written(known["test"], threshold, photos["test"])}
    metadata = metadata.with_evaluation(
        (threshold, calibration.show_threshold), calibration.temperature, metrics, open_set
    )
    model_uri = _export(model.cpu(), metadata, dataset.root / dataset.test.paths[0], prototypes)
    version = _register(model_uri, metadata)
    test_probs = calibration.probabilities(photos["test"][0])
    return TrainResult(model_uri, version, metadata, test_probs, known["test"])


def _predict(model, dataset, split, device, with_train: bool) -> dict[str, tuple[np.ndarray, ...]]:
    """(logits, pooled features, labels) of the validation and test photos (and of the
    training photos `with_train`), on `device` in full fp32."""
    inference = models.fuse_for_inference(model).to(memory_format=torch.channels_last)
    parts = [("val", dataset.train, split.val), ("test", dataset.test, None)]
    if with_train:
        parts.append(("train", dataset.train, split.train))
    photos = {}
    with training.full_precision(), torch.inference_mode():
        for name, images, rows in parts:
            loader = data.eval_loader(model.preprocessing, images, rows)
            features, labels = training.extract_features(inference, loader, device)
            logits = inference.forward_head(features.to(device)).float().cpu()
            photos[name] = (logits.numpy(), features.numpy(), labels.numpy())
    return photos


def _calibrate(val_logits: np.ndarray, val_labels: np.ndarray) -> evaluation.Calibration:
    calibration = evaluation.calibrate(val_logits, val_labels)
    tracking.log_metrics(
        {"show_threshold": calibration.show_threshold, "temperature": calibration.temperature}
    )
    return calibration


def _known_ness(photos, calibration, open_set) -> tuple[dict, torch.Tensor | None]:
    """The shipped score of the validation and test photos, and the class prototypes when
    that score is the prototype similarity (they go into the model file)."""
    if open_set.get("score") == "prototype":
        logits, features, labels = photos["train"]
        unit = openset.class_prototypes(features, labels)
        known = {k: openset.prototype_similarity(photos[k][1], unit) for k in ("val", "test")}
        return known, torch.from_numpy(unit)
    known = {k: calibration.probabilities(photos[k][0]).max(axis=1) for k in ("val", "test")}
    return known, None


def _written(test_known, threshold, test_photos) -> dict[str, float]:
    """What the write threshold does on test: the share of photos written, and how many of
    those have the right landmark (what a library would get)."""
    logits, _, labels = test_photos
    written = test_known >= threshold
    right = logits.argmax(axis=1) == labels
    metrics = {
        "test/written": float(written.mean()),
        "test/written_top1": float(right[written].mean()) if written.any() else 0.0,
    }
    tracking.log_metrics(metrics)
    return metrics


def _write_threshold(val_known, calibration, open_set) -> float:
    """At the proxies' recall on the shipped score; without an open-set evaluation, the show
    threshold (and never below it when both are top probabilities)."""
    if "known_recall" not in open_set:
        threshold = calibration.show_threshold
    else:
        threshold = openset.write_threshold(val_known, open_set["known_recall"])
        if open_set["score"] == "max_prob":
            threshold = max(threshold, calibration.show_threshold)
    tracking.log_metrics({"unknown_threshold": threshold})
    return threshold


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


def _export(model: nn.Module, metadata: ModelMetadata, example: Path, prototypes) -> str:
    """The TorchScript file, logged as this run's MLflow model; its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_torchscript(model, metadata, Path(tmp) / "model.pt", prototypes)
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
    writer.writerows([data.printable(bad.path), bad.reason] for bad in bad_files)
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
