"""Evaluation metrics on hand-checked numbers."""

import numpy as np
import pytest

from landmark import evaluation

NAMES = ["A", "B", "C"]


def test_metrics_on_a_known_case():
    probs = np.array(
        [
            [0.7, 0.2, 0.1],  # A, right
            [0.1, 0.8, 0.1],  # B, right
            [0.6, 0.3, 0.1],  # C, wrong (A), C is third
            [0.2, 0.5, 0.3],  # C, wrong (B), C is second
        ]
    )
    labels = np.array([0, 1, 2, 2])
    report = evaluation.evaluate_predictions(probs, labels, NAMES)
    m = report.metrics
    assert m["test/top1"] == 0.5
    assert m["test/nll"] == pytest.approx(-np.log([0.7, 0.8, 0.1, 0.3]).mean())
    # F1: A = 2*0.5*1/1.5 = 2/3, B = 2/3, C = 0 -> macro 4/9
    assert m["test/macro_f1"] == pytest.approx(4 / 9)
    assert [c["support"] for c in report.per_class] == [1, 1, 2]
    assert report.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 0]]
    assert [(x["true"], x["predicted"]) for x in report.mistakes] == [("C", "A"), ("C", "B")]
    assert report.mistakes[0]["probability"] == pytest.approx(0.6)


def test_top_k_accuracy_counts_the_rank_of_the_true_class():
    probs = np.tile([0.3, 0.25, 0.2, 0.12, 0.08, 0.05], (4, 1))  # class c ranks c-th
    labels = np.array([0, 1, 3, 5])  # the true class ranks 1st, 2nd, 4th and 6th
    m = evaluation.evaluate_predictions(probs, labels, list("ABCDEF")).metrics
    assert (m["test/top1"], m["test/top3"], m["test/top5"]) == (0.25, 0.5, 0.75)


def test_calibrate_then_evaluate_answer_like_the_exported_model():
    """The show threshold is chosen on calibrated probabilities; the report is of calibrated
    ones."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(400, 4))
    labels = logits.argmax(1)  # a model that is always right, so it is underconfident
    calibration = evaluation.calibrate(logits, labels)
    assert calibration.temperature < 1.0
    calibrated = calibration.probabilities(logits)
    expected = evaluation.unknown_threshold(calibrated, labels)
    assert calibration.show_threshold == pytest.approx(expected)
    report = evaluation.evaluate(logits, labels, calibration, list("ABCD"))
    ece, _ = evaluation.calibration_curve(calibrated, labels)
    assert report.metrics["test/ece"] == pytest.approx(ece)
    assert report.metrics["test/ece_uncalibrated"] > report.metrics["test/ece"]


def test_expected_calibration_error():
    # Two photos at 0.85 confidence, one right: |0.5 - 0.85| in the one bin holding both.
    probs = np.array([[0.85, 0.15], [0.85, 0.15]])
    ece, bins = evaluation.calibration_curve(probs, np.array([0, 1]), bins=10)
    assert ece == pytest.approx(0.35)
    assert sum(bins["count"]) == 2 and bins["count"][8] == 2
    perfect, _ = evaluation.calibration_curve(np.array([[1.0, 0.0]] * 3), np.array([0, 0, 0]))
    assert perfect == pytest.approx(0.0)


def test_unknown_threshold_keeps_most_correct_predictions():
    rng = np.random.default_rng(0)
    top = rng.uniform(0.5, 1.0, 1000)  # all predicted class 0, all correct
    probs = np.stack([top, 1 - top], axis=1)
    threshold = evaluation.unknown_threshold(probs, np.zeros(1000, dtype=int), keep=0.9)
    assert np.mean(top >= threshold) == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("true_temperature", [0.5, 3.0])
def test_temperature_scaling_recovers_the_temperature_of_the_data(true_temperature):
    # Labels drawn from softmax(z); the model reports z * T, i.e. it is over- (T > 1) or
    # under-confident (T < 1) by T. The fitted temperature must undo that and fix calibration.
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, size=(20_000, 5))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    logits = z * true_temperature
    temperature = evaluation.fit_temperature(logits, labels)
    assert temperature == pytest.approx(true_temperature, rel=0.05)

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    before, _ = evaluation.calibration_curve(softmax(logits), labels)
    after, _ = evaluation.calibration_curve(softmax(logits / temperature), labels)
    assert after < 0.02 < before
    assert (softmax(logits / temperature).argmax(1) == logits.argmax(1)).all()


def test_temperature_stays_in_bounds_when_validation_is_all_right():
    logits = np.array([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
    labels = np.array([0, 1, 2])  # all right: the NLL keeps falling as T shrinks
    assert evaluation.fit_temperature(logits, labels) == pytest.approx(0.1, rel=1e-3)
