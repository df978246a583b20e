"""Optuna tuning: the study (storage, sampler, trials, time budget) and its MLflow record.

A study runs inside the step's MLflow run; every trial is a nested run that trains with the one
`fit` loop (on one split or on k folds), reports validation accuracy to Optuna and stops when
the pruner (`search`) says so. The final choice is `selection.select`'s. The test split is
never seen here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
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
import numpy as np
import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from landmark import config, data, plots, search, selection, studies, tracking, training
from landmark.config import TrainConfig, TuneConfig

log = logging.getLogger(__name__)

FINISHED = studies.FINISHED


Report = Callable[[int, float], None]
# train(params, report, trial) -> the trial's score; params are the trial's choices.
TrainFn = Callable[[dict[str, Any], Report, optuna.Trial], selection.Score]
CHECKPOINT = "checkpoint"  # user attribute: where a complete trial's weights are (its host's)
TRIAL_WEIGHTS = "weights.pt"


def tune(
    study_name: str,
    space: search.SearchSpace,
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
        storage=studies.storage_for(cfg),
        study_name=study_name,
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )
    beats = studies.heartbeat(study)  # a database; else a journal on this machine
    if not beats:  # trials of dead processes on this machine
        studies.fail_orphans(study)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    # Seeded per run, so a resumed study does not replay the random start-up trials it has,
    # and a worker joining a busy study does not repeat another worker's choices.
    # Workers starting together on a database (running 0 for each) differ by their process.
    worker = os.getpid() if beats else 0
    study.sampler = optuna.samplers.TPESampler(
        seed=(seed + done + 7919 * running + worker) % 2**32, n_startup_trials=5,
        constant_liar=True,
    )  # fmt: skip
    remaining = cfg.n_trials - done - running
    log.info("Study %s: %d finished trials, %d running elsewhere, %d to go",
             study_name, done, running, max(remaining, 0))  # fmt: skip
    deadline = time.monotonic() + cfg.timeout if cfg.timeout else math.inf
    objective = _objective(study_name, space, train, defaults, deadline)
    # One trial at a time, counting the other workers' first, under a lock held until this
    # worker's trial exists: `n_trials` is the study's total however many workers share it.
    with studies.AskLock(cfg, study_name) as lock:
        lock.acquire()
        if defaults:  # also into a continued study; never twice, however many workers start
            study.enqueue_trial(defaults, skip_if_exists=True)
        while True:
            lock.acquire()
            studies.fail_stale(study)
            if studies.taken(study) >= cfg.n_trials or time.monotonic() >= deadline:
                break
            study.optimize(
                lambda trial: lock.release() or objective(trial),
                n_trials=1, catch=(Exception,), gc_after_trial=True,
            )  # fmt: skip
    return study


@dataclass(frozen=True)
class Tuned:
    """What a study chose: the configs with its choices, and the chosen trial's trained
    weights when this machine has them (single-split studies keep them: that trial is the
    final model; see `_train_on_split`)."""

    configs: tuple[Any, TrainConfig]
    selection: selection.Selection
    checkpoint: Path | None


# Settings that do not change what a trial measures, left out of a derived study name.
_NOT_MEASURED = {
    "data",
    "sha256",
    "cache_dir",
    "device",
    "num_workers",
    "resume",
    "max_unzipped_gb",
}


def study_name_for(step: str, fingerprint: str, tune_cfg: TuneConfig, *configs: Any) -> str:
    """`tune_cfg.study_name`, or a name of the step, the data and every setting that changes
    what a trial measures (seed, split, epochs, folds, the defaults...): rerunning the same
    command continues the study; changing a setting starts a new one instead of comparing
    scores measured on other photos or with other settings."""
    if tune_cfg.study_name:
        return tune_cfg.study_name
    settings = {k: v for k, v in config.to_dict(*configs).items() if k not in _NOT_MEASURED}
    settings["folds"] = tune_cfg.folds
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{step}-{fingerprint[:12]}-{digest[:8]}"


FOLDS_STREAM = 0xF01D  # the folds' own random stream of the data seed (views and epochs: 0, 1, ..)


def splits_for(
    cfg: TuneConfig, split: data.TrainValRows, labels: np.ndarray, seed: int
) -> list[data.TrainValRows]:
    """What trials train and validate on: `cfg.folds` stratified folds of the training split,
    or the training/validation split itself (`folds` 1)."""
    if cfg.folds <= 1:
        return [split]
    if cfg.folds > len(split.train) // 2:
        raise ValueError(
            f"folds={cfg.folds} is too many for {len(split.train)} training photos: "
            "use at most half as many folds as photos (5 is usual), or folds=1"
        )
    seed = data.derive_seed(seed, FOLDS_STREAM)
    return data.stratified_folds(labels, split.train, cfg.folds, seed)


def tune_configs(
    study_name: str,
    space: search.SearchSpace,
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
    defaults = search.choices(space, config.to_dict(model_cfg, train_cfg))
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
        study_name, space, run_trial, cfg, seed,
        search.pruner_for(cfg, last, photos), defaults,
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
        with tracking.start_run(f"trial {trial.number}", tags=tags) as run_id:
            trial.set_user_attr(studies.MLFLOW_RUN, run_id)
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
        # The defaults' trial is asked too (pruners record rung values) but always goes on:
        # every other trial is compared with it.
        if trial.should_prune() and not is_defaults:
            raise optuna.TrialPruned(f"trial {trial.number} pruned after step {step}")
        if not is_defaults and time.monotonic() > deadline:
            raise optuna.TrialPruned(f"trial {trial.number} stopped: the study's time is up")

    return report


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
    if chosen.best_other is not None:  # the best challenger, whether it won or not
        _, gain, se = chosen.best_other
        metrics.update({"tuning/best_other_gain": gain, "tuning/best_other_gain_se": se})
    tracking.log_metrics(metrics)
    if chosen.number is None:
        decision = "none"
    else:
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
