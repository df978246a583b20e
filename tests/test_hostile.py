"""The hostile-input corpus (tests/hostile.py) through every door: bytes through a real
`mlflow models serve` and a real `landmark app`, files and names through `landmark tag` (local
and Spark) and `prepare`. Each must be answered or refused with a clear message naming the file
or row; no stack trace reaches a client, the servers answer the next good request, the
originals stay byte-identical."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

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
    train_tiny_champion,
)
from hostile import ANSWER, PHOTOS, make_library, photo_corpus, remove_tree, tree_snapshot

from landmark import tracking
from landmark.config import ServeConfig, TagConfig
from landmark.runtime import tagging
from landmark.runtime.predictor import Predictor

BIN = Path(sys.executable).parent
CORPUS = photo_corpus()
# Kinds about the sidecar the tagger writes: for `prepare` they are good photos.
TAGGER_ONLY = {"name too long for a sidecar", "sidecar name is a fifo"}
GOOD = photo_bytes(size=(200, 150), colour=(200, 30, 30), seed=3)  # class 0 of the tiny data


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    uri = train_tiny_champion(tmp)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri}
    return "models:/landmark-classifier@champion", env, tmp


@pytest.fixture(scope="module")
def endpoint(champion):
    model, env, tmp = champion
    port = free_port()
    command = [f"{BIN}/mlflow", "models", "serve", "-m", model, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    server = start(command, f"http://127.0.0.1:{port}/ping", tmp / "serve.log", env)
    yield f"http://127.0.0.1:{port}/invocations", server
    stop(server)


@pytest.fixture(scope="module")
def app(champion):
    model, env, tmp = champion
    port = free_port()
    command = [f"{BIN}/landmark", "app", "--model", model, "--port", str(port)]
    server = start(command, f"http://127.0.0.1:{port}/", tmp / "app.log", env)
    yield f"http://127.0.0.1:{port}", server
    stop(server)


def invoke(url: str, photos: list[bytes]) -> requests.Response:
    rows = [[base64.b64encode(p).decode()] for p in photos]
    return requests.post(url, json={"dataframe_split": {"columns": ["image"], "data": rows}},
                         timeout=120)  # fmt: skip


def no_trace(response: requests.Response) -> None:
    assert "Traceback" not in response.text and "stack_trace" not in response.text


@pytest.mark.parametrize("kind", list(PHOTOS))
def test_the_endpoint_answers_or_refuses_each_kind_and_keeps_serving(endpoint, kind):
    url, server = endpoint
    _, data, expected = CORPUS[kind]
    response = invoke(url, [GOOD, data])
    no_trace(response)
    if expected == ANSWER:
        assert response.status_code == 200, response.text[:300]
        assert response.json()["predictions"][1]["label"] in CLASSES
    else:
        assert response.status_code == 400, response.text[:300]
        message = response.json()["message"].rsplit("Error: ", 1)[-1]
        assert message.startswith("row 1: ") and expected in message
    assert server.poll() is None
    good = invoke(url, [GOOD])
    assert good.status_code == 200 and good.json()["predictions"][0]["label"] == CLASSES[0]


@pytest.mark.parametrize("kind", list(PHOTOS))
def test_the_app_answers_or_refuses_each_kind_and_keeps_serving(app, kind):
    url, server = app
    name, data, expected = CORPUS[kind]
    response = requests.post(
        f"{url}/api/predict", data=data, headers={"x-filename": name}, timeout=120
    )
    no_trace(response)
    if expected == ANSWER:
        assert response.status_code == 200, response.text[:300]
        assert response.json()["label"] in CLASSES
    else:
        assert response.status_code == 400, response.text[:300]
        error = response.json()["error"]
        assert error.startswith(f"{name}: ") and expected in error
    assert server.poll() is None
    good = requests.post(f"{url}/api/predict", data=GOOD, timeout=120)
    assert good.status_code == 200 and good.json()["label"] == CLASSES[0]


def read_report(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {row["path"]: row for row in rows}


def check_rows(rows: dict[str, dict], kinds: dict[str, tuple[Path, str]]) -> None:
    """One line per kind, answered or refused as expected."""
    for kind, (path, expected) in kinds.items():
        row = rows[str(path)]
        if expected == ANSWER:
            assert row["status"] in {"tagged", "unsure"}, (kind, row)
        else:
            assert row["status"] == "error" and expected in row["error"], (kind, row)
            assert "Traceback" not in row["error"]


@pytest.fixture(scope="module")
def tagged_library(champion, tmp_path_factory):
    """The corpus as a library, tagged once by the `landmark tag` command."""
    model, env, _ = champion
    tmp = tmp_path_factory.mktemp("library")
    kinds = make_library(tmp / "photos")
    before = tree_snapshot(tmp / "photos")
    command = [f"{BIN}/landmark", "tag", str(tmp / "photos"), "--model", model,
               "--report", str(tmp / "report.jsonl"), "--threshold", "0",
               "--organize", str(tmp / "by-place"), "--gps-copies", str(tmp / "gps")]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    yield kinds, before, done, tmp
    remove_tree(tmp)


def test_landmark_tag_gives_each_kind_one_report_line_and_touches_no_original(tagged_library):
    kinds, before, done, tmp = tagged_library
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    rows = read_report(tmp / "report.jsonl")
    check_rows(rows, kinds)
    assert len((tmp / "report.jsonl").read_text(encoding="utf-8").splitlines()) == len(rows)
    huge = rows[str(kinds["jpeg huge exif"][0])]
    assert huge["status"] == "tagged" and "65,533" in huge["gps_copy_error"]
    assert Path(huge["sidecar"]).is_file() and "gps_copy" not in huge
    after = tree_snapshot(tmp / "photos")
    assert {k: after.get(k) for k in before} == before
    new = {k: v for k, v in after.items() if k not in before}
    assert new and all(k.endswith(b".xmp") and v[0] == "file" for k, v in new.items())
    assert not [p for p in after if b".landmark-" in p]  # no temporary file left


def test_a_rerun_skips_what_is_done_and_writes_nothing_twice(champion, tagged_library):
    model, env, _ = champion
    kinds, _, _, tmp = tagged_library
    first = read_report(tmp / "report.jsonl")
    outputs = tree_snapshot(tmp / "by-place"), tree_snapshot(tmp / "gps")
    cfg = TagConfig(model=model, report=str(tmp / "again.jsonl"), threshold=0.0,
                    organize=str(tmp / "by-place"), gps_copies=str(tmp / "gps"))  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        tagging.tag([tmp / "photos"], cfg)
    again = read_report(tmp / "again.jsonl")
    for path, row in first.items():
        expected = "skipped" if row["status"] == "tagged" else row["status"]
        assert again[path]["status"] == expected, (path, row, again[path])
    assert (tree_snapshot(tmp / "by-place"), tree_snapshot(tmp / "gps")) == outputs


@pytest.mark.skipif(not os.path.exists("/usr/bin/java"), reason="Spark needs Java 17")
def test_the_spark_engine_gives_each_kind_the_same_outcome(
    champion, tagged_library, tmp_path, request
):
    model, env, _ = champion
    kinds, _, _, tmp = tagged_library
    library = make_library(tmp_path / "photos")
    request.addfinalizer(lambda: remove_tree(tmp_path / "photos"))
    cfg = TagConfig(model=model, report=str(tmp_path / "spark.jsonl"), threshold=0.0,
                    engine="spark", spark_master="local[1]")  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        tagging.tag([tmp_path / "photos"], cfg)
    rows = read_report(tmp_path / "spark.jsonl")
    check_rows(rows, library)
    local = read_report(tmp / "report.jsonl")
    for kind, (path, _) in library.items():
        twin = local[str(kinds[kind][0])]
        assert rows[str(path)]["status"] == twin["status"], (kind, rows[str(path)], twin)


def test_prepare_reports_each_bad_file_by_name_and_keeps_the_rest(champion, tmp_path, request):
    _, env, _ = champion
    root = make_dataset(tmp_path / "landmarks")
    kinds = make_library(root / "train" / CLASSES[0] / "hostile")
    request.addfinalizer(lambda: remove_tree(root))
    before = tree_snapshot(root)
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = [sys.executable, "-m", "pipelines.prepare", "--data", str(root),
               "--cache-dir", str(tmp_path / "cache"), "--cache-size", "64"]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=Path(__file__).parents[1], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (index,) = (tmp_path / "cache" / "cache").glob("*/index.json")
    index = json.loads(index.read_text())
    bad = {row["path"]: row["reason"] for row in index["bad_files"]}
    kept = set(index["train"]["paths"])
    for kind, (path, expected) in kinds.items():
        relative = path.relative_to(root).as_posix()
        if expected == ANSWER or kind in TAGGER_ONLY:
            assert relative in kept, kind
        else:
            assert expected in bad[relative], (kind, bad.get(relative))
    assert tree_snapshot(root) == before


def test_a_short_load_test_gets_every_good_photo_right_and_no_5xx(champion, endpoint):
    """benchmarks/load.py for a few seconds: 8 clients mixing good photos, bad photos and
    requests over the row limit. Correctness only; the figures are the benchmark's."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import load

    url, server = endpoint
    model, env, tmp = champion
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        path, _ = tracking.fetch_model(model, tmp / "load-model")
    predictor = Predictor.load(path)
    photos = [photo_bytes(size=(320, 240), colour=c, seed=s) for s, c in
              enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)])]  # fmt: skip
    good = [(p, predictor.predict([p])[0]["label"]) for p in photos]
    result = load.load(url, load.request_mix(good, ServeConfig().max_rows), clients=8, seconds=8)
    statuses = result["statuses"]
    assert result["wrong"] == [] and not [code for code in statuses if code >= 500]
    assert statuses[200] >= 8 and statuses[400] >= 8  # both kinds really went through
    assert server.poll() is None


def test_a_request_that_would_decode_too_many_pixels_is_refused_from_the_headers(endpoint):
    """64 rows of 49 MP PNGs pass the row limit but would hold the model for minutes."""
    url, server = endpoint
    big = png_with_header_size(7_000, 7_000)  # 49 MP each: under the per-photo limit
    limit = ServeConfig().max_request_pixels
    response = invoke(url, [big] * (limit // 49_000_000 + 1))
    no_trace(response)
    assert response.status_code == 400
    message = response.json()["message"]
    assert f"over the {limit:,} this endpoint decodes" in message
    assert "LANDMARK_MAX_REQUEST_PIXELS" in message
    assert invoke(url, [GOOD]).status_code == 200
