"""Placing whole trips on a simulated library: share of photos placed within 1 km of the truth,
placed wrongly, and left unplaced, by evidence, for (a) landmarks only, (b) plus time
neighbours, (c) plus GPX tracks; a sweep of the time window; and photos per second.

    .venv/bin/python scripts/build_trip_library.py --data ../shared/datasets/landmarks-35 \
        --out /tmp/trips
    MLFLOW_TRACKING_URI=sqlite:////tmp/tripbench/mlflow.db mlflow run . -e train_transfer \\
        --env-manager local -P data=/tmp/trips/known -P n_trials=0
    MLFLOW_TRACKING_URI=sqlite:////tmp/tripbench/mlflow.db .venv/bin/python benchmarks/trips.py \\
        --library /tmp/trips --model models:/landmark-classifier/1

The model never saw the library's held-out classes (their photos stand for the café next to
the landmark); the photos are scored once by `landmark tag --plan` (timed), then placed again
with each setting (placing is the same function the plan used).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from landmark.config import TagConfig
from landmark.runtime import clocks, gpx, tagging, trips

RIGHT_KM = 1.0


def plan(library: Path, model: str, tracks: list[Path], report: Path):
    """`landmark tag --plan` over the library (with the tracks): the tagger, with what it
    observed of each photo, and the seconds it took."""
    cfg = TagConfig(model=model, report=str(report), plan=True, gpx=tuple(map(str, tracks)))
    start = time.perf_counter()
    tagger = tagging.tag_library([library / "library"], cfg)
    return tagger, time.perf_counter() - start


def score(placements, truth: dict[str, dict], library: Path) -> dict[str, Counter]:
    """Per evidence type: photos placed right (within 1 km), wrong, and unplaced; and the wrong
    ones by what the photo really is (a landmark shot, a held-out "café", ...). The phone's
    photos with their own GPS are left out: every setting places them the same."""
    by_source: dict[str, Counter] = {"all": Counter(), "wrong_kind": Counter()}
    for path, placed in placements.items():
        row = truth[str(Path(path).relative_to(library / "library"))]
        if row["kind"] == "phone":
            continue
        source = placed.source or "unplaced"
        if placed.source is None:
            outcome = "unplaced"
        elif not row["latitude"]:
            outcome = "wrong"  # a photo with no true place (a screenshot) placed anyway
        else:
            km = gpx.distance_km(placed.place.latitude, placed.place.longitude,
                                 float(row["latitude"]), float(row["longitude"]))  # fmt: skip
            outcome = "right" if km <= RIGHT_KM else "wrong"
        for key in ("all", source):
            by_source.setdefault(key, Counter())[outcome] += 1
        if outcome == "wrong":
            by_source["wrong_kind"][f"{row['kind']} by {source}"] += 1
    return by_source


def table_row(name: str, counts: dict[str, Counter]) -> str:
    c = counts["all"]
    total = sum(c.values())
    share = {k: 100 * c[k] / total for k in ("right", "wrong", "unplaced")}
    sources = ", ".join(
        f"{s} {v['right']}/{v['wrong']}"
        for s, v in counts.items()
        if s not in {"all", "unplaced", "wrong_kind"}
    )
    return (f"| {name} | {share['right']:.1f} % | {share['wrong']:.2f} % ({c['wrong']}) | "
            f"{share['unplaced']:.1f} % | {sources} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path, required=True, help="build_trip_library --out")
    parser.add_argument("--model", required=True, help="MLflow model URI of the proxy model")
    parser.add_argument("--windows", type=float, nargs="+", default=[5, 10, 20, 30, 60, 120])
    parser.add_argument("--gaps", type=float, nargs="+", default=[30, 60, 90, 120, 180, 360])
    args = parser.parse_args()
    truth = {r["path"]: r for r in csv.DictReader((args.library / "truth.csv").open())}
    manifest = json.loads((args.library / "manifest.json").read_text())
    track_files = sorted((args.library / "tracks").glob("*.gpx"))
    with tempfile.TemporaryDirectory() as tmp:
        tagger, seconds = plan(args.library, args.model, track_files, Path(tmp) / "plan.jsonl")
        planned = [json.loads(line) for line in (Path(tmp) / "plan.jsonl").open()]
    photos = list(tagger.observations.values())
    landmarks = tagger.landmarks()
    tracks = gpx.read_tracks(track_files)
    print(f"{len(photos)} photos, {len(track_files)} tracks; plan (scoring + placing) "
          f"{seconds:.0f} s = {len(photos) / seconds:.1f} photos/s; "
          f"statuses {dict(Counter(r['status'] for r in planned))}")  # fmt: skip
    print("true clocks:", {k: v.get("clock") for k, v in manifest.get("cameras", {}).items()})
    found = clocks.clocks_for(photos, tracks, TagConfig())
    print("clocks found:", {c: f"{k.offset} ({k.source})" for c, k in found.items()})
    true_offsets = tuple(
        f"{v['make']} {v['model']}={v['clock']}".replace("Canon Canon", "Canon")
        for v in manifest.get("cameras", {}).values()
        if not v.get("offset_time_original")
    )
    base = TagConfig()
    settings = {
        "(a) landmarks only (today)": (dataclasses.replace(base, time_window=0), []),
        f"(b) + time neighbours ({base.time_window:g} min)": (base, []),
        "(c) + GPX tracks": (base, tracks),
        "(c) with the true clock offsets given": (
            dataclasses.replace(base, time_offset=true_offsets), tracks),
    }  # fmt: skip
    print("\n| setting | within 1 km | wrong | unplaced | by source (right/wrong) |")
    print("|---|---|---|---|---|")
    kinds = {}
    for name, (cfg, with_tracks) in settings.items():
        counts = score(trips.place_all(photos, with_tracks, cfg, landmarks), truth, args.library)
        kinds[name] = counts["wrong_kind"]
        print(table_row(name, counts))
    for name, wrong in kinds.items():
        print(f"wrong, {name}: {dict(wrong)}")
    print("\n| time window (with GPX) | within 1 km | wrong | unplaced | by source |")
    print("|---|---|---|---|---|")
    for window in args.windows:
        for given in ((), true_offsets):
            cfg = dataclasses.replace(base, time_window=window, time_offset=given)
            counts = score(trips.place_all(photos, tracks, cfg, landmarks), truth, args.library)
            print(table_row(f"{window:g} min{', true clocks' if given else ''}", counts))
    print("\n| anchor support (with GPX) | within 1 km | wrong | unplaced | by source |")
    print("|---|---|---|---|---|")
    for support in (1, 2, 3):
        cfg = dataclasses.replace(base, anchor_support=support)
        counts = score(trips.place_all(photos, tracks, cfg, landmarks), truth, args.library)
        print(table_row(f"{support}", counts))
    print("\n| trip gap (with GPX) | within 1 km | wrong | unplaced | by source |")
    print("|---|---|---|---|---|")
    true_trips = len({r["trip"] for r in truth.values()})
    for gap in args.gaps:
        cfg = dataclasses.replace(base, trip_gap=gap)
        placements = trips.place_all(photos, tracks, cfg, landmarks)
        found: dict[str, set] = {}
        for path, placed in placements.items():
            if placed.trip:
                true_trip = truth[str(Path(path).relative_to(args.library / "library"))]["trip"]
                found.setdefault(placed.trip, set()).add(true_trip)
        mixed = sum(len(t) > 1 for t in found.values())
        name = f"{gap:g} min ({len(found)} found, {mixed} mixing trips; truth {true_trips})"
        print(table_row(name, score(placements, truth, args.library)))


if __name__ == "__main__":
    main()
