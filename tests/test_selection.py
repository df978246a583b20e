"""Scores with standard errors and the rule that picks the final configuration (pure)."""

from __future__ import annotations

import math

import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from landmark import selection


def trial(number: int, units: list[float], kind: str = "folds", defaults: bool = False, **kw):
    frozen = create_trial(
        params={"x": number / 10},
        distributions={"x": FloatDistribution(0, 1)},
        value=sum(units) / len(units),
        user_attrs={selection.UNITS: {"kind": kind, "values": units}, selection.DEFAULTS: defaults},
        state=kw.get("state", TrialState.COMPLETE),
    )
    frozen.number = number
    return frozen


def test_a_score_is_the_mean_of_its_units_with_their_standard_error():
    score = selection.fold_score([0.90, 0.92, 0.94, 0.96])
    assert score.mean == pytest.approx(0.93)
    # sample standard deviation sqrt(((-.03)^2 + (-.01)^2 + .01^2 + .03^2) / 3), over sqrt(4)
    assert score.se == pytest.approx(math.sqrt(0.0020 / 3) / 2)
    photos = selection.photo_score([1, 1, 1, 0])
    assert photos.mean == 0.75 and photos.se == pytest.approx(0.5 / 2)


def test_the_paired_difference_is_much_surer_than_the_two_scores():
    a = selection.fold_score([0.90, 0.80, 0.70])
    b = selection.fold_score([0.91, 0.81, 0.71])  # better on every fold by one point
    gain, se = b.minus(a)
    assert gain == pytest.approx(0.01) and se == pytest.approx(0.0, abs=1e-12)
    unpaired = selection.Score(b.units[:2], "folds")  # other units: no pairing possible
    gain, se = unpaired.minus(a)
    assert se == pytest.approx(math.hypot(unpaired.se, a.se))


def test_the_defaults_win_unless_beaten_by_more_than_the_paired_standard_error():
    defaults = trial(0, [0.80, 0.90, 0.85], defaults=True)
    noisy = trial(1, [0.83, 0.86, 0.88])  # higher mean, but up on two folds, down on one
    clear = trial(2, [0.84, 0.93, 0.88])  # up by 3-4 points on every fold
    kept = selection.select([defaults, noisy])
    assert kept.defaults_won and kept.gain == 0.0 and "trial 1" in kept.reason
    won = selection.select([defaults, noisy, clear])
    assert won.number == 2 and not won.defaults_won
    assert won.gain == pytest.approx(0.0333, abs=1e-3) and won.gain > won.gain_se


def test_without_a_default_trial_the_highest_score_is_chosen_and_said_so():
    chosen = selection.select([trial(3, [0.7, 0.8]), trial(4, [0.9, 0.8])])
    assert chosen.number == 4 and "no default trial" in chosen.reason
    assert selection.select([]).number is None


def test_the_table_lists_every_trial_with_standard_errors():
    pruned = create_trial(
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        state=TrialState.PRUNED,
        intermediate_values={1: 0.2},
    )
    pruned.number = 2
    trials = [trial(0, [0.8, 0.9], defaults=True), trial(1, [0.85, 0.95]), pruned]
    rows = selection.trials_table(trials, selection.select(trials))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert rows[1]["score_se"] == pytest.approx(0.05) and rows[1]["vs_defaults"] == pytest.approx(
        0.05
    )
    assert rows[1]["vs_defaults_se"] == pytest.approx(0.0)
    assert rows[2]["score"] is None and rows[2]["last_step"] == 1
