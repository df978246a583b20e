"""Promotion decisions (pure) and the `promote` step against a real MLflow registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import build_model, photo_bytes
from mlflow.tracking import MlflowClient

from landmark import export, promotion, steps, tracking
from landmark.config import REGISTERED_MODEL, PromoteConfig
from landmark.runtime.contract import ModelMetadata


def version(number: int, top1: float | None, data: str = "a", *aliases: str) -> dict:
    tags = {"data_fingerprint": data}
    if top1 is not None:
        tags["test/top1"] = str(top1)
    return {"version": str(number), "tags": tags, "aliases": list(aliases), "run_id": "r"}


def with_open_set(v: dict, false_accept: float | None) -> dict:
    if false_accept is not None:
        v["tags"]["open_set/false_accept"] = str(false_accept)
    return v


@pytest.mark.parametrize(
    ("champion_fa", "candidate_fa", "promoted", "words"),
    [
        (0.02, 0.035, True, "beats champion"),  # 1.5 points worse: within the 2
        (0.02, 0.05, False, "lets 5.0% of unknown landmarks through, champion version 1 2.0%"),
        (0.02, None, False, "has no open-set figures while champion version 1 lets 2.0%"),
        (None, None, True, "beats champion"),  # nothing to compare (older versions)
        (None, 0.3, True, "beats champion"),
    ],
)
def test_a_version_that_lets_more_unknown_landmarks_through_is_not_promoted(
    champion_fa, candidate_fa, promoted, words
):
    versions = [
        with_open_set(version(1, 0.8, "a", "champion"), champion_fa),
        with_open_set(version(2, 0.9), candidate_fa),
    ]
    decision = promotion.decide(versions, "test/top1", open_set_tolerance=0.02)
    assert decision.promote is promoted and words in decision.reason
    forced = promotion.decide(versions, "test/top1", version="2", force=True)
    assert forced.promote  # force overrides


def test_first_champion_is_the_best_version():
    decision = promotion.decide([version(1, 0.8), version(2, 0.9), version(3, 0.7)], "test/top1")
    assert decision == promotion.Decision(True, "2", decision.reason)
    assert "first champion" in decision.reason


def test_a_better_version_on_the_same_data_replaces_the_champion():
    versions = [version(1, 0.8, "a", "champion"), version(2, 0.85)]
    decision = promotion.decide(versions, "test/top1")
    assert decision.promote and decision.version == "2"
    assert "0.8500 beats champion version 1 (0.8000)" in decision.reason


def test_a_worse_or_equal_version_does_not():
    worse = promotion.decide([version(1, 0.8, "a", "champion"), version(2, 0.7)], "test/top1")
    assert not worse.promote and "already the champion" in worse.reason
    tie = promotion.decide([version(1, 0.8, "a", "champion"), version(2, 0.8)], "test/top1")
    assert not tie.promote and "0.8000 <= champion's 0.8000" in tie.reason


def test_a_named_worse_version_needs_force():
    versions = [version(1, 0.8, "a", "champion"), version(2, 0.7)]
    refused = promotion.decide(versions, "test/top1", version="2")
    assert not refused.promote and "0.7000 <= champion's 0.8000" in refused.reason
    forced = promotion.decide(versions, "test/top1", version="2", force=True)
    assert forced.promote and forced.version == "2"


def test_other_data_sets_are_not_compared_unless_forced():
    versions = [version(1, 0.8, "a", "champion"), version(2, 0.99, "b")]
    assert not promotion.decide(versions, "test/top1").promote  # nothing better on data set a
    refused = promotion.decide(versions, "test/top1", version="2")
    assert not refused.promote and "another data set" in refused.reason
    assert promotion.decide(versions, "test/top1", force=True).version == "2"


def test_missing_metric_and_unknown_version_are_explained():
    assert "no version has the metric" in promotion.decide([version(1, None)], "test/top1").reason
    assert "does not exist" in promotion.decide([version(1, 0.5)], "test/top1", "7").reason
    assert "no registered versions" in promotion.decide([], "test/top1").reason


def test_rollback_needs_a_previous_champion():
    assert not promotion.rollback([version(1, 0.8, "a", "champion")]).promote
    back = promotion.rollback([version(1, 0.8, "a", "previous"), version(2, 0.9, "a", "champion")])
    assert back.promote and back.version == "1"


def register(number: int, top1: float, tmp_path: Path) -> str:
    """A registered version of a tiny untrained classifier, with the given test accuracy."""
    torch.manual_seed(number)
    model = build_model("landmark_cnn", 2, image_size=32, width=4, depth=1).eval()
    metadata = ModelMetadata(
        arch="landmark_cnn",
        class_folders=("a", "b"),
        class_names=("A", "B"),
        preprocessing=model.preprocessing,
        data_fingerprint="f",
        threshold=0.5,
        metrics={"test/top1": top1},
    )
    path = export.export_torchscript(model, metadata, tmp_path / f"model{number}.pt")
    with tracking.start_run(f"train {number}"):
        model_uri = tracking.log_model(path, metadata, photo_bytes(size=(40, 40)))
        return tracking.register_model(model_uri, metadata)


def aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(REGISTERED_MODEL).aliases.items()}


def test_promote_and_roll_back_in_a_real_registry(tracking_uri, tmp_path):
    client = MlflowClient(tracking_uri)
    assert register(1, 0.80, tmp_path) == "1"
    assert steps.promote(PromoteConfig()).version == "1"
    assert aliases(client) == {"champion": "1"}
    register(2, 0.85, tmp_path)
    register(3, 0.75, tmp_path)
    assert steps.promote(PromoteConfig()).version == "2"
    assert aliases(client) == {"champion": "2", "previous": "1"}
    history = client.get_model_version(REGISTERED_MODEL, "2")
    assert (
        history.tags["promotion_reason"]
        == "version 2 test/top1 0.8500 beats champion version 1 (0.8000)"
    )
    assert "champion (by " in history.description and history.tags["promoted_by"]
    assert not steps.promote(PromoteConfig()).promote  # nothing better: no change
    assert aliases(client) == {"champion": "2", "previous": "1"}
    steps.promote(PromoteConfig(rollback=True))
    assert aliases(client) == {"champion": "1", "previous": "2"}
    steps.promote(PromoteConfig(version="3", force=True))
    assert aliases(client) == {"champion": "3", "previous": "1"}
    promote_runs = client.search_runs(
        [client.get_experiment_by_name("Default").experiment_id], "tags.`landmark.step` = 'promote'"
    )
    assert len(promote_runs) == 5 and all("promotion" in r.data.tags for r in promote_runs)


def test_open_set_figures_of_different_proxy_kinds_are_not_compared():
    champion = with_open_set(version(1, 0.8, "a", "champion"), 0.02)
    candidate = with_open_set(version(2, 0.9), 0.30)
    champion["tags"]["open_set/method"] = "stages"
    candidate["tags"]["open_set/method"] = "stages"
    assert not promotion.decide([champion, candidate], "test/top1").promote
    candidate["tags"]["open_set/method"] = "frozen-features"  # optimistic: not comparable
    assert promotion.decide([champion, candidate], "test/top1").promote
