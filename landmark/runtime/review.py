"""Reviewing a plan before anything is written: `landmark tag --plan` writes a report, a person
accepts or rejects its proposals in the app (`landmark app --review PLAN`), and
`landmark tag --apply PLAN` writes the accepted ones.

Decisions live next to the plan in `<plan>.review.json`, saved atomically after every click
(a page closed half-way resumes) and tied to the plan's hash (decisions about another plan are
never applied). Applying checks each photo is the one planned (size, mtime, SHA-256).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import threading
from pathlib import Path
from typing import Any

from landmark.config import TagConfig
from landmark.runtime import files, images
from landmark.runtime.tagger import Tagger, one_line_at_most

THUMBNAIL = 256


class PlanError(ValueError):
    """A plan or its decisions that cannot be used; the message names the file and the fix."""


def decisions_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".review.json")


def read_plan(plan: Path) -> tuple[list[dict[str, Any]], str]:
    """The plan's rows (the last row of each photo), and the plan's SHA-256.

    Raises:
        PlanError: a missing file, or a line that is not a JSON report row (edited by hand?).
    """
    try:
        content = plan.read_bytes()
    except OSError as e:
        raise PlanError(f"cannot read the plan {plan}: {e.strerror or e}") from e
    rows: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(content.decode(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlanError(f"{plan} line {number} is not valid JSON ({e.msg}): was it edited "
                            "by hand? Plan again with `landmark tag --plan`") from e  # fmt: skip
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise PlanError(f"{plan} line {number} is not a report row (no photo path)")
        rows[row["path"]] = row
    return list(rows.values()), hashlib.sha256(content).hexdigest()


def reviewable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a person can decide: proposed places, and unsure photos with places to pick."""
    return [
        r
        for r in rows
        if r.get("status") == "planned" or (r.get("status") == "unsure" and r.get("candidates"))
    ]


def read_decisions(plan: Path, plan_sha256: str) -> dict[str, dict[str, Any]]:
    """The decisions saved for this very plan ({} if none yet).

    Raises:
        PlanError: a decisions file that is not valid or belongs to another plan.
    """
    path = decisions_path(plan)
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
        decisions = saved["decisions"]
        same = saved["plan_sha256"] == plan_sha256
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlanError(f"{path} is not a decisions file ({e}): remove it to review again") from e
    if not same:
        raise PlanError(f"{path} holds decisions about another version of {plan.name}: "
                        "remove it to review the new plan")  # fmt: skip
    for photo, decision in decisions.items() if isinstance(decisions, dict) else [(None, None)]:
        valid = isinstance(decision, dict) and isinstance(decision.get("accept"), bool)
        place = decision.get("place") if valid else None
        whole = isinstance(place, int) and not isinstance(place, bool) and place >= 0
        if not valid or not (place is None or whole):
            raise PlanError(f"{path}: the decision for {photo} is not "
                            '{"accept": true|false, "place": null|N}: review again')  # fmt: skip
    return decisions


class Review:
    """One plan under review: its rows, groups and decisions (what the page shows and saves)."""

    def __init__(self, plan: Path) -> None:
        self.plan = plan
        rows, self.sha256 = read_plan(plan)
        self.rows = reviewable(rows)
        self.decisions = read_decisions(plan, self.sha256)
        self.apply_command = f"landmark tag --apply {plan}"
        self.lock = threading.Lock()  # the app saves from worker threads

    def view(self) -> dict[str, Any]:
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(self.rows):
            place = _group_place(row)
            groups.setdefault((_trip_order(row.get("trip")), row.get("trip"), place), []).append(i)
        return {
            "report": self.plan.name,
            "decisions_file": str(decisions_path(self.plan).resolve()),
            "apply_command": self.apply_command,
            "groups": [
                {"id": f"g{n}", "trip": trip or "no camera time", "place": place, "rows": rows}
                for n, ((_, trip, place), rows) in enumerate(sorted(groups.items(), key=_order))
            ],
            "rows": [self._row_view(i, row) for i, row in enumerate(self.rows)],
        }

    def _row_view(self, index: int, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "index": index, "path": row["path"], "file": Path(row["path"]).name,
            "status": row["status"], "source": row.get("source"),
            "confidence": row.get("confidence", row.get("probability"))
            if row["status"] == "planned"
            else None,
            "place": row.get("name") if row["status"] == "planned" else None,
            "latitude": row.get("latitude"), "longitude": row.get("longitude"),
            "time": row.get("time"), "camera": row.get("camera"), "evidence": evidence(row),
            "candidates": [
                {"place": c["place"], "evidence": _neighbour_text(c["anchor"], c["gap_s"])}
                for c in row.get("candidates") or []
            ],
            "decision": self.decisions.get(row["path"]),
        }  # fmt: skip

    def decide(self, indexes: list[int], accept: bool, place: int | None) -> dict[str, Any]:
        """Record one decision for the rows `indexes` and save; their decisions as saved.

        Raises:
            PlanError: an unknown row, or an unsure photo accepted without one of its places.
        """
        chosen = {}
        for i in indexes:
            if not (isinstance(i, int) and 0 <= i < len(self.rows)):
                raise PlanError(f"no row {i!r} in {self.plan.name}")
            row = self.rows[i]
            pick = place if row["status"] == "unsure" else None
            valid = isinstance(pick, int) and 0 <= pick < len(row.get("candidates") or [])
            if accept and row["status"] == "unsure" and not valid:
                name = Path(row["path"]).name
                raise PlanError(f"{name} is unsure: pick one of its places to accept it")
            chosen[row["path"]] = (i, {"accept": bool(accept), "place": pick if accept else None})
        with self.lock:
            for path, (_, decision) in chosen.items():
                self.decisions[path] = decision
            self._save()
        return {str(i): decision for i, decision in chosen.values()}

    def _save(self) -> None:
        content = json.dumps(
            {"plan": self.plan.name, "plan_sha256": self.sha256, "decisions": self.decisions},
            indent=1, sort_keys=True,
        )  # fmt: skip
        files.publish(content.encode(), decisions_path(self.plan), replace=lambda path: True)

    def thumbnail(self, index: int) -> bytes | None:
        """A JPEG of at most `THUMBNAIL` pixels a side, or None for a photo that is gone."""
        if not 0 <= index < len(self.rows):
            return None
        try:
            img = images.load_rgb(images.read_photo(self.rows[index]["path"]), draft_size=THUMBNAIL)
        except images.BadImageError:
            return None
        img.thumbnail((THUMBNAIL, THUMBNAIL))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=80)
        return out.getvalue()


def _group_place(row: dict[str, Any]) -> str:
    """What a row's group is called: its place, a GPX track's file when the place has no
    name, or "unsure"."""
    if row["status"] != "planned":
        return "unsure"
    if row.get("source") == "gpx" and not str(row.get("name", "")).startswith("near "):
        return f"GPX track {row.get('gpx_file')}"
    return str(row.get("name"))


def evidence(row: dict[str, Any]) -> str:
    """The sentence a reviewer reads about why a photo is placed where it is."""
    source = row.get("source")
    if row["status"] == "unsure":
        return row.get("reason") or "no evidence agrees"
    if source == "landmark":
        return f"recognised {row.get('name')}, probability {row.get('probability', 0):.2f}"
    if source == "gpx":
        return f"GPX track {row.get('gpx_file')}, points {row.get('gpx_gap_s', 0):.0f} s apart"
    if source == "time-neighbour":
        return _neighbour_text(row.get("anchor") or "", row.get("gap_s") or 0)
    return "the photo's own GPS"


def _neighbour_text(anchor: str, gap_s: float) -> str:
    minutes = abs(gap_s) / 60
    when = f"{minutes:.0f} min" if minutes >= 1 else f"{abs(gap_s):.0f} s"
    side = "after" if gap_s >= 0 else "before"
    return f"taken {when} {side} {Path(anchor).name}"


def _trip_order(trip: str | None) -> int:
    try:
        return int(str(trip).split()[1])
    except (IndexError, ValueError):
        return 1 << 30


def _order(item) -> tuple:
    (order, _, place), _ = item
    return order, place == "unsure", str(place)


def applied_report(plan: Path, cfg: TagConfig) -> Path:
    """Where `--apply` reports: `PLAN-stem.applied.jsonl` next to the plan, unless another
    `--report` than the default is given (the plan itself never)."""
    report = Path(cfg.report)
    if cfg.report == TagConfig().report or report.resolve() == plan.resolve():
        return plan.with_name(plan.stem + ".applied.jsonl")
    return report


def apply_plan(plan: Path, cfg: TagConfig) -> dict[str, int]:
    """Write the accepted rows of `plan` (photos unchanged since it); report every row. A time
    neighbour is written only when its anchor was (an anchor under review that was rejected,
    left undecided or changed since the plan takes its neighbours with it)."""
    rows, sha256 = read_plan(plan)
    decisions = read_decisions(plan, sha256)
    if not decisions:
        raise PlanError(f"no decisions for {plan} yet: review it with "
                        f"`landmark app --review {plan}` first")  # fmt: skip
    todo = reviewable(rows)
    under_review = {r["path"] for r in todo}
    model = todo[0].get("model", "") if todo else ""
    cfg = dataclasses.replace(cfg, report=str(applied_report(plan, cfg)), plan=False, apply="")
    tagger = Tagger(cfg, model, None)
    written: set[str] = set()
    try:  # anchors first
        for row in sorted(todo, key=lambda r: _anchor_of(r, decisions) is not None):
            with one_line_at_most(tagger, Path(row["path"])):
                outcome = _apply(tagger, row, decisions.get(row["path"]), under_review, written)
                if outcome.get("status") == "tagged":
                    written.add(row["path"])
    finally:
        tagger.close()
    return tagger.counts


def _apply(tagger: Tagger, row, decision, under_review: set[str], written: set[str]) -> dict:
    out = {"path": row["path"], "model": row.get("model")}
    if not decision or not decision["accept"]:
        return tagger.write({**out, "status": "rejected" if decision else "undecided"})
    pick = decision["place"]
    if row["status"] == "unsure" and not (pick is not None and 0 <= pick < len(row["candidates"])):
        reason = f"the decision picks place {pick!r} of {len(row['candidates'])}: review again"
        return tagger.write({**out, "status": "error", "error": reason})
    anchor = _anchor_of(row, {row["path"]: decision})
    if anchor in under_review and anchor not in written:
        reason = (f"its anchor {Path(anchor).name} was not written (rejected, undecided or "
                  "changed since the plan): its place is not written either")  # fmt: skip
        return tagger.write({**out, "status": "anchor_not_written", "error": reason})
    return tagger.apply_row(row, pick)


def _anchor_of(row: dict[str, Any], decisions: dict[str, dict[str, Any]]) -> str | None:
    """The photo a row's place comes from, if it is another photo's (a time neighbour)."""
    if row["status"] == "unsure":
        pick = (decisions.get(row["path"]) or {}).get("place")
        candidates = row.get("candidates") or []
        return (
            candidates[pick]["anchor"] if pick is not None and 0 <= pick < len(candidates) else None
        )
    return row.get("anchor") if row.get("source") == "time-neighbour" else None
