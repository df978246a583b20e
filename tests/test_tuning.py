"""Optuna studies: nested MLflow runs, pruning, failures, resume, seeding and shared storage.

The first tests drive `tuning.tune` with a stand-in training function that reports chosen
validation accuracies through the real epoch callback (real Optuna, real MLflow store); the last
ones tune the real entry points on tiny synthetic photos.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from landmark import steps, tracking, training, tuning
from landmark.config import (
    ScratchConfig,
    ScratchTrainConfig,
    TrainConfig,
    TransferConfig,
    TuneConfig,
)

REPO = Path(__file__).resolve().parents[1]


def space(trial: optuna.Trial) -> dict:
    return {"x": trial.suggest_float("x", 0.0, 1.0)}


def reporting(scores, epochs: int = 3):
    """A train function whose n-th call reports `scores(n, params)` every epoch."""
    calls = []

    def train(params: dict, on_epoch_end) -> training.FitResult:
        calls.append(params)
        value = scores(len(calls) - 1, params)
        for epoch in range(epochs):
            on_epoch_end(epoch, {"val/acc": value, "val/loss": 1.0 - value})
        return training.FitResult(best_epoch=epochs - 1, best_val_acc=value)

    train.calls = calls
    return train


def config(tmp_path: Path, **overrides) -> TuneConfig:
    base = {"timeout": 0, "trial_epochs": 3, "pruner": "none"}
    return TuneConfig(**{**base, "storage": str(tmp_path / "study.journal"), **overrides})


def trial_runs(client: MlflowClient, parent_id: str) -> dict[int, object]:
    experiment = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {int(r.data.tags["optuna.trial"]): r for r in runs}


def test_trials_are_nested_runs_and_the_first_is_the_defaults(tmp_path, tracking_uri):
    train = reporting(lambda n, params: params["x"])
    with tracking.start_run("study") as parent:
        study = tuning.tune("s", space, train, config(tmp_path, n_trials=4), 0, {"x": 0.25})
        info = tuning.log_study(study)
    client = MlflowClient(tracking_uri)
    runs = trial_runs(client, parent)
    assert sorted(runs) == [0, 1, 2, 3]
    assert train.calls[0] == {"x": 0.25}
    assert float(runs[0].data.params["x"]) == 0.25
    for number, run in runs.items():
        assert run.data.tags["optuna.state"] == "COMPLETE"
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [m.step for m in history] == [0, 1, 2]
        assert history[-1].value == pytest.approx(train.calls[number]["x"])
    best = max(train.calls, key=lambda p: p["x"])
    assert info["best_params"] == best and info["default_value"] == 0.25
    parent_run = client.get_run(parent)
    assert float(parent_run.data.params["best_x"]) == pytest.approx(best["x"])
    assert parent_run.data.metrics["tuning/trials_complete"] == 4
    artifacts = {a.path for a in client.list_artifacts(parent, "plots")}
    assert {"plots/optimization_history.png", "plots/param_importances.png"} <= artifacts
    table = client.download_artifacts(parent, "tuning/trials.csv", str(tmp_path))
    assert len(Path(table).read_text().splitlines()) == 1 + 4


def test_pruner_stops_a_trial_that_reports_badly(tmp_path, tracking_uri):
    train = reporting(lambda n, params: 0.1 if n == 3 else 0.9, epochs=4)
    cfg = config(tmp_path, n_trials=4, pruner="median", trial_epochs=4)
    with tracking.start_run("study") as parent:
        study = tuning.tune("s", space, train, cfg, 0)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    pruned = trial_runs(MlflowClient(tracking_uri), parent)[3]
    assert pruned.data.tags["optuna.state"] == "PRUNED"
    assert pruned.info.status == "FINISHED"  # pruning is a normal end, not a failed run
    assert len(study.trials[3].intermediate_values) < 4


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, tracking_uri):
    def scores(n, params):
        if n == 1:
            raise RuntimeError("out of memory")
        return params["x"]

    with tracking.start_run("study") as parent:
        study = tuning.tune("s", space, reporting(scores), config(tmp_path, n_trials=3), 0)
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
        tuning.tune("s", space, first, config(tmp_path, n_trials=2), 0)
    again = reporting(lambda n, params: params["x"])
    with tracking.start_run("second"):
        study = tuning.tune("s", space, again, config(tmp_path, n_trials=5), 0)
    assert len(first.calls) == 2 and len(again.calls) == 3
    assert len(study.trials) == 5
    assert [c["x"] for c in first.calls] != [c["x"] for c in again.calls[:2]]  # no replay
    with tracking.start_run("third"):
        done = reporting(lambda n, params: params["x"])
        tuning.tune("s", space, done, config(tmp_path, n_trials=5), 0)
    assert done.calls == []  # the budget is spent


def test_same_seed_same_budget_gives_the_same_best_trial(tmp_path, tracking_uri):
    def peak(n, params):
        return 1.0 - (params["x"] - 0.3) ** 2

    bests = []
    for name in ("a", "b"):
        with tracking.start_run(name):
            study = tuning.tune(name, space, reporting(peak), config(tmp_path, n_trials=8), 7)
        bests.append((study.best_trial.number, study.best_params))
    assert bests[0] == bests[1]
    with tracking.start_run("other seed"):
        other = tuning.tune("c", space, reporting(peak), config(tmp_path, n_trials=8), 8)
    assert other.best_params != bests[0][1]


def test_a_trial_left_running_by_a_killed_process_is_marked_failed(tmp_path, tracking_uri):
    cfg = config(tmp_path, n_trials=2)
    study = optuna.create_study(storage=tuning.storage_for(cfg), study_name="s")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    orphan.set_user_attr("host", os.uname().nodename)
    orphan.set_user_attr("pid", dead.pid)
    with tracking.start_run("study"):
        study = tuning.tune("s", space, reporting(lambda n, p: p["x"]), cfg, 0)
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
    from landmark import tracking, training, tuning
    from landmark.config import TuneConfig

    def space(trial):
        return {"x": trial.suggest_float("x", 0.0, 1.0)}

    def train(params, on_epoch_end):
        for epoch in range(2):
            time.sleep(0.05)
            on_epoch_end(epoch, {"val/acc": params["x"]})
        return training.FitResult(1, params["x"])

    cfg = TuneConfig(n_trials=12, timeout=0, pruner="median", storage=sys.argv[1])
    with tracking.start_run("worker"):
        tuning.tune("shared", space, train, cfg, seed=0)
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
        study_name="shared", storage=tuning.storage_for(TuneConfig(storage=str(storage)))
    )
    finished = [t for t in study.trials if t.state in tuning.FINISHED]
    assert 12 <= len(finished) <= 13  # each worker stops once the study has its 12
    assert {t.user_attrs["pid"] for t in study.trials} == {w.pid for w in workers}
    assert all(t.state != TrialState.FAIL for t in study.trials)


FAST = {"epochs": 2, "batch_size": 8, "num_workers": 0}


def test_train_scratch_tunes_then_trains_the_best(data_cfg, tracking_uri):
    result = steps.train_scratch(
        data_cfg,
        ScratchConfig(image_size=48, width=8, depth=2, blocks=1),
        ScratchTrainConfig(**FAST),
        TuneConfig(n_trials=3, trial_epochs=2, timeout=0, pruner="none"),
    )
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("Default").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`landmark.step` = 'train_scratch'")
    runs = trial_runs(client, parent.info.run_id)
    assert sorted(runs) == [0, 1, 2]
    assert parent.data.metrics["tuning/trials_complete"] == 3
    assert "test/top1" in parent.data.metrics and "test/top1" not in runs[0].data.metrics
    model = tracking.load_pyfunc(result.model_uri).unwrap_python_model()
    trained = model.predictor.metadata.train_config  # what the final model trained with
    assert trained["lr"] == pytest.approx(float(parent.data.params["best_lr"]))
    assert trained["epochs"] == 2  # the final model's epochs, not the trials'
    assert parent.data.params["lr"] == str(ScratchTrainConfig.lr)  # the untuned default


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
        TuneConfig(n_trials=4, trial_epochs=1, timeout=0, pruner="none"),
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
    best = runs[summary["best_number"]].data.params["trainable_blocks"]
    assert parent.data.params["best_trainable_blocks"] == best
    assert trained[parent.info.run_id] == (int(best), True)  # and so does the final model


def test_the_final_model_repeats_the_best_trial(data_cfg, tracking_uri):
    # trial_epochs 0 (the default): trials train exactly as the final model does, so the final
    # training repeats the best trial epoch by epoch, and the first trial is the defaults.
    steps.train_transfer(
        data_cfg,
        TransferConfig(trainable_blocks=1, views=1),
        TrainConfig(**{**FAST, "batch_size": 32}),
        TuneConfig(n_trials=3, timeout=0, pruner="none"),
    )
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("Default").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`landmark.step` = 'train_transfer'")
    summary = mlflow.artifacts.load_dict(f"runs:/{parent.info.run_id}/tuning/summary.json")
    best = trial_runs(client, parent.info.run_id)[summary["best_number"]]

    def history(run_id, key):
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    for key in ("train/loss", "val/loss", "val/acc"):
        assert history(parent.info.run_id, key) == history(best.info.run_id, key)
    metrics = parent.data.metrics
    assert len(history(parent.info.run_id, "val/acc")) == FAST["epochs"]
    assert metrics["best_val_acc"] == pytest.approx(metrics["tuning/best_val_acc"])
    runs = trial_runs(client, parent.info.run_id)
    accs = {n: max(v for _, v in history(r.info.run_id, "val/acc")) for n, r in runs.items()}
    assert metrics["tuning/best_val_acc"] == pytest.approx(max(accs.values()))
    assert accs[summary["best_number"]] == max(accs.values())
    params = parent.data.params
    chosen = {k.removeprefix("best_"): v for k, v in params.items() if k.startswith("best_")}
    assert chosen == best.data.params
