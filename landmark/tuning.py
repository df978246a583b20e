"""Optuna tuning: search spaces, the study (storage, sampler, pruner) and its MLflow record.

A study runs inside the step's MLflow run; every trial is a nested run. Trials train with the one
`fit` loop; its epoch callback logs the epoch, reports validation accuracy to Optuna and raises
`optuna.TrialPruned` when the pruner says so. The test split is never seen here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from landmark import config, data, plots, selection, tracking, training
from landmark.config import TrainConfig, TuneConfig

log = logging.getLogger(__name__)

SearchSpace = Callable[[optuna.Trial], dict[str, Any]]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


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
    None when `config` lies outside the space (then the study starts without it)."""
    try:
        return space(optuna.trial.FixedTrial(config))
    except ValueError as err:
        log.warning("The configured parameters are not a point of the search space: %s", err)
        return None


def storage_for(cfg: TuneConfig) -> optuna.storages.BaseStorage:
    """`cfg.storage` as an Optuna storage: an SQLAlchemy URL, a journal file path, or by
    default the journal file `optuna.journal` next to the MLflow store."""
    if "://" in cfg.storage:
        return optuna.storages.RDBStorage(cfg.storage, heartbeat_interval=60, grace_period=180)
    default = tracking.store_dir() / "optuna.journal"
    path = Path(cfg.storage).expanduser() if cfg.storage else default
    path.parent.mkdir(parents=True, exist_ok=True)
    # The open-lock variant works on every file system (the symlink lock does not on some).
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock)
    return optuna.storages.JournalStorage(backend)


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


# report(step, value): tell Optuna a trial's validation accuracy after `step` epochs or folds;
# raises optuna.TrialPruned when the trial should stop.
Report = Callable[[int, float], None]
# train(params, report, trial) -> the trial's score; params are the trial's choices.
TrainFn = Callable[[dict[str, Any], Report, optuna.Trial], selection.Score]
CHECKPOINT = "checkpoint"  # user attribute: where a complete trial's weights are (its host's)
TRIAL_WEIGHTS = "weights.pt"


def tune(
    study_name: str,
    space: SearchSpace,
    train: TrainFn,
    cfg: TuneConfig,
    seed: int,
    pruner: optuna.pruners.BasePruner,
    defaults: dict[str, Any] | None = None,
) -> optuna.Study:
    """Run (or continue) the study `study_name` until it has `cfg.n_trials` finished trials
    or `cfg.timeout` seconds have passed; return it.

    A new study's first trial is `defaults` (the untuned parameters): the final choice is
    measured against it (`selection.select`). A trial still running when the time is up is
    pruned, except the defaults' (without them there is nothing to compare with). A trial that
    raises is recorded as failed and the study goes on.
    """
    study = optuna.create_study(
        storage=storage_for(cfg),
        study_name=study_name,
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )
    _fail_orphans(study)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    # Seeded per run, so a resumed study does not replay the random start-up trials it has,
    # and a worker joining a busy study does not repeat another worker's choices.
    study.sampler = optuna.samplers.TPESampler(
        seed=seed + done + 7919 * running, n_startup_trials=5, constant_liar=True
    )
    if defaults and not study.trials:
        study.enqueue_trial(defaults, skip_if_exists=True)
    remaining = cfg.n_trials - done
    log.info("Study %s: %d finished trials, %d to go", study_name, done, max(remaining, 0))
    if remaining > 0:
        deadline = time.monotonic() + cfg.timeout if cfg.timeout else math.inf
        study.optimize(
            _objective(study_name, space, train, defaults, deadline),
            timeout=cfg.timeout or None,
            catch=(Exception,),
            callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=FINISHED)],
            gc_after_trial=True,
        )
    return study


@dataclass(frozen=True)
class Tuned:
    """What a study chose: the configs with its choices, and the chosen trial's trained
    weights when this machine has them (single-split studies keep them: that trial is the
    final model; see `_train_on_split`)."""

    configs: tuple[Any, TrainConfig]
    selection: selection.Selection
    checkpoint: Path | None


def splits_for(cfg: TuneConfig, split: data.TrainValRows, labels, seed: int) -> list:
    """What trials train and validate on: `cfg.folds` stratified folds of the training split,
    or the training/validation split itself (`folds` 1)."""
    if cfg.folds <= 1:
        return [split]
    return data.stratified_folds(labels, split.train, cfg.folds, data.derive_seed(seed, 1))


def tune_configs(
    study_name: str,
    space: SearchSpace,
    build: training.Builder,
    configs: tuple[Any, TrainConfig],
    cfg: TuneConfig,
    splits: list[data.TrainValRows],
    seed: int,
    device: torch.device,
    keep: Path | None = None,
) -> Tuned:
    """Run the study (when `cfg.n_trials` > 0) and choose the final configuration.

    Every trial trains for the full `epochs` of the training config (a trial is exactly a
    final training; the pruner stops the clearly worse early). On one split, a trial's score
    is its best epoch's per-photo correctness on validation, and complete trials keep their
    weights under `keep/trial-<n>` (the chosen one is the final model); on k folds it is the
    k fold accuracies, and the final model is trained afresh on the whole training split.
    """
    if cfg.n_trials <= 0:
        return Tuned(configs, selection.Selection(None, {}, None, None, None, None, None,
                                                  "no tuning (n_trials 0)"), None)  # fmt: skip
    model_cfg, train_cfg = configs
    defaults = choices(space, config.to_dict(model_cfg, train_cfg))
    folds = len(splits) > 1
    last = len(splits) if folds else train_cfg.epochs

    def photos(step: int) -> int:
        return sum(len(s.val) for s in splits[:step]) if folds else len(splits[0].val)

    def run_trial(params: dict, report: Report, trial: optuna.Trial) -> selection.Score:
        trial_cfgs = apply(params, model_cfg, dataclasses.replace(train_cfg, resume=""))
        if folds:
            return _cross_validate(build, trial_cfgs, splits, report, seed, device)
        # A name of its own: another study of the same name (another store) must not reuse it.
        folder = keep / f"trial-{trial.number}-{uuid.uuid4().hex[:8]}" if keep else None
        if folder:
            trial.set_user_attr(CHECKPOINT, str(folder / TRIAL_WEIGHTS))
        return _train_on_split(build, trial_cfgs, splits[0], report, seed, device, folder)

    study = tune(
        cfg.study_name or study_name, space, run_trial, cfg, seed,
        pruner_for(cfg, last, photos), defaults,
    )  # fmt: skip
    chosen = log_study(study)
    return Tuned(apply(chosen.params, model_cfg, train_cfg), chosen, _weights_of(study, chosen))


def _weights_of(study: optuna.Study, chosen: selection.Selection) -> Path | None:
    """The chosen trial's kept weights, if they are on this machine (else it is retrained:
    training is seeded, so it repeats the trial)."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == chosen.number), None)
    if trial is None or CHECKPOINT not in trial.user_attrs:
        return None
    path = Path(trial.user_attrs[CHECKPOINT])
    if trial.user_attrs.get("host") == socket.gethostname() and path.is_file():
        return path
    log.info("Trial %d's weights are not on this machine: training it again", trial.number)
    return None


def _train_on_split(build, configs, split, report, seed, device, folder) -> selection.Score:
    """One training on the validation split; its best epoch's per-photo correctness. With a
    `folder`, a complete trial keeps its best weights and history there (`TRIAL_WEIGHTS`);
    a pruned or failed one leaves nothing."""
    _, net, train_loader, val_loader = build(*configs, split)
    with tempfile.TemporaryDirectory() as tmp:
        result = training.fit(net, train_loader, val_loader, configs[1], seed, Path(tmp),
                              device, on_epoch_end=_epoch_reporter(report))  # fmt: skip
    # Scored as `fit` validated (same autocast), so the score is the best epoch's val/acc.
    dtype = training.autocast_dtype(configs[1].precision, device)
    logits, labels = training.predict(net, val_loader, device, dtype)
    if folder:
        training.save_weights(folder / TRIAL_WEIGHTS, net, result)
    return selection.photo_score((logits.argmax(1) == labels).numpy())


def _cross_validate(build, configs, splits, report, seed, device) -> selection.Score:
    """One training per fold; the running mean accuracy is reported after each fold."""
    accuracies = []
    for f, split in enumerate(splits):
        _, net, train_loader, val_loader = build(*configs, split)
        with tempfile.TemporaryDirectory() as tmp:
            result = training.fit(
                net, train_loader, val_loader, configs[1], data.derive_seed(seed, f), Path(tmp),
                device, on_epoch_end=tracking.epoch_logger(prefix=f"fold{f + 1}/"),
            )  # fmt: skip
        accuracies.append(result.best_val_acc)
        tracking.log_metrics({"cv/acc": result.best_val_acc}, step=f + 1)
        report(f + 1, sum(accuracies) / len(accuracies))
    return selection.fold_score(accuracies)


def _epoch_reporter(report: Report) -> training.EpochCallback:
    log_epoch = tracking.epoch_logger()

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        log_epoch(epoch, metrics)
        report(epoch + 1, metrics["val/acc"])

    return on_epoch_end


def apply(params: dict[str, Any], *configs: Any) -> tuple:
    """Each config with the fields named in `params` replaced."""
    out = []
    for cfg in configs:
        names = {f.name for f in dataclasses.fields(cfg)}
        out.append(dataclasses.replace(cfg, **{k: v for k, v in params.items() if k in names}))
    return tuple(out)


def _objective(study_name, space, train: TrainFn, defaults, deadline: float):
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = space(trial)
        is_defaults = defaults is not None and params == defaults
        trial.set_user_attr(selection.DEFAULTS, is_defaults)
        pruned = None
        tags = {"optuna.study": study_name, "optuna.trial": str(trial.number)}
        with tracking.start_run(f"trial {trial.number}", tags=tags):
            tracking.log_params(params)
            try:
                score = train(params, _reporter(trial, deadline, is_defaults), trial)
            except optuna.TrialPruned as stop:  # a normal end for a trial: not a failed run
                pruned = stop
            except Exception:
                tracking.set_tags({"optuna.state": "FAIL"})
                log.exception("Trial %d failed", trial.number)
                raise
            tracking.set_tags({"optuna.state": "PRUNED" if pruned else "COMPLETE"})
            if pruned is None:
                tracking.log_metrics({"score": score.mean, "score_se": score.se})
        if pruned is not None:
            raise pruned
        trial.set_user_attr(selection.UNITS, {"kind": score.kind, "values": list(score.units)})
        return score.mean

    return objective


def _reporter(trial: optuna.Trial, deadline: float, is_defaults: bool) -> Report:
    def report(step: int, value: float) -> None:
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"trial {trial.number} pruned after step {step}")
        if not is_defaults and time.monotonic() > deadline:
            raise optuna.TrialPruned(f"trial {trial.number} stopped: the study's time is up")

    return report


def _fail_orphans(study: optuna.Study) -> None:
    """Mark trials left RUNNING by a killed process on this machine as failed."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("pid")
        if trial.user_attrs.get("host") == host and pid is not None and not _alive(pid):
            log.warning("Trial %d was left running by process %d: marked failed", trial.number, pid)
            study.tell(trial.number, state=TrialState.FAIL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def log_study(study: optuna.Study) -> selection.Selection:
    """Choose the final configuration (`selection.select`) and log the study to the active
    (parent) run: counts, the chosen and the default scores with standard errors, the decision
    as tags, the trials table (with standard errors) and plots."""
    trials = study.get_trials(deepcopy=False)
    chosen = selection.select(trials)
    counts = {state.name.lower(): 0 for state in FINISHED}
    for trial in trials:
        if trial.state in FINISHED:
            counts[trial.state.name.lower()] += 1
    metrics = {f"tuning/trials_{state}": n for state, n in counts.items()}
    for name, score in (("chosen", chosen.score), ("default", chosen.default_score)):
        if score is not None:
            metrics.update({f"tuning/{name}_score": score.mean, f"tuning/{name}_se": score.se})
    if chosen.gain is not None:
        metrics.update({"tuning/gain": chosen.gain, "tuning/gain_se": chosen.gain_se})
    tracking.log_metrics(metrics)
    decision = "defaults" if chosen.defaults_won else f"trial {chosen.number}"
    tracking.set_tags({"tuning.decision": decision, "tuning.reason": chosen.reason[:5000]})
    tracking.log_params({f"best_{k}": v for k, v in chosen.params.items()})
    table = selection.trials_table(trials, chosen)
    tracking.log_dict(
        {"counts": counts, "chosen": chosen.number, "defaults": chosen.default_number,
         "params": chosen.params, "reason": chosen.reason, "trials": table},
        "tuning/summary.json",
    )  # fmt: skip
    tracking.log_text(pd.DataFrame(table).to_csv(index=False), "tuning/trials.csv")
    tracking.log_figure(plots.trial_scores(table), "plots/trial_scores.png")
    for name, plot in _PLOTS.items():
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except (ValueError, RuntimeError) as err:  # e.g. importances need 2+ complete trials
            log.info("No %s plot: %s", name, err)
            continue
        tracking.log_figure(axes.figure, f"plots/{name}.png")
        plt.close(axes.figure)
    log.info("Tuning chose %s: %s", decision, chosen.reason)
    return chosen


_PLOTS: dict[str, Callable[[optuna.Study], Any]] = {
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
}
