"""The runtime stands apart from training, the package has no import cycles, and models logged
before `ModelMetadata` (a plain dict in `landmark.json`, the same pyfunc entry point) still load
and serve."""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
import torch
from conftest import build_model, free_port, photo_bytes, start, stop
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from landmark import export
from landmark.runtime import app
from landmark.runtime.contract import METADATA_FILE, SCHEMA_VERSION, Location, ModelMetadata
from landmark.runtime.predictor import Predictor, torchscript_on_purpose

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "landmark"
BIN = Path(sys.executable).parent
V1 = (Path(__file__).parent / "fixtures" / "metadata_v1.json").read_text()
# The model code every version logged so far carries (MLflow's "models from code").
V1_MODEL_CODE = (
    "import mlflow\nfrom landmark.tracking import LandmarkPyfunc\n\n"
    "mlflow.models.set_model(LandmarkPyfunc())\n"
)
V1_SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image")]),
    params=ParamSchema(
        [
            ParamSpec("top_k", "long", 3),
            ParamSpec("threshold", "double", 0.2),
            ParamSpec("errors", "string", "raise"),
        ]
    ),
)
TRAINING_SIDE = {
    "landmark.data", "landmark.sources", "landmark.preprocessing", "landmark.efficientnet_lite",
    "landmark.models", "landmark.transfer", "landmark.training", "landmark.tuning",
    "landmark.evaluation", "landmark.export", "landmark.plots", "landmark.promotion",
    "landmark.steps", "landmark.scratch", "landmark.openset", "landmark.search",
    "landmark.selection",
}  # fmt: skip


@pytest.fixture(scope="module")
def v1_model(tmp_path_factory) -> Path:
    """A TorchScript file as `train_*` wrote them before: the same module, dict metadata."""
    tmp = tmp_path_factory.mktemp("v1")
    torch.manual_seed(0)
    model = build_model("landmark_cnn", 3, image_size=64, width=8, depth=2).eval()
    new = export.export_torchscript(model, ModelMetadata.from_json(V1), tmp / "new.pt")
    with torchscript_on_purpose():
        module = torch.jit.load(str(new))
        torch.jit.save(module, str(tmp / "v1.pt"), _extra_files={METADATA_FILE: V1})
    return tmp / "v1.pt"


def test_schema_1_metadata_reads_into_the_contract():
    metadata = ModelMetadata.from_json(V1)
    raw = json.loads(V1)
    assert metadata.class_folders == tuple(raw["class_folders"])
    assert metadata.location("00.Eiffel_Tower") == Location(
        "Eiffel Tower", 48.8584, 2.2945, "France"
    )
    assert metadata.location("Taj_Mahal") is None
    assert metadata.preprocessing.mean == tuple(raw["preprocessing"]["mean"])
    assert (metadata.threshold, metadata.temperature) == (0.2, 0.55)
    assert metadata.metrics["test/top1"] == 0.9435 and metadata.schema_version == SCHEMA_VERSION
    assert ModelMetadata.from_json(metadata.to_json()) == metadata  # round trip


def test_metadata_from_a_newer_landmark_is_refused_with_the_fix():
    newer = json.dumps({**json.loads(V1), "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ValueError, match="upgrade landmark"):
        ModelMetadata.from_json(newer)
    with pytest.raises(ValueError, match="not landmark model metadata"):
        ModelMetadata.from_json('{"weights": 1}')


def test_a_v1_model_file_answers_in_the_predictor_and_the_app(v1_model):
    predictor = Predictor.load(v1_model)
    assert predictor.threshold == 0.2
    (answer,) = predictor.predict([photo_bytes(size=(120, 90))], top_k=3)
    assert answer["name"] in predictor.metadata.class_names and len(answer["top_k"]) == 3
    assert answer["known"] == (answer["probability"] >= 0.2)
    classifier, _ = app.load_classifier(str(v1_model))
    assert classifier.description == "model file v1.pt · landmark_cnn · test top-1 accuracy 94.3%"


def test_a_v1_pyfunc_loads_and_is_served(v1_model, tmp_path, tracking_uri):
    """Logged with the old model code and metadata, loaded in-process and by `mlflow models
    serve`: both answer like the TorchScript file."""
    code = tmp_path / "landmark_model.py"
    code.write_text(V1_MODEL_CODE)
    photo = photo_bytes(size=(200, 150), seed=3)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            artifacts={"torchscript": str(v1_model)},
            code_paths=[str(PACKAGE)],
            signature=V1_SIGNATURE,
            input_example=pd.DataFrame({"image": [photo]}),
        )
    expected = Predictor.load(v1_model).predict([photo], top_k=2)[0]
    (loaded,) = mlflow.pyfunc.load_model(info.model_uri).predict(
        pd.DataFrame({"image": [photo]}), params={"top_k": 2}
    )
    assert loaded == expected  # the same file, the same process: the same numbers
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_TRACKING_URI": tracking_uri}
    command = [
        str(BIN / "mlflow"), "models", "serve", "-m", info.model_uri, "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    server = start(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env)
    try:
        body = {
            "dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(photo).decode()]]},
            "params": {"top_k": 2},
        }
        response = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
    finally:
        stop(server)
    assert response.status_code == 200, response.text
    (served,) = response.json()["predictions"]
    assert served["label"] == expected["label"] and served["known"] == expected["known"]
    assert served["probability"] == pytest.approx(expected["probability"], abs=1e-5)


RUNTIME_PROBE = """
import json, sys
from landmark import tracking
from landmark.runtime import app, tagging
from landmark.runtime.predictor import Predictor
predictor = Predictor.load(sys.argv[1])
answer = predictor.predict([open(sys.argv[2], "rb").read()])[0]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"optuna", "matplotlib"}
                or m in set(json.loads(sys.argv[3])))
print(json.dumps({"answer": answer["label"], "loaded": loaded}))
"""


def test_the_runtime_never_imports_training(v1_model, tmp_path):
    """A fresh interpreter loads and runs a model with the app, the tagger and tracking
    imported: no training module, no Optuna, no matplotlib comes with them."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photo_bytes())
    training = json.dumps(sorted(TRAINING_SIDE))
    out = subprocess.run(
        [sys.executable, "-c", RUNTIME_PROBE, str(v1_model), str(photo), training],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["answer"] in json.loads(V1)["class_folders"]
    assert result["loaded"] == []


def imports_of(path: Path) -> set[str]:
    """The `landmark` modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("landmark"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("landmark"))
    return found


def module_graph() -> dict[str, set[str]]:
    modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def test_the_runtime_side_imports_nothing_of_training():
    graph = module_graph()
    runtime = [m for m in graph if m.startswith("landmark.runtime")] + ["landmark.tracking"]
    for module in runtime:
        assert not graph[module] & TRAINING_SIDE, module
    assert set(graph) >= TRAINING_SIDE  # the list names real modules


def test_no_import_cycles():
    graph = module_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                pytest.fail(f"import cycle: {' -> '.join([*path, module, imported])}")
            if imported not in state:
                visit(imported, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
