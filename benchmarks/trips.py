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
from landmark.runtime import gpx, tagging, trips

RIGHT_KM = 1.0


def plan(library: Path, model: str, tracks: list[Path], report: Path):
    """`landmark tag --plan` over the library (with the tracks): the tagger, with what it
    observed of each photo, and the seconds it took."""
    cfg = TagConfig(model=model, report=str(report), plan=True, gpx=tuple(map(str, tracks)))
    start = time.perf_counter()
    tagger = tagging.tag_library([library / "library"], cfg)
    return tagger, time.perf_counter() - start


def score(placements, truth: dict[str, dict], library: Path) -> dict[str, Counter]:
    """Per evidence type: photos placed right (within 1 km), wrong, and unplaced."""
    by_source: dict[str, Counter] = {"all": Counter()}
    for path, placed in placements.items():
        row = truth[str(Path(path).relative_to(library / "library"))]
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
    return by_source


def table_row(name: str, counts: dict[str, Counter], total: int) -> str:
    c = counts["all"]
    share = {k: 100 * c[k] / total for k in ("right", "wrong", "unplaced")}
    sources = ", ".join(
        f"{s} {v['right']}/{v['wrong']}" for s, v in counts.items() if s not in {"all", "unplaced"}
    )
    return (f"| {name} | {share['right']:.1f} % | {share['wrong']:.2f} % ({c['wrong']}) | "
            f"{share['unplaced']:.1f} % | {sources} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", type=Path, required=True, help="build_trip_library --out")
    parser.add_argument("--model", required=True, help="MLflow model URI of the proxy model")
    parser.add_argument("--windows", type=float, nargs="+", default=[5, 10, 20, 30, 60, 120])
    args = parser.parse_args()
    truth = {r["path"]: r for r in csv.DictReader((args.library / "truth.csv").open())}
    manifest = json.loads((args.library / "manifest.json").read_text())
    track_files = sorted((args.library / "tracks").glob("*.gpx"))
    with tempfile.TemporaryDirectory() as tmp:
        tagger, seconds = plan(args.library, args.model, track_files, Path(tmp) / "plan.jsonl")
        planned = [json.loads(line) for line in (Path(tmp) / "plan.jsonl").open()]
    photos = list(tagger.observations.values())
    total = len(photos)
    landmarks = [trips.Place(n, loc.latitude, loc.longitude, loc.country)
                 for n, loc in tagger._locations()]  # fmt: skip
    tracks = gpx.read_tracks(track_files)
    print(
        f"{total} photos, {len(track_files)} tracks; plan (scoring + placing) {seconds:.0f} s "
        f"= {total / seconds:.1f} photos/s; statuses {Counter(r['status'] for r in planned)}"
    )
    print("true clock offsets:", manifest.get("cameras"))
    print(
        "estimated:", {k: str(v) for k, v in trips.clocks_for(photos, tracks, TagConfig()).items()}
    )
    print("\n| setting | within 1 km | wrong | unplaced | by source (right/wrong) |")
    print("|---|---|---|---|---|")
    base = TagConfig()
    settings = {
        "(a) landmarks only (today)": (dataclasses.replace(base, time_window=0), []),
        f"(b) + time neighbours ({base.time_window:g} min)": (base, []),
        "(c) + GPX tracks": (base, tracks),
    }
    for name, (cfg, with_tracks) in settings.items():
        placements = trips.place_all(photos, with_tracks, cfg, landmarks)
        print(table_row(name, score(placements, truth, args.library), total))
    print("\nTime window sweep, with GPX:")
    for window in args.windows:
        cfg = dataclasses.replace(base, time_window=window)
        placements = trips.place_all(photos, tracks, cfg, landmarks)
        print(table_row(f"window {window:g} min", score(placements, truth, args.library), total))


if __name__ == "__main__":
    main()
