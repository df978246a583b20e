"""Every single MLproject entry point through `mlflow run . -e <name> --env-manager local` on a
tiny data set, in one store, as a user would run them one after the other: `prepare`,
`train_transfer` with `mode=frozen`, `train_scratch`, `promote`. (`main` has its own test in
`test_prepare.py`.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from landmark.config import CHAMPION, REGISTERED_MODEL

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_TRAINING = {"epochs": 2, "batch_size": 8, "num_workers": 0, "n_trials": 0}
PARAMS = {
    "prepare": {},
    "train_transfer": {**TINY_TRAINING, "mode": "frozen", "views": 1},
    "train_scratch": {**TINY_TRAINING, "image_size": 48, "width": 8, "depth": 2, "blocks": 1},
    "promote": None,  # takes no data parameters
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Run the four entry points in order; the store's URI and its runs by step."""
    from conftest import make_dataset

    tmp = tmp_path_factory.mktemp("entry_points")
    data = make_dataset(tmp / "landmarks")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for entry, params in PARAMS.items():
        if params is not None:
            params = {
                "data": str(data),
                "cache_dir": str(tmp / "cache"),
                "cache_size": 64,
                **params,
            }
        words = [f"{k}={v}" for k, v in (params or {}).items()]
        command = [
            str(BIN / "mlflow"), "run", str(REPO), "-e", entry, "--env-manager", "local",
            "--experiment-name", "steps", *[w for p in words for w in ("-P", p)],
        ]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{entry}: {result.stderr[-3000:]}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("steps").experiment_id])
    return client, {r.data.tags["landmark.step"]: r for r in runs}


def test_each_entry_point_is_one_finished_run(store):
    _, by_step = store
    assert set(by_step) == set(PARAMS)
    for step, run in by_step.items():
        assert run.info.status == "FINISHED", step
        assert "mlflow.parentRunId" not in run.data.tags, step  # each on its own


def test_prepare_logs_the_data_summary(store):
    client, by_step = store
    run = by_step["prepare"]
    assert run.data.metrics["photos_test"] == 7 and run.data.metrics["bad_files"] == 5
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert {"data/summary.json", "data/bad_files.csv", "data/landmarks.csv"} <= paths


def test_frozen_transfer_trains_only_the_new_head(store):
    _, by_step = store
    run = by_step["train_transfer"]
    assert run.data.params["mode"] == "frozen"
    # EfficientNet-Lite0's 1,280 pooled features -> 3 classes: weights and biases, nothing else.
    assert int(run.data.params["trainable_parameters"]) == 1280 * 3 + 3
    assert "test/top1" in run.data.metrics


def test_both_trainings_registered_and_promote_chose_the_better(store):
    client, by_step = store
    versions = {v.run_id: v for v in client.search_model_versions(f"name = '{REGISTERED_MODEL}'")}
    trained = [by_step[s].info.run_id for s in ("train_transfer", "train_scratch")]
    assert set(versions) == set(trained)
    top1 = {run_id: float(versions[run_id].tags["test/top1"]) for run_id in trained}
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    assert top1[champion.run_id] == max(top1.values())
    assert by_step["promote"].data.tags["promotion"].endswith("is the first champion")
