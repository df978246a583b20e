"""EfficientNet-Lite forward pass, images per second: ours vs the reference package.

Same weights, same 224x224 batches, side by side in one run (rounds interleave them so that
machine noise hits all alike). Ours runs with batch norm folded into the convolutions and
channels-last memory layout, eager and TorchScript-scripted (as the exported model ships).
The reference is `efficientnet_lite_pytorch`.

    .venv/bin/python benchmarks/efficientnet_speed.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch

from landmark import efficientnet_lite, models
from landmark.config import TransferConfig


def images_per_second(model, batch: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        model(batch)  # warm-up: allocations, oneDNN kernel selection
        start = time.perf_counter()
        for _ in range(repeats):
            model(batch)
    return repeats * batch.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="efficientnet_lite0")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=128, help="images per measurement")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from efficientnet_lite_pytorch import EfficientNet

    weights = str(efficientnet_lite.weights_file(args.variant))
    reference = EfficientNet.from_pretrained(args.variant.replace("_", "-"), weights_path=weights)
    defaults = TransferConfig()
    ours = models.build_model(
        args.variant, 1000, dropout=defaults.dropout, head_size=defaults.head_size
    )
    efficientnet_lite.load_imagenet_weights(ours, include_classifier=True)
    fast = models.fuse_for_inference(ours).to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(fast)  # the form the exported model ships in
    reference.eval()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, {args.variant}, median of {args.rounds} rounds"
    )
    print(
        f"{'batch':>5} {'reference img/s':>16} {'ours eager':>11} {'ours scripted':>14} "
        f"{'speed-up (eager, scripted)':>27}"
    )
    for size in (int(s) for s in args.batch_sizes.split(",")):
        uint8 = torch.randint(0, 256, (size, 3, 224, 224), dtype=torch.uint8)
        pre = ours.preprocessing
        mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
        normalised = (uint8.float() / 255 - mean) / std  # the reference takes normalised floats
        ours_input = uint8.contiguous(memory_format=torch.channels_last)
        repeats = max(1, args.images // size)
        rates = {"reference": [], "eager": [], "scripted": []}
        for _ in range(args.rounds):
            rates["reference"].append(images_per_second(reference, normalised, repeats))
            rates["eager"].append(images_per_second(fast, ours_input, repeats))
            rates["scripted"].append(images_per_second(scripted, ours_input, repeats))
        ref, eager, script = (statistics.median(rates[k]) for k in rates)
        print(
            f"{size:>5} {ref:>16.1f} {eager:>11.1f} {script:>14.1f} "
            f"{eager / ref:>13.1f}x, {script / ref:.1f}x"
        )


if __name__ == "__main__":
    main()
