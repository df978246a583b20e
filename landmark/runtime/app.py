"""The app: a web page where people drop photos and see the landmark and where it is.

A small FastAPI server with one self-contained page (no fonts, scripts or analytics from
outside: it works offline). Photos are classified by a local model (a registry URI or a
TorchScript file, through `runtime.predictor.Predictor`) or by a running `/invocations`
endpoint.
"""

from __future__ import annotations

import base64
import logging
import random
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Protocol

import requests
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from landmark import tracking
from landmark.config import AppConfig, ServeConfig
from landmark.runtime import images
from landmark.runtime.predictor import BadRequestError, Predictor

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 50_000_000


class Classifier(Protocol):
    """What the page needs from a model: answers for one photo, and a line about the model."""

    description: str

    def predict(self, photo: bytes, top_k: int) -> dict[str, Any]: ...


class LocalClassifier:
    """The exported TorchScript model, in this process."""

    def __init__(self, predictor: Predictor, title: str) -> None:
        self.predictor = predictor
        top1 = predictor.metadata.metrics.get("test/top1")
        accuracy = f" · test top-1 accuracy {top1:.1%}" if top1 is not None else ""
        self.description = f"{title} · {predictor.metadata.arch}{accuracy}"

    def predict(self, photo: bytes, top_k: int) -> dict[str, Any]:
        return self.predictor.predict([photo], top_k)[0]


class EndpointClassifier:
    """A running `mlflow models serve` endpoint (`.../invocations`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.description = f"the model served at {url}"

    def predict(self, photo: bytes, top_k: int) -> dict[str, Any]:
        body = {
            "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photo).decode()]]},
            "params": {"top_k": top_k},
        }
        response = requests.post(self.url, json=body, timeout=120)
        if 400 <= response.status_code < 500:
            raise BadRequestError(response.json().get("message", response.text))
        response.raise_for_status()
        return response.json()["predictions"][0]


def load_classifier(model: str, endpoint: str = "") -> tuple[Classifier, dict[str, Any]]:
    """A classifier for `endpoint` if given, else for `model` (a TorchScript file or an MLflow
    model URI such as the registry's champion); and what is known about it."""
    if endpoint:
        return EndpointClassifier(endpoint), {}
    with tempfile.TemporaryDirectory() as tmp:
        path, info = tracking.fetch_model(model, Path(tmp))
        predictor = Predictor.load(path)
    if "version" in info:
        title = f"{info['name']} version {info['version']}"
        title += f" ({', '.join(info['aliases'])})" if info["aliases"] else ""
    else:
        title = f"model file {path.name}" if path == Path(model) else model
    return LocalClassifier(predictor, title), info


def pick_examples(data_root: Path, seed: int, count: int = 6) -> list[Path]:
    """One photo from each of `count` random classes of the data set's test split."""
    test = data_root / "test"
    if not test.is_dir():
        return []
    folders = sorted(p for p in test.iterdir() if p.is_dir() and not p.name.startswith("."))
    rng = random.Random(seed)
    examples = []
    for folder in rng.sample(folders, min(count, len(folders))):
        photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in images.PHOTO_SUFFIXES)
        if photos:
            examples.append(rng.choice(photos))
    return examples


def create_app(classifier: Classifier, examples: list[Path]) -> FastAPI:
    """The web app: the page, its examples, and `POST /api/predict` (raw photo bytes)."""
    app = FastAPI(title="landmark", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return PAGE

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "model": classifier.description,
            "examples": [{"id": i, "name": p.parent.name} for i, p in enumerate(examples)],
        }

    @app.get("/api/examples/{index}")
    def example(index: int) -> Response:
        if not 0 <= index < len(examples):
            return JSONResponse({"error": f"no example {index}"}, status_code=404)
        path = examples[index]
        media = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        return Response(path.read_bytes(), media_type=media)

    @app.post("/api/predict")
    async def predict(request: Request, top_k: int = ServeConfig().top_k) -> JSONResponse:
        photo = await request.body()
        name = urllib.parse.unquote(request.headers.get("x-filename", "photo"))
        if len(photo) > MAX_UPLOAD_BYTES:
            message = f"{name} is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB"
            return JSONResponse({"error": message}, status_code=413)
        try:
            answer = classifier.predict(photo, top_k)
        except BadRequestError as e:
            reason = str(e).removeprefix("row 0: ")
            return JSONResponse({"error": f"{name}: {reason}"}, status_code=400)
        gps = images.gps_coordinates(photo)
        answer["photo_gps"] = {"latitude": gps[0], "longitude": gps[1]} if gps else None
        return JSONResponse(answer)

    return app


def run(cfg: AppConfig) -> None:
    """Load the model, pick the examples and serve the app until interrupted."""
    classifier, info = load_classifier(cfg.model, cfg.endpoint)
    source = Path(cfg.examples or info.get("data", "") or "nowhere")
    chosen = pick_examples(source, cfg.seed) if source.is_dir() else []
    log.info("Model: %s; %d example photos from %s", classifier.description, len(chosen), source)
    app = create_app(classifier, chosen)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


PAGE = (Path(__file__).parent / "app.html").read_text()
