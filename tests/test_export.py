"""Export: eager = scripted = reloaded TorchScript, `ModelMetadata` inside, pyfunc = TorchScript."""

from __future__ import annotations

import dataclasses
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_model, photo_bytes
from mlflow.exceptions import MlflowException
from PIL import Image

from landmark import export, tracking
from landmark.runtime.contract import Location, ModelMetadata, Preprocessing
from landmark.runtime.predictor import Predictor, load_torchscript, torchscript_on_purpose

EIFFEL = Location("Eiffel Tower", 48.8584, 2.2945, "France")
METADATA = ModelMetadata(
    arch="landmark_cnn",
    class_folders=("00.Eiffel_Tower", "Taj_Mahal", "03.Big_Ben"),
    class_names=("Eiffel Tower", "Taj Mahal", "Big Ben"),
    preprocessing=Preprocessing(resize_size=73, crop_size=64),
    locations={"00.Eiffel_Tower": EIFFEL},
    threshold=0.2,
)


@pytest.fixture
def trained():
    torch.manual_seed(0)
    model = build_model("landmark_cnn", 3, image_size=64, width=8, depth=2, blocks=1).eval()
    model.apply(lambda m: m.running_var.uniform_(0.5, 2) if hasattr(m, "running_var") else None)
    return model


@pytest.fixture
def exported(trained, tmp_path):
    return export.export_torchscript(trained, METADATA, tmp_path / "model.pt")


def test_eager_scripted_and_reloaded_agree(trained, exported):
    eager = export.ExportedClassifier(trained).eval()
    reloaded, metadata = load_torchscript(exported)
    assert metadata == METADATA
    for shape in [(3, 90, 120), (2, 3, 64, 64), (3, 300, 41)]:  # any size, single or batch
        x = torch.randint(0, 256, shape, dtype=torch.uint8)
        a, b = eager(x), reloaded(x)
        assert a.shape == ((3,) if len(shape) == 3 else (shape[0], 3))
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(a.sum(-1), torch.ones(()), atol=1e-5)


def test_the_exported_model_applies_its_temperature(trained, tmp_path):
    plain, _ = load_torchscript(export.export_torchscript(trained, METADATA, tmp_path / "a.pt"))
    hot = dataclasses.replace(METADATA, temperature=2.5)
    calibrated, metadata = load_torchscript(export.export_torchscript(trained, hot, tmp_path / "b"))
    assert metadata.temperature == 2.5
    x = torch.randint(0, 256, (4, 3, 80, 80), dtype=torch.uint8)
    p, q = plain(x), calibrated(x)
    assert torch.allclose(q, (p.log() / 2.5).softmax(-1), atol=1e-5)
    assert torch.equal(p.argmax(-1), q.argmax(-1))
    assert (q.max(-1).values < p.max(-1).values).all()  # T > 1: less confident


def test_preprocessing_inside_matches_the_evaluation_path(trained, exported):
    """A photo given at full size = the model on the evaluation crop of that photo."""
    from landmark.preprocessing import eval_transform

    reloaded, _ = load_torchscript(exported)
    photo = torch.randint(0, 256, (3, 150, 100), dtype=torch.uint8)
    crop = eval_transform(trained.preprocessing)(photo)
    expected = trained(crop[None]).softmax(-1)[0]
    assert torch.allclose(reloaded(photo), expected, atol=1e-4)


def test_float_input_is_refused(exported):
    reloaded, _ = load_torchscript(exported)
    with pytest.raises(Exception, match="uint8"):
        reloaded(torch.rand(3, 64, 64))


def test_predictor_answers_with_top_k_location_and_known(exported):
    predictor = Predictor.load(exported)
    jpeg = photo_bytes(size=(120, 90))
    (answer,) = predictor.predict([jpeg], top_k=2, threshold=0.0)
    assert len(answer["top_k"]) == 2 and answer["known"] is True
    probs = [t["probability"] for t in answer["top_k"]]
    assert probs == sorted(probs, reverse=True)
    label = METADATA.class_folders.index(answer["label"])
    assert answer["name"] == METADATA.class_names[label]
    assert predictor.threshold == 0.2  # the model's own
    # The location is the top class's, as a plain dict (JSON for the endpoint).
    eiffel = predictor.describe(np.array([0.7, 0.2, 0.1]), 0.7, 3, 0.5)
    assert eiffel["location"] == dataclasses.asdict(EIFFEL) and eiffel["known"] is True
    assert predictor.describe(np.array([0.1, 0.7, 0.2]), 0.7, 3, 0.5)["location"] is None
    assert eiffel["novelty"] == pytest.approx(0.3)
    assert predictor.describe(np.array([0.7, 0.2, 0.1]), 0.4, 3, 0.5)["known"] is False
    (unsure,) = predictor.predict([jpeg], threshold=1.01)
    assert unsure["known"] is False
    assert len(predictor.predict([jpeg], top_k=50)[0]["top_k"]) == 3  # capped at the classes


def test_predictor_runs_every_forward_pass_on_one_thread(exported):
    """Servers call from changing pool threads; torch must see one caller (one OpenMP team)."""
    predictor = Predictor.load(exported)
    callers, model_threads = set(), set()
    scripted = predictor.module

    def recording(tensor):
        model_threads.add(threading.get_ident())
        return scripted(tensor)

    predictor.module = recording
    jpeg = photo_bytes(size=(120, 90))

    def ask():
        callers.add(threading.get_ident())
        return predictor.predict([jpeg])[0]["probability"]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(), range(16)))
    assert len(callers) > 1 and len(model_threads) == 1
    assert not model_threads & callers
    assert answers == pytest.approx([answers[0]] * 16, abs=1e-6)


def test_pyfunc_gives_the_torchscript_predictions(exported, tracking_uri):
    jpeg, png = photo_bytes(size=(120, 90)), photo_bytes(size=(70, 200), fmt="PNG", seed=3)
    with tracking.start_run("export-test"):
        uri = tracking.log_model(exported, METADATA, jpeg)
    pyfunc = mlflow.pyfunc.load_model(uri)
    answers = pyfunc.predict(pd.DataFrame({"image": [jpeg, png]}), params={"top_k": 3})
    module, _ = load_torchscript(exported)
    for answer, photo in zip(answers, [jpeg, png], strict=True):
        rgb = np.array(Image.open(io.BytesIO(photo)).convert("RGB"))
        expected = module(torch.from_numpy(rgb).permute(2, 0, 1)).numpy()
        got = {t["label"]: t["probability"] for t in answer["top_k"]}
        for c, folder in enumerate(METADATA.class_folders):
            assert got[folder] == pytest.approx(float(expected[c]), abs=1e-5)
    signature = mlflow.models.get_model_info(uri).signature
    assert signature.inputs.input_names() == ["image"]
    assert {p.name for p in signature.params.params} == {"top_k", "threshold", "errors"}


def test_pyfunc_names_the_bad_row(exported, tracking_uri):
    with tracking.start_run("export-test"):
        uri = tracking.log_model(exported, METADATA, photo_bytes())
    pyfunc = mlflow.pyfunc.load_model(uri)
    with pytest.raises(MlflowException, match="row 1: not an image"):
        pyfunc.predict(pd.DataFrame({"image": [photo_bytes(), b"hello world"]}))


def test_predictor_crops_a_panorama_without_changing_the_answer(exported):
    """Only the middle of a 2,000 x 60 photo reaches the model; cropping it first is exact."""
    pano = photo_bytes(size=(2000, 60), seed=5)
    module, _ = load_torchscript(exported)
    rgb = np.array(Image.open(io.BytesIO(pano)).convert("RGB"))
    full = module(torch.from_numpy(rgb).permute(2, 0, 1)).numpy()
    np.testing.assert_allclose(Predictor.load(exported).probabilities(pano), full, atol=1e-3)


def test_pyfunc_can_report_bad_rows_instead_of_failing(exported, tracking_uri):
    """Batch jobs (Spark) ask for `errors="report"`: one bad photo must not fail the batch."""
    with tracking.start_run("export-test"):
        uri = tracking.log_model(exported, METADATA, photo_bytes())
    pyfunc = mlflow.pyfunc.load_model(uri)
    photos = pd.DataFrame({"image": [photo_bytes(), b"hello world", photo_bytes(size=(8, 8))]})
    good, bad, tiny = pyfunc.predict(photos, params={"errors": "report"})
    assert good["error"] is None and good["label"] in METADATA.class_folders
    assert bad["error"] == "not an image file: starts with b'hello wo'"
    assert bad["label"] is None and bad["known"] is False and bad["top_k"] == []
    assert tiny["error"].startswith("too small: 8x8 px")


def test_the_exported_model_scores_known_ness_by_its_prototypes(trained, tmp_path):
    """With prototypes: cosine similarity of the pooled features to the nearest one; without:
    the top probability. The predictor's `known` and `novelty` follow that score."""
    x = torch.randint(0, 256, (4, 3, 80, 80), dtype=torch.uint8)
    prototypes = torch.randn(3, trained.num_features)
    path = export.export_torchscript(trained, METADATA, tmp_path / "p.pt", prototypes)
    module, _ = load_torchscript(path)
    probs, known = module.answer(x)
    eager = export.ExportedClassifier(trained).eval()
    crops = eval_crops(trained, x)
    features = eager.model.forward_features(crops)
    expected = (
        torch.nn.functional.cosine_similarity(features[:, None, :], prototypes[None], dim=-1)
        .max(dim=1)
        .values
    )
    torch.testing.assert_close(known, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, module(x))
    plain, _ = load_torchscript(export.export_torchscript(trained, METADATA, tmp_path / "q.pt"))
    torch.testing.assert_close(plain.answer(x)[1], plain(x).max(dim=-1).values)
    predictor = Predictor.load(path)
    photo = photo_bytes(size=(120, 90))
    probs, score = predictor.scores(photo)
    rgb = torch.from_numpy(np.array(Image.open(io.BytesIO(photo)).convert("RGB"))).permute(2, 0, 1)
    with torch.inference_mode():
        features = eager.model.forward_features(eval_crops(trained, rgb[None]))
    cosine = torch.nn.functional.cosine_similarity(features, prototypes, dim=-1).max()
    assert score == pytest.approx(float(cosine), abs=1e-5)  # the photo's own prototype score
    (answer,) = predictor.predict([photo], threshold=score - 1e-6)
    assert answer["known"] is True and answer["novelty"] == pytest.approx(1 - score)
    (answer,) = predictor.predict([photo], threshold=score + 1e-6)
    assert answer["known"] is False and answer["probability"] == pytest.approx(probs.max())


def eval_crops(model, x: torch.Tensor) -> torch.Tensor:
    from landmark.preprocessing import resize_center_crop

    pre = model.preprocessing
    return resize_center_crop(x, pre.resize_size, pre.crop_size).contiguous(
        memory_format=torch.channels_last
    )


def test_files_exported_before_answer_existed_still_answer(trained, tmp_path):
    """Their module has only `forward` (probabilities): known-ness is the top probability."""

    class Old(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.inner(images)

    path = tmp_path / "old.pt"
    with torchscript_on_purpose():
        old = torch.jit.script(Old(export.ExportedClassifier(trained).eval()))
        torch.jit.save(old, str(path), _extra_files={"landmark.json": METADATA.to_json()})
    predictor = Predictor.load(path)
    assert not hasattr(predictor.module, "answer")
    (answer,) = predictor.predict([photo_bytes(size=(120, 90))], threshold=0.0)
    assert answer["known"] is True
    assert answer["novelty"] == pytest.approx(1 - answer["probability"])
