"""Training on a CUDA GPU (skipped without one): the tiny configs train on `cuda`, and the
exported model, loaded on the CPU, answers every test photo like the GPU evaluation did."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from landmark import data, steps, tracking
from landmark.config import (
    ScratchConfig,
    ScratchTrainConfig,
    TrainConfig,
    TransferConfig,
    TuneConfig,
)
from landmark.runtime.predictor import load_torchscript

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
FAST = {"epochs": 2, "batch_size": 8, "num_workers": 0, "device": "cuda"}


def train(kind: str, data_cfg) -> steps.TrainResult:
    no_tuning = TuneConfig(n_trials=0)
    if kind == "transfer":
        return steps.train_transfer(
            data_cfg, TransferConfig(trainable_blocks=2, views=1), TrainConfig(**FAST), no_tuning
        )
    small = ScratchConfig(image_size=48, width=8, depth=2, blocks=1)
    return steps.train_scratch(data_cfg, small, ScratchTrainConfig(**FAST), no_tuning)


@pytest.mark.parametrize("kind", ["transfer", "scratch"])
def test_trained_on_cuda_the_exported_model_answers_alike_on_the_cpu(
    kind, data_cfg, tracking_uri, tmp_path
):
    result = train(kind, data_cfg)
    path, _ = tracking.fetch_model(result.model_uri, tmp_path / "model")
    # Saved for the CPU: it loads, without a map_location, where no GPU is visible.
    probe = (
        "import sys, torch; m = torch.jit.load(sys.argv[1]);"
        " print(m(torch.zeros(3, 64, 64, dtype=torch.uint8)).shape)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", probe, str(path)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    module, metadata = load_torchscript(path)
    assert metadata == result.metadata
    test = data.load_data(data_cfg).test
    photos = torch.from_numpy(np.array(test.images)).permute(0, 3, 1, 2)  # what evaluation saw
    with torch.inference_mode():
        cpu = module(photos.contiguous()).numpy()
    gpu = result.test_probs
    assert cpu.shape == gpu.shape
    assert (cpu.argmax(1) == gpu.argmax(1)).all()  # the same top-1 for every test photo
    np.testing.assert_allclose(cpu, gpu, atol=1e-4)
    assert result.metrics["test/top1"] == pytest.approx((gpu.argmax(1) == test.labels).mean())
