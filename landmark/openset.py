"""Open-set evaluation: how well a model tells landmarks it knows from ones it never saw.

The protocol holds out whole classes (seeded rotations), trains a proxy model without them,
and scores the proxy's validation photos: the known classes' validation photos should score
high, the held-out classes' photos low. Every score here is a "known-ness": higher means more
likely a landmark the model knows. The scores are NumPy and scikit-learn; `measure` logs
their figures to MLflow. The proxies are trained by `transfer.Builder.open_set` (trainable
stages on cached activations, held-out classes never seen) or here by
`frozen_feature_proxies` (a linear head on a trained model's features).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from landmark import data, plots, tracking, training
from landmark.config import OpenSetConfig
from landmark.evaluation import fit_temperature

# Scores compared on every run, by name; "max_prob" (calibrated) is what models used so far.
SCORES = ("max_prob", "max_logit", "energy", "prototype", "knn1", "knn10", "mahalanobis")
# The ones an exported model computes (`export.ExportedClassifier.answer`); the better of them
# on the proxies is shipped, and the write threshold is set on it.
SHIPPABLE = ("max_prob", "prototype")
BANK = 4096  # training photos kept for the nearest-neighbour scores (a seeded sample)
log = logging.getLogger(__name__)


def holdout_rotations(
    num_classes: int, held_out: int, rotations: int, seed: int
) -> list[np.ndarray]:
    """`rotations` disjoint sets of `held_out` classes, seeded; fewer when the classes run out.

    Raises:
        ValueError: too few classes to leave at least two known.
    """
    if num_classes - held_out < 2:
        raise ValueError(
            f"cannot hold out {held_out} of {num_classes} classes: at least 2 must stay known"
        )
    rotations = min(rotations, num_classes // held_out)  # no class held out twice
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_classes)
    sets = []
    for r in range(rotations):
        sets.append(np.sort(order[r * held_out : (r + 1) * held_out]))
    return sets


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class FeatureStats:
    """What the feature-space scores need from the known training photos' pooled features."""

    prototypes: np.ndarray  # (C, F) unit-length class means
    bank: np.ndarray  # (N, F) unit-length training features
    means: np.ndarray  # (C, F) class means
    precision: np.ndarray  # (F, F) inverse of the shared (shrunk) covariance
    extra: dict = field(default_factory=dict)


def fit_feature_stats(
    features: np.ndarray, labels: np.ndarray, max_bank: int, seed: int
) -> FeatureStats:
    """Class prototypes, a bank of at most `max_bank` training features (seeded sample) and the
    class-conditional Gaussian with a shared Ledoit-Wolf covariance (Mahalanobis)."""
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf().fit(centred).precision_
    rows = np.arange(len(features))
    if len(rows) > max_bank:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_bank, replace=False))
    return FeatureStats(_normalise(means), _normalise(features[rows]), means, precision)


def known_scores(
    logits: np.ndarray, features: np.ndarray, stats: FeatureStats, temperature: float
) -> dict[str, np.ndarray]:
    """Every score of `SCORES` for photos with these `logits` `(N, C)` and pooled `features`."""
    unit = _normalise(features)
    similarity = unit @ stats.bank.T  # (N, bank)
    nearest = -np.sort(-similarity, axis=1)
    # Squared Mahalanobis distance to every class mean, expanded so it is three matrix
    # products: x'Px - 2 x'Pm + m'Pm, (N, C).
    weighted = features @ stats.precision  # (N, F)
    distances = (
        np.einsum("nf,nf->n", weighted, features)[:, None]
        - 2.0 * weighted @ stats.means.T
        + np.einsum("cf,fg,cg->c", stats.means, stats.precision, stats.means, optimize=True)
    )
    return {
        "max_prob": softmax(logits / temperature, axis=1).max(axis=1),
        "max_logit": logits.max(axis=1),
        "energy": logsumexp(logits, axis=1),
        "prototype": (unit @ stats.prototypes.T).max(axis=1),
        "knn1": nearest[:, 0],
        "knn10": nearest[:, : min(10, nearest.shape[1])].mean(axis=1),
        "mahalanobis": -distances.min(axis=1),
    }


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Probability that a known photo scores above an unknown one (ties count half)."""
    truth = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    return float(roc_auc_score(truth, np.r_[known, unknown]))


def threshold_for_false_accepts(unknown: np.ndarray, max_false_accept: float) -> float:
    """The lowest score threshold (known = score >= it) that accepts at most
    `max_false_accept` of the `unknown` photos."""
    if len(unknown) == 0:
        raise ValueError("no photos of the held-out classes to measure false accepts on")
    ranked = np.sort(unknown)[::-1]
    allowed = int(np.floor(max_false_accept * len(ranked)))
    if allowed >= len(ranked):
        return float(ranked[-1])
    return float(np.nextafter(ranked[allowed], np.inf))  # strictly above the first refused


def share_at_or_above(scores: np.ndarray, threshold: float) -> float:
    return float(np.mean(scores >= threshold)) if len(scores) else 0.0


def threshold_for_recall(known: np.ndarray, recall: float) -> float:
    """The score threshold that keeps `recall` of the `known` photos (known = score >= it)."""
    return float(np.quantile(known, 1.0 - recall, method="lower"))


@dataclass
class RotationResult:
    """One rotation's proxy: its scores for known validation photos and held-out photos."""

    held_out: list[int]
    known: dict[str, np.ndarray]  # score name -> (N_known,)
    unknown: dict[str, np.ndarray]  # score name -> (N_unknown,)
    known_correct: np.ndarray  # (N_known,) the proxy's top-1 was right


def frozen_feature_proxies(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    rotations: list[np.ndarray],
) -> list[RotationResult]:
    """Proxies that are a linear head (logistic regression) on a trained model's frozen pooled
    features, one per rotation: for models whose own training is too long to repeat (the CNN
    from scratch). Optimistic: those features were learned with the held-out classes seen."""
    results = []
    for held_out in rotations:
        known_train = ~np.isin(train_labels, held_out)
        known_val = ~np.isin(val_labels, held_out)
        head = LogisticRegression(C=1.0, max_iter=2000)
        head.fit(train_features[known_train], train_labels[known_train])
        renumbered = np.searchsorted(head.classes_, val_labels[known_val])
        val_logits = _logits(head, val_features[known_val])
        unknown_features = np.r_[train_features[~known_train], val_features[~known_val]]
        stats = fit_feature_stats(train_features[known_train], train_labels[known_train], BANK, 0)
        temperature = fit_temperature(val_logits, renumbered)
        results.append(
            RotationResult(
                held_out=[int(c) for c in held_out],
                known=known_scores(val_logits, val_features[known_val], stats, temperature),
                unknown=known_scores(
                    _logits(head, unknown_features), unknown_features, stats, temperature
                ),
                known_correct=val_logits.argmax(1) == renumbered,
            )
        )
    return results


def _logits(head: LogisticRegression, features: np.ndarray) -> np.ndarray:
    """`(N, K)` logits; scikit-learn gives two classes one column, the second's log-odds."""
    scores = head.decision_function(features)
    return np.stack([-scores / 2, scores / 2], axis=1) if scores.ndim == 1 else scores


def summarise(
    rotations: list[RotationResult], max_false_accept: float
) -> dict[str, dict[str, float]]:
    """Per score: mean AUROC, and the known-photo recall at which the held-out photos' false
    accepts stay at `max_false_accept` (the form that carries over to the shipped model),
    with the false accepts that recall gives on each rotation when it is chosen on the
    others (leave one rotation out: how well it carries over; a single rotation can only be
    measured on itself, which flatters it)."""
    out = {}
    for name in SCORES:
        recalls = []
        for result in rotations:
            threshold = threshold_for_false_accepts(result.unknown[name], max_false_accept)
            recalls.append(share_at_or_above(result.known[name], threshold))
        carried = []
        for i, result in enumerate(rotations):
            others = [r for j, r in enumerate(recalls) if j != i] or recalls
            threshold = threshold_for_recall(result.known[name], min(others))
            carried.append(share_at_or_above(result.unknown[name], threshold))
        out[name] = {
            "auroc": float(np.mean([auroc(r.known[name], r.unknown[name]) for r in rotations])),
            "recall_at_max_false_accept": float(min(recalls)),
            "carried_false_accept_mean": float(np.mean(carried)),
            "carried_false_accept_max": float(np.max(carried)),
            **{f"carried_false_accept_{i}": float(v) for i, v in enumerate(carried)},
        }
    return out


def rotations_for(num_classes: int, held_out: int, rotations: int, seed: int) -> list[np.ndarray]:
    """`holdout_rotations`, holding out fewer classes where the data set is small (at least 2
    stay known); none when `held_out` is 0 or there are fewer than 3 classes."""
    held_out = min(held_out, num_classes - 2)
    if held_out < 1:
        return []
    return holdout_rotations(num_classes, held_out, rotations, seed)


def best_score(summary: dict[str, dict[str, float]], among: tuple[str, ...] = SCORES) -> str:
    """The score with the highest known-photo recall at the false-accept limit (AUROC breaks
    ties): what the write threshold protects."""
    return max(among, key=lambda s: (summary[s]["recall_at_max_false_accept"], summary[s]["auroc"]))


def class_prototypes(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit-length class means `(K, F)` of training photos' pooled features, one per class that
    has training photos (a class whose photos all went to validation has none)."""
    means = np.stack([features[labels == c].mean(axis=0) for c in np.unique(labels)])
    return _normalise(means)


def prototype_similarity(features: np.ndarray, unit_prototypes: np.ndarray) -> np.ndarray:
    """Cosine similarity of each photo's features to the nearest class prototype `(N,)`."""
    return (_normalise(features) @ unit_prototypes.T).max(axis=1)


def write_threshold(known: np.ndarray, recall: float) -> float:
    """The shipped model's write threshold: the score that keeps `recall` of its own
    validation photos (the recall the proxies allowed at the false-accept limit)."""
    return threshold_for_recall(known, recall)


def measure_on_features(model, dataset, split, rotations, device, cfg: OpenSetConfig) -> dict:
    """`measure` with proxies that are linear heads on the trained model's frozen pooled
    features (the CNN from scratch, torchvision backbones)."""

    def proxies() -> list[RotationResult]:
        if not rotations:
            return []
        features = {}
        for name, rows in (("train", split.train), ("val", split.val)):
            loader = data.eval_loader(model.preprocessing, dataset.train, rows)
            with training.full_precision():
                x, y = training.extract_features(model, loader, device)
            features[name] = (x.numpy(), y.numpy())
        return frozen_feature_proxies(*features["train"], *features["val"], rotations)

    return measure(proxies, cfg, method="frozen-features")


def measure(
    proxies: Callable[[], list], cfg: OpenSetConfig, method: str = "stages"
) -> dict[str, float | str]:
    """Run the proxies, log every score's figures and the plots to the active MLflow run, and
    return the figures of the score to ship (the better of `SHIPPABLE`; empty without
    rotations) for the model file and the registry."""
    start = time.perf_counter()
    rotations = proxies()
    if not rotations:
        log.info("No open-set evaluation (held_out=0 or too few classes)")
        return {}
    summary = summarise(rotations, cfg.max_false_accept)
    seconds = time.perf_counter() - start
    tracking.log_metrics(
        {f"open_set/{score}/{k}": v for score, row in summary.items() for k, v in row.items()}
    )
    tracking.log_dict(
        {"held_out": [r.held_out for r in rotations], "scores": summary}, "open_set/summary.json"
    )
    score = best_score(summary, among=SHIPPABLE)
    row = summary[score]
    known = np.concatenate([r.known[score] for r in rotations])
    unknown = np.concatenate([r.unknown[score] for r in rotations])
    correct = np.concatenate([r.known_correct for r in rotations])
    threshold = threshold_for_recall(known, row["recall_at_max_false_accept"])
    tracking.log_figure(
        plots.open_set_scores(known, unknown, score, threshold), "plots/open_set_scores.png"
    )
    tracking.log_figure(
        plots.precision_coverage(known, correct, unknown, score), "plots/precision_coverage.png"
    )
    figures = {
        "method": method,
        "auroc": row["auroc"],
        "false_accept": row["carried_false_accept_mean"],
        "known_recall": row["recall_at_max_false_accept"],
        "max_false_accept": cfg.max_false_accept,
        "seconds": seconds,
    }
    tracking.log_metrics({f"open_set/{k}": v for k, v in figures.items() if k != "method"})
    log.info("Open set (%s, %d rotations): %s", score, len(rotations), figures)
    return {"score": score, **figures}
