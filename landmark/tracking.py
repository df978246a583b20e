"""Every MLflow call of the project lives here: runs, params, metrics, artifacts, data sets,
the logged model, the registry, and fetching models for the runtime.

Shared by training and the runtime, it imports neither side's heavy parts: only the runtime's
predictor and contract. The logged model is a pyfunc (`LandmarkPyfunc`) around the exported
TorchScript file.
The tracking store is whatever MLflow resolves (`MLFLOW_TRACKING_URI`, else MLflow 3's default
`sqlite:///mlflow.db` with artifacts in `./mlruns`). Under `mlflow run`, `start_run` resumes the
run that `mlflow run` created; steps of a multi-step pipeline become nested runs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import getpass
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import requests
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from landmark.config import CHAMPION, PREVIOUS, REGISTERED_MODEL, ServeConfig
from landmark.runtime import images
from landmark.runtime.contract import ModelMetadata
from landmark.runtime.predictor import BadRequestError, Predictor

SERVE = ServeConfig()
MAX_ROWS_ENV = "LANDMARK_MAX_ROWS"  # where the server runs: the most photos per request
MAX_PIXELS_ENV = "LANDMARK_MAX_REQUEST_PIXELS"  # ... and the most pixels decoded per request

log = logging.getLogger(__name__)


class AccessError(RuntimeError):
    """The tracking server refused the login (401) or the user lacks a permission (403)."""


def user() -> str:
    """Who the tracking server knows us as (MLFLOW_TRACKING_USERNAME), else the OS user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


@contextlib.contextmanager
def needs(permission: str, resource: str) -> Iterator[None]:
    """Turn the server's 401/403 inside the block into an `AccessError` that names the user,
    the server and the permission the block needs (MLflow's own says neither)."""
    try:
        yield
    except MlflowException as e:
        code = str(e.error_code)
        uri = mask_passwords(mlflow.get_tracking_uri())
        if code == "UNAUTHENTICATED":
            who = os.environ.get("MLFLOW_TRACKING_USERNAME")
            login = f"the login of user {who!r} (wrong password?)" if who else "no login"
            raise AccessError(
                f"{uri} refused {login} (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD to your account on the tracking server"
            ) from e
        if code == "PERMISSION_DENIED":
            raise AccessError(
                f"user {user()!r} lacks {permission} permission on {resource} at {uri} "
                f"(HTTP 403): ask an admin to grant it (`landmark team user {user()} "
                f"--permission {permission}`)"
            ) from e
        raise


@contextlib.contextmanager
def start_run(name: str, tags: dict[str, str] | None = None) -> Iterator[str]:
    """Start (or, under `mlflow run`, resume) a run; nested when another run is active.

    Yields:
        the run id.
    """
    nested = mlflow.active_run() is not None
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "the experiment"
    with needs("EDIT", f"experiment {experiment!r}"):
        run_context = mlflow.start_run(run_name=name, nested=nested, tags=tags)
    with run_context as run:
        mlflow.set_tag("landmark.step", name)
        if not nested:
            mark_experiment_for_model_training(run.info.experiment_id)
        log.info("MLflow run %s (%s) at %s", name, run.info.run_id, mlflow.get_tracking_uri())
        yield run.info.run_id


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def mark_experiment_for_model_training(experiment_id: str) -> None:
    """Tag the experiment so the UI opens it in its model-training view, not the GenAI one.

    Several processes may start runs in one store at once (tuning workers). The SQL store
    writes an experiment tag as read-then-insert, so two first writers can both insert and
    the second fails on the unique key; by then the tag is there, which is all we need.
    """
    client = mlflow.MlflowClient()
    key, value = EXPERIMENT_KIND
    if client.get_experiment(experiment_id).tags.get(key) == value:
        return
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except MlflowException:
        if client.get_experiment(experiment_id).tags.get(key) != value:
            raise


# A URL's password: user:PASSWORD@host, or libpq's ?password=PASSWORD (&password=...).
_URL_PASSWORD = re.compile(r"(?P<user>://[^/@:\s]*):[^/@\s]*@")
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&\s]*", re.IGNORECASE)


def has_password(text: str) -> bool:
    return bool(_URL_PASSWORD.search(text) or _QUERY_PASSWORD.search(text))


def mask_passwords(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _QUERY_PASSWORD.sub(r"\g<key>***", _URL_PASSWORD.sub(r"\g<user>:***@", text))


def end_run(run_id: str, status: str) -> None:
    """End another process's run (e.g. a killed tuning worker's trial) with `status`."""
    mlflow.MlflowClient().set_terminated(run_id, status)


def log_params(params: dict[str, Any]) -> None:
    """Log params, leaving out those the run already has; a URL's password is masked.

    `mlflow run` logs the `-P` values itself (an empty string as `''`, a password too: pass
    it in the environment, never in `-P`); logging them again with another spelling would be
    refused as a change.
    """
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    masked = {k: mask_passwords(v) if isinstance(v, str) else v for k, v in params.items()}
    mlflow.log_params({k: v for k, v in masked.items() if k not in existing})


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


def store_dir() -> Path:
    """The folder of the local tracking store (`mlflow.db`'s folder), else the working folder.

    Local companions of the store (the Optuna journal) live here.
    """
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
    return Path.cwd()


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def epoch_logger(prefix: str = "") -> Callable[[int, dict[str, float]], None]:
    """A `fit` callback that logs each epoch's metrics as MLflow steps (keys after `prefix`)."""

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({prefix + k: v for k, v in metrics.items()}, step=epoch)

    return log_epoch


def log_evaluation(report: Any, figures: dict[str, Any]) -> None:
    """Log an `evaluation.Report`: metrics, per-class table, calibration bins and pictures."""
    mlflow.log_metrics(report.metrics)
    mlflow.log_table(pd.DataFrame(report.per_class), "evaluation/per_class.json")
    mlflow.log_text(pd.DataFrame(report.per_class).to_csv(index=False), "evaluation/per_class.csv")
    mlflow.log_dict(report.calibration, "evaluation/calibration.json")
    mlflow.log_dict(report.mistakes, "evaluation/mistakes.json")
    mlflow.log_text(pd.DataFrame(report.confusion).to_csv(), "evaluation/confusion_matrix.csv")
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}.png")


class LandmarkPyfunc(mlflow.pyfunc.PythonModel):
    """The logged MLflow model: a column `image` of encoded photos in, one answer per photo out.

    Params per request: `top_k` (how many landmarks) and `threshold` (below it, `known` is
    false). The TorchScript file does the work; `runtime.predictor.Predictor` wraps it.
    Every version ever logged names this class (`landmark.tracking.LandmarkPyfunc`) in its
    model code. A version also carries a copy of the package it was logged with (MLflow's
    `code_paths`), which a fresh `mlflow models serve` process imports; where `landmark` is
    already imported (the Spark driver, a notebook, the tests) this class serves it, so it
    stays at this path and reads every metadata schema.
    """

    def load_context(self, context) -> None:
        self.predictor = Predictor.load(context.artifacts["torchscript"])
        self.limits = ServeConfig(
            max_rows=int(os.environ.get(MAX_ROWS_ENV, SERVE.max_rows)),
            max_request_pixels=int(os.environ.get(MAX_PIXELS_ENV, SERVE.max_request_pixels)),
        )

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[dict]:
        params = params or {}
        try:
            photos = _photo_column(model_input, self.limits.max_rows)
            self._check_pixels(photos)
            return self.predictor.predict(
                photos,
                int(params.get("top_k", SERVE.top_k)),
                params.get("threshold"),
                params.get("errors", "raise"),
            )
        except BadRequestError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from e
        except Exception as e:  # a bug of ours: the details go to the server's log, not the client
            log.exception("answering a request failed")
            raise MlflowException(
                f"internal error ({type(e).__name__}); the server's log has the details",
                error_code=INTERNAL_ERROR,
            ) from e

    def _check_pixels(self, photos: list[bytes]) -> None:
        """Refuse a request whose photos would take too long to decode (MLflow's timeout
        answers 504 but does not stop the work), from their headers alone."""
        draft = self.predictor.metadata.preprocessing.resize_size
        total, limit = sum(images.decoded_pixels(p, draft) for p in photos), self.limits
        if total > limit.max_request_pixels:
            raise BadRequestError(
                f"these {len(photos)} photos decode to {total:,} px, over the "
                f"{limit.max_request_pixels:,} this endpoint decodes per request (set "
                f"{MAX_PIXELS_ENV} where the server runs): send fewer or smaller photos"
            )


def _photo_column(model_input: Any, max_rows: int = SERVE.max_rows) -> list[bytes]:
    if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
        raise BadRequestError("expected a column 'image' of encoded photos (base64 in JSON)")
    if len(model_input) > max_rows:
        raise BadRequestError(
            f"{len(model_input)} photos in one request; this endpoint answers at most {max_rows} "
            f"(set {MAX_ROWS_ENV} where the server runs): send them in smaller batches"
        )
    photos = []
    for row, value in enumerate(model_input["image"]):
        if isinstance(value, str):  # base64 text that MLflow did not decode for us
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as e:  # ValueError: not ASCII
                raise BadRequestError(f"row {row}: 'image' is not valid base64: {e}") from e
        if not isinstance(value, bytes | bytearray):
            raise BadRequestError(
                f"row {row}: 'image' must be photo bytes, got {type(value).__name__}"
            )
        photos.append(bytes(value))
    return photos


def log_model(torchscript_path: Path, metadata: ModelMetadata, example_photo: bytes) -> str:
    """Log the exported classifier as this run's MLflow model `model`; return its URI."""
    if metadata.threshold is None:
        raise ValueError("an exported model needs its threshold (chosen on validation photos)")
    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        params=ParamSchema(
            [
                ParamSpec("top_k", "long", min(SERVE.top_k, metadata.num_classes)),
                ParamSpec("threshold", "double", metadata.threshold),
                ParamSpec("errors", "string", "raise"),  # "report": bad photos answer an error
            ]
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        # "Models from code": MLflow loads the class by import instead of unpickling an object.
        definition = Path(tmp) / "landmark_model.py"
        definition.write_text(
            "import mlflow\nfrom landmark.tracking import LandmarkPyfunc\n\n"
            "mlflow.models.set_model(LandmarkPyfunc())\n"
        )
        try:
            info = _log_pyfunc(definition, torchscript_path, signature, example_photo, metadata)
        except (MlflowException, requests.RequestException) as e:
            code = getattr(e, "error_code", "")
            response = getattr(e, "response", None)  # a 4xx MLflow does not retry or wrap
            refused = response is not None and response.status_code < 500
            if refused or code in ("UNAUTHENTICATED", "PERMISSION_DENIED",
                                   "INVALID_PARAMETER_VALUE"):  # fmt: skip
                raise  # not the transport's: `needs` and the caller say what it is
            # MLflow marks the half-logged model FAILED (if the server still answers).
            raise UploadError(
                f"the model's files did not all reach the artifact store of "
                f"{mask_passwords(mlflow.get_tracking_uri())}: {e}\nNothing was registered, "
                "and the half-logged model is marked FAILED unless the tracking server itself "
                "was unreachable; once the artifact store answers again (on a team stack: "
                "`landmark team status`), run the step again"
            ) from e
    return info.model_uri


class UploadError(RuntimeError):
    """A logged model's files did not all reach the artifact store."""


def _log_pyfunc(definition, torchscript_path, signature, example_photo, metadata):
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(definition),
        artifacts={"torchscript": str(torchscript_path)},
        signature=signature,
        input_example=pd.DataFrame({"image": [example_photo]}),
        code_paths=[str(Path(__file__).parent)],
        pip_requirements=_requirements(),
        metadata={"arch": metadata.arch, "data_fingerprint": metadata.data_fingerprint},
    )


def _requirements() -> list[str]:
    import numpy
    import PIL
    import torch
    import torchvision

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"pillow=={PIL.__version__}",
        f"numpy=={numpy.__version__}",
        f"pandas=={pd.__version__}",
    ]


def load_pyfunc(model_uri: str) -> Any:
    return mlflow.pyfunc.load_model(model_uri)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


# --- Model registry -------------------------------------------------------------------------


def register_model(model_uri: str, metadata: ModelMetadata, name: str = REGISTERED_MODEL) -> str:
    """Make the logged model a new version of the registered model `name`, tagged with what
    promotion compares (architecture, data set, run, test metrics); return the version."""
    with warnings.catch_warnings(), needs("EDIT", f"registered model {name!r}"):
        warnings.simplefilter("ignore", FutureWarning)
        version = mlflow.register_model(model_uri, name).version
    tags = {
        "arch": metadata.arch,
        "data_fingerprint": metadata.data_fingerprint,
        "run_id": active_run_id(),
        "threshold": metadata.threshold,
        "show_threshold": metadata.show_threshold,
        "temperature": metadata.temperature,
        **metadata.metrics,
        **{f"open_set/{k}": v for k, v in metadata.open_set.items()},
    }
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(name, version, key, str(value))
    log.info("Registered %s as %s version %s", model_uri, name, version)
    return str(version)


def model_versions(name: str = REGISTERED_MODEL) -> list[dict[str, Any]]:
    """Every version of `name` (oldest first): version, run_id, tags, aliases, description."""
    client = mlflow.MlflowClient()
    try:
        aliases = client.get_registered_model(name).aliases  # search results lack them
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code):
            return []
        raise
    versions = [
        {
            "version": str(v.version),
            "run_id": v.run_id,
            "tags": dict(v.tags),
            "aliases": [a for a, number in aliases.items() if str(number) == str(v.version)],
            "description": v.description or "",
        }
        for v in client.search_model_versions(f"name = '{name}'")
    ]
    return sorted(versions, key=lambda v: int(v["version"]))


def make_champion(version: str, reason: str, name: str = REGISTERED_MODEL) -> None:
    """Move `champion` to `version` and the old champion to `previous`; record when, by whom
    and why on the version (tags, and a line of its description)."""
    client = mlflow.MlflowClient()
    aliases = client.get_registered_model(name).aliases
    old = aliases.get(CHAMPION)
    with needs("EDIT", f"registered model {name!r}"):
        set_alias(CHAMPION, version, name)
    if old is not None and str(old) != str(version):
        set_alias(PREVIOUS, str(old), name)
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    who = user()
    record_on_version(
        version,
        {"promoted_at": when, "promoted_by": who, "promotion_reason": reason},
        f"{when} champion (by {who}): {reason}",
        name,
    )


def set_alias(alias: str, version: str, name: str = REGISTERED_MODEL) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def record_on_version(version: str, tags: dict[str, str], note: str, name: str = REGISTERED_MODEL):
    """Tag a model version and append `note` as a line of its description (its history)."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    old = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version, description=(old + "\n" + note).strip())


def fetch_model(model_uri: str, dst: Path) -> tuple[Path, dict[str, Any]]:
    """The TorchScript file of a landmark model, and what the registry says about it (`name`,
    `version`, `aliases`, the training run's `data`). `model_uri` is an MLflow model URI
    (downloaded into `dst`) or an exported TorchScript file (returned as is, nothing known)."""
    if Path(model_uri).is_file():
        return Path(model_uri), {}
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst)))
    torchscript = next(local.rglob("*.pt"), None)
    if torchscript is None:
        raise ValueError(f"{model_uri} is not a landmark model (no TorchScript file inside)")
    info: dict[str, Any] = {"uri": model_uri}
    ref = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else ""
    client = mlflow.MlflowClient()
    version = None
    if "@" in ref:  # models:/name@alias
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:  # models:/name/version
        name, number = ref.rsplit("/", 1)
        version = client.get_model_version(name, number)
    if version is not None:
        info.update(name=name, version=str(version.version), aliases=list(version.aliases))
        info["data"] = client.get_run(version.run_id).data.params.get("data", "")
    return torchscript, info


def spark_udf(spark: Any, model_uri: str, result_type: Any, params: dict[str, Any]) -> Any:
    """`mlflow.pyfunc.spark_udf` for a landmark model, run in this Python environment."""
    return mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=result_type, env_manager="local", params=params
    )


# --- Logins (the tracking server's basic-auth app) ------------------------------------------


@contextlib.contextmanager
def _login(username: str, password: str) -> Iterator[None]:
    """MLflow's clients read their login from the environment on every request."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {key: os.environ.get(key) for key in keys}
    os.environ.update(dict(zip(keys, (username, password), strict=True)))
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def add_user(
    tracking_uri: str,
    admin: tuple[str, str],
    username: str,
    password: str,
    permission: str,
    experiment: str,
    model: str = REGISTERED_MODEL,
) -> bool:
    """As `admin` (name, password), create `username` unless it exists and give it
    `permission` on `experiment` and the registered `model` (both created if missing).
    Returns whether the user was created."""
    from mlflow.server import get_app_client

    with _login(*admin):
        auth = get_app_client("basic-auth", tracking_uri=tracking_uri)
        client = mlflow.MlflowClient(tracking_uri)
        created = True
        try:
            auth.create_user(username, password)
        except MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
            created = False
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        try:
            client.get_registered_model(model)
        except MlflowException as e:
            if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
                raise
            client.create_registered_model(model)
        for kind, resource in (("experiment", experiment_id), ("registered_model", model)):
            _grant(auth, username, kind, resource, permission)
    return created


def _grant(auth: Any, username: str, kind: str, resource: str, permission: str) -> None:
    """Give `username` `permission` on `resource`, replacing the one it had."""
    try:
        auth.grant_user_permission(username, kind, resource, permission)
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
        auth.revoke_user_permission(username, kind, resource)
        auth.grant_user_permission(username, kind, resource, permission)
