"""The body of each MLproject entry point, as a function of its configs (testable without a CLI).

Each step runs inside its own MLflow run (nested when called from `main`).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import getpass
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
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


def train_transfer(
    data_cfg: DataConfig, cfg: TransferConfig, train_cfg: TrainConfig, tune_cfg: TuneConfig
) -> dict:
    """Tune, then fine-tune a pretrained backbone; evaluate on test, export and log the model.

    Our EfficientNet-Lite models train on cached activations of their frozen stages
    (`transfer`), computed once per run and shared by every trial; torchvision backbones train
    end to end with their lower stages frozen.
    """
    if cfg.mode not in {"frozen", "finetune"}:
        raise ValueError(f"mode must be 'frozen' or 'finetune', got {cfg.mode!r}")
    with tracking.start_run("train_transfer") as run_id:
        tracking.log_params(to_dict(data_cfg, cfg, train_cfg, tune_cfg))
        dataset, train_rows, val_rows = _load(data_cfg)
        build = _transfer_builder(data_cfg, cfg, train_cfg, dataset, train_rows, val_rows)
        max_blocks = 0 if cfg.mode == "frozen" else cfg.trainable_blocks
        space = tuning.transfer_space(max_blocks)
        study = f"train_transfer-{cfg.arch}-{dataset.fingerprint[:12]}"
        cfg, train_cfg = _tune(study, space, build, cfg, train_cfg, tune_cfg, data_cfg.seed)
        model, net, train_loader, val_loader = build(cfg, train_cfg)
        metadata = export.model_metadata(model, dataset, cfg.arch)
        result = _fit(net, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata)
        return _finish(model, cfg.arch, dataset, val_rows, result, train_cfg)


def train_scratch(
    data_cfg: DataConfig, cfg: ScratchConfig, train_cfg: ScratchTrainConfig, tune_cfg: TuneConfig
) -> dict:
    """Tune, then train `LandmarkCNN` from scratch; evaluate on test, export and log the model."""
    with tracking.start_run("train_scratch") as run_id:
        tracking.log_params(to_dict(data_cfg, cfg, train_cfg, tune_cfg))
        dataset, train_rows, val_rows = _load(data_cfg)

        def build(cfg: ScratchConfig, train_cfg: TrainConfig) -> tuple:
            training.seed_everything(data_cfg.seed)
            model = models.build_model("landmark_cnn", dataset.num_classes, **asdict(cfg))
            model = model.to(memory_format=torch.channels_last)
            loaders = _image_loaders(model, dataset, train_rows, val_rows, train_cfg, data_cfg.seed)
            return model, model, *loaders

        study = f"train_scratch-{dataset.fingerprint[:12]}"
        space = tuning.scratch_space
        cfg, train_cfg = _tune(study, space, build, cfg, train_cfg, tune_cfg, data_cfg.seed)
        model, net, train_loader, val_loader = build(cfg, train_cfg)
        metadata = export.model_metadata(model, dataset, "landmark_cnn")
        result = _fit(net, train_loader, val_loader, train_cfg, data_cfg, run_id, metadata)
        return _finish(model, "landmark_cnn", dataset, val_rows, result, train_cfg)


# build(model_cfg, train_cfg) -> (model, trained module, train loader, val loader)
Builder = Callable[[Any, TrainConfig], tuple]


def _transfer_builder(data_cfg, cfg, train_cfg, dataset, train_rows, val_rows) -> Builder:
    """A `Builder` for transfer models. For EfficientNet-Lite, activations are cached now (so
    the study's timeout is spent on trials) at the lowest stage any trial may train, and
    advanced from there for trials that train fewer stages."""
    caches: dict[int, transfer.ActivationCache] = {}

    def new_model(cfg: TransferConfig) -> nn.Module:
        training.seed_everything(data_cfg.seed)
        kwargs = {"dropout": cfg.dropout, "head_size": cfg.head_size}
        if cfg.arch not in models.efficientnet_lite.VARIANTS:
            kwargs["weights"] = cfg.weights or None
        return models.build_model(cfg.arch, dataset.num_classes, **kwargs)

    if cfg.arch in models.efficientnet_lite.VARIANTS:
        model = new_model(cfg)
        lowest = len(model.stages()) - (0 if cfg.mode == "frozen" else cfg.trainable_blocks)
        caches[lowest] = transfer.cache_views(
            model, dataset, train_rows, val_rows, lowest, train_cfg.augment, cfg.views,
            data_cfg.seed,
        )  # fmt: skip

    def build(cfg: TransferConfig, train_cfg: TrainConfig) -> tuple:
        model = new_model(cfg)
        trainable = 0 if cfg.mode == "frozen" else cfg.trainable_blocks
        if isinstance(model, models.TorchvisionClassifier):
            models.freeze(model, trainable)
            loaders = _image_loaders(model, dataset, train_rows, val_rows, train_cfg, data_cfg.seed)
            return model, model, *loaders
        start = len(model.stages()) - trainable
        if start not in caches:
            caches[start] = transfer.advance(caches[min(caches)], model, start)
        models.freeze(model, trainable)
        net = transfer.Suffix(model, start)
        return model, net, *caches[start].loaders(train_cfg.batch_size, data_cfg.seed)

    return build


def _tune(study_name, space, build: Builder, cfg, train_cfg, tune_cfg, seed) -> tuple:
    """Run the study (when `tune_cfg.n_trials` > 0); return the configs with the best choices.

    Trials train for `tune_cfg.trial_epochs` epochs and are judged on validation accuracy.
    With `trial_epochs` 0 they train exactly as the final model will (training is seeded), so
    the final model repeats the best trial, and the default parameters (the first trial) can
    only be kept or beaten.
    """
    if tune_cfg.n_trials <= 0:
        return cfg, train_cfg
    tune_cfg = dataclasses.replace(tune_cfg, trial_epochs=tune_cfg.trial_epochs or train_cfg.epochs)
    name = tune_cfg.study_name or study_name
    defaults = tuning.choices(space, to_dict(cfg, train_cfg))

    def run_trial(params: dict, on_epoch_end) -> training.FitResult:
        trial_cfg, trial_train_cfg = _apply(params, cfg, train_cfg)
        trial_train_cfg = dataclasses.replace(
            trial_train_cfg, epochs=tune_cfg.trial_epochs, resume=""
        )
        _, net, train_loader, val_loader = build(trial_cfg, trial_train_cfg)
        with tempfile.TemporaryDirectory() as tmp:
            return training.fit(
                net, train_loader, val_loader, trial_train_cfg, seed, Path(tmp),
                on_epoch_end=on_epoch_end,
            )  # fmt: skip

    study = tuning.tune(name, space, run_trial, tune_cfg, seed, defaults)
    best = tuning.log_study(study)["best_params"]
    return _apply(best, cfg, train_cfg)


def _apply(params: dict, *configs) -> tuple:
    """Each config with the fields named in `params` replaced."""
    out = []
    for cfg in configs:
        names = {f.name for f in dataclasses.fields(cfg)}
        out.append(dataclasses.replace(cfg, **{k: v for k, v in params.items() if k in names}))
    return tuple(out)


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
            old = next((v for v in versions if promotion.CHAMPION in v["aliases"]), None)
            tracking.set_alias(promotion.CHAMPION, decision.version)
            if old is not None:
                tracking.set_alias(promotion.PREVIOUS, old["version"])
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


def _load(cfg: DataConfig) -> tuple[data.LandmarkData, np.ndarray, np.ndarray]:
    dataset = data.load_data(cfg)
    _log_dataset(cfg, dataset)
    train_rows, val_rows = data.stratified_split(dataset.train.labels, cfg.val_fraction, cfg.seed)
    return dataset, train_rows, val_rows


def _log_dataset(cfg: DataConfig, dataset: data.LandmarkData) -> None:
    tracking.log_dataset(cfg.data, dataset.root.name, dataset.fingerprint)
    tracking.log_params({"fingerprint": dataset.fingerprint, "num_classes": dataset.num_classes})


def _image_loaders(model, dataset, train_rows, val_rows, cfg: TrainConfig, seed: int):
    pre = model.preprocessing
    train_set = data.CachedImages(dataset.train, train_rows, train_transform(pre, cfg.augment))
    val_set = data.CachedImages(dataset.train, val_rows, eval_transform(pre))
    return (
        data.make_loader(
            train_set,
            cfg.batch_size,
            seed=seed,
            shuffle=True,
            augment=cfg.augment,
            num_workers=cfg.num_workers,
        ),  # fmt: skip
        data.make_loader(val_set, cfg.batch_size, seed=None, num_workers=cfg.num_workers),
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
    """Calibrate on val, evaluate on test (once), pick the unknown-landmark threshold on val,
    export and log."""
    tracking.log_metrics({"best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc})
    tracking.log_figure(plots.training_curves(result.history), "plots/training_curves.png")
    inference = models.fuse_for_inference(model).to(memory_format=torch.channels_last)
    test_logits, test_labels = _logits(inference, dataset.test, None, model.preprocessing)
    val_logits, val_labels = _logits(inference, dataset.train, val_rows, model.preprocessing)
    temperature = evaluation.fit_temperature(val_logits, val_labels)
    test_probs = softmax(test_logits / temperature, axis=1)  # as the exported model does
    val_probs = softmax(val_logits / temperature, axis=1)
    report = evaluation.evaluate_predictions(test_probs, test_labels, dataset.class_names)
    threshold = evaluation.unknown_threshold(val_probs, val_labels)
    uncalibrated_ece, _ = evaluation.calibration(softmax(test_logits, axis=1), test_labels)
    tracking.log_metrics(
        {
            "unknown_threshold": threshold,
            "temperature": temperature,
            "test/ece_uncalibrated": uncalibrated_ece,
        }
    )
    tracking.log_evaluation(report, _evaluation_figures(report, dataset))
    metadata = export.model_metadata(
        model, dataset, arch,
        {
            "threshold": threshold,
            "temperature": temperature,
            "metrics": report.metrics,
            "train_config": to_dict(train_cfg),
        },
    )  # fmt: skip
    example = (dataset.root / dataset.test.paths[0]).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = export.export_torchscript(model, metadata, Path(tmp) / "model.pt", temperature)
        model_uri = tracking.log_model(path, metadata, example)
    version = tracking.register_model(
        model_uri,
        {
            "arch": arch,
            "data_fingerprint": dataset.fingerprint,
            "run_id": tracking.active_run_id(),
            **report.metrics,
        },
    )
    log.info("Test: %s; model %s, version %s", _format(report.metrics), model_uri, version)
    return {
        "metrics": report.metrics,
        "model_uri": model_uri,
        "threshold": threshold,
        "version": version,
    }


def _logits(model, split, rows, pre) -> tuple[np.ndarray, np.ndarray]:
    loader = data.make_loader(
        data.CachedImages(split, rows, eval_transform(pre)), 64, seed=None, num_workers=1
    )
    logits, labels = training.predict(model, loader, torch.device("cpu"))
    return logits.numpy(), labels.numpy()


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
