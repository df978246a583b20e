"""`train_transfer` and `train_scratch` end to end on a tiny data set, logged to real MLflow."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from conftest import photo_bytes
from mlflow.tracking import MlflowClient

from landmark import data, steps, tracking, training, transfer
from landmark.config import (
    REGISTERED_MODEL,
    ScratchConfig,
    ScratchTrainConfig,
    TrainConfig,
    TransferConfig,
    TuneConfig,
)
from landmark.runtime.predictor import Predictor, load_torchscript

FAST = {"epochs": 2, "batch_size": 8, "num_workers": 0}
NO_TUNING = TuneConfig(n_trials=0)


@pytest.fixture
def runs(data_cfg, tracking_uri):
    transfer = steps.train_transfer(
        data_cfg, TransferConfig(trainable_blocks=2, views=1), TrainConfig(**FAST), NO_TUNING
    )
    scratch = steps.train_scratch(
        data_cfg,
        ScratchConfig(image_size=48, width=8, depth=2, blocks=1),
        ScratchTrainConfig(**FAST),
        NO_TUNING,
    )
    client = MlflowClient(tracking_uri)
    found = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    return {r.data.tags["landmark.step"]: r for r in found}, transfer, scratch, client


def test_both_entry_points_log_comparable_runs(runs):
    by_step, transfer, scratch, client = runs
    assert set(by_step) == {"train_transfer", "train_scratch"}
    metric_names = [set(by_step[s].data.metrics) for s in ("train_transfer", "train_scratch")]
    assert metric_names[0] == metric_names[1]  # side by side in the UI
    expected = {"test/top1", "test/top3", "test/top5", "test/macro_f1", "test/ece",
                "train/loss", "val/loss", "val/acc", "lr", "unknown_threshold"}  # fmt: skip
    assert expected <= metric_names[0]
    for step in ("train_transfer", "train_scratch"):
        run = by_step[step]
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [m.step for m in history] == [0, 1]  # per epoch
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/confusion_matrix.png", "plots/reliability_diagram.png",
                "plots/worst_mistakes.png", "plots/training_curves.png"} <= artifacts  # fmt: skip
        per_class = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert "evaluation/per_class.csv" in per_class


def test_the_test_metrics_are_those_of_the_test_predictions(runs, data_cfg):
    by_step, transfer, scratch, client = runs
    labels = data.load_data(data_cfg).test.labels
    for step, result in (("train_transfer", transfer), ("train_scratch", scratch)):
        top1 = float((result.test_probs.argmax(1) == labels).mean())
        assert result.metrics["test/top1"] == pytest.approx(top1)
        assert by_step[step].data.metrics["test/top1"] == pytest.approx(top1)
        version = client.get_model_version(REGISTERED_MODEL, result.version)
        assert float(version.tags["test/top1"]) == pytest.approx(top1)
        assert float(version.tags["threshold"]) == pytest.approx(result.metadata.threshold)


def test_logged_models_answer_photo_bytes_like_their_torchscript_file(runs, tmp_path):
    _, transfer, scratch, _ = runs
    photo = photo_bytes(size=(300, 200))
    for result in (transfer, scratch):
        model = mlflow.pyfunc.load_model(result.model_uri)
        (answer,) = model.predict(pd.DataFrame({"image": [photo]}))
        path, _ = tracking.fetch_model(result.model_uri, tmp_path / result.version)
        predictor = Predictor.load(path)
        assert predictor.metadata == result.metadata
        assert predictor.threshold == result.metadata.threshold  # the model's own, not a default
        assert answer == predictor.predict([photo])[0]  # the same file and process
        assert {t["name"] for t in answer["top_k"]} == set(result.metadata.class_names)


def test_torchvision_backbone_trains_end_to_end_with_frozen_stages(data_cfg, tracking_uri):
    """The path for online users: a torchvision backbone (random weights here, offline)."""
    result = steps.train_transfer(
        data_cfg,
        TransferConfig(arch="resnet50", weights="", trainable_blocks=1),
        TrainConfig(epochs=1, batch_size=8, num_workers=0),
        NO_TUNING,
    )
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    layer4 = sum(p.numel() for p in torchvision.models.resnet50().layer4.parameters())
    head = 2048 * 3 + 3
    assert int(run.data.params["trainable_parameters"]) == layer4 + head  # nothing else
    model = mlflow.pyfunc.load_model(result.model_uri)
    (answer,) = model.predict(pd.DataFrame({"image": [photo_bytes()]}))
    assert len(answer["top_k"]) == 3


def test_the_device_reaches_every_step(data_cfg, tracking_uri, monkeypatch):
    """Caching, advancing, training, trials, evaluation and calibration all run on the
    configured device: a distinct one (`cpu:0`) shows that none of them picks its own."""
    device = torch.device("cpu", 0)
    monkeypatch.setattr(training, "resolve_device", lambda name: device)
    seen: dict[str, set] = {}

    def spy(module, name: str, position: int) -> None:
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            given = kwargs["device"] if "device" in kwargs else args[position]
            seen.setdefault(name, set()).add(given)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    spy(transfer, "cache_activations", 5)
    spy(transfer, "advance", 3)
    spy(training, "fit", 6)
    spy(training, "predict", 2)
    steps.train_transfer(
        data_cfg,
        TransferConfig(trainable_blocks=2, views=1),
        TrainConfig(**{**FAST, "batch_size": 32}),
        TuneConfig(n_trials=2, timeout=0, pruner="none"),  # a trial may train fewer stages
    )
    assert set(seen) == {"cache_activations", "advance", "fit", "predict"}
    assert all(devices == {device} for devices in seen.values()), seen


def test_each_run_measures_the_open_set_and_sets_the_write_threshold_from_it(runs):
    """Tiny data: 3 classes, so each of the 3 rotations holds out 1 class."""
    by_step, transfer, scratch, client = runs
    for step, result in (("train_transfer", transfer), ("train_scratch", scratch)):
        run = by_step[step]
        open_set = result.metadata.open_set
        assert open_set["score"] in ("max_prob", "prototype")  # the better on the proxies
        assert run.data.metrics["open_set/auroc"] == pytest.approx(open_set["auroc"])
        for score in ("max_prob", "energy", "knn1", "mahalanobis"):
            assert f"open_set/{score}/auroc" in run.data.metrics, score
        if open_set["score"] == "max_prob":  # both on the top probability
            assert result.metadata.threshold >= result.metadata.show_threshold
        summary = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/open_set/summary.json")
        assert len(summary["held_out"]) == 3 and all(len(h) == 1 for h in summary["held_out"])
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/open_set_scores.png", "plots/precision_coverage.png"} <= plots
        version = client.get_model_version(REGISTERED_MODEL, result.version)
        assert float(version.tags["open_set/false_accept"]) == pytest.approx(
            open_set["false_accept"]
        )


def test_the_exported_model_reproduces_the_evaluations_scores(runs, data_cfg, tmp_path):
    _, transfer, scratch, _ = runs
    test = data.load_data(data_cfg).test
    photos = torch.from_numpy(np.array(test.images)).permute(0, 3, 1, 2)  # what evaluation saw
    for result in (transfer, scratch):
        path, _ = tracking.fetch_model(result.model_uri, tmp_path / result.version)
        module, _ = load_torchscript(path)
        with torch.inference_mode():
            probs, known = module.answer(photos.contiguous())
        np.testing.assert_allclose(probs.numpy(), result.test_probs, atol=1e-4)
        np.testing.assert_allclose(known.numpy(), result.test_known, atol=1e-4)
        written = result.test_known >= result.metadata.threshold
        assert result.metrics["test/written"] == pytest.approx(written.mean())
