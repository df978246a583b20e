"""Tuned vs untuned `train_transfer`, side by side on this machine, for several seeds.

For each seed (the data seed: split, cached views, initialisation), the defaults untuned
(`n_trials=0`) and tuned with the default study, both without the open-set evaluation (it does
not change the classifier). Prints one row per run as it ends (seed, tuned or not, the final
model's validation accuracy, test top-1 / top-3, minutes) and the means.

    MLFLOW_TRACKING_URI=sqlite:////tmp/bench/mlflow.db \
        .venv/bin/python benchmarks/tuning.py --data ../shared/datasets/landmarks-35
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid

import mlflow

from landmark import cli, steps
from landmark.config import DataConfig, OpenSetConfig, TrainConfig, TransferConfig, TuneConfig


def run(data: str, seed: int, tuned: bool) -> dict:
    start = time.perf_counter()
    tune = TuneConfig(
        study_name=f"bench-{seed}-{uuid.uuid4().hex[:6]}", n_trials=20 if tuned else 0
    )
    result = steps.train_transfer(
        DataConfig(data=data, seed=seed), TransferConfig(), TrainConfig(), tune, OpenSetConfig(0)
    )
    row = {"seed": seed, "tuned": tuned, "minutes": (time.perf_counter() - start) / 60,
           "val": _val_acc(result.model_uri), "top1": result.metrics["test/top1"],
           "top3": result.metrics["test/top3"]}  # fmt: skip
    print(f"{row['seed']:>5} {str(row['tuned']):>6} {row['val']:7.4f} {row['top1']:7.4f} "
          f"{row['top3']:7.4f} {row['minutes']:8.1f}", flush=True)  # fmt: skip
    return row


def _val_acc(model_uri: str) -> float:
    run_id = mlflow.models.get_model_info(model_uri).run_id
    return mlflow.get_run(run_id).data.metrics["best_val_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    args = parser.parse_args()
    cli.setup_logging(logging.WARNING)
    print(f"{'seed':>5} {'tuned':>6} {'val':>7} {'top1':>7} {'top3':>7} {'minutes':>8}", flush=True)
    rows = [run(args.data, seed, tuned) for seed in args.seeds for tuned in (False, True)]
    for tuned in (False, True):
        chosen = [r for r in rows if r["tuned"] == tuned]
        means = [
            sum(r[k] for r in chosen) / len(chosen) for k in ("val", "top1", "top3", "minutes")
        ]
        print(f"{'mean':>5} {str(tuned):>6} {means[0]:7.4f} {means[1]:7.4f} {means[2]:7.4f} "
              f"{means[3]:8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
