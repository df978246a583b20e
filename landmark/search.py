"""What a study searches and when it stops a trial: the search space of each step, and the
noise-aware pruner (a trial is not stopped for a difference inside the noise).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import optuna

from landmark.config import TuneConfig

log = logging.getLogger(__name__)

SearchSpace = Callable[[optuna.Trial], dict[str, Any]]


def scratch_space(trial: optuna.Trial) -> dict[str, Any]:
    """What `train_scratch` tunes: optimisation, the CNN's size, and the regularisers that move
    small CNNs most (augmentation, mixup/cutmix, label smoothing, stochastic depth, dropout).

    Sizes stay near the default CNN's cost (at most 1.5x: width 32 with 3 blocks per stage):
    every trial trains for the full `epochs`.
    """
    return {
        "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 0.005, 0.2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128]),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "augment": trial.suggest_float("augment", 0.3, 1.0),
        "mixup": trial.suggest_categorical("mixup", [0.0, 0.2, 0.5]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "drop_path": trial.suggest_float("drop_path", 0.0, 0.2),
        "depth": trial.suggest_int("depth", 3, 4),
        "width": trial.suggest_categorical("width", [16, 24, 32]),
        "blocks": trial.suggest_int("blocks", 1, 3),
    }


def transfer_space(max_trainable_blocks: int) -> SearchSpace:
    """What `train_transfer` tunes: optimisation, regularisation, head size, stages trained.

    Augmentation strength is not tuned here: the augmented views are cached once per run.
    """

    def space(trial: optuna.Trial) -> dict[str, Any]:
        return {
            "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-3, 0.1, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [32, 64, 128]),
            "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
            "head_size": trial.suggest_categorical("head_size", [0, 256, 512]),
            "trainable_blocks": trial.suggest_int("trainable_blocks", 0, max_trainable_blocks),
        }

    return space


def choices(space: SearchSpace, config: dict[str, Any]) -> dict[str, Any] | None:
    """The point of `space` that `config` (flattened configs) stands for, e.g. the defaults;
    None when a configured choice is not one of the space's (a number outside a range is kept:
    Optuna only warns), and then the study starts without the defaults and says so."""
    try:
        return space(optuna.trial.FixedTrial(config))
    except ValueError as err:
        log.warning(
            "The configured parameters are not a point of the search space (%s): the study has "
            "no default trial to compare with; set that parameter to one of the choices",
            err,
        )
        return None


class NoiseAwarePruner(optuna.pruners.BasePruner):
    """`inner`'s decision, overruled while the trial is within one standard error of the best
    value any other trial reported at the same step: differences inside the noise of
    `photos(step)` validation photos prune nothing.
    """

    def __init__(self, inner: optuna.pruners.BasePruner, photos: Callable[[int], int]) -> None:
        self.inner, self.photos = inner, photos

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if not self.inner.prune(study, trial):
            return False
        step = trial.last_step
        value = trial.intermediate_values[step]
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False)
            if t.number != trial.number and step in t.intermediate_values
        ]
        if not others:
            return True
        best = max(others)
        se = math.sqrt((best * (1 - best) + value * (1 - value)) / max(self.photos(step), 1))
        return value < best - se


# The choices of `TuneConfig.pruner` (a test checks they agree), given the first step at which
# a trial may be stopped and the last step (epochs, or folds).
PRUNERS: dict[str, Callable[[int, int], optuna.pruners.BasePruner]] = {
    "halving": lambda first, last: optuna.pruners.SuccessiveHalvingPruner(first, 3),
    "hyperband": lambda first, last: optuna.pruners.HyperbandPruner(first, last, 3),
    "median": lambda first, last: optuna.pruners.MedianPruner(3, n_warmup_steps=first),
    "none": lambda first, last: optuna.pruners.NopPruner(),
}


def pruner_for(cfg: TuneConfig, last: int, photos: Callable[[int], int]) -> NoiseAwarePruner:
    """The pruner `cfg.pruner` names, for trials reporting steps 1..`last`: the first decision
    after 1 fold (k-fold) or after a twentieth of the epochs (at least 2)."""
    first = 1 if cfg.folds > 1 else max(2, last // 20)
    return NoiseAwarePruner(PRUNERS[cfg.pruner](first, last), photos)
