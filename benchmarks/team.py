"""The team stack's costs, side by side in one run on this machine (`landmark team up` in a
temporary folder, stopped at the end):

1. logging overhead: the same `train_transfer` (n_trials 0) against a local sqlite store and
   against the team's tracking server: wall time, and the time spent in MLflow calls (every
   call of `landmark.tracking`, the one module that talks to MLflow);
2. tuning workers: `train_scratch` trials finished in a time window by 1 and by 3 worker
   processes on one PostgreSQL study, as trials per 10 minutes;
3. tagging: photos/s for `--small` photos (448 px, from the test split) with the local engine,
   Spark local[2] and the stack's Spark standalone cluster (two 1-core workers), the model
   fetched from the team's registry (the version part 1 registered: run them together).

Several workers on one machine share its cores: each gets OMP_NUM_THREADS = cores / workers.

    .venv/bin/python benchmarks/team.py --data ../shared/datasets/landmarks-35
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna

from landmark import data, steps, team, tracking
from landmark.config import (
    DataConfig,
    OpenSetConfig,
    PromoteConfig,
    TagConfig,
    TeamConfig,
    TrainConfig,
    TransferConfig,
    TuneConfig,
    UserConfig,
)
from landmark.runtime import tagging

sys.path.insert(0, str(Path(__file__).parent))
from tagging import make_photos  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class MlflowTimer:
    """Wall time inside `landmark.tracking`'s functions (outermost calls only)."""

    def __init__(self) -> None:
        self.seconds, self.depth = 0.0, 0

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if not self.depth:
                    self.seconds += time.perf_counter() - start

        return timed

    @contextlib.contextmanager
    def installed(self):
        """Time every plain function of `landmark.tracking` (its run and access context
        managers are left alone: the time inside them is the step's work)."""
        skip = {"start_run", "needs", "user", "has_password", "mask_passwords"}
        originals = {
            name: fn for name, fn in vars(tracking).items()
            if inspect.isfunction(fn) and fn.__module__ == tracking.__name__
            and not name.startswith("_") and name not in skip
        }  # fmt: skip
        for name, fn in originals.items():
            setattr(tracking, name, self.wrap(fn))
        try:
            yield self
        finally:
            for name, fn in originals.items():
                setattr(tracking, name, fn)


@contextlib.contextmanager
def store(uri: str, login: tuple[str, str] | None = None):
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    before = {k: os.environ.get(k) for k in keys}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if login:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = login
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        for k, v in before.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        mlflow.set_tracking_uri(None)


def logging_overhead(data_cfg: DataConfig, stores: dict, epochs: int) -> None:
    print(f"1. train_transfer (n_trials 0, {epochs} epoch(s)), same data, one after the other:")
    figures = {}
    for name, (uri, login) in stores.items():
        timer = MlflowTimer()
        with store(uri, login), timer.installed():
            os.environ["MLFLOW_EXPERIMENT_NAME"] = "bench-logging"
            start = time.perf_counter()
            steps.train_transfer(
                data_cfg, TransferConfig(), TrainConfig(epochs=epochs), TuneConfig(n_trials=0),
                OpenSetConfig(),
            )  # fmt: skip
            wall = time.perf_counter() - start
        figures[name] = (wall, timer.seconds)
        print(f"   {name:12s} wall {wall:7.1f} s, in MLflow calls {timer.seconds:6.1f} s")
    (local_wall, local_mlflow), (team_wall, team_mlflow) = figures.values()
    print(f"   team / sqlite: wall x{team_wall / local_wall:.2f}, "
          f"MLflow calls x{team_mlflow / max(local_mlflow, 1e-9):.1f}")  # fmt: skip


def tuning_workers(stack: team.Stack, login, data_root: str, minutes: float, tmp: Path) -> None:
    print(f"2. train_scratch trials finished in {minutes:g} min on one PostgreSQL study:")
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": stack.tracking_uri,
        "MLFLOW_TRACKING_USERNAME": login[0], "MLFLOW_TRACKING_PASSWORD": login[1],
        "MLFLOW_EXPERIMENT_NAME": "bench-tuning", "PGPASSWORD": stack.secret("postgres-password"),
    }  # fmt: skip
    storage = stack.database_url("optuna")
    url = stack.database_url("optuna", password=True)
    rates = {}
    for count in (1, 3):
        name = f"bench-{count}-workers-{int(time.time())}"
        flags = [
            "--data", data_root, "--cache-dir", str(tmp / "cache"), "--image-size", "64",
            "--epochs", "3", "--n-trials", "1000", "--timeout", str(minutes * 60),
            "--pruner", "none", "--held-out", "0", "--num-workers", "0",
            "--study-name", name, "--storage", storage,
        ]  # fmt: skip
        # Each worker's torch threads: the machine's cores shared (oversubscribed OpenMP
        # threads spin against each other).
        threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // count))}
        workers = [
            subprocess.Popen(
                [sys.executable, str(REPO / "pipelines" / "train_scratch.py"), *flags],
                env={**env, **threads},
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            for _ in range(count)
        ]
        time.sleep(minutes * 60 + 60)  # the window starts at the first trial (start-up ~30 s)
        for worker in workers:  # the window is over: the final models are not measured
            worker.kill()
            worker.wait()
        study = optuna.load_study(study_name=name, storage=url)
        begun = min(t.datetime_start.timestamp() for t in study.trials)  # start-up left out
        done = [t for t in study.trials if t.state.name == "COMPLETE"
                and t.datetime_complete.timestamp() <= begun + minutes * 60]  # fmt: skip
        rates[count] = len(done) * 10 / minutes
        print(f"   {count} worker(s), {threads['OMP_NUM_THREADS']} thread(s) each: {len(done)} "
              f"trials, {rates[count]:.1f} per 10 min")  # fmt: skip
    print(f"   3 workers / 1 worker: x{rates[3] / max(rates[1], 1e-9):.2f} "
          f"(one machine: {os.cpu_count()} cores shared)")  # fmt: skip


def tagging_engines(stack: team.Stack, login, data_root: str, count: int, tmp: Path) -> None:
    print(f"3. tagging {count} photos of 448 px (report only), the team's champion:")
    sources = sorted(Path(data_root).glob("test/*/*.jpg"))
    photos = make_photos(sources, tmp / "photos", count, 448)
    engines = {
        "local": {"engine": "local"},
        "Spark local[2]": {"engine": "spark", "spark_master": "local[2]"},
        "Spark cluster": {"engine": "spark", "spark_master": stack.spark_master},
    }
    with store(stack.tracking_uri, login):
        for name, flags in engines.items():
            report = tmp / f"{name.replace(' ', '-')}.jsonl"
            start = time.perf_counter()
            counts = tagging.tag([photos[0].parent], TagConfig(report=str(report), plan=True,
                                                              **flags))  # fmt: skip
            seconds = time.perf_counter() - start
            print(f"   {name:15s} {count / seconds:6.1f} photos/s ({seconds:.1f} s, {counts})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data set folder")
    parser.add_argument("--epochs", type=int, default=1, help="train_transfer epochs (part 1)")
    parser.add_argument("--minutes", type=float, default=10, help="tuning window (part 2)")
    parser.add_argument("--small", type=int, default=1000, help="photos to tag (part 3)")
    parser.add_argument("--parts", default="123", help="which parts to run")
    args = parser.parse_args()
    args.data = str(Path(args.data).resolve())  # part 1 runs in a temporary folder
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="landmark-bench-"))
    tmp.chmod(0o755)  # PostgreSQL's own user reaches its folder
    cfg = TeamConfig(dir=str(tmp / "stack"), spark_worker_memory="1g")
    stack = team.up(cfg)
    try:
        password = team.add_user(cfg.dir, "bench", UserConfig()).read_text()
        for experiment in ("bench-logging", "bench-tuning"):
            team.add_user(cfg.dir, "bench", UserConfig(experiment=experiment))
        login = ("bench", password)
        data_cfg = DataConfig(data=args.data, cache_dir=str(tmp / "cache"))
        data.load_data(data_cfg)  # the decode cache, built once before anything is timed
        if "1" in args.parts:
            stores = {"sqlite": (f"sqlite:///{tmp / 'mlflow.db'}", None),
                      "team server": (stack.tracking_uri, login)}  # fmt: skip
            os.chdir(tmp)  # the sqlite store's ./mlruns
            logging_overhead(data_cfg, stores, args.epochs)
        if "2" in args.parts:
            tuning_workers(stack, login, args.data, args.minutes, tmp)
        if "3" in args.parts:
            with store(stack.tracking_uri, login):
                os.environ["MLFLOW_EXPERIMENT_NAME"] = "bench-logging"
                steps.promote(PromoteConfig())
            tagging_engines(stack, login, args.data, args.small, tmp)
    finally:
        team.down(cfg.dir)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
