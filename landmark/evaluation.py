"""Honest evaluation of a trained classifier on the untouched test split.

Top-1/3/5 accuracy, macro-F1, a per-class table, the confusion matrix, the most confident
mistakes, and calibration (expected calibration error and the reliability curve). The metric
names are the same for every model, so runs compare side by side. `fit_temperature` calibrates
the probabilities on validation data before any of this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)


@dataclass
class Report:
    """Everything the evaluation found, ready to log."""

    metrics: dict[str, float]
    per_class: list[dict]
    confusion: np.ndarray  # (C, C) counts, rows = true class
    calibration: dict[str, list[float]]  # per bin: confidence, accuracy, count
    mistakes: list[dict]  # most confident wrong predictions: row, true, predicted, probability


@dataclass(frozen=True)
class Calibration:
    """What the validation photos decide before the test split is seen."""

    temperature: float  # logits are divided by it before the softmax
    show_threshold: float  # calibrated top probability below which a guess is not worth showing

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities `(N, C)`, as the exported model computes them."""
        return softmax(logits / self.temperature, axis=1)


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray) -> Calibration:
    """Fit the temperature on validation logits, then the show threshold (95 % of the correct
    predictions above it) on the calibrated validation probabilities. The write threshold
    comes from the open-set evaluation (`openset.write_threshold`)."""
    temperature = fit_temperature(val_logits, val_labels)
    probs = softmax(val_logits / temperature, axis=1)
    return Calibration(temperature, unknown_threshold(probs, val_labels))


def evaluate(
    logits: np.ndarray, labels: np.ndarray, calibration: Calibration, class_names: list[str]
) -> Report:
    """The test report of calibrated logits, as the exported model will answer, plus the
    calibration error the temperature removed (`test/ece_uncalibrated`)."""
    report = evaluate_predictions(calibration.probabilities(logits), labels, class_names)
    uncalibrated, _ = calibration_curve(softmax(logits, axis=1), labels)
    report.metrics["test/ece_uncalibrated"] = uncalibrated
    return report


def calibration_curve(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[float, dict]:
    """Expected calibration error (top-1 confidence vs accuracy in equal-width bins) and bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    table = {"confidence": [], "accuracy": [], "count": [], "lower": [], "upper": []}
    ece = 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        table["lower"].append(float(edges[b]))
        table["upper"].append(float(edges[b + 1]))
        table["count"].append(count)
        table["confidence"].append(float(confidence[members].mean()) if count else 0.0)
        table["accuracy"].append(float(correct[members].mean()) if count else 0.0)
        if count:
            ece += count / len(labels) * abs(table["accuracy"][-1] - table["confidence"][-1])
    return float(ece), table


def evaluate_predictions(
    probs: np.ndarray, labels: np.ndarray, class_names: list[str], prefix: str = "test/"
) -> Report:
    """All evaluation results from predicted probabilities `(N, C)` and true labels `(N,)`."""
    num_classes = len(class_names)
    predicted = probs.argmax(axis=1)
    classes = np.arange(num_classes)
    ece, bins = calibration_curve(probs, labels)

    def top(k: int) -> float:
        k = min(k, num_classes)  # scikit-learn refuses k >= classes; all of them is 1.0 anyway
        if k == num_classes:
            return 1.0
        return float(top_k_accuracy_score(labels, probs, k=k, labels=classes))

    metrics = {
        f"{prefix}top1": top(1),
        f"{prefix}top3": top(3),
        f"{prefix}top5": top(5),
        f"{prefix}macro_f1": float(
            f1_score(labels, predicted, average="macro", labels=range(num_classes), zero_division=0)
        ),
        f"{prefix}ece": ece,
        f"{prefix}nll": float(log_loss(labels, probs, labels=classes)),
    }
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(num_classes), zero_division=0
    )
    per_class = [
        {
            "class": name,
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    ]
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probs[wrong, predicted[wrong]])]
    mistakes = [
        {
            "row": int(r),
            "true": class_names[labels[r]],
            "predicted": class_names[predicted[r]],
            "probability": float(probs[r, predicted[r]]),
        }
        for r in worst
    ]
    return Report(
        metrics=metrics,
        per_class=per_class,
        confusion=confusion_matrix(labels, predicted, labels=range(num_classes)),
        calibration=bins,
        mistakes=mistakes,
    )


def unknown_threshold(probs: np.ndarray, labels: np.ndarray, keep: float = 0.95) -> float:
    """Top-probability threshold below which a photo counts as "not a landmark we know".

    Chosen on validation data so that `keep` of the correctly classified photos stay above it.
    """
    correct = probs.argmax(axis=1) == labels
    if not correct.any():
        return 1.0  # it got nothing right: it knows nothing
    return float(np.quantile(probs.max(axis=1)[correct], 1.0 - keep))


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.1, 10.0)
) -> float:
    """Temperature scaling (Guo et al., 2017): the `T` that minimises the negative log-likelihood
    of `softmax(logits / T)` on held-out data.

    One number, so it barely overfits a validation split; it changes how confident the model
    is (label smoothing and short training leave it underconfident), never what it predicts.
    The NLL is unimodal in log T, so a bounded scalar search finds it. It is computed from
    log-softmax directly (not `log_loss` on probabilities), which stays exact where very
    confident logits would round a probability to 0 or 1. When validation data
    are all classified right the NLL keeps falling as T shrinks; `bounds` stops it there.
    """
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean())

    found = minimize_scalar(nll, bounds=np.log(bounds), method="bounded")
    return float(np.exp(found.x))
