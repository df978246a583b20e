"""Tagger throughput: photos/s for 1,000 448-px photos and 100 12-megapixel photos, single
process vs `--engine spark` (local[2]), and where the time goes (decode, resize, model).

The photos are made from the data set's test split by resizing (upscaling for 12 MP) into a
temporary folder. Uses the registry's champion unless `--model` says otherwise.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db .venv/bin/python benchmarks/tagging.py \
        --data ../shared/datasets/landmarks-35
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from landmark import tracking
from landmark.config import CHAMPION_URI, TagConfig
from landmark.preprocessing import resize_center_crop
from landmark.runtime import images, tagging
from landmark.runtime.predictor import Predictor, central


def make_photos(sources: list[Path], folder: Path, count: int, long_side: int) -> list[Path]:
    folder.mkdir(parents=True)
    made = []
    for i, source in zip(range(count), itertools.cycle(sources), strict=False):
        img = Image.open(source).convert("RGB")
        scale = long_side / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        path = folder / f"{i:04d}.jpg"
        img.save(path, quality=90)
        made.append(path)
    return made


def stage_times(predictor: Predictor, photos: list[Path]) -> dict[str, float]:
    """Seconds per photo spent decoding (with draft), resizing + cropping, and in the model."""
    decode = resize = model = 0.0
    size = predictor.metadata.preprocessing.resize_size
    crop = predictor.metadata.preprocessing.crop_size
    inner = predictor.module.model  # the classifier without the preprocessing
    for path in photos:
        data = path.read_bytes()
        t0 = time.perf_counter()
        img = images.load_rgb(data, draft_size=size)
        tensor = torch.from_numpy(np.array(central(img))).permute(2, 0, 1)
        t1 = time.perf_counter()
        batch = resize_center_crop(tensor[None], size, crop)
        t2 = time.perf_counter()
        with torch.inference_mode():
            inner(batch.contiguous(memory_format=torch.channels_last))
        t3 = time.perf_counter()
        decode, resize, model = decode + t1 - t0, resize + t2 - t1, model + t3 - t2
    n = len(photos)
    return {"decode": decode / n, "resize": resize / n, "model": model / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=CHAMPION_URI)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sources = sorted(Path(args.data).glob("test/*/*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, _ = tracking.fetch_model(args.model, tmp / "model")
        predictor = Predictor.load(path)
        sets = {
            f"{args.small} x 448 px": make_photos(sources, tmp / "small", args.small, 448),
            f"{args.large} x 12 MP": make_photos(sources, tmp / "large", args.large, 4000),
        }
        for name, photos in sets.items():
            stages = stage_times(predictor, photos[:50])
            share = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in stages.items())
            print(f"{name}: per photo {share}")
            for engine in ("local", "spark"):
                report = tmp / f"{engine}-{len(photos)}.jsonl"
                start = time.perf_counter()
                cfg = TagConfig(model=args.model, report=str(report), engine=engine)
                counts = tagging.tag([photos[0].parent], cfg)
                seconds = time.perf_counter() - start
                print(
                    f"  {engine:5s}: {len(photos) / seconds:6.1f} photos/s "
                    f"({seconds:.1f} s, {counts})"
                )
                for sidecar in photos[0].parent.glob("*.xmp"):
                    sidecar.unlink()  # the next engine starts from scratch


if __name__ == "__main__":
    main()
