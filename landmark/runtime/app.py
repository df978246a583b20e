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
from starlette.concurrency import run_in_threadpool

from landmark import tracking
from landmark.config import AppConfig, ServeConfig
from landmark.runtime import images
from landmark.runtime.predictor import BadRequestError, Predictor
from landmark.runtime.review import PlanError, Review

log = logging.getLogger(__name__)

ENDPOINT_TIMEOUT = 75  # seconds: longer than `mlflow models serve`'s own 60, whose 504 we relay
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
MEDIA_TYPES = {".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg"}


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


class EndpointError(RuntimeError):
    """The endpoint could not answer (down, too slow, broken); `status` is ours to return."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class EndpointClassifier:
    """A running `mlflow models serve` endpoint (`.../invocations`)."""

    def __init__(self, url: str, timeout: float = ENDPOINT_TIMEOUT) -> None:
        self.url, self.timeout = url, timeout
        self.description = f"the model served at {url}"

    def predict(self, photo: bytes, top_k: int) -> dict[str, Any]:
        body = {
            "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photo).decode()]]},
            "params": {"top_k": top_k},
        }
        try:
            response = requests.post(self.url, json=body, timeout=(5, self.timeout))
        except requests.Timeout as e:
            raise EndpointError(504, f"{self.url} gave no answer within {self.timeout} s") from e
        except requests.RequestException as e:
            raise EndpointError(502, f"cannot reach {self.url}: is the endpoint running?") from e
        if 400 <= response.status_code < 500:
            raise BadRequestError(_endpoint_message(response))
        try:
            response.raise_for_status()
            return response.json()["predictions"][0]
        except (requests.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            reason = f"{response.status_code} {_endpoint_message(response)}"[:300]
            raise EndpointError(502, f"{self.url} answered {reason}") from e


def _endpoint_message(response: requests.Response) -> str:
    """The reason in an endpoint's error answer: MLflow's JSON `message` (its last line, where
    ours is: MLflow puts the whole request in front), else the start of the text."""
    try:
        message = str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300] or response.reason
    return message.rsplit("Error: ", 1)[-1].strip()


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


def allowed_hosts(cfg: AppConfig) -> list[str]:
    """The Host names the app answers to: localhost, the address it listens on, and the
    names given (DNS-rebinding guard: a web page elsewhere cannot reach it by a name of its own)."""
    extra = [h.strip() for h in cfg.allowed_hosts.split(",") if h.strip()]
    listen = [] if cfg.host in {"0.0.0.0", "::", ""} else [cfg.host]
    return list(dict.fromkeys([*LOCAL_HOSTS, *listen, *extra]))


def create_app(
    classifier: Classifier, examples: list[Path], cfg: AppConfig = AppConfig()
) -> FastAPI:
    """The web app: the page, its examples, and `POST /api/predict` (raw photo bytes).

    Decoding, the model and endpoint calls run in worker threads, so one slow photo never
    holds the page for anyone else; every error is a JSON `{"error": ...}`, never a trace.
    """
    app = FastAPI(title="landmark", docs_url=None, redoc_url=None, openapi_url=None)
    _check_hosts(app, allowed_hosts(cfg))
    max_bytes = cfg.max_upload_mb * 1_000_000

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse({"error": "internal error: the app's log has the details"}, 500)

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
        media = MEDIA_TYPES.get(path.suffix.lower(), "image/jpeg")
        return Response(path.read_bytes(), media_type=media)

    @app.post("/api/predict")
    async def predict(request: Request, top_k: int = ServeConfig().top_k) -> JSONResponse:
        name = urllib.parse.unquote(request.headers.get("x-filename", "photo"))
        photo = await _read_body(request, max_bytes)
        if photo is None:
            message = f"{name} is larger than {cfg.max_upload_mb} MB (the app's --max-upload-mb)"
            return JSONResponse({"error": message}, status_code=413)
        try:
            answer = await run_in_threadpool(classifier.predict, photo, top_k)
        except BadRequestError as e:
            reason = str(e).removeprefix("row 0: ")
            return JSONResponse({"error": f"{name}: {reason}"}, status_code=400)
        except EndpointError as e:
            return JSONResponse({"error": f"{name}: {e}"}, status_code=e.status)
        gps = await run_in_threadpool(images.gps_coordinates, photo)
        answer["photo_gps"] = {"latitude": gps[0], "longitude": gps[1]} if gps else None
        return JSONResponse(answer)

    return app


def create_review_app(review: Review, cfg: AppConfig = AppConfig()) -> FastAPI:
    """The review page of a plan (`/review`), its rows and thumbnails, and
    `POST /api/review/decisions` (`{"rows": [...], "accept": bool, "place": int | null}`)."""
    app = FastAPI(title="landmark review", docs_url=None, redoc_url=None, openapi_url=None)
    _check_hosts(app, allowed_hosts(cfg))

    @app.get("/", response_class=HTMLResponse)
    @app.get("/review", response_class=HTMLResponse)
    def page() -> str:
        return REVIEW_PAGE

    @app.get("/api/review")
    def rows() -> dict[str, Any]:
        return review.view()

    @app.get("/api/review/photo/{index}")
    def photo(index: int) -> Response:
        thumbnail = review.thumbnail(index)
        if thumbnail is None:
            return JSONResponse({"error": f"no photo {index} to show"}, status_code=404)
        return Response(thumbnail, media_type="image/jpeg")

    @app.post("/api/review/decisions")
    async def decide(request: Request) -> JSONResponse:
        # Only this page may decide: another site can send a "simple" cross-origin POST (a
        # text/plain body) without asking; it cannot send application/json without a preflight.
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" or request.headers.get("sec-fetch-site") == "cross-site":
            message = "decisions are JSON (Content-Type: application/json) from the review page"
            return JSONResponse({"error": message}, status_code=415)
        try:
            body = await request.json()
            indexes, accept, place = body["rows"], body["accept"], body.get("place")
            if not isinstance(indexes, list) or not isinstance(accept, bool):
                raise TypeError("rows must be a list and accept true or false")
        except (ValueError, KeyError, TypeError) as e:
            message = f"expected JSON {{'rows': [...], 'accept': bool, 'place': int}}: {e}"
            return JSONResponse({"error": message}, status_code=400)
        try:
            saved = await run_in_threadpool(review.decide, indexes, accept, place)
        except PlanError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse({"saved": len(saved), "decisions": saved})

    return app


def _check_hosts(app: FastAPI, hosts: list[str]) -> None:
    """Refuse requests whose Host header is not one of `hosts` (DNS rebinding), saying how to
    allow the name."""

    @app.middleware("http")
    async def check_host(request: Request, call_next):
        host = _host_name(request.headers.get("host", ""))
        if host not in hosts and "*" not in hosts:
            message = (
                f"this app answers requests for {', '.join(hosts)}, not {host!r}: start it "
                f"with --allowed-hosts {host or 'NAME'} if that is how people reach it"
            )
            return JSONResponse({"error": message}, status_code=400)
        return await call_next(request)


def _host_name(header: str) -> str:
    """The host of a Host header, without its port (`[::1]:7860` -> `[::1]`)."""
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.split(":")[0]


async def _read_body(request: Request, max_bytes: int) -> bytes | None:
    """The request body, or None as soon as it is known to be over `max_bytes` (from its
    Content-Length before reading anything, else while it streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return None
    return bytes(body)


def run(cfg: AppConfig) -> None:
    """Load the model, pick the examples and serve the app until interrupted (or, with
    `cfg.review`, serve the review page of that plan: no model needed)."""
    if cfg.review:
        review = Review(Path(cfg.review))
        log.info("Reviewing %d rows of %s on http://%s:%d/review", len(review.rows), cfg.review,
                 cfg.host, cfg.port)  # fmt: skip
        uvicorn.run(create_review_app(review, cfg), host=cfg.host, port=cfg.port,
                    log_level="warning", limit_concurrency=32)  # fmt: skip
        return
    classifier, info = load_classifier(cfg.model, cfg.endpoint)
    source = Path(cfg.examples or info.get("data", "") or "nowhere")
    chosen = pick_examples(source, cfg.seed) if source.is_dir() else []
    log.info("Model: %s; %d example photos from %s", classifier.description, len(chosen), source)
    app = create_app(classifier, chosen, cfg)
    log.info("Answering requests for %s", ", ".join(allowed_hosts(cfg)))
    # A bounded number of requests at once: each may hold an upload of up to max_upload_mb.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", limit_concurrency=32)


PAGE = (Path(__file__).parent / "app.html").read_text()
REVIEW_PAGE = (Path(__file__).parent / "review.html").read_text()
