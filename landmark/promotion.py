"""Which registered model version serves: the `champion` alias, its `previous`, and why.

`decide` is pure: it compares registered versions (their tags carry the test metrics and the
data set fingerprint) and says what to do. `steps.promote` applies the decision through
`tracking` and records it on the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from landmark.config import CHAMPION, PREVIOUS, PromoteConfig

OPEN_SET_TAG = "open_set/false_accept"  # written by `tracking.register_model`
METHOD_TAG = "open_set/method"  # how the proxies were trained


@dataclass(frozen=True)
class Decision:
    """Move `champion` to `version` (and the old champion to `previous`) when `promote`."""

    promote: bool
    version: str | None
    reason: str


def decide(
    versions: list[dict[str, Any]],
    metric: str,
    version: str = "",
    force: bool = False,
    open_set_tolerance: float = PromoteConfig.open_set_tolerance,
) -> Decision:
    """The promotion that `versions` (from `tracking.model_versions`) call for.

    The best version by `metric` (ties: the newest) becomes champion if there is none, or if
    it beats the current champion on the same data set (same `data_fingerprint` tag) and does
    not let more than `open_set_tolerance` more of the unknown landmarks through (its
    `open_set/false_accept` tag, from the held-out-class protocol); a version without that
    figure never replaces a champion that has it. `version` names a candidate instead of the
    best; `force` promotes it without the comparisons.
    """
    if not versions:
        return Decision(False, None, "no registered versions: train a model first")
    champion = _with_alias(versions, CHAMPION)
    if version:
        matches = [v for v in versions if v["version"] == version]
        if not matches:
            known = ", ".join(v["version"] for v in versions)
            return Decision(False, None, f"version {version} does not exist (versions: {known})")
        candidate = matches[0]
    else:
        pool = versions
        if champion is not None and not force:  # compare like with like
            pool = [v for v in versions if _fingerprint(v) == _fingerprint(champion)]
        scored = [v for v in pool if score(v, metric) is not None]
        if not scored:
            return Decision(False, None, f"no version has the metric {metric!r}")
        candidate = max(scored, key=lambda v: (score(v, metric), int(v["version"])))
    name = f"version {candidate['version']}"
    if champion is not None and champion["version"] == candidate["version"]:
        return Decision(False, candidate["version"], f"{name} is already the champion")
    if champion is None:
        return Decision(True, candidate["version"], f"{name} is the first champion")
    if force:
        return Decision(True, candidate["version"], f"{name} forced over {_describe(champion)}")
    if _fingerprint(candidate) != _fingerprint(champion):
        return Decision(
            False,
            candidate["version"],
            f"{name} was tested on another data set than {_describe(champion)}; "
            "use force to promote it anyway",
        )
    regression = _open_set_regression(candidate, champion, open_set_tolerance)
    if regression:
        return Decision(
            False, candidate["version"], f"{name} {regression}; use force to promote it"
        )
    new, old = score(candidate, metric), score(champion, metric)
    if old is not None and new is not None and new <= old:
        return Decision(
            False, candidate["version"], f"{name} {metric} {new:.4f} <= champion's {old:.4f}"
        )
    beaten = f"{_describe(champion)} ({old:.4f})" if old is not None else _describe(champion)
    return Decision(True, candidate["version"], f"{name} {metric} {new:.4f} beats {beaten}")


def _open_set_regression(
    candidate: dict[str, Any], champion: dict[str, Any], tolerance: float
) -> str:
    """Why the candidate guards against unknown landmarks worse than the champion ("" if not)."""
    old, new = score(champion, OPEN_SET_TAG), score(candidate, OPEN_SET_TAG)
    if old is None:
        return ""
    methods = (champion["tags"].get(METHOD_TAG), candidate["tags"].get(METHOD_TAG))
    if new is not None and methods[0] != methods[1]:
        return ""  # proxies of different kinds (e.g. frozen features: optimistic) do not compare
    if new is None:
        return f"has no open-set figures while {_describe(champion)} lets {old:.1%} through"
    if new > old + tolerance:
        return (
            f"lets {new:.1%} of unknown landmarks through, {_describe(champion)} {old:.1%} "
            f"(tolerance {tolerance:.0%})"
        )
    return ""


def rollback(versions: list[dict[str, Any]]) -> Decision:
    """Give `champion` back to the `previous` version (the current one becomes `previous`)."""
    previous = _with_alias(versions, PREVIOUS)
    if previous is None:
        return Decision(False, None, "no previous champion to roll back to")
    champion = _with_alias(versions, CHAMPION)
    was = f" (was version {champion['version']})" if champion else ""
    return Decision(True, previous["version"], f"rolled back to version {previous['version']}{was}")


def score(version: dict[str, Any], metric: str) -> float | None:
    value = version["tags"].get(metric)
    return float(value) if value not in (None, "") else None


def _with_alias(versions: list[dict[str, Any]], alias: str) -> dict[str, Any] | None:
    return next((v for v in versions if alias in v["aliases"]), None)


def _fingerprint(version: dict[str, Any]) -> str:
    return version["tags"].get("data_fingerprint", "")


def _describe(version: dict[str, Any]) -> str:
    return f"champion version {version['version']}"
