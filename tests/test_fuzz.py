"""Property-based fuzzing (Hypothesis): real JPEG, PNG and WebP bytes, mutated (bits flipped,
bytes overwritten, cut, spliced, repeated), into `images.load_rgb`, into the served model's
request parser (`LandmarkPyfunc.predict`) and into MLflow's own scoring server in front of it.
Only the documented errors ever escape: `BadImageError` from decoding; from the model, an
`MlflowException` with INVALID_PARAMETER_VALUE (a 400 naming the row). The default run tries a
few hundred examples, deterministically; `-m slow` tries thousands, at random."""

from __future__ import annotations

import base64
import io
import json
import threading

import mlflow
import pandas as pd
import pytest
import requests
import uvicorn
from conftest import export_tiny_model, free_port, photo_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from PIL import Image

from landmark import tracking
from landmark.runtime import images, sidecars
from landmark.runtime.predictor import load_torchscript

SEEDS = [
    photo_bytes(size=(64, 48), fmt="JPEG", seed=1),
    photo_bytes(size=(64, 48), fmt="JPEG", seed=2, progressive=True),
    photo_bytes(size=(64, 48), fmt="PNG", seed=3),
    photo_bytes(size=(64, 48), fmt="PNG", mode="RGBA", seed=4),
    photo_bytes(size=(64, 48), fmt="WEBP", seed=5),
    photo_bytes(size=(64, 48), fmt="WEBP", seed=6, lossless=True),
]
# (default run, `-m slow`)
RUNS = [
    pytest.param(dict(max_examples=300, derandomize=True), id="default"),
    pytest.param(dict(max_examples=5_000), id="long", marks=pytest.mark.slow),
]
COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated_photos(draw) -> bytes:
    """A real photo with a few random mutations."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "byte", "cut", "insert", "repeat", "zero"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 512))] * draw(st.integers(1, 8))
        else:
            end = at + draw(st.integers(1, 256))
            data[at:end] = bytes(len(data[at:end]))
        if not data:
            data = bytearray(b"\xff")
    return bytes(data)


@pytest.mark.parametrize("run", RUNS)
def test_decoding_a_mutated_photo_raises_only_bad_image_error(run):
    @settings(**COMMON, **run)
    @given(mutated_photos())
    def decode(data: bytes) -> None:
        try:
            img = images.load_rgb(data, draft_size=32)
        except images.BadImageError as e:
            assert str(e)  # a reason, never an empty message
        else:
            assert img.mode == "RGB" and min(img.size) >= 32

    decode()


def _exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif.update({0x010F: "Canon", 0x0110: "EOS R6", 0x0112: 6, 0x011A: (72, 1), 0x0132: "2024"})
    exif.get_ifd(0x8769).update({0x9003: "2024:05:01 10:00:00", 0x829A: (1, 250)})
    out = io.BytesIO()
    Image.open(io.BytesIO(SEEDS[0])).save(out, format="JPEG", exif=exif)
    return out.getvalue()


EXIF_JPEG = _exif_jpeg()
EXIF_AT = EXIF_JPEG.index(b"Exif\0\0") + 6  # the TIFF structure starts here


@pytest.mark.parametrize("run", RUNS)
def test_a_gps_copy_of_a_mutated_exif_is_made_or_refused_with_value_error(run):
    """Mutations inside the EXIF block only: PIL may read values it cannot write back."""

    @settings(**COMMON, **run)
    @given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6))
    def copy(changes) -> None:
        data = bytearray(EXIF_JPEG)
        for offset, value in changes:
            data[min(EXIF_AT + offset, len(data) - 1)] = value
        try:
            copied = sidecars.jpeg_with_gps(bytes(data), 48.8584, 2.2945)
        except ValueError as e:
            assert "no GPS copy" in str(e) or "not a JPEG" in str(e)
        else:
            assert images.gps_coordinates(copied) == pytest.approx((48.8584, 2.2945), abs=1e-4)

    copy()


@pytest.fixture(scope="module")
def pyfunc(tmp_path_factory):
    """The served model, logged to a throw-away store and loaded as MLflow serves it."""
    tmp = tmp_path_factory.mktemp("fuzz")
    path = export_tiny_model(tmp / "tiny.pt")
    _, metadata = load_torchscript(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
        patch.chdir(tmp)
        with mlflow.start_run():
            uri = tracking.log_model(path, metadata, SEEDS[0])
        yield mlflow.pyfunc.load_model(uri)


values = st.one_of(
    mutated_photos(),
    mutated_photos().map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=20),
    st.integers(),
    st.none(),
)


@pytest.mark.parametrize("run", RUNS)
def test_the_request_parser_answers_or_names_the_row(pyfunc, run):
    @settings(**COMMON, **{**run, "max_examples": run["max_examples"] // 3})
    @given(st.lists(values, min_size=1, max_size=4))
    def ask(rows) -> None:
        try:
            answers = pyfunc.predict(pd.DataFrame({"image": rows}), params={"top_k": 2})
        except MlflowException as e:
            assert e.error_code == "INVALID_PARAMETER_VALUE", e.message
            assert "stack_trace" not in e.serialize_as_json()
        else:
            assert len(answers) == len(rows) and all(len(a["top_k"]) == 2 for a in answers)

    ask()


@pytest.mark.parametrize("run", RUNS)
def test_the_scoring_server_answers_200_or_400_and_never_a_trace(pyfunc, run):
    from mlflow.pyfunc import scoring_server

    port = free_port()
    app = scoring_server.init(pyfunc)  # the app `mlflow models serve` runs, over real HTTP
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):  # 30 s
        if server.started:
            break
        threading.Event().wait(0.05)
    url = f"http://127.0.0.1:{port}/invocations"
    session = requests.Session()

    @settings(**COMMON, **{**run, "max_examples": run["max_examples"] // 3})
    @given(st.lists(mutated_photos(), min_size=1, max_size=3), st.sampled_from(["split", "raw"]))
    def post(photos, layout) -> None:
        rows = [[base64.b64encode(p).decode()] for p in photos]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}})
        if layout == "raw":  # and a body that is itself cut or corrupted
            body = body[: len(body) // 2]
        response = session.post(
            url, data=body, headers={"content-type": "application/json"}, timeout=60
        )
        assert response.status_code in {200, 400}, response.text[:300]
        assert "Traceback" not in response.text and "stack_trace" not in response.text

    try:
        post()
    finally:
        server.should_exit = True
        thread.join(10)
