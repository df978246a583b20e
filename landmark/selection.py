"""Noise-aware scores of tuning trials, and the rule that picks the final configuration.

A trial's score is the mean of its units: per-fold validation accuracies (k-fold), or the 0/1
correctness of each validation photo (one split). Its standard error is the units' standard
deviation over the square root of their number. Two trials scored on the same units (same
folds, or the same photos) are compared by their paired difference, whose standard error is
much smaller than either score's when the trials agree on most photos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

UNITS, DEFAULTS = "score_units", "defaults"  # trial user attributes written by `tuning`


@dataclass(frozen=True)
class Score:
    """A validation score: the mean of `units`, with its standard error.

    Args:
        units: per-fold accuracies (`kind` "folds") or per-photo 0/1 correctness ("photos").
    """

    units: tuple[float, ...]
    kind: str

    @property
    def mean(self) -> float:
        return float(np.mean(self.units))

    @property
    def se(self) -> float:
        return _standard_error(np.asarray(self.units, dtype=float))

    def minus(self, other: Score) -> tuple[float, float]:
        """This score minus `other`, and the standard error of that difference: paired unit by
        unit when both have the same units, otherwise from the two standard errors."""
        if self.kind == other.kind and len(self.units) == len(other.units):
            diff = np.asarray(self.units, dtype=float) - np.asarray(other.units, dtype=float)
            return float(diff.mean()), _standard_error(diff)
        return self.mean - other.mean, math.hypot(self.se, other.se)

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.se:.4f} ({len(self.units)} {self.kind})"


def _standard_error(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def photo_score(correct: np.ndarray) -> Score:
    """The score of one validation split from each photo's 0/1 correctness."""
    return Score(tuple(float(c) for c in np.asarray(correct, dtype=float)), "photos")


def fold_score(accuracies: list[float]) -> Score:
    """The k-fold score from each fold's validation accuracy."""
    return Score(tuple(float(a) for a in accuracies), "folds")


def score_of(trial: FrozenTrial) -> Score | None:
    """The score a complete trial recorded (None for other trials or older studies)."""
    units = trial.user_attrs.get(UNITS)
    if trial.state != TrialState.COMPLETE or not units:
        return None
    return Score(tuple(units["values"]), units["kind"])


@dataclass(frozen=True)
class Selection:
    """Which trial's configuration the final model uses, and why."""

    number: int | None  # None: no trial completed
    params: dict[str, Any]
    score: Score | None
    default_number: int | None
    default_score: Score | None
    gain: float | None  # chosen minus defaults (0 when the defaults are chosen)
    gain_se: float | None  # standard error of that paired difference
    reason: str
    # The highest-scoring other trial, and its paired difference to the defaults ± SE.
    best_other: tuple[int, float, float] | None = None

    @property
    def defaults_won(self) -> bool:
        return self.number is not None and self.number == self.default_number


def select(trials: list[FrozenTrial], z: float = 1.0) -> Selection:
    """The final configuration: the default-parameter trial, unless a trial beats it by more
    than `z` standard errors of their paired difference; of those, the one whose gain is
    surest (highest gain - z * SE). Only trials scored on the defaults' units compete.

    Without a complete default trial (a study started elsewhere), the highest-scoring trial.
    With many trials some beat the defaults by one standard error by chance alone (README,
    Tuning); a larger `z` asks for more.
    """
    scored = [(t, s) for t in trials if (s := score_of(t)) is not None]
    if not scored:
        return Selection(None, {}, None, None, None, None, None, "no trial completed")
    defaults = next(((t, s) for t, s in scored if t.user_attrs.get(DEFAULTS)), None)
    if defaults is None:
        best, score = max(scored, key=lambda ts: ts[1].mean)
        reason = f"trial {best.number} scored highest ({score}); no default trial to compare"
        return Selection(best.number, best.params, score, None, None, None, None, reason)
    default_trial, default_score = defaults
    others = [
        (t, s, *s.minus(default_score))
        for t, s in scored
        if t is not default_trial
        and (s.kind, len(s.units)) == (default_score.kind, len(default_score.units))
    ]
    best_other = max(others, key=lambda o: (o[1].mean, -o[0].number), default=None)
    runner_up = (best_other[0].number, best_other[2], best_other[3]) if best_other else None
    winners = [o for o in others if o[2] > z * o[3]]
    if not winners:
        detail = (
            f"; the best other, trial {runner_up[0]}, by {runner_up[1]:+.4f} ± {runner_up[2]:.4f}"
            if runner_up
            else ""
        )
        reason = (
            f"the defaults (trial {default_trial.number}, {default_score}): no trial beat them "
            f"by more than {z:g} standard error of the paired difference{detail}"
        )
        return Selection(
            default_trial.number, default_trial.params, default_score,
            default_trial.number, default_score, 0.0, 0.0, reason, runner_up,
        )  # fmt: skip
    trial, score, gain, se = max(winners, key=lambda w: (w[2] - z * w[3], -w[0].number))
    reason = f"trial {trial.number} ({score}) beat the defaults by {gain:+.4f} ± {se:.4f}"
    return Selection(
        trial.number, trial.params, score, default_trial.number, default_score, gain, se, reason,
        runner_up,
    )  # fmt: skip


def trials_table(trials: list[FrozenTrial], chosen: Selection) -> list[dict[str, Any]]:
    """One row per trial: state, score with its standard error, the paired difference to the
    defaults with its standard error, the last reported step, and the parameters."""
    rows = []
    for trial in trials:
        score = score_of(trial)
        gain = score.minus(chosen.default_score) if score and chosen.default_score else None
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "defaults": bool(trial.user_attrs.get(DEFAULTS)),
                "chosen": trial.number == chosen.number,
                "score": score.mean if score else None,
                "score_se": score.se if score else None,
                "vs_defaults": gain[0] if gain else None,
                "vs_defaults_se": gain[1] if gain else None,
                "last_step": trial.last_step,
                "seconds": trial.duration.total_seconds() if trial.duration else None,
                **{f"params_{k}": v for k, v in trial.params.items()},
            }
        )
    return rows
