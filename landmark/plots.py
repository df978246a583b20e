"""Pictures people would rather look at than read: class distribution and sample photos.

Functions return matplotlib `Figure`s (no pyplot state, no display needed); `tracking` logs them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure

from landmark.data import LandmarkData
from landmark.preprocessing import resize_center_crop

SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def class_distribution(summary: dict) -> Figure:
    """Horizontal stacked bars: photos per class in train / val / test."""
    classes = summary["classes"]
    names = [c["name"] for c in classes]
    fig = Figure(figsize=(8, 0.28 * len(names) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    left = np.zeros(len(names))
    for split, colour in SPLIT_COLOURS.items():
        counts = np.array([c[split] for c in classes])
        ax.barh(names, counts, left=left, color=colour, label=f"{split} ({counts.sum():,})")
        left += counts
    ax.invert_yaxis()
    ax.set_xlabel("photos")
    ax.set_title(f"{len(names)} classes, {int(left.sum()):,} usable photos")
    ax.legend(loc="lower right")
    ax.tick_params(axis="y", labelsize=8)
    return fig


def sample_grid(data: LandmarkData, per_class: int = 4, seed: int = 0, columns: int = 7) -> Figure:
    """One tile per class, each a 2x2 mosaic of random training photos, titled with its name."""
    rng = np.random.default_rng(seed)
    rows = math.ceil(data.num_classes / columns)
    fig = Figure(figsize=(columns * 1.9, rows * 2.1), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for label, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if label >= data.num_classes:
            continue
        candidates = np.flatnonzero(data.train.labels == label)
        picks = rng.choice(candidates, size=min(per_class, len(candidates)), replace=False)
        ax.imshow(_mosaic(data.train.images, picks, side=2))
        ax.set_title(data.class_names[label], fontsize=8)
    return fig


def _mosaic(images: np.ndarray, rows: np.ndarray, side: int, tile: int = 112) -> np.ndarray:
    """`side` x `side` thumbnails of the given cached images as one uint8 (H, W, 3) array."""
    canvas = np.full((side * tile, side * tile, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows[: side * side]):
        chw = torch.from_numpy(np.array(images[row])).permute(2, 0, 1)
        thumb = resize_center_crop(chw, tile, tile).permute(1, 2, 0).numpy()
        y, x = divmod(i, side)
        canvas[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile] = thumb
    return canvas
