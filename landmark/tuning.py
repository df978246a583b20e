"""Optuna tuning: search spaces, the study (storage, sampler, pruner) and its MLflow record.

A study runs inside the step's MLflow run; every trial is a nested run. Trials train with the one
`fit` loop; its epoch callback logs the epoch, reports validation accuracy to Optuna and raises
`optuna.TrialPruned` when the pruner says so. The test split is never seen here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
import torch
from optuna.trial import TrialState

from landmark import config, tracking, training
from landmark.config import TrainConfig, TuneConfig

log = logging.getLogger(__name__)

SearchSpace = Callable[[optuna.Trial], dict[str, Any]]
# train(params, on_epoch_end) -> FitResult; params are a trial's choices.
TrainFn = Callable[[dict[str, Any], training.EpochCallback], training.FitResult]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def scratch_space(trial: optuna.Trial) -> dict[str, Any]:
    """What `train_scratch` tunes: optimisation, regularisation and the CNN's size.

    Sizes stop at the default CNN's cost (width 32, depth 4, batches of 64 or more): the final
    model trains for `epochs` with the chosen size, and a wider one would not fit the budget.
    """
    return {
        "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 0.005, 0.2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128]),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.2),
        "augment": trial.suggest_float("augment", 0.3, 1.0),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "depth": trial.suggest_int("depth", 3, 4),
        "width": trial.suggest_categorical("width", [16, 24, 32]),
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


# The choices of `TuneConfig.pruner` (a test checks they agree), given the trials' epochs.
PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(1, max_resource=epochs),
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    "none": lambda epochs: optuna.pruners.NopPruner(),
}


def pruner_for(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """The pruner `cfg.pruner` names."""
    return PRUNERS[cfg.pruner](cfg.trial_epochs)


def tune(
    study_name: str,
    space: SearchSpace,
    train: TrainFn,
    cfg: TuneConfig,
    seed: int,
    defaults: dict[str, Any] | None = None,
) -> optuna.Study:
    """Run (or continue) the study `study_name` until it has `cfg.n_trials` finished trials
    or `cfg.timeout` seconds have passed; return it.

    A new study's first trial is `defaults` (the untuned parameters), so the gain of tuning is
    visible in the study. A trial that raises is recorded as failed and the study goes on.
    """
    study = optuna.create_study(
        storage=storage_for(cfg),
        study_name=study_name,
        direction="maximize",
        pruner=pruner_for(cfg),
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
        study.optimize(
            _objective(study_name, space, train),
            timeout=cfg.timeout or None,
            catch=(Exception,),
            callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=FINISHED)],
            gc_after_trial=True,
        )
    return study


def tune_configs(
    study_name: str,
    space: SearchSpace,
    build: training.Builder,
    configs: tuple[Any, TrainConfig],
    cfg: TuneConfig,
    seed: int,
    device: torch.device,
) -> tuple[Any, TrainConfig]:
    """Run the study (when `cfg.n_trials` > 0); return `configs` (the model's and the training
    config) with the best trial's choices.

    Trials train for `cfg.trial_epochs` epochs and are judged on validation accuracy. With
    `trial_epochs` 0 they train exactly as the final model will (training is seeded), so the
    final model repeats the best trial, and the default parameters (the first trial) can only
    be kept or beaten.
    """
    if cfg.n_trials <= 0:
        return configs
    model_cfg, train_cfg = configs
    cfg = dataclasses.replace(cfg, trial_epochs=cfg.trial_epochs or train_cfg.epochs)
    defaults = choices(space, config.to_dict(model_cfg, train_cfg))

    def run_trial(params: dict, on_epoch_end) -> training.FitResult:
        trial_cfg, trial_train_cfg = apply(params, model_cfg, train_cfg)
        trial_train_cfg = dataclasses.replace(trial_train_cfg, epochs=cfg.trial_epochs, resume="")
        _, net, train_loader, val_loader = build(trial_cfg, trial_train_cfg)
        with tempfile.TemporaryDirectory() as tmp:
            return training.fit(
                net, train_loader, val_loader, trial_train_cfg, seed, Path(tmp), device,
                on_epoch_end=on_epoch_end,
            )  # fmt: skip

    study = tune(cfg.study_name or study_name, space, run_trial, cfg, seed, defaults)
    return apply(log_study(study)["best_params"], model_cfg, train_cfg)


def apply(params: dict[str, Any], *configs: Any) -> tuple:
    """Each config with the fields named in `params` replaced."""
    out = []
    for cfg in configs:
        names = {f.name for f in dataclasses.fields(cfg)}
        out.append(dataclasses.replace(cfg, **{k: v for k, v in params.items() if k in names}))
    return tuple(out)


def _objective(study_name: str, space: SearchSpace, train: TrainFn):
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = space(trial)
        pruned = None
        tags = {"optuna.study": study_name, "optuna.trial": str(trial.number)}
        with tracking.start_run(f"trial {trial.number}", tags=tags):
            tracking.log_params(params)
            try:
                result = train(params, _reporter(trial))
            except optuna.TrialPruned as stop:  # a normal end for a trial: not a failed run
                pruned = stop
            except Exception:
                tracking.set_tags({"optuna.state": "FAIL"})
                log.exception("Trial %d failed", trial.number)
                raise
            tracking.set_tags({"optuna.state": "PRUNED" if pruned else "COMPLETE"})
        if pruned is not None:
            raise pruned
        return result.best_val_acc

    return objective


def _reporter(trial: optuna.Trial) -> training.EpochCallback:
    log_epoch = tracking.epoch_logger()

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        log_epoch(epoch, metrics)
        trial.report(metrics["val/acc"], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {epoch + 1}")

    return on_epoch_end


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


def summary(study: optuna.Study) -> dict[str, Any]:
    """Counts of trials by state, the best trial, and the first (default-parameter) trial."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): 0 for state in FINISHED}
    for trial in trials:
        if trial.state in FINISHED:
            counts[trial.state.name.lower()] += 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    first = next((t for t in trials if t.number == 0 and t.state == TrialState.COMPLETE), None)
    return {
        "counts": counts,
        "best_params": best.params if best else {},
        "best_value": best.value if best else None,
        "best_number": best.number if best else None,
        "default_value": first.value if first else None,
    }


def log_study(study: optuna.Study) -> dict[str, Any]:
    """Log the study to the active (parent) run: counts, best parameters, plots, trial table."""
    info = summary(study)
    metrics = {f"tuning/trials_{state}": n for state, n in info["counts"].items()}
    if info["best_value"] is not None:
        metrics["tuning/best_val_acc"] = info["best_value"]
    if info["default_value"] is not None:
        metrics["tuning/default_val_acc"] = info["default_value"]
    tracking.log_metrics(metrics)
    tracking.log_params({f"best_{k}": v for k, v in info["best_params"].items()})
    tracking.log_dict(info, "tuning/summary.json")
    tracking.log_text(study.trials_dataframe().to_csv(index=False), "tuning/trials.csv")
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
    log.info("Study: %s", info)
    return info


_PLOTS: dict[str, Callable[[optuna.Study], Any]] = {
    "optimization_history": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances": optuna.visualization.matplotlib.plot_param_importances,
    "intermediate_values": optuna.visualization.matplotlib.plot_intermediate_values,
}
