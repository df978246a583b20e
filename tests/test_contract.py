"""Contracts between files that must agree: MLproject <-> config dataclasses, pins, README."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from landmark.config import ENTRY_POINTS, mlproject

REPO = Path(__file__).resolve().parents[1]
MLPROJECT = yaml.safe_load((REPO / "MLproject").read_text())
MLFLOW_TYPES = {"str": "string", "int": "float", "float": "float", "bool": "string"}


def test_entry_points_match():
    assert set(MLPROJECT["entry_points"]) == set(ENTRY_POINTS)
    for name in ENTRY_POINTS:
        assert (REPO / "pipelines" / f"{name}.py").is_file(), f"pipelines/{name}.py is missing"


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_mlproject_parameters_are_the_config_fields(entry_point):
    spec = MLPROJECT["entry_points"][entry_point]
    fields = [f for cls in ENTRY_POINTS[entry_point] for f in dataclasses.fields(cls)]
    assert set(spec["parameters"]) == {f.name for f in fields}
    for f in fields:
        param = spec["parameters"][f.name]
        assert param["type"] == MLFLOW_TYPES[str(f.type)], f.name
        if isinstance(f.default, bool):
            assert param["default"] == str(f.default).lower(), f.name
        elif isinstance(f.default, str):
            assert param["default"] == f.default, f.name
        else:
            assert float(param["default"]) == float(f.default), f.name
        flag = "--" + f.name.replace("_", "-")
        assert re.search(rf"{flag} \{{{f.name}\}}", spec["command"]), f"{flag} not passed"
    assert spec["command"].startswith(f"python pipelines/{entry_point}.py ")


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*-?\s*([A-Za-z0-9_.-]+)==([^\s#]+)\s*", line)
        if match:
            found[match[1].lower()] = match[2]
    return found


def test_conda_env_pins_match_requirements():
    requirements = pins((REPO / "requirements.txt").read_text().splitlines())
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    conda_pins = pins(pip_section)
    assert conda_pins, "conda.yaml pins nothing"
    test_only = {"pytest", "pytest-timeout", "ruff", "efficientnet-lite-pytorch", "selenium",
                 "hypothesis"}  # fmt: skip
    assert conda_pins == {k: v for k, v in requirements.items() if k not in test_only}


def test_readme_documents_every_entry_point_and_parameter():
    readme = (REPO / "README.md").read_text()
    for name, classes in ENTRY_POINTS.items():
        assert f"`{name}`" in readme, f"README does not describe entry point {name}"
        for cls in classes:
            for f in dataclasses.fields(cls):
                assert f"`{f.name}`" in readme, f"README does not describe parameter {f.name}"


def test_mlproject_is_generated_from_the_config():
    assert (REPO / "MLproject").read_text() == mlproject(), "run: python -m landmark.config"


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_make_run_passes_data_only_when_given(entry_point):
    """Without DATA the MLproject default applies (and `promote`, which takes no data, runs)."""

    def make_run(*args: str) -> str:
        return subprocess.run(
            ["make", "-n", "run", f"ENTRY={entry_point}", *args],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    assert "-P data" not in make_run()
    assert "-P data=https://example.org/photos.zip" in make_run(
        "DATA=https://example.org/photos.zip"
    )
