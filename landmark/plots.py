"""Pictures people would rather look at than read: class distribution and sample photos.

Functions return matplotlib `Figure`s (no pyplot state, no display needed); `tracking` logs them.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from landmark.data import LandmarkData
from landmark.preprocessing import square_crop

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
        top, left = (tile * k for k in divmod(i, side))
        canvas[top : top + tile, left : left + tile] = square_crop(images[row], tile)
    return canvas


def confusion_matrix(counts: np.ndarray, class_names: list[str]) -> Figure:
    """Row-normalised confusion matrix (recall on the diagonal), true classes as rows."""
    totals = counts.sum(axis=1, keepdims=True)
    share = counts / np.maximum(totals, 1)
    size = max(6.0, 0.3 * len(class_names) + 2)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"Confusion matrix (rows sum to 1), accuracy {accuracy:.1%}")
    for t, p in zip(*np.nonzero(counts), strict=True):
        if t != p:  # annotate the mistakes with their counts
            ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=6, color="red")
    fig.colorbar(image, ax=ax, shrink=0.6)
    return fig


def reliability_diagram(bins: dict[str, list[float]], ece: float) -> Figure:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    lower, upper = np.array(bins["lower"]), np.array(bins["upper"])
    counts = np.array(bins["count"])
    filled = counts > 0
    ax.bar(lower[filled], np.array(bins["accuracy"])[filled], width=(upper - lower)[filled],
           align="edge", edgecolor="black", color="#4C72B0", label="accuracy")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    centres = (lower + upper)[filled] / 2  # the gap between bar top and dot is the miscalibration
    ax.plot(centres, np.array(bins["confidence"])[filled], "o", color="#DD8452",
            label="mean confidence in the bin")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram, ECE {ece:.3f}")
    ax.legend(loc="upper left")
    return fig


def mistakes_grid(images: np.ndarray, mistakes: list[dict], columns: int = 4) -> Figure:
    """The given mistakes (`row` into `images`): photo, true name, predicted name, probability."""
    rows = max(1, math.ceil(len(mistakes) / columns))
    fig = Figure(figsize=(columns * 3.0, rows * 3.3), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, mistake in zip(axes.flat, mistakes, strict=False):
        ax.imshow(square_crop(images[mistake["row"]], 192))
        ax.set_title(
            f"true: {mistake['true']}\npredicted: {mistake['predicted']} "
            f"({mistake['probability']:.0%})",
            fontsize=8,
        )
    if not mistakes:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    return fig


def training_curves(history: list[dict]) -> Figure:
    """Loss and accuracy per epoch, train and validation."""
    epochs = [h["epoch"] + 1 for h in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [h["train/loss"] for h in history], label="train")
    loss_ax.plot(epochs, [h["val/loss"] for h in history], label="val")
    loss_ax.set_title("loss")
    acc_ax.plot(epochs, [h["train/acc"] for h in history], label="train")
    acc_ax.plot(epochs, [h["val/acc"] for h in history], label="val")
    acc_ax.set_title("accuracy")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.legend()
    return fig


def open_set_scores(known: np.ndarray, unknown: np.ndarray, score: str, threshold: float) -> Figure:
    """Histograms of a known-ness score: known landmarks' validation photos vs photos of
    held-out landmarks (all rotations), with the write threshold."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    bins = np.linspace(min(known.min(), unknown.min()), max(known.max(), unknown.max()), 40)
    ax.hist(known, bins, alpha=0.6, density=True, label=f"known landmarks ({len(known)})")
    ax.hist(unknown, bins, alpha=0.6, density=True, label=f"held-out landmarks ({len(unknown)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"write threshold {threshold:.3g}")
    ax.set_xlabel(score)
    ax.set_ylabel("density")
    ax.set_title("Open set: known vs never-seen landmarks (held-out-class proxies)")
    ax.legend()
    return fig


def precision_coverage(
    known: np.ndarray, known_correct: np.ndarray, unknown: np.ndarray, score: str
) -> Figure:
    """For every threshold: coverage (share of known-landmark photos written) against
    precision (share of written photos whose place is right: known and correctly classified)."""
    thresholds = np.unique(np.r_[known, unknown])[::-1]
    written_known = np.array([(known >= t).sum() for t in thresholds])
    right = np.array([(known_correct & (known >= t)).sum() for t in thresholds])
    written = written_known + np.array([(unknown >= t).sum() for t in thresholds])
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(written_known / len(known), right / np.maximum(written, 1))
    ax.set_xlabel("coverage: known-landmark photos written")
    ax.set_ylabel("precision: written photos placed right")
    ax.set_title(f"Precision / coverage by {score} (held-out-class proxies)")
    ax.grid(alpha=0.3)
    return fig


def trial_scores(table: list[dict]) -> Figure:
    """Each complete trial's validation score with its standard error (error bars), in trial
    order: the defaults' score ± 1 SE as a grey band, the chosen trial in red; pruned trials are
    counted in the title."""
    done = [row for row in table if row["score"] is not None]
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    if done:
        numbers = [row["number"] for row in done]
        scores = np.array([row["score"] for row in done])
        errors = np.array([row["score_se"] for row in done])
        ax.errorbar(numbers, scores, yerr=errors, fmt="o", color="#4C72B0", capsize=3)
        for row in done:
            if row["defaults"]:
                low, high = row["score"] - row["score_se"], row["score"] + row["score_se"]
                ax.axhspan(low, high, color="0.85", zorder=0, label="defaults ± 1 SE")
            if row["chosen"]:
                ax.plot(row["number"], row["score"], "o", color="#C44E52", ms=10, label="chosen")
        ax.legend(loc="lower right")
    pruned = sum(row["state"] == "PRUNED" for row in table)
    ax.set_xlabel("trial")
    ax.set_ylabel("validation score (± 1 standard error)")
    ax.set_title(f"{len(done)} complete trials ({pruned} pruned, {len(table)} in all)")
    return fig
