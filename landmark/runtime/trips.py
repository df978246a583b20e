"""Placing whole trips: a photo's own evidence (EXIF GPS, a confident landmark, a GPX track) or
a time neighbour's, with each camera's clock aligned first.

The rules (README, Trips):
- Clocks: a camera's offset (its clock's UTC offset, as EXIF's OffsetTimeOriginal writes it)
  is given (`--time-offset`), or written by the camera itself, or estimated from photos that pin
  both clocks: its photos of a recognised landmark against photos with a known UTC time at that
  place (a phone photo with GPS, a GPX track). An unknown offset keeps the camera on its own
  timeline: it uses only anchors among its own photos, and no GPX.
- Anchors are photos placed by their own evidence. A photo without any takes the place of the
  nearest anchor within `time_window` on its timeline and trip, unless the nearest anchor on
  the other side (also within the window) is somewhere else (farther than `agree_km`): then it
  is `unsure`, with both named. A time neighbour never becomes an anchor (no chains).
- Trips: each timeline, sorted, splits where photos are more than `trip_gap` apart.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from landmark.config import TagConfig
from landmark.runtime import gpx
from landmark.runtime.camera import Facts, parse_offset

MATCH_TOLERANCE = timedelta(minutes=10)  # a companion's photo of the same landmark, at most
MIN_PAIRS = 2  # camera photos that must agree on an estimated clock offset
MAX_OFFSET = timedelta(hours=26)


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


@dataclass(frozen=True)
class Clock:
    """A camera's clock offset and where it came from ("given", "estimated from 3 photos")."""

    offset: timedelta
    source: str


def given_offsets(cfg: TagConfig) -> dict[str, timedelta]:
    """`--time-offset "Canon EOS R6=+01:00"` entries as {camera: offset}.

    Raises:
        ValueError: an entry without `=` or with a bad offset, naming it.
    """
    offsets = {}
    for entry in cfg.time_offset:
        camera, sep, value = entry.rpartition("=")
        if not sep or not camera.strip():
            raise ValueError(f"--time-offset {entry!r}: expected CAMERA=+HH:MM")
        try:
            offsets[camera.strip()] = parse_offset(value)
        except ValueError as e:
            raise ValueError(f"--time-offset {entry!r}: {e}") from e
    return offsets


def place_all(
    photos: list[Observation],
    tracks: list[gpx.Segment],
    cfg: TagConfig,
    landmarks: list[Place] = (),
) -> dict[str, Placement]:
    """Place every photo; `landmarks` (the model's known places) name GPS-only places."""
    clocks = clocks_for(photos, tracks, cfg)
    placements = {p.path: Placement() for p in photos}
    timelines: dict[str, list[tuple[datetime, Observation]]] = defaultdict(list)
    for photo in photos:
        placed = placements[photo.path]
        when, timeline, placed.clock = _time_of(photo, clocks)
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
        for when, photo in timeline:
            if placements[photo.path].source is None:
                _time_neighbour(when, photo, timeline, placements, window, cfg.agree_km)
    return placements


def clocks_for(photos: list[Observation], tracks: list[gpx.Segment], cfg: TagConfig):
    """Each camera's clock: given, else estimated (cameras that write their offset need none)."""
    given = given_offsets(cfg)
    clocks: dict[str, Clock] = {}
    for camera in {p.facts.camera for p in photos if p.facts.camera}:
        name = camera.split(" (")[0]
        offset = given.get(camera, given.get(name))
        if offset is not None:
            clocks[camera] = Clock(offset, "given")
    references = [(p.facts.utc, p) for p in photos if p.facts.utc and (p.gps or p.landmark)]
    for camera in {p.facts.camera for p in photos if p.facts.local and not p.facts.utc}:
        if camera and camera not in clocks:
            own = [p for p in photos if p.facts.camera == camera and p.landmark and p.facts.local]
            estimate = estimate_offset(own, references, tracks, cfg.agree_km)
            if estimate is not None:
                clocks[camera] = estimate
    return clocks


def estimate_offset(own, references, tracks, agree_km: float) -> Clock | None:
    """The clock offset that puts the most of a camera's landmark photos within
    `MATCH_TOLERANCE` of a photo with a known UTC time at that place, or of a GPX track passing
    there; None unless `MIN_PAIRS` photos agree. Ties: the middle of the best stretch."""
    events: list[tuple[float, int]] = []
    for photo in own:
        lm = photo.landmark
        times = [t for t, ref in references if _agrees(_position(ref), lm, agree_km)]
        times += gpx.times_near(tracks, lm.latitude, lm.longitude, agree_km)
        spans = _merged(
            [(t - photo.facts.local) - MATCH_TOLERANCE, (t - photo.facts.local) + MATCH_TOLERANCE]
            for t in times
            if abs(t - photo.facts.local) <= MAX_OFFSET
        )
        for start, end in spans:
            events += [(start.total_seconds(), 1), (end.total_seconds(), -1)]
    best, count, best_span, start = 0, 0, (0.0, 0.0), 0.0
    for at, step in sorted(events, key=lambda e: (e[0], -e[1])):
        if step < 0 and count == best and at - start > best_span[1] - best_span[0]:
            best_span = (start, at)
        count += step
        if count > best:
            best, start, best_span = count, at, (at, at)
        elif step > 0 and count == best:
            start = at
    if best < MIN_PAIRS:
        return None
    middle = timedelta(seconds=round(sum(best_span) / 2))
    # the references' UTC minus the camera's reading is minus the clock's UTC offset
    return Clock(-middle, f"estimated from {best} photos")


def _merged(spans) -> list[list[timedelta]]:
    merged: list[list[timedelta]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _time_of(photo: Observation, clocks: dict[str, Clock]):
    """(time, timeline, how the clock is known): UTC when the clock is known, else the camera's
    own reading on the camera's own timeline."""
    facts, clock = photo.facts, clocks.get(photo.facts.camera)
    if facts.local is None:
        return None, "", ""
    if clock is not None:
        return facts.local - clock.offset, "utc", f"{clock.source} ({_offset_text(clock.offset)})"
    if facts.utc is not None:
        return facts.utc, "utc", "written by the camera"
    return facts.local, f"camera:{facts.camera}", "unknown: only its own photos are used"


def _offset_text(offset: timedelta) -> str:
    seconds = int(offset.total_seconds())
    sign, seconds = ("-" if seconds < 0 else "+"), abs(seconds)
    return f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _own_evidence(photo, placed: Placement, tracks, cfg: TagConfig, landmarks) -> None:
    if photo.gps is not None:
        placed.source = "exif"
        placed.place = _named(*photo.gps, landmarks, cfg.agree_km)
    elif photo.landmark is not None:
        placed.source, placed.place = "landmark", photo.landmark
    elif placed.utc is not None and tracks:
        fix = gpx.position_at(tracks, placed.utc, cfg.gpx_max_gap * 60)
        if fix is not None:
            confidence = (
                1.0 if fix.gap_s <= 60 else max(0.5, 1 - fix.gap_s / (cfg.gpx_max_gap * 120))
            )
            place = _named(fix.latitude, fix.longitude, landmarks, cfg.agree_km, confidence)
            placed.source, placed.place = "gpx", place
            placed.gpx_file, placed.gpx_gap_s = fix.file, fix.gap_s
    if placed.source is not None:
        placed.reason = ""


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


def _time_neighbour(when, photo, timeline, placements, window, agree_km: float) -> None:
    """Place `photo` from the nearest anchors before and after it (same timeline and trip)."""
    placed = placements[photo.path]
    times = [t for t, _ in timeline]
    anchors = []
    for side in (-1, 1):
        nearest = _nearest_anchor(when, photo, timeline, times, placements, window, side)
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


def _nearest_anchor(when, photo, timeline, times, placements, window, side: int):
    """The anchors at the smallest gap on one side (-1 before, +1 after), within the window
    and the photo's trip: [(gap_s, path)]."""
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
        if anchor.source in {"exif", "landmark", "gpx"}:
            found.append((gap, other.path))
            best = abs(gap)
    return found


def _agrees(a: Place | None, b: Place | None, agree_km: float) -> bool:
    return (
        a is not None
        and b is not None
        and gpx.distance_km(a.latitude, a.longitude, b.latitude, b.longitude) <= agree_km
    )


def _position(photo: Observation) -> Place:
    if photo.gps is not None:
        return Place("", *photo.gps)
    return photo.landmark


def _minutes(window: timedelta) -> str:
    return f"{window.total_seconds() / 60:g} min"
