"""Augmented 224x224 training batches per second: our decode cache vs ImageFolder + PIL.

Both pipelines apply the same augmentation recipe (random resized crop, flip, colour jitter)
with the same batch size and worker count, one after the other in one run. The baseline's
workers decode JPEGs and deliver normalised float batches. Ours read uint8 squares from the
decode cache (no decoding), crop and jitter on uint8, and deliver uint8 batches; normalisation
is the first module of our models, so it is timed both without and with it (in the main
process, as training does it).

    .venv/bin/python benchmarks/data_loading.py --data ../shared/datasets/landmarks-35
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time

import torch
from torchvision import datasets
from torchvision import transforms as T

from landmark import data
from landmark.config import DataConfig
from landmark.preprocessing import Normalize, Preprocessing, train_transform


def batches_per_second(
    loader: torch.utils.data.DataLoader, batches: int, normalize: Normalize | None = None
) -> float:
    it = iter(loader)
    for _ in range(3):  # worker start-up is not what we measure
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(it)
        if normalize is not None:  # what the model's first module does with a uint8 batch
            images = normalize(images)
        assert images.shape[-2:] == (224, 224)
    return batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data set folder, zip or URL")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="report medians of this many")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    pre, strength = Preprocessing(), 0.7

    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        dataset = data.load_data(DataConfig(data=args.data, cache_dir=cache_dir))
        build_seconds = time.perf_counter() - start
        jitter = 0.4 * strength
        plain = datasets.ImageFolder(
            str(dataset.root / "train"),
            transform=T.Compose(
                [
                    T.RandomResizedCrop(pre.crop_size, scale=(1.0 - 0.9 * strength, 1.0)),
                    T.RandomHorizontalFlip(),
                    T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
                    T.ToTensor(),
                    T.Normalize(pre.mean, pre.std),
                ]
            ),
        )
        baseline = torch.utils.data.DataLoader(
            plain, batch_size=args.batch_size, shuffle=True, num_workers=args.workers
        )
        cached = data.CachedImages(dataset.train, transform=train_transform(pre, strength))
        ours = data.make_loader(
            cached, args.batch_size, seed=0, shuffle=True, augment=strength,
            num_workers=args.workers,
        )  # fmt: skip
        pipelines = {
            "ImageFolder + PIL (float)": (baseline, None),
            "decode cache (uint8)": (ours, None),
            "decode cache + Normalize (float)": (ours, Normalize(pre)),
        }
        # Rounds interleave the pipelines so that machine noise hits all of them alike.
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in range(args.rounds):
            for name, (loader, normalize) in pipelines.items():
                rates[name].append(batches_per_second(loader, args.batches, normalize))
        photos = len(dataset.train.labels) + len(dataset.test.labels)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"batch {args.batch_size}, workers {args.workers}, median of {args.rounds} rounds"
    )
    print(f"decode cache build (one-off, {photos} photos): {build_seconds:.1f} s")
    print(f"{'pipeline':<34} {'batches/s':>10} {'images/s':>10} {'speed-up':>9}")
    base = statistics.median(rates["ImageFolder + PIL (float)"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:<34} {rate:>10.2f} {rate * args.batch_size:>10.0f} {rate / base:>8.1f}x")


if __name__ == "__main__":
    main()
