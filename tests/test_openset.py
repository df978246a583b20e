"""Open-set evaluation on synthetic data where the answer is known: held-out rotations, every
score, thresholds at a false-accept limit, and how the operating point carries over."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landmark import openset, transfer


def test_rotations_are_seeded_disjoint_sets_of_held_out_classes():
    rotations = openset.holdout_rotations(35, 5, 3, seed=42)
    assert [len(r) for r in rotations] == [5, 5, 5]
    assert len(np.unique(np.concatenate(rotations))) == 15  # disjoint
    again = openset.holdout_rotations(35, 5, 3, seed=42)
    assert all(np.array_equal(a, b) for a, b in zip(rotations, again, strict=True))
    other = openset.holdout_rotations(35, 5, 3, seed=7)
    assert not all(np.array_equal(a, b) for a, b in zip(rotations, other, strict=True))
    with pytest.raises(ValueError, match="at least 2 must stay known"):
        openset.holdout_rotations(6, 5, 1, seed=0)
    few = openset.holdout_rotations(4, 2, 3, seed=0)  # only two disjoint pairs exist
    assert len(few) == 2 and len(np.unique(np.concatenate(few))) == 4


def test_prototypes_skip_a_class_without_training_photos():
    features = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    unit = openset.class_prototypes(features, np.array([0, 0, 2]))  # class 1 has none
    assert unit.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    similarity = openset.prototype_similarity(np.array([[1.0, 1.0]]), unit)
    assert np.isfinite(similarity).all() and similarity[0] == pytest.approx(np.sqrt(0.5))


def clusters(rng, centres: np.ndarray, per_class: int, spread: float):
    labels = np.repeat(np.arange(len(centres)), per_class)
    return centres[labels] + rng.normal(0, spread, (len(labels), centres.shape[1])), labels


def test_a_class_unlike_all_others_is_found_by_the_feature_scores():
    """Four known classes near each other, a fifth far from all: held out, its photos must
    score below the known ones (AUROC >= 0.95) in every feature-space score."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (5, 16))
    centres[4] += 12.0  # unlike all others
    train, train_labels = clusters(rng, centres, 60, 0.5)
    val, val_labels = clusters(rng, centres, 20, 0.5)
    (result,) = openset.frozen_feature_proxies(
        train, train_labels, val, val_labels, [np.array([4])]
    )
    assert result.held_out == [4] and result.known_correct.mean() > 0.9
    assert len(result.unknown["knn1"]) == 80  # every photo of the held-out class
    for name in ("prototype", "knn1", "knn10", "mahalanobis"):
        assert openset.auroc(result.known[name], result.unknown[name]) >= 0.95, name
    # A class inside the known ones' spread cannot be told apart this way.
    centres[4] = centres[:4].mean(axis=0)
    train, train_labels = clusters(rng, centres, 60, 2.0)
    val, val_labels = clusters(rng, centres, 20, 2.0)
    (mixed,) = openset.frozen_feature_proxies(train, train_labels, val, val_labels, [np.array([4])])
    assert openset.auroc(mixed.known["prototype"], mixed.unknown["prototype"]) < 0.9


def test_scores_follow_their_definitions():
    logits = np.array([[2.0, 0.0], [0.0, 0.5]])
    features = np.array([[1.0, 0.0], [0.0, 2.0]])
    stats = openset.fit_feature_stats(
        np.array([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), np.array([0, 0, 1, 1]), 10, 0
    )
    scores = openset.known_scores(logits, features, stats, temperature=1.0)
    assert scores["max_logit"].tolist() == [2.0, 0.5]
    assert scores["energy"] == pytest.approx(np.log(np.exp(logits).sum(axis=1)))
    assert scores["max_prob"] == pytest.approx([1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-0.5))])
    assert scores["prototype"] == pytest.approx([1.0, 1.0])  # on the class means' directions
    assert scores["knn1"] == pytest.approx([np.cos(np.arctan(0.1))] * 2)


def test_the_false_accept_threshold_lets_through_at_most_the_limit():
    unknown = np.arange(100, dtype=float)  # scores 0..99
    threshold = openset.threshold_for_false_accepts(unknown, 0.02)
    assert openset.share_at_or_above(unknown, threshold) == 0.02  # 98 and 99
    assert openset.share_at_or_above(unknown, np.nextafter(threshold, -np.inf)) > 0.02
    known = np.linspace(90, 110, 21)
    assert openset.share_at_or_above(known, openset.threshold_for_recall(known, 0.5)) >= 0.5


def test_summary_carries_the_recall_over_between_rotations():
    """At 2 % false accepts rotation 0 keeps 79 % of its known photos, rotation 1 only 50 %: each
    rotation gets the other's recall, and the false accepts that gives are measured on it."""
    known = np.linspace(0, 1, 101)
    unknown_a = np.r_[np.full(97, -1.0), 0.2, 0.3, 0.4]  # 2 % allowed: cut just above 0.2
    unknown_b = np.r_[np.full(97, -1.0), 0.5, 0.6, 0.7]  # cut just above 0.5
    results = [
        openset.RotationResult(
            [r], dict.fromkeys(openset.SCORES, known), dict.fromkeys(openset.SCORES, u), known > 0
        )
        for r, u in enumerate((unknown_a, unknown_b))
    ]
    row = openset.summarise(results, 0.02)["max_prob"]
    assert row["recall_at_max_false_accept"] == pytest.approx(50 / 101)  # the worse rotation's
    # Rotation 0 at rotation 1's recall: threshold 0.5, none of 0.2, 0.3, 0.4 gets in.
    assert row["carried_false_accept_0"] == 0.0
    # Rotation 1 at rotation 0's recall (80 / 101): threshold 0.2, all of 0.5, 0.6, 0.7 do.
    assert row["carried_false_accept_1"] == pytest.approx(0.03)
    assert row["carried_false_accept_max"] == pytest.approx(0.03)


def test_a_cache_without_the_held_out_classes():
    train = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1)  # 2 views, 6 photos
    val = torch.arange(100, 104, dtype=torch.float32).view(4, 1)
    cache = transfer.ActivationCache(
        0, train, val, np.array([0, 1, 2, 0, 1, 2]), np.array([0, 1, 2, 2])
    )
    known, unknown = cache.without(np.array([1]))
    assert known.train_labels.tolist() == [0, 1, 0, 1]  # classes 0 and 2, renumbered
    assert known.val_labels.tolist() == [0, 1, 1]
    assert known.train.shape == (2, 4, 1)
    assert unknown.flatten().tolist() == [1.0, 4.0, 101.0]  # centre views of class 1


def test_frozen_feature_proxies_work_with_two_known_classes():
    """scikit-learn answers a two-class head with one column; the scores need two."""
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 1, (3, 8)) * 4
    x, y = clusters(rng, centres, 20, 0.3)
    (result,) = openset.frozen_feature_proxies(x, y, x, y, [np.array([1])])
    assert len(result.known["max_prob"]) == 40 and len(result.unknown["max_prob"]) == 40
    assert result.known_correct.all()
    assert (result.known["max_prob"] >= 0.5).all()  # two classes: the top is at least a half
