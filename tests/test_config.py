"""Configs fail at the door: every choice and range is checked when a config is built, and the
entry points refuse a typo before any data is loaded or any run is started."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from landmark import cli, models, search, training
from landmark.config import (
    ENTRY_POINTS,
    SCRATCH_ARCH,
    TRANSFER_ARCHS,
    TRANSFER_STAGES,
    DataConfig,
    PromoteConfig,
    ScratchConfig,
    TagConfig,
    TrainConfig,
    TransferConfig,
    TuneConfig,
)

REPO = Path(__file__).resolve().parents[1]

# (config, field, a typo, words the message must contain)
TYPOS = [
    (TrainConfig, "optimizer", "adamm", "adamw, sgd"),
    (TrainConfig, "schedule", "cosine_annealing", "onecycle, cosine"),
    (TrainConfig, "precision", "fp8", "auto, bf16, fp32"),
    (TrainConfig, "device", "gpu", "auto, cpu, cuda or cuda:N"),
    (TransferConfig, "mode", "finetuned", "finetune, frozen"),
    (TransferConfig, "arch", SCRATCH_ARCH, "efficientnet_lite0"),  # not a transfer model
    (ScratchConfig, "norm", "layer", "batch, group, none"),
    (TuneConfig, "pruner", "asha", "hyperband, median, none"),
    (TransferConfig, "weights", "IMAGENET", "empty, DEFAULT or IMAGENET1K_V<n>"),
    (PromoteConfig, "metric", "test/top-1", "test/top1, test/top3"),
]


@pytest.mark.parametrize(("cls", "name", "typo", "valid"), TYPOS)
def test_a_bad_choice_names_the_field_and_the_valid_values(cls, name, typo, valid):
    with pytest.raises(ValueError) as error:
        cls(**{name: typo})
    assert f"{cls.__name__}.{name}" in str(error.value) and valid in str(error.value)


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (DataConfig, {"val_fraction": 1.0}),
        (DataConfig, {"sha256": "abc"}),
        (TrainConfig, {"augment": 1.5}),
        (TrainConfig, {"epochs": 0}),
        (TrainConfig, {"label_smoothing": 1.0}),
        (TransferConfig, {"views": -1}),
        (TuneConfig, {"n_trials": -3}),
        (TagConfig, {"threshold": 2.0}),
    ],
)
def test_values_out_of_range_are_refused(cls, values):
    (name,) = values
    with pytest.raises(ValueError, match=f"{cls.__name__}.{name}"):
        cls(**values)


def test_defaults_and_the_edges_of_ranges_are_accepted():
    for classes in ENTRY_POINTS.values():
        for cls in classes:
            cls()
    TrainConfig(augment=0.0, lr=0.0, device="cuda:1")
    TagConfig(threshold=None)
    assert dataclasses.replace(TrainConfig(), augment=1.0).augment == 1.0
    with pytest.raises(ValueError, match="augment"):
        dataclasses.replace(TrainConfig(), augment=-0.1)  # replace checks too


def choices(cls: type, name: str) -> set[str]:
    return set(cls.__dataclass_fields__[name].metadata["choices"])


@pytest.mark.parametrize("arch", TRANSFER_ARCHS)
def test_every_allowed_transfer_architecture_builds_with_the_stages_the_config_counts(arch):
    offline = {"pretrained": False} if arch.startswith("efficientnet_lite") else {"weights": None}
    model = models.build_model(arch, 3, dropout=0.2, head_size=0, **offline)
    assert len(model.stages()) == TRANSFER_STAGES[arch]
    TransferConfig(arch=arch, trainable_blocks=TRANSFER_STAGES[arch])  # all of them: allowed
    with pytest.raises(ValueError, match=f"more than the {TRANSFER_STAGES[arch]} stages"):
        TransferConfig(arch=arch, trainable_blocks=TRANSFER_STAGES[arch] + 1)


def test_the_code_offers_exactly_the_choices_the_configs_allow():
    assert set(models.ARCHITECTURES) == {SCRATCH_ARCH} | choices(TransferConfig, "arch")
    assert set(models.NORMS) == choices(ScratchConfig, "norm")
    assert set(training.OPTIMIZERS) == choices(TrainConfig, "optimizer")
    assert set(training.SCHEDULES) == choices(TrainConfig, "schedule")
    assert set(search.PRUNERS) == choices(TuneConfig, "pruner")


@pytest.mark.parametrize(("cls", "name", "typo", "valid"), TYPOS)
def test_the_entry_point_parser_refuses_the_typo(cls, name, typo, valid, capsys):
    entry = {ScratchConfig: "train_scratch", PromoteConfig: "promote"}.get(cls, "train_transfer")
    with pytest.raises(SystemExit) as stop:
        cli.parse_entry_point(entry, [f"--{name.replace('_', '-')}", typo])
    assert stop.value.code == 2
    assert typo in capsys.readouterr().err


def test_the_entry_point_parser_refuses_a_value_out_of_range(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.parse_entry_point("train_transfer", ["--augment", "1.5"])
    assert stop.value.code == 2
    assert "TrainConfig.augment: 1.5 must be in [0, 1]" in capsys.readouterr().err


def test_a_typo_through_mlflow_run_fails_before_any_data_is_loaded(dataset_dir, tmp_path):
    """`mlflow run . -e train_transfer -P optimizer=adamm`: MLflow creates its run, our command
    refuses the value before loading data (no cache) and before starting any run of its own."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cache = tmp_path / "cache"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = [
        str(bin_dir / "mlflow"), "run", str(REPO), "-e", "train_transfer", "--env-manager",
        "local", "--experiment-name", "typo", "-P", f"data={dataset_dir}",
        "-P", f"cache_dir={cache}", "-P", "optimizer=adamm",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "invalid choice: 'adamm' (choose from 'adamw', 'sgd')" in result.stderr
    assert not cache.exists()  # nothing fetched, decoded or cached
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("typo").experiment_id])
    assert run.info.status == "FAILED"  # MLflow's own run: no step of ours started in it
    assert "landmark.step" not in run.data.tags and not run.data.metrics


def test_the_pipeline_script_refuses_a_typo_without_touching_the_store(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    script = REPO / "pipelines" / "train_scratch.py"
    result = subprocess.run(
        [sys.executable, str(script), "--norm", "layer", "--cache-dir", str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "invalid choice: 'layer' (choose from 'batch', 'group', 'none')" in result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "cache").exists()
