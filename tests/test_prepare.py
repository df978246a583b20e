"""The `prepare` step and the `main` entry point, against a real sqlite-backed MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import BAD_FILES, make_zip
from mlflow.tracking import MlflowClient
from PIL import Image

from landmark import steps

REPO = Path(__file__).resolve().parents[1]


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def check_prepare_run(client: MlflowClient, run_id: str, tmp_path: Path) -> dict:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["landmark.step"] == "prepare"
    assert run.data.params["num_classes"] == "3"
    assert len(run.data.params["fingerprint"]) == 64
    assert run.data.metrics["bad_files"] == len(BAD_FILES)
    assert run.data.metrics["train_test_duplicates"] == 1
    assert {
        "data/summary.json",
        "data/bad_files.csv",
        "data/landmarks.csv",
        "plots/class_distribution.png",
        "plots/samples.png",
    } <= artifact_paths(client, run_id)
    local = Path(client.download_artifacts(run_id, "", str(tmp_path / f"dl-{run_id}")))
    for png in ("class_distribution.png", "samples.png"):
        with Image.open(local / "plots" / png) as img:
            assert img.width > 200 and img.height > 200
    bad_csv = (local / "data" / "bad_files.csv").read_text()
    assert all(name in bad_csv for name in BAD_FILES)
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [
        run.data.params["fingerprint"][:16]
    ]
    return json.loads((local / "data" / "summary.json").read_text())


def test_prepare_logs_summary_and_pictures(data_cfg, tracking_uri, tmp_path):
    dataset = steps.prepare(data_cfg)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    summary = check_prepare_run(client, run.info.run_id, tmp_path)
    assert summary["fingerprint"] == dataset.fingerprint
    # make_dataset: train/ has 6 photos per class, plus 6 odd but valid ones in the first (its
    # bad files are excluded): 12, 6, 6. Validation takes max(1, round(n * 0.15)) of a class:
    # 2, 1, 1. test/ has 2 per class, plus the leaked copy in the second.
    assert summary["counts"] == {"train": 20, "val": 4, "test": 7}
    per_class = [(c["train"], c["val"], c["test"]) for c in summary["classes"]]
    assert per_class == [(10, 2, 2), (5, 1, 3), (5, 1, 2)]
    eiffel = summary["classes"][0]
    assert eiffel["name"] == "Eiffel Tower" and eiffel["location"]["country"] == "France"
    assert mlflow.active_run() is None


def test_mlflow_run_main_on_a_zip(dataset_dir, tmp_path):
    """`mlflow run . -e main --env-manager local` end to end with default parameters: prepare,
    both training steps with their studies, promote, all nested under one parent run."""
    archive = make_zip(dataset_dir, tmp_path / "landmark_images.zip", prefix="landmark_images")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "run",
        str(REPO),
        "-e",
        "main",
        "--env-manager",
        "local",
        "--experiment-name",
        "smoke",
        "-P",
        f"data={archive}",
        "-P",
        f"cache_dir={tmp_path / 'cache'}",
        "-P",
        "cache_size=64",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    by_step = {r.data.tags["landmark.step"]: r for r in runs if "optuna.trial" not in r.data.tags}
    assert set(by_step) == {"main", "prepare", "train_transfer", "train_scratch", "promote"}
    main_id = by_step["main"].info.run_id
    for step in ("prepare", "train_transfer", "train_scratch", "promote"):
        assert by_step[step].data.tags["mlflow.parentRunId"] == main_id, step
    trials = [r for r in runs if "optuna.trial" in r.data.tags]
    parents = {r.data.tags["mlflow.parentRunId"] for r in trials}
    assert parents == {by_step["train_transfer"].info.run_id, by_step["train_scratch"].info.run_id}
    check_prepare_run(client, by_step["prepare"].info.run_id, tmp_path)
    model = client.get_registered_model("landmark-classifier")
    assert len(client.search_model_versions("name = 'landmark-classifier'")) == 2
    assert "champion" in model.aliases


@pytest.mark.shared_data
def test_prepare_on_the_shared_landmarks(tracking_uri, tmp_path):
    from landmark.config import DataConfig

    root = REPO.parent / "shared" / "datasets" / "landmarks-35"
    if not root.is_dir():
        pytest.skip(f"{root} is not present")
    dataset = steps.prepare(DataConfig(data=str(root), cache_dir=str(tmp_path / "cache")))
    assert dataset.num_classes == 35
    assert (len(dataset.train.labels), len(dataset.test.labels)) == (3126, 673)
    assert len(dataset.locations) == 35
