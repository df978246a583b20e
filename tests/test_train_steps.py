"""`train_transfer` and `train_scratch` end to end on a tiny data set, logged to real MLflow."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from conftest import photo_bytes
from mlflow.tracking import MlflowClient

from landmark import steps
from landmark.config import (
    ScratchConfig,
    ScratchTrainConfig,
    TrainConfig,
    TransferConfig,
    TuneConfig,
)

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
    assert 0.0 <= transfer["metrics"]["test/top1"] <= 1.0


def test_logged_models_answer_photo_bytes(runs):
    _, transfer, scratch, _ = runs
    for result in (transfer, scratch):
        model = mlflow.pyfunc.load_model(result["model_uri"])
        (answer,) = model.predict(pd.DataFrame({"image": [photo_bytes(size=(300, 200))]}))
        assert answer["name"] in {"Eiffel Tower", "Golden Gate Bridge", "Taj Mahal"}
        assert len(answer["top_k"]) == 3
        assert answer["known"] == (answer["probability"] >= result["threshold"])


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
    trainable = int(run.data.params["trainable_parameters"])
    assert 0 < trainable < 23_000_000  # layer4 and the head, not all of resnet50's 23.5M
    model = mlflow.pyfunc.load_model(result["model_uri"])
    (answer,) = model.predict(pd.DataFrame({"image": [photo_bytes()]}))
    assert len(answer["top_k"]) == 3
