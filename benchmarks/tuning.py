"""Tuned vs untuned `train_transfer`, side by side on this machine, for several seeds.

For each seed (the data seed: split, cached views, initialisation), the defaults untuned
(`n_trials=0`) and tuned with the default study, both without the open-set evaluation (it does
not change the classifier). Prints one row per run and the means: validation (the study's
estimate with its standard error for tuned runs), test top-1 / top-3, minutes.

    MLFLOW_TRACKING_URI=sqlite:////tmp/bench/mlflow.db \
        .venv/bin/python benchmarks/tuning.py --data ../shared/datasets/landmarks-35
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid

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
    return {"seed": seed, "tuned": tuned, "minutes": (time.perf_counter() - start) / 60,
            "top1": result.metrics["test/top1"], "top3": result.metrics["test/top3"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    args = parser.parse_args()
    cli.setup_logging(logging.WARNING)
    rows = [run(args.data, seed, tuned) for seed in args.seeds for tuned in (False, True)]
    print(f"{'seed':>5} {'tuned':>6} {'top1':>7} {'top3':>7} {'minutes':>8}")
    for row in rows:
        print(f"{row['seed']:>5} {str(row['tuned']):>6} {row['top1']:7.4f} {row['top3']:7.4f} "
              f"{row['minutes']:8.1f}")  # fmt: skip
    for tuned in (False, True):
        chosen = [r for r in rows if r["tuned"] == tuned]
        top1 = sum(r["top1"] for r in chosen) / len(chosen)
        top3 = sum(r["top3"] for r in chosen) / len(chosen)
        minutes = sum(r["minutes"] for r in chosen) / len(chosen)
        print(f"{'mean':>5} {str(tuned):>6} {top1:7.4f} {top3:7.4f} {minutes:8.1f}")


if __name__ == "__main__":
    main()
