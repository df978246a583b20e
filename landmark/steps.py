"""The body of each MLproject entry point, as a function of its config (testable without a CLI).

Each step runs inside its own MLflow run (nested when called from `main`).
"""

from __future__ import annotations

import csv
import io
import logging

from landmark import data, plots, tracking
from landmark.config import DataConfig, to_dict

log = logging.getLogger(__name__)


def prepare(cfg: DataConfig) -> data.LandmarkData:
    """Fetch, validate and cache the data set, and log its summary and pictures to MLflow."""
    with tracking.start_run("prepare"):
        tracking.log_params(to_dict(cfg))
        dataset = data.load_data(cfg)
        summary = data.summarize(dataset, cfg.val_fraction, cfg.seed)
        tracking.log_dataset(cfg.data, dataset.root.name, dataset.fingerprint)
        tracking.log_params(
            {"fingerprint": dataset.fingerprint, "num_classes": dataset.num_classes}
        )
        tracking.log_metrics(
            {
                **{f"photos_{split}": n for split, n in summary["counts"].items()},
                "bad_files": summary["num_bad_files"],
                "train_test_duplicates": summary["num_train_test_duplicates"],
            }
        )
        tracking.log_dict(summary, "data/summary.json")
        tracking.log_text(_bad_files_csv(dataset.bad_files), "data/bad_files.csv")
        if (dataset.root / data.LOCATIONS_FILE).is_file():
            tracking.log_artifact(dataset.root / data.LOCATIONS_FILE, "data")
        tracking.log_figure(plots.class_distribution(summary), "plots/class_distribution.png")
        tracking.log_figure(plots.sample_grid(dataset, seed=cfg.seed), "plots/samples.png")
        _log_report(summary)
    return dataset


def _bad_files_csv(bad_files: list[data.BadFile]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "reason"])
    writer.writerows([bad.path, bad.reason] for bad in bad_files)
    return out.getvalue()


def _log_report(summary: dict) -> None:
    counts = summary["counts"]
    log.info(
        "Data set %s: %d classes, %d train / %d val / %d test photos, fingerprint %s",
        summary["root"],
        summary["num_classes"],
        counts["train"],
        counts["val"],
        counts["test"],
        summary["fingerprint"][:12],
    )
    for bad in summary["bad_files"]:
        log.warning("Excluded %s: %s", bad["path"], bad["reason"])
    for pair in summary["train_test_duplicates"]:
        log.warning("Train/test leak: %s is identical to %s", pair["test"], pair["train"])


def main(cfg: DataConfig) -> None:
    """The whole workflow under one parent run; each step is a nested run.

    Today: `prepare`. Training, tuning and promotion steps join here as they land.
    """
    with tracking.start_run("main"):
        tracking.log_params(to_dict(cfg))
        prepare(cfg)
