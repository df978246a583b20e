"""Every MLflow call of the project lives here: runs, params, metrics, artifacts, data sets.

The tracking store is whatever MLflow resolves (`MLFLOW_TRACKING_URI`, else MLflow 3's default
`sqlite:///mlflow.db` with artifacts in `./mlruns`). Under `mlflow run`, `start_run` resumes the
run that `mlflow run` created; steps of a multi-step pipeline become nested runs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

log = logging.getLogger(__name__)


@contextlib.contextmanager
def start_run(name: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """Start (or, under `mlflow run`, resume) a run; nested when another run is active.

    Yields:
        the run id.
    """
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=name, nested=nested, tags=tags) as run:
        mlflow.set_tag("landmark.step", name)
        if not nested:  # open the experiment in the UI's model-training view, not the GenAI one
            mlflow.MlflowClient().set_experiment_tag(
                run.info.experiment_id, "mlflow.experimentKind", "custom_model_development"
            )
        log.info("MLflow run %s (%s) at %s", name, run.info.run_id, mlflow.get_tracking_uri())
        yield run.info.run_id


def log_params(params: dict[str, Any]) -> None:
    """Log params, leaving out those the run already has.

    `mlflow run` logs the `-P` values itself (an empty string as `''`); logging them again
    with another spelling would be refused as a change.
    """
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    mlflow.log_metrics(metrics, step=step)


def log_dict(obj: Any, artifact_file: str) -> None:
    """Log a JSON/YAML-serialisable object as an artifact file (`.json` or `.yaml`)."""
    mlflow.log_dict(obj, artifact_file)


def log_figure(figure: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as an image artifact (e.g. `plots/classes.png`)."""
    mlflow.log_figure(figure, artifact_file)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_dataset(source: str, name: str, fingerprint: str, context: str = "training") -> None:
    """Record the data set as a run input (shown under "Datasets" in the MLflow UI)."""
    with warnings.catch_warnings():
        # A local path matches two equivalent MLflow source types; MLflow warns and picks one.
        warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
        resolved = resolve_dataset_source(source)
    dataset = MetaDataset(source=resolved, name=name, digest=fingerprint[:16])
    mlflow.log_input(dataset, context=context)


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None
