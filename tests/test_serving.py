"""The registry and `mlflow models serve`, for real: a tracking server process, two registered
versions trained on tiny photos, promotion and roll-back, then a serving process on the
champion answering real encoded photos and refusing bad ones with a 4xx naming the row."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import mlflow
import pytest
import requests
from conftest import (
    CLASSES,
    free_port,
    make_dataset,
    photo_bytes,
    png_with_header_size,
    start,
    stop,
)
from mlflow.tracking import MlflowClient

from landmark import steps
from landmark.config import (
    REGISTERED_MODEL,
    DataConfig,
    PromoteConfig,
    ScratchConfig,
    ScratchTrainConfig,
    ServeConfig,
    TuneConfig,
)
from landmark.runtime.predictor import Predictor

BIN = str(Path(sys.executable).parent)  # `mlflow models serve --env-manager local` needs it


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real `mlflow server` with two trained, registered versions; version 2 is better."""
    tmp = tmp_path_factory.mktemp("registry")
    port = free_port()
    server = start(
        [
            f"{BIN}/mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination", str(tmp / "artifacts"), "--workers", "1",
        ],
        f"http://127.0.0.1:{port}/health",
        tmp / "server.log",
        {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        data_cfg = DataConfig(
            data=str(make_dataset(tmp / "landmarks", train_per_class=10)),
            cache_dir=str(tmp / "cache"),
            cache_size=64,
        )
        no_tuning = TuneConfig(n_trials=0)
        small = ScratchConfig(image_size=48, width=8, depth=2, blocks=1)
        weak = ScratchTrainConfig(epochs=1, batch_size=8, num_workers=0, lr=1e-5)
        good = ScratchTrainConfig(epochs=8, batch_size=8, num_workers=0)
        results = [steps.train_scratch(data_cfg, small, cfg, no_tuning) for cfg in (weak, good)]
        yield uri, results, data_cfg
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
        stop(server)


def test_each_final_model_is_a_tagged_registry_version(registry):
    uri, results, _ = registry
    client = MlflowClient(uri)
    assert [r.version for r in results] == ["1", "2"]
    for result in results:
        version = client.get_model_version(REGISTERED_MODEL, result.version)
        assert version.tags["arch"] == "landmark_cnn"
        assert len(version.tags["data_fingerprint"]) == 64
        assert client.get_run(version.tags["run_id"]).info.run_id == version.run_id
        assert float(version.tags["test/top1"]) == pytest.approx(result.metrics["test/top1"])


@pytest.fixture(scope="module")
def champion(registry, tmp_path_factory):
    """Promote over the tracking server, then serve `models:/landmark-classifier@champion`."""
    uri, results, _ = registry
    weak, better = results
    assert better.metrics["test/top1"] > weak.metrics["test/top1"]  # 8 epochs beat 1 at lr 1e-5
    decision = steps.promote(PromoteConfig())
    assert decision.promote and decision.version == better.version
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    server = start(
        [
            f"{BIN}/mlflow", "models", "serve", "-m", "models:/landmark-classifier@champion",
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
        ],
        f"http://127.0.0.1:{port}/ping",
        tmp / "serve.log",
        {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    path = mlflow.artifacts.download_artifacts(better.model_uri, dst_path=str(tmp / "champion"))
    yield f"http://127.0.0.1:{port}/invocations", better, server, path, tmp / "serve.log"
    stop(server)


def b64(photo: bytes) -> str:
    return base64.b64encode(photo).decode()


def invoke(url: str, photos: list[bytes], params: dict | None = None, records: bool = False):
    if records:
        body = {"dataframe_records": [{"image": b64(p)} for p in photos]}
    else:
        body = {"dataframe_split": {"columns": ["image"], "data": [[b64(p)] for p in photos]}}
    if params:
        body["params"] = params
    return requests.post(url, json=body, timeout=300)


def colour_photo(cls: int, fmt: str = "JPEG", size=(448, 336)) -> bytes:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]  # the conftest data set's classes
    return photo_bytes(size=size, colour=colours[cls], fmt=fmt, seed=99)


def torchscript_answer(path: str, photo: bytes, top_k: int = 3) -> dict:
    predictor = Predictor.load(next(Path(path).rglob("*.pt")))
    return predictor.predict([photo], top_k)[0]


def test_champion_answers_photos_like_the_torchscript_file(champion):
    url, better, server, path, _ = champion
    photos = [colour_photo(0), colour_photo(1, "PNG"), colour_photo(2, "WEBP")]
    for records in (False, True):
        response = invoke(url, photos, records=records)
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
        assert len(answers) == 3
        for answer, photo in zip(answers, photos, strict=True):
            expected = torchscript_answer(path, photo)
            assert answer["label"] == expected["label"]
            assert answer["probability"] == pytest.approx(expected["probability"], abs=1e-5)
            assert len(answer["top_k"]) == 3  # default top_k 5, capped at the 3 classes
            assert answer["known"] == expected["known"]
    assert [a["label"] for a in answers] == CLASSES  # the trained champion knows the colours
    eiffel = answers[0]["location"]
    assert (eiffel["name"], eiffel["country"]) == ("Eiffel Tower", "France")
    assert eiffel["latitude"] == pytest.approx(48.8584)


def test_request_params_top_k_and_threshold(champion):
    url = champion[0]
    (answer,) = invoke(url, [colour_photo(0)], {"top_k": 1, "threshold": 1.0}).json()["predictions"]
    assert len(answer["top_k"]) == 1 and answer["known"] is False


def truncated_jpeg() -> bytes:
    return colour_photo(0)[:2000]


BAD_REQUESTS = {
    "empty body": lambda url: requests.post(
        url, data=b"", headers={"Content-Type": "application/json"}, timeout=60
    ),
    "missing column": lambda url: requests.post(
        url, json={"dataframe_split": {"columns": ["photo"], "data": [["x"]]}}, timeout=60
    ),
    "not an image": lambda url: invoke(url, [colour_photo(0), b"%PDF-1.4 hello"]),
    "truncated JPEG": lambda url: invoke(url, [truncated_jpeg()]),
    "bad base64": lambda url: requests.post(
        url,
        json={"dataframe_split": {"columns": ["image"], "data": [[b64(colour_photo(0))], ["@@@"]]}},
        timeout=60,
    ),
    "decompression bomb": lambda url: invoke(url, [png_with_header_size(40_000, 40_000)]),
}
# What each refusal's message must say.
MESSAGES = {
    "empty body": "Invalid input",
    "missing column": "image",
    "not an image": "row 1: not an image file",
    "truncated JPEG": "row 0: truncated or corrupt JPEG",
    "bad base64": "row 1: zero-byte file",  # MLflow decodes "@@@" leniently, to no bytes
    "decompression bomb": "row 0: too large",
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(champion, case):
    url, _, server, _, log = champion
    response = BAD_REQUESTS[case](url)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert MESSAGES[case] in response.json()["message"]
    assert server.poll() is None
    good = invoke(url, [colour_photo(1)])
    assert good.status_code == 200 and good.json()["predictions"][0]["label"] == CLASSES[1]


def test_legal_extremes_are_answered_and_a_1px_photo_is_refused(champion):
    url, _, server, path, _ = champion
    tiny = invoke(url, [colour_photo(0), photo_bytes(size=(1, 1), fmt="PNG")])
    assert tiny.status_code == 400 and "row 1: too small: 1x1 px" in tiny.json()["message"]
    wide = photo_bytes(size=(20_000, 60), colour=(30, 200, 30))
    response = invoke(url, [wide])
    assert response.status_code == 200, response.text[:500]
    assert response.json()["predictions"][0]["label"] == torchscript_answer(path, wide)["label"]
    batch = [colour_photo(i % 3, size=(64, 48)) for i in range(ServeConfig().max_rows)]
    response = invoke(url, batch)
    assert response.status_code == 200, response.text[:500]
    labels = [a["label"] for a in response.json()["predictions"]]
    assert labels == [CLASSES[i % 3] for i in range(len(batch))]
    assert server.poll() is None


def test_a_request_over_the_row_limit_is_refused_naming_the_limit(champion):
    """Thousands of rows would hold the model for minutes (MLflow answers 504, the work goes
    on and every later request times out): refused at once instead."""
    url, _, server, _, _ = champion
    limit = ServeConfig().max_rows
    response = invoke(url, [colour_photo(0, size=(64, 48))] * (limit + 1))
    assert response.status_code == 400
    message = response.json()["message"]
    assert f"{limit + 1} photos in one request" in message and f"at most {limit}" in message
    assert "LANDMARK_MAX_ROWS" in message and "stack_trace" not in response.json()
    assert invoke(url, [colour_photo(1)]).status_code == 200


def test_roll_back_and_promote_again_through_the_tracking_server(registry, champion):
    uri = registry[0]
    client = MlflowClient(uri)
    steps.promote(PromoteConfig(version="1", force=True))
    aliases = client.get_registered_model(REGISTERED_MODEL).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1", "previous": "2"}
    steps.promote(PromoteConfig(rollback=True))
    aliases = client.get_registered_model(REGISTERED_MODEL).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "2", "previous": "1"}


def test_landmark_app_from_the_command_line_asks_the_endpoint(champion, tmp_path):
    """`landmark app --endpoint URL`: the app's answers are the served model's."""
    url, _, _, _, _ = champion
    port = free_port()
    command = [f"{BIN}/landmark", "app", "--endpoint", url, "--port", str(port)]
    app = start(command, f"http://127.0.0.1:{port}/", tmp_path / "app.log", dict(os.environ))
    try:
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/api/info", timeout=10).json()["model"].endswith(url)
        photo = colour_photo(2, "PNG")
        answer = requests.post(f"{base}/api/predict", data=photo, timeout=120).json()
        (served,) = invoke(url, [photo]).json()["predictions"]
        assert answer["label"] == served["label"] == CLASSES[2]
        assert answer["probability"] == pytest.approx(served["probability"])
        bad = requests.post(
            f"{base}/api/predict", data=b"%PDF-1.4", headers={"x-filename": "a.jpg"}, timeout=60
        )
        assert bad.status_code == 400 and bad.json()["error"].startswith("a.jpg: ")
        assert "not an image file" in bad.json()["error"]
    finally:
        stop(app)
