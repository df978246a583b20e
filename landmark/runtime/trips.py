"""Placing whole trips: a photo's own evidence (EXIF GPS, a confident landmark, a GPX track) or
a time neighbour's, with each camera's clock aligned first.

The rules (README, Trips):
- Clocks (`runtime.clocks`): a camera's UTC offset is given, written by the camera, or
  estimated. An unknown offset keeps the camera on its own timeline: it uses only anchors
  among its own photos, and no GPX.
- Anchors are photos placed by their own evidence: EXIF GPS; a GPX track; a recognised
  landmark, unless a track or a better supported anchor within `time_window` puts the photo
  too far away to have travelled (`MAX_SPEED_KMH`). A recognised landmark lends its place only
  when `anchor_support` anchors within the window agree with it.
- A photo without evidence takes the place of the nearest anchor within `time_window` on its
  timeline and trip, unless the nearest anchor on the other side (also within the window) is
  somewhere else (farther than `agree_km`): then it is `unsure`, with both named. A time
  neighbour never becomes an anchor (no chains).
- Trips: each timeline, sorted, splits where photos are more than `trip_gap` apart.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from landmark.config import TagConfig
from landmark.runtime import clocks, gpx
from landmark.runtime.camera import Facts

MAX_SPEED_KMH = 200  # faster than travel between two photos (a flight takes hours door to door)
ANCHORS = ("exif", "landmark", "gpx")  # evidence of a photo's own: never a time neighbour


@dataclass(frozen=True)
class Place:
    """A named position; `confidence` is how sure the evidence behind it is (0..1)."""

    name: str
    latitude: float
    longitude: float
    country: str | None = None
    confidence: float = 1.0


@dataclass(frozen=True)
class Observation:
    """What is known of one photo before placing: its EXIF facts and GPS, and its landmark if
    one was recognised above the model's write threshold."""

    path: str
    facts: Facts
    gps: tuple[float, float] | None = None
    landmark: Place | None = None


@dataclass(frozen=True)
class Candidate:
    """A place an `unsure` photo might be at, and the anchor that says so."""

    place: Place
    anchor: str
    gap_s: float


@dataclass
class Placement:
    """Where a photo goes and why. `source` is None for a photo left unplaced (`reason`)."""

    source: str | None = None
    place: Place | None = None
    anchor: str | None = None
    gap_s: float | None = None
    gpx_file: str | None = None
    gpx_gap_s: float | None = None
    candidates: list[Candidate] = field(default_factory=list)
    reason: str = ""
    trip: str | None = None
    utc: datetime | None = None
    clock: str = ""
    demoted: str = ""  # why a recognised landmark was not trusted as this photo's place
    support: int = 0  # anchors within the window (itself included) that agree with it


def place_all(
    photos: list[Observation],
    tracks: list[gpx.Segment],
    cfg: TagConfig,
    landmarks: list[Place] = (),
) -> dict[str, Placement]:
    """Place every photo; `landmarks` (the model's known places) name GPS-only places."""
    found = clocks.clocks_for(photos, tracks, cfg)
    placements = {p.path: Placement() for p in photos}
    timelines: dict[str, list[tuple[datetime, Observation]]] = defaultdict(list)
    for photo in photos:
        placed = placements[photo.path]
        when, timeline, placed.clock = _time_of(photo, found)
        if when is None:
            placed.reason = photo.facts.time_problem or "no usable camera time"
        else:
            timelines[timeline].append((when, photo))
            placed.utc = when if timeline == "utc" else None
        _own_evidence(photo, placed, tracks, cfg, landmarks)
    for timeline in timelines.values():
        timeline.sort(key=lambda item: (item[0], item[1].path))
    _name_trips(timelines, placements, timedelta(minutes=cfg.trip_gap))
    window = timedelta(minutes=cfg.time_window)
    for timeline in timelines.values() if cfg.time_window > 0 else ():
        _demote_implausible(timeline, placements, window, cfg.agree_km)
        times = [t for t, _ in timeline]
        for when, photo in timeline:
            if placements[photo.path].source is None:
                _time_neighbour(when, photo, timeline, times, placements, window, cfg.agree_km,
                                cfg.anchor_support)  # fmt: skip
    return placements


def _demote_implausible(timeline, placements, window: timedelta, agree_km: float) -> None:
    """A recognised landmark stops being an anchor when another anchor within `window` is too
    far away to have been reached in the time between them (over `MAX_SPEED_KMH`) and is at
    least as well supported (as many anchors within the window agree with it), or is the
    photo's or a track's own GPS. Decided for all at once, from the anchors as they were."""
    anchors = [(t, p.path) for t, p in timeline if placements[p.path].source in ANCHORS]
    times = [t for t, _ in anchors]
    near: dict[str, list[tuple[float, str]]] = {}
    for t, path in anchors:
        first, last = bisect.bisect_left(times, t - window), bisect.bisect_right(times, t + window)
        near[path] = [
            ((u - t).total_seconds(), other) for u, other in anchors[first:last] if other != path
        ]
    place = {path: placements[path].place for _, path in anchors}
    support = {
        path: 1 + sum(_agrees(place[path], place[o], agree_km) for _, o in others)
        for path, others in near.items()
    }
    for path, count in support.items():
        placements[path].support = count
    demoted = {}
    for path, others in near.items():
        if placements[path].source != "landmark":
            continue  # a photo's own GPS and a track are trusted
        rivals = [
            (gap, o)
            for gap, o in others
            if _implausible(place[path], place[o], gap, agree_km)
            and (placements[o].source != "landmark" or support[o] >= support[path])
        ]
        if rivals:
            demoted[path] = rivals
    for path, rivals in demoted.items():
        placed = placements[path]
        gap, rival = min(rivals, key=lambda r: abs(r[0]))
        placed.reason = placed.demoted = (
            f"recognised {placed.place.name}, but {Path(rival).name} {abs(gap) / 60:.0f} min "
            f"{'later' if gap > 0 else 'earlier'} is at {place[rival].name}, too far away"
        )
        distinct: list[Candidate] = []
        for gap, o in sorted(rivals, key=lambda r: abs(r[0])):
            if not any(_agrees(place[o], c.place, agree_km) for c in distinct):
                distinct.append(Candidate(place[o], o, -gap))
        placed.source, placed.place, placed.candidates = None, None, distinct


def _implausible(a: Place, b: Place, gap_s: float, agree_km: float) -> bool:
    """Too far apart to travel between in `gap_s` seconds."""
    km = gpx.distance_km(a.latitude, a.longitude, b.latitude, b.longitude)
    return km > agree_km and km > MAX_SPEED_KMH * max(abs(gap_s), 60) / 3600


def _time_of(photo: Observation, found: dict[str, clocks.Clock]):
    """(time, timeline, how the clock is known): UTC from a given clock, from the camera's own
    UTC time, or from its estimated clock; else its own reading on the camera's own timeline (a
    photo without a camera name on a timeline of its own: it could be any device)."""
    facts, clock = photo.facts, found.get(photo.facts.camera)
    if facts.local is None:
        return None, "", ""
    if clock is not None and clock.source == "given":
        return facts.local - clock.offset, "utc", f"given ({clocks.offset_text(clock.offset)})"
    if facts.utc is not None:
        return facts.utc, "utc", "written by the camera"
    if clock is not None:
        return (
            facts.local - clock.offset,
            "utc",
            f"{clock.source} ({clocks.offset_text(clock.offset)})",
        )
    if not facts.camera:
        return facts.local, f"photo:{photo.path}", "unknown camera: only its own evidence"
    return facts.local, f"camera:{facts.camera}", "unknown: only its own photos are used"


def _own_evidence(photo, placed: Placement, tracks, cfg: TagConfig, landmarks) -> None:
    """The photo's own GPS; else its landmark, unless a track puts it elsewhere at that
    moment (the track wins: it measured where the photo was); else the track."""
    fix = None
    if photo.gps is None and placed.utc is not None and tracks:
        fix = gpx.position_at(tracks, placed.utc, cfg.gpx_max_gap * 60, cfg.agree_km)
        if fix is not None and placed.clock.startswith("estimated"):
            fix = _steady(fix, tracks, placed.utc, cfg)
    if photo.gps is not None:
        placed.source, placed.place = "exif", _named(*photo.gps, landmarks, cfg.agree_km)
    elif photo.landmark is not None and (fix is None or _agrees(photo.landmark, fix, cfg.agree_km)):
        placed.source, placed.place = "landmark", photo.landmark
    elif fix is not None:
        if photo.landmark is not None:
            placed.demoted = (f"recognised {photo.landmark.name}, but the track {fix.file} was "
                              f"at {fix.latitude:.5f}, {fix.longitude:.5f} then")  # fmt: skip
        confidence = 1.0 if fix.gap_s <= 60 else max(0.5, 1 - fix.gap_s / (cfg.gpx_max_gap * 120))
        place = _named(fix.latitude, fix.longitude, landmarks, cfg.agree_km, confidence)
        placed.source, placed.place = "gpx", place
        placed.gpx_file, placed.gpx_gap_s = fix.file, fix.gap_s
    if placed.source is not None:
        placed.reason = ""


def _steady(fix: gpx.Fix, tracks, utc: datetime, cfg: TagConfig) -> gpx.Fix | None:
    """`fix` if the track was within `agree_km` of it over the estimated clock's uncertainty
    (`MATCH_TOLERANCE` either side), else None: on a moving track a clock a few minutes off
    is a place kilometres off."""
    for shift in (-clocks.MATCH_TOLERANCE, clocks.MATCH_TOLERANCE):
        other = gpx.position_at(tracks, utc + shift, cfg.gpx_max_gap * 60, cfg.agree_km)
        if other is None or not _agrees(fix, other, cfg.agree_km):
            return None
    return fix


def _named(lat, lon, landmarks, agree_km: float, confidence: float = 1.0) -> Place:
    """A position named after the nearest known landmark within `agree_km`, else its numbers."""
    near = [(gpx.distance_km(lat, lon, p.latitude, p.longitude), p) for p in landmarks]
    near = [(d, p) for d, p in near if d <= agree_km]
    if near:
        _, closest = min(near, key=lambda item: item[0])
        return Place(f"near {closest.name}", lat, lon, closest.country, confidence)
    return Place(f"{lat:.5f}, {lon:.5f}", lat, lon, None, confidence)


def _name_trips(timelines, placements, gap: timedelta) -> None:
    starts = []
    for timeline in timelines.values():
        previous = None
        for when, photo in timeline:
            if previous is None or when - previous > gap:
                starts.append((when, []))
            starts[-1][1].append(photo.path)
            previous = when
    for number, (when, paths) in enumerate(sorted(starts, key=lambda s: s[0]), 1):
        for path in paths:
            placements[path].trip = f"trip {number} · {when:%Y-%m-%d}"


def _time_neighbour(when, photo, timeline, times, placements, window, agree_km, support) -> None:
    """Place `photo` from the nearest anchors before and after it (same timeline and trip);
    `times` are the timeline's, in order."""
    placed = placements[photo.path]
    anchors = []
    for side in (-1, 1):
        nearest = _nearest_anchor(when, photo, timeline, times, placements, window, side, support)
        anchors += nearest
    if not anchors:
        placed.reason = placed.reason or f"no placed photo within {_minutes(window)} on its trip"
        return
    distinct: list[Candidate] = []
    for gap_s, anchor_path in sorted(anchors, key=lambda a: (abs(a[0]), a[1])):
        place = placements[anchor_path].place
        if not any(_agrees(place, c.place, agree_km) for c in distinct):
            distinct.append(Candidate(place, anchor_path, gap_s))
    if len(distinct) > 1:
        placed.candidates = distinct
        names = " and ".join(f"{c.place.name} ({c.anchor})" for c in distinct)
        placed.reason = f"anchors on both sides disagree: {names}"
        return
    (nearest,) = distinct
    anchor = placements[nearest.anchor]
    confidence = anchor.place.confidence * (1 - 0.5 * abs(nearest.gap_s) / window.total_seconds())
    placed.source, placed.anchor, placed.gap_s = "time-neighbour", nearest.anchor, nearest.gap_s
    p = nearest.place
    placed.place = Place(p.name, p.latitude, p.longitude, p.country, round(confidence, 4))
    placed.reason = ""


def _nearest_anchor(when, photo, timeline, times, placements, window, side: int, support: int):
    """The anchors at the smallest gap on one side (-1 before, +1 after), within the window
    and the photo's trip: [(gap_s, path)]. A recognised landmark lends its place only when
    `support` anchors (itself included) within the window agree with it: a lone recognition
    may be the model's mistake, and it would be copied to every photo around it."""
    trip = placements[photo.path].trip
    index = bisect.bisect_right(times, when)  # photos at the very same time count as before
    order = range(index - 1, -1, -1) if side < 0 else range(index, len(timeline))
    found, best = [], None
    for i in order:
        t, other = timeline[i]
        if other.path == photo.path:
            continue
        gap = (when - t).total_seconds()
        if abs(gap) > window.total_seconds() or placements[other.path].trip != trip:
            break
        if best is not None and abs(gap) > best:
            break
        anchor = placements[other.path]
        if anchor.source in ANCHORS and (anchor.source != "landmark" or anchor.support >= support):
            found.append((gap, other.path))
            best = abs(gap)
    return found


def _agrees(a: Place | None, b: Place | None, agree_km: float) -> bool:
    return (
        a is not None
        and b is not None
        and gpx.distance_km(a.latitude, a.longitude, b.latitude, b.longitude) <= agree_km
    )


def _minutes(window: timedelta) -> str:
    return f"{window.total_seconds() / 60:g} min"
