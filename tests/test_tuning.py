"""Optuna studies: nested MLflow runs, pruning, failures, resume, seeding and shared storage.

The first tests drive `tuning.tune` with a stand-in training function that reports chosen
validation accuracies through the real epoch callback (real Optuna, real MLflow store); the last
ones tune the real entry points on tiny synthetic photos.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from landmark import data, search, selection, steps, studies, tracking, training, transfer, tuning
from landmark.config import (
    ScratchConfig,
    ScratchTrainConfig,
    ScratchTuneConfig,
    TrainConfig,
    TransferConfig,
    TuneConfig,
)

REPO = Path(__file__).resolve().parents[1]


def space(trial: optuna.Trial) -> dict:
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def correct_photos(accuracy: float, photos: int = 400, seed: int = 0) -> np.ndarray:
    """0/1 correctness of `photos` validation photos at `accuracy`, the right ones drawn at
    random (`seed`): two configurations of equal accuracy disagree on some photos."""
    correct = np.zeros(photos)
    correct[np.random.default_rng(seed).permutation(photos)[: round(accuracy * photos)]] = 1
    return correct


def reporting(scores, epochs: int = 3):
    """A train function whose n-th call reports `scores(n, params)` every epoch and is scored
    at that accuracy on 400 validation photos."""
    calls = []

    def train(params: dict, report, trial) -> selection.Score:
        calls.append(params)
        value = scores(len(calls) - 1, params)
        for step in range(1, epochs + 1):
            report(step, value)
        return selection.photo_score(correct_photos(value, seed=len(calls)))

    train.calls = calls
    return train


def curves(final, speed, epochs: int = 12, noise_seed=lambda n: n):
    """A train function whose trials learn as `final(x) * (1 - exp(-speed(x) * epoch))`."""
    calls = []

    def train(params: dict, report, trial) -> selection.Score:
        calls.append(params)
        x = params["x"]
        for epoch in range(1, epochs + 1):
            report(epoch, final(x) * (1 - math.exp(-speed(x) * epoch)))
        return selection.photo_score(correct_photos(final(x), seed=noise_seed(len(calls))))

    train.calls = calls
    return train


def config(tmp_path: Path, **overrides) -> TuneConfig:
    base = {"timeout": 0, "folds": 1, "pruner": "none"}
    return TuneConfig(**{**base, "storage": str(tmp_path / "study.journal"), **overrides})


def run_study(tmp_path, train, cfg, defaults=None, enqueue=(), seed=0, photos=400, epochs=3):
    pruner = search.pruner_for(cfg, epochs, lambda step: photos)
    study = optuna.create_study(
        storage=studies.storage_for(cfg), study_name="s", direction="maximize"
    )
    if defaults:
        study.enqueue_trial(defaults)
    for params in enqueue:
        study.enqueue_trial(params)
    return tuning.tune("s", space, train, cfg, seed, pruner, defaults)


def trial_runs(client: MlflowClient, parent_id: str) -> dict[int, object]:
    experiment = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {int(r.data.tags["optuna.trial"]): r for r in runs}


def test_trials_are_nested_runs_and_the_first_is_the_defaults(tmp_path, tracking_uri):
    train = reporting(lambda n, params: params["x"])
    with tracking.start_run("study") as parent:
        study = run_study(tmp_path, train, config(tmp_path, n_trials=4), {"x": 0.25})
        chosen = tuning.log_study(study)
    client = MlflowClient(tracking_uri)
    runs = trial_runs(client, parent)
    assert sorted(runs) == [0, 1, 2, 3]
    assert train.calls[0] == {"x": 0.25}
    assert study.trials[0].user_attrs["defaults"] is True
    assert not any(t.user_attrs["defaults"] for t in study.trials[1:])
    for number, run in runs.items():
        assert run.data.tags["optuna.state"] == "COMPLETE"
        history = client.get_metric_history(run.info.run_id, "score")
        assert history[-1].value == pytest.approx(round(train.calls[number]["x"] * 400) / 400)
    parent_run = client.get_run(parent)
    assert parent_run.data.metrics["tuning/trials_complete"] == 4
    assert parent_run.data.metrics["tuning/default_score"] == pytest.approx(0.25)
    assert parent_run.data.tags["tuning.reason"] == chosen.reason
    artifacts = {a.path for a in client.list_artifacts(parent, "plots")}
    assert {"plots/trial_scores.png", "plots/param_importances.png"} <= artifacts
    table = client.download_artifacts(parent, "tuning/trials.csv", str(tmp_path))
    rows = list(csv.DictReader(Path(table).read_text().splitlines()))
    assert len(rows) == 4
    for row in rows:  # every score has its standard error next to it
        units = correct_photos(float(row["score"]), seed=int(row["number"]) + 1)
        assert float(row["score_se"]) == pytest.approx(units.std(ddof=1) / math.sqrt(400))


def test_pruner_stops_a_trial_that_reports_badly(tmp_path, tracking_uri):
    train = reporting(lambda n, params: 0.1 if n == 3 else 0.9, epochs=4)
    cfg = config(tmp_path, n_trials=4, pruner="median")
    with tracking.start_run("study") as parent:
        study = run_study(tmp_path, train, cfg, epochs=4)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    pruned = trial_runs(MlflowClient(tracking_uri), parent)[3]
    assert pruned.data.tags["optuna.state"] == "PRUNED"
    assert pruned.info.status == "FINISHED"  # pruning is a normal end, not a failed run
    assert len(study.trials[3].intermediate_values) < 4


@pytest.mark.parametrize("pruner", ["halving", "hyperband", "median"])
def test_the_pruner_does_not_prune_inside_the_noise(tmp_path, tracking_uri, pruner):
    # On 400 photos the standard error of a difference near 50 % is 3.5 points: a trial 2
    # points behind every other is kept, one 20 points behind is pruned.
    behind = {4: 0.48, 5: 0.30}
    train = reporting(lambda n, params: behind.get(n, 0.50), epochs=9)
    cfg = config(tmp_path, n_trials=6, pruner=pruner)
    with tracking.start_run("study"):
        study = run_study(tmp_path, train, cfg, epochs=9)
    assert study.trials[4].state == TrialState.COMPLETE
    assert study.trials[5].state == TrialState.PRUNED
    # Without the noise guard the same pruner stops the trial 2 points behind.
    inner = search.PRUNERS[pruner](2, 9)
    assert _would_prune(inner, study, 4)


def _would_prune(pruner, study, number) -> bool:
    """Whether `pruner` would stop trial `number` at any of the steps it reported."""
    trial = study.trials[number]
    past = [t for t in study.trials if t.number < number]
    # The same study name: Hyperband puts trials into brackets by it.
    probe = optuna.create_study(study_name=study.study_name, direction="maximize", pruner=pruner)
    for t in past:
        probe.add_trial(t)
    running = probe.ask()
    for step, value in sorted(trial.intermediate_values.items()):
        running.report(value, step)
        if running.should_prune():
            return True
    return False


def test_a_configuration_best_early_but_worse_at_full_length_is_not_chosen(tmp_path, tracking_uri):
    # x > 0.5 learns fast and ends low; the defaults (x = 0.2) learn slowly and end high.
    def final(x):
        return 0.6 if x > 0.5 else 0.85

    def speed(x):
        return 2.0 if x > 0.5 else 0.15

    train = curves(final, speed)
    cfg = config(tmp_path, n_trials=3, pruner="halving")
    with tracking.start_run("study") as parent:
        study = run_study(tmp_path, train, cfg, {"x": 0.2}, enqueue=[{"x": 0.9}], epochs=12)
        chosen = tuning.log_study(study)
    fast = study.trials[1]
    assert fast.intermediate_values[2] > study.trials[0].intermediate_values[2]  # ahead early
    assert fast.state == TrialState.COMPLETE and len(fast.intermediate_values) == 12
    assert chosen.number == 0 and chosen.defaults_won
    assert MlflowClient(tracking_uri).get_run(parent).data.tags["tuning.decision"] == "defaults"


def test_ties_within_the_standard_error_keep_the_defaults(tmp_path, tracking_uri):
    # Every configuration is 80 % accurate; which photos are right is noise (seeded per call).
    train = curves(lambda x: 0.80 + 0.01 * (x > 0.5), lambda x: 1.0)
    cfg = config(tmp_path, n_trials=8)
    with tracking.start_run("study") as parent:
        study = run_study(tmp_path, train, cfg, {"x": 0.2}, epochs=12)
        chosen = tuning.log_study(study)
    others = [t.value for t in study.trials[1:]]
    # Some trials score a point higher; the noise of a paired difference on 400 photos is ~3.
    assert max(others) > study.trials[0].value
    assert chosen.number == 0 and chosen.defaults_won
    assert "no trial beat them" in chosen.reason
    run = MlflowClient(tracking_uri).get_run(parent)
    assert run.data.tags["tuning.decision"] == "defaults"
    assert run.data.metrics["tuning/gain"] == 0.0
    assert run.data.params == {f"best_{k}": str(v) for k, v in {"x": 0.2}.items()}


def test_a_configuration_better_by_more_than_the_noise_beats_the_defaults(tmp_path, tracking_uri):
    train = curves(lambda x: 0.90 if x > 0.5 else 0.80, lambda x: 1.0)
    cfg = config(tmp_path, n_trials=2)
    with tracking.start_run("study") as parent:
        study = run_study(tmp_path, train, cfg, {"x": 0.2}, enqueue=[{"x": 0.7}], epochs=12)
        chosen = tuning.log_study(study)
    assert chosen.number == 1 and not chosen.defaults_won
    assert chosen.gain == pytest.approx(0.10, abs=0.03) and chosen.gain > chosen.gain_se
    run = MlflowClient(tracking_uri).get_run(parent)
    assert run.data.tags["tuning.decision"] == "trial 1"
    assert run.data.metrics["tuning/gain_se"] == pytest.approx(chosen.gain_se)
    assert float(run.data.params["best_x"]) == 0.7


def test_a_trial_still_running_when_the_time_is_up_is_pruned_but_not_the_defaults(
    tmp_path, tracking_uri
):
    budget = 4.0

    def train(params, report, trial):
        # x > 0.5 reports once, then waits until the study's time is up and reports again.
        start = trial.datetime_start.timestamp()
        for step in range(1, 4):
            if params["x"] > 0.5 and step > 1:
                time.sleep(max(0.0, start + budget + 0.2 - time.time()))
            report(step, 0.5)
        return selection.photo_score(correct_photos(0.5))

    with tracking.start_run("study"):
        slow_defaults = run_study(tmp_path / "a", train, config(tmp_path / "a", n_trials=5,
                                  timeout=budget), {"x": 0.9})  # fmt: skip
        fast_defaults = run_study(tmp_path / "b", train, config(tmp_path / "b", n_trials=5,
                                  timeout=budget), {"x": 0.2}, enqueue=[{"x": 0.9}])  # fmt: skip
    # The defaults run past the budget and complete (nothing to compare with otherwise) ...
    assert [t.state for t in slow_defaults.trials] == [TrialState.COMPLETE]
    # ... another trial is stopped at its first report after the time is up, and no new one
    # starts.
    assert [t.state for t in fast_defaults.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert sorted(fast_defaults.trials[1].intermediate_values) == [1, 2]


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, tracking_uri):
    def scores(n, params):
        if n == 1:
            raise RuntimeError("out of memory")
        return params["x"]

    with tracking.start_run("study") as parent:
        study = run_study(tmp_path, reporting(scores), config(tmp_path, n_trials=3))
    assert [t.state for t in study.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]
    failed = trial_runs(MlflowClient(tracking_uri), parent)[1]
    assert failed.data.tags["optuna.state"] == "FAIL"
    assert failed.info.status == "FAILED"


def test_rerun_continues_the_study(tmp_path, tracking_uri):
    first = reporting(lambda n, params: params["x"])
    with tracking.start_run("first"):
        run_study(tmp_path, first, config(tmp_path, n_trials=2))
    again = reporting(lambda n, params: params["x"])
    with tracking.start_run("second"):
        study = tuning.tune("s", space, again, config(tmp_path, n_trials=5), 0, NOP)
    assert len(first.calls) == 2 and len(again.calls) == 3
    assert len(study.trials) == 5
    assert [c["x"] for c in first.calls] != [c["x"] for c in again.calls[:2]]  # no replay
    with tracking.start_run("third"):
        done = reporting(lambda n, params: params["x"])
        tuning.tune("s", space, done, config(tmp_path, n_trials=5), 0, NOP)
    assert done.calls == []  # the budget is spent


NOP = optuna.pruners.NopPruner()


def test_same_seed_same_budget_gives_the_same_best_trial(tmp_path, tracking_uri):
    def peak(n, params):
        return 1.0 - (params["x"] - 0.3) ** 2

    bests = []
    for name in ("a", "b"):
        with tracking.start_run(name):
            study = tuning.tune(name, space, reporting(peak), config(tmp_path, n_trials=8), 7, NOP)
        bests.append((study.best_trial.number, study.best_params))
    assert bests[0] == bests[1]
    with tracking.start_run("other seed"):
        other = tuning.tune("c", space, reporting(peak), config(tmp_path, n_trials=8), 8, NOP)
    assert other.best_params != bests[0][1]


def test_a_trial_left_running_by_a_killed_process_is_marked_failed(tmp_path, tracking_uri):
    cfg = config(tmp_path, n_trials=2)
    study = optuna.create_study(storage=studies.storage_for(cfg), study_name="s")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    orphan.set_user_attr("host", os.uname().nodename)
    orphan.set_user_attr("pid", dead.pid)
    with tracking.start_run("study"):
        study = tuning.tune("s", space, reporting(lambda n, p: p["x"]), cfg, 0, NOP)
    # The orphan counts against the budget like any failed trial, so one more trial runs.
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]


def tag_at_once(experiment_id: str, threads: int) -> list[Exception]:
    """Mark one experiment from several threads released together; returns their errors."""
    barrier = threading.Barrier(threads)
    errors = []

    def mark():
        barrier.wait()
        try:
            tracking.mark_experiment_for_model_training(experiment_id)
        except Exception as error:  # noqa: BLE001 - collected and reported by the caller
            errors.append(error)

    workers = [threading.Thread(target=mark) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors


def test_runs_started_at_once_in_one_store_all_tag_their_experiment(tracking_uri):
    # Tuning workers start their runs at the same moment; the first writers of the experiment
    # tag race (CI saw one worker die on the tag's unique key). Ten experiments, eight threads.
    client = MlflowClient(tracking_uri)
    key, value = tracking.EXPERIMENT_KIND
    for n in range(10):
        experiment_id = client.create_experiment(f"race-{n}")
        assert tag_at_once(experiment_id, threads=8) == []
        assert client.get_experiment(experiment_id).tags[key] == value


WORKER = textwrap.dedent(
    """
    import sys, time
    from landmark import search, selection, tracking, tuning
    from landmark.config import TuneConfig

    def space(trial):
        return {"x": trial.suggest_float("x", 0.0, 1.0)}

    def train(params, report, trial):
        for step in (1, 2):
            time.sleep(0.05)
            report(step, params["x"])
        return selection.fold_score([params["x"], params["x"]])

    cfg = TuneConfig(n_trials=12, timeout=0, pruner="median", storage=sys.argv[1])
    pruner = search.pruner_for(cfg, 2, lambda step: 100)
    with tracking.start_run("worker"):
        tuning.tune("shared", space, train, cfg, 0, pruner)
    """
)


def test_two_worker_processes_share_one_study(tmp_path, tracking_uri):
    storage = tmp_path / "shared.journal"
    MlflowClient(tracking_uri).search_experiments()  # create the store's tables before the race
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(storage)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errors = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors
    assert not any("locked" in e for e in errors), errors
    study = optuna.load_study(
        study_name="shared", storage=studies.storage_for(TuneConfig(storage=str(storage)))
    )
    finished = [t for t in study.trials if t.state in tuning.FINISHED]
    assert len(finished) == 12  # each worker asks only while the study has trials left
    assert {t.user_attrs["pid"] for t in study.trials} == {w.pid for w in workers}
    assert all(t.state != TrialState.FAIL for t in study.trials)


FAST = {"epochs": 2, "batch_size": 8, "num_workers": 0}


def metric_history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_train_scratch_with_the_default_study_ships_the_chosen_trial(
    data_cfg, tracking_uri, monkeypatch
):
    # The default study settings (ScratchTuneConfig()) on tiny data: at least 6 trials run,
    # and the final model is the chosen trial itself (its weights, not a retraining).
    trained_in = []  # the run of every `fit`
    fit = training.fit

    def recording_fit(*args, **kwargs):
        trained_in.append(mlflow.active_run().info.run_id)
        return fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)
    result = steps.train_scratch(
        data_cfg,
        ScratchConfig(image_size=48, width=16, depth=3, blocks=1),  # a point of the space
        ScratchTrainConfig(**{**FAST, "epochs": 4, "batch_size": 64}),
        ScratchTuneConfig(),
    )
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("Default").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`landmark.step` = 'train_scratch'")
    runs = trial_runs(client, parent.info.run_id)
    assert len(runs) >= 6 and len(runs) == ScratchTuneConfig().n_trials
    assert parent.info.run_id not in trained_in  # nothing trained after the study
    assert sorted(trained_in) == sorted(r.info.run_id for r in runs.values())
    summary = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/tuning/summary.json")
    chosen = runs[summary["chosen"]]
    for key in ("train/loss", "val/loss", "val/acc"):  # the chosen trial's epochs, as logged
        history = metric_history(client, parent.info.run_id, key)
        assert history == metric_history(client, chosen.info.run_id, key)
    assert "test/top1" in parent.data.metrics and "test/top1" not in runs[0].data.metrics
    model = tracking.load_pyfunc(result.model_uri).unwrap_python_model()
    trained = model.predictor.metadata.train_config  # what the final model trained with
    assert trained["lr"] == pytest.approx(float(chosen.data.params["lr"]))
    assert parent.data.params["lr"] == str(ScratchTrainConfig.lr)  # the untuned default
    # The chosen trial's score is the final model's validation accuracy: the same training.
    assert parent.data.metrics["tuning/chosen_score"] == pytest.approx(
        parent.data.metrics["best_val_acc"]
    )
    # Complete trials keep their weights, pruned ones nothing.
    kept = {
        p.name.split("-")[1]
        for p in (Path(data_cfg.cache_dir) / "checkpoints" / "trials").iterdir()
    }
    complete = {str(n) for n, r in runs.items() if r.data.tags["optuna.state"] == "COMPLETE"}
    assert kept == complete


def test_train_transfer_tunes_the_number_of_trained_stages(data_cfg, tracking_uri, monkeypatch):
    trained = {}  # run id -> (stages the trained module has, whether all of them train)
    fit = training.fit

    def recording_fit(net, *args, **kwargs):
        trains = all(p.requires_grad for p in net.stages.parameters())
        trained[mlflow.active_run().info.run_id] = (len(net.stages), trains)
        return fit(net, *args, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)
    steps.train_transfer(
        data_cfg,
        TransferConfig(trainable_blocks=2, views=1),
        TrainConfig(**{**FAST, "batch_size": 32}),  # a point of the search space
        TuneConfig(n_trials=4, folds=2, timeout=0, pruner="none"),
    )
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("Default").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`landmark.step` = 'train_transfer'")
    runs = trial_runs(client, parent.info.run_id)
    assert runs[0].data.params["trainable_blocks"] == "2"  # the defaults come first
    assert len({r.data.params["trainable_blocks"] for r in runs.values()}) >= 2
    for run in runs.values():  # each trial trained as many stages as it chose
        assert trained[run.info.run_id] == (int(run.data.params["trainable_blocks"]), True)
    summary = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/tuning/summary.json")
    best = runs[summary["chosen"]].data.params["trainable_blocks"]
    assert parent.data.params["best_trainable_blocks"] == best
    assert trained[parent.info.run_id] == (int(best), True)  # and so does the final model


def test_k_fold_scores_match_a_hand_computation(data_cfg, tracking_uri, monkeypatch):
    final_rows = []  # photos the final model trained on (the step's own run, not a trial's)
    fit = training.fit

    def recording_fit(net, train_loader, *args, **kwargs):
        run = mlflow.active_run()  # none for the hand computation below
        if run is not None and run.info.run_name == "train_transfer":
            final_rows.append(len(train_loader.dataset))
        return fit(net, train_loader, *args, **kwargs)

    monkeypatch.setattr(training, "fit", recording_fit)
    cfg = TransferConfig(trainable_blocks=0, views=1)
    # A point of the search space; fp32, so that the hand evaluation below validates alike.
    train_cfg = TrainConfig(**{**FAST, "batch_size": 32, "precision": "fp32"})
    tune_cfg = TuneConfig(n_trials=1, folds=3, timeout=0, pruner="none")
    steps.train_transfer(data_cfg, cfg, train_cfg, tune_cfg)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("Default").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`landmark.step` = 'train_transfer'")
    trial = trial_runs(client, parent.info.run_id)[0]
    logged = [v for _, v in metric_history(client, trial.info.run_id, "cv/acc")]

    # By hand: three stratified folds of the training split, each validated exactly once.
    dataset = data.load_data(data_cfg)
    split = data.stratified_split(dataset.train.labels, data_cfg.val_fraction, data_cfg.seed)
    folds = tuning.splits_for(tune_cfg, split, dataset.train.labels, data_cfg.seed)
    assert np.array_equal(np.sort(np.concatenate([f.val for f in folds])), split.train)
    for fold in folds:  # stratified: each class split as evenly as it can be
        assert not set(fold.train) & set(fold.val)
    counts = np.array([np.bincount(dataset.train.labels[f.val], minlength=3) for f in folds])
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()
    build = transfer.Builder(
        data_cfg, cfg, train_cfg, dataset, split, training.resolve_device("cpu")
    )
    accuracies = []
    for f, fold in enumerate(folds):
        _, net, train_loader, val_loader = build(cfg, train_cfg, fold)
        seed, folder = data.derive_seed(data_cfg.seed, f), Path(data_cfg.cache_dir) / f"fold{f}"
        training.fit(net, train_loader, val_loader, train_cfg, seed, folder, torch.device("cpu"))
        logits, labels = training.predict(net, val_loader, torch.device("cpu"))
        assert np.array_equal(labels.numpy(), dataset.train.labels[fold.val])
        accuracies.append(float((logits.argmax(1) == labels).float().mean()))
    assert logged == pytest.approx(accuracies)
    mean = sum(accuracies) / 3
    se = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / 2) / math.sqrt(3)
    table = client.download_artifacts(
        parent.info.run_id, "tuning/trials.csv", str(data_cfg.cache_dir)
    )
    (row,) = csv.DictReader(Path(table).read_text().splitlines())
    assert float(row["score"]) == pytest.approx(mean) and float(row["score_se"]) == pytest.approx(
        se
    )
    # The shipped model trains on the whole training split; its validation score sits next to
    # the folds' estimate.
    assert final_rows[0] == len(split.train)  # (then the open-set proxies, on fewer classes)
    metrics = parent.data.metrics
    assert metrics["tuning/chosen_score"] == pytest.approx(mean)
    assert "tuning/final_val_acc" in metrics and "test/top1" in metrics


def test_on_one_split_the_final_transfer_model_repeats_the_chosen_trial(data_cfg, tracking_uri):
    # folds 1: trials train exactly as the final model does (the first trial is the defaults),
    # so the final training repeats the chosen trial epoch by epoch.
    steps.train_transfer(
        data_cfg,
        TransferConfig(trainable_blocks=1, views=1),
        TrainConfig(**{**FAST, "batch_size": 32}),
        TuneConfig(n_trials=3, folds=1, timeout=0, pruner="none"),
    )
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("Default").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`landmark.step` = 'train_transfer'")
    summary = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/tuning/summary.json")
    chosen = trial_runs(client, parent.info.run_id)[summary["chosen"]]
    for key in ("train/loss", "val/loss", "val/acc"):
        history = metric_history(client, parent.info.run_id, key)
        assert history == metric_history(client, chosen.info.run_id, key)
    metrics = parent.data.metrics
    assert len(metric_history(client, parent.info.run_id, "val/acc")) == FAST["epochs"]
    assert metrics["best_val_acc"] == pytest.approx(metrics["tuning/chosen_score"])
    params = parent.data.params
    best = {k.removeprefix("best_"): v for k, v in params.items() if k.startswith("best_")}
    assert best == chosen.data.params


def test_a_storage_url_password_is_masked_in_the_params_we_log(tracking_uri):
    """Workers on a database give its password in PGPASSWORD; one in the URL never lands in
    MLflow (both spellings libpq accepts)."""
    urls = {
        "postgresql://landmark:s3cret@db:5432/optuna": "postgresql://landmark:***@db:5432/optuna",
        "postgresql+psycopg://db/optuna?user=landmark&password=s3cret&sslmode=require":
            "postgresql+psycopg://db/optuna?user=landmark&password=***&sslmode=require",
        "postgresql://landmark@db:5432/optuna": "postgresql://landmark@db:5432/optuna",
    }  # fmt: skip
    for url, masked in urls.items():
        assert tracking.mask_passwords(url) == masked
        assert tracking.has_password(url) == ("s3cret" in url)
    with tracking.start_run("masked") as run_id:
        tracking.log_params({f"url{i}": url for i, url in enumerate(urls)})
    logged = MlflowClient(tracking_uri).get_run(run_id).data.params
    assert sorted(logged.values()) == sorted(urls.values())
