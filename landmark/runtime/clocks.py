"""Camera clocks: each camera's UTC offset, given (`--time-offset`), from its own photos
that carry both its time and GPS time, or estimated from photos that pin both clocks (its
recognised landmark photos against a phone photo with GPS, or a GPX track, at that place). An
estimate that another offset fits nearly as well is refused: a wrong clock would misplace every
photo of that camera.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from landmark.config import TagConfig
from landmark.runtime import gpx
from landmark.runtime.camera import parse_offset

log = logging.getLogger(__name__)
MATCH_TOLERANCE = timedelta(minutes=10)  # a companion's photo of the same landmark, at most
MIN_PAIRS = 2  # camera photos that must agree on an estimated clock offset
MIN_VISITS = 2  # ... matched on this many separate visits
MAX_OFFSET = timedelta(hours=26)


@dataclass(frozen=True)
class Clock:
    """A camera's clock offset and where it came from ("given", "estimated from 3 photos")."""

    offset: timedelta
    source: str
    photos: int = 0  # how many of the camera's photos an estimate rests on


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


def clocks_for(photos, tracks: list[gpx.Segment], cfg: TagConfig) -> dict[str, Clock]:
    """Each camera's clock: given; else from its own photos that carry both times (camera and
    GPS); else estimated from evidence that pins both clocks. A camera absent from `photos` but
    named in `--time-offset` is logged (a typo would otherwise pass silently)."""
    given = given_offsets(cfg)
    cameras = {p.facts.camera for p in photos if p.facts.camera}
    clocks: dict[str, Clock] = {}
    for camera in cameras:
        offset = given.get(camera, given.get(camera.split(" (")[0]))
        if offset is not None:
            clocks[camera] = Clock(offset, "given")
    unused = set(given) - cameras - {c.split(" (")[0] for c in cameras}
    if unused:
        log.warning("--time-offset names %s, not among the cameras found: %s",
                    ", ".join(sorted(unused)), ", ".join(sorted(cameras)) or "none")  # fmt: skip
    references = [(p.facts.utc, p) for p in photos if p.facts.utc and (p.gps or p.landmark)]
    remaining = {}  # camera -> its landmark photos, for cameras whose clock is to be estimated
    for camera in sorted(c for c in cameras if c not in clocks):
        own = [p for p in photos if p.facts.camera == camera and p.facts.local]
        if all(p.facts.utc for p in own):
            continue  # it writes its times in UTC terms itself
        both = sorted(p.facts.local - p.facts.utc for p in own if p.facts.utc)
        if both:
            clocks[camera] = Clock(both[len(both) // 2], f"from {len(both)} of its own UTC times")
        else:
            remaining[camera] = [p for p in own if p.landmark]
    for camera, clock in clocks.items():
        references += _aligned(photos, camera, clock)
    # The surest estimate first; its camera's photos then pin the clocks of the others (a
    # second camera shooting the same landmarks on the same visits).
    while remaining:
        found = {
            camera: estimate
            for camera, own in remaining.items()
            if (estimate := estimate_offset(own, references, tracks, cfg.agree_km)) is not None
        }
        if not found:
            break
        camera = max(found, key=lambda c: (found[c].photos, c))
        clocks[camera] = found[camera]
        references += _aligned(photos, camera, found[camera])
        del remaining[camera]
    for camera in sorted(cameras):
        clock = clocks.get(camera)
        known = f"{offset_text(clock.offset)} ({clock.source})" if clock else "unknown"
        log.info("clock of %s: %s", camera, known)
    return clocks


def estimate_offset(own, references, tracks, agree_km: float) -> Clock | None:
    """The clock offset that puts the most of a camera's landmark photos within
    `MATCH_TOLERANCE` of a photo with a known UTC time at that place, or of a GPX track passing
    there; the middle of the best stretch. None unless `MIN_PAIRS` photos agree, and None when
    another offset, apart from it, is nearly as good (ambiguous: a wrong clock would place a
    whole camera wrongly). A track near a place for longer than `4 * MATCH_TOLERANCE` does not
    pin a time there, so it is not used for that photo."""
    events: list[tuple[float, int]] = []
    matches: dict[str, list[datetime]] = {}  # the reference times at each landmark, once
    for photo in own:
        lm, local = photo.landmark, photo.facts.local
        if lm.name not in matches:
            near = [t for t, ref in references if _near(_position(ref), lm, agree_km)]
            passing = gpx.times_near(tracks, lm.latitude, lm.longitude, agree_km)
            matches[lm.name] = sorted(near + _short_passes(passing))
        spans = _spans(matches[lm.name], local)
        for start, end in spans:
            events += [(start.total_seconds(), 1), (end.total_seconds(), -1)]
    stretches, count, previous = [], 0, None  # (start, end, photos agreeing)
    for at, step in sorted(events, key=lambda e: (e[0], -e[1])):
        if previous is not None and at > previous and count:
            stretches.append((previous, at, count))
        count += step
        previous = at
    best = max((c for _, _, c in stretches), default=0)
    if best < MIN_PAIRS:
        return None
    level = max(MIN_PAIRS, best - 1)  # offsets less than two tolerances apart are one offset
    close = 2 * MATCH_TOLERANCE.total_seconds()
    rivals = _merged([(a, b) for a, b, c in stretches if c >= level], join=close)
    if len(rivals) > 1:
        log.info("clock offset ambiguous: %d offsets fit %d photos", len(rivals), best)
        return None
    start, end, _ = max((s for s in stretches if s[2] == best), key=lambda s: s[1] - s[0])
    # the references' UTC minus the camera's reading is minus the clock's UTC offset
    offset = -timedelta(seconds=round((start + end) / 2))
    visits = _visits(own, matches, offset)
    if visits < MIN_VISITS:
        log.info("clock offset rests on %d visit(s), not %d: not estimated", visits, MIN_VISITS)
        return None
    return Clock(offset, f"estimated from {best} photos on {visits} visits", best)


def _short_passes(times: list[datetime]) -> list[datetime]:
    """The times of the track's passes by a place that last at most `4 * MATCH_TOLERANCE`
    (a track that stays near a place for hours pins no time there)."""
    passes: list[list[datetime]] = []
    for t in sorted(times):
        if passes and t - passes[-1][-1] <= 2 * MATCH_TOLERANCE:
            passes[-1].append(t)
        else:
            passes.append([t])
    return [t for p in passes if p[-1] - p[0] <= 4 * MATCH_TOLERANCE for t in p]


def _visits(own, matches: dict[str, list[datetime]], offset: timedelta) -> int:
    """How many separate visits (reference times more than two tolerances apart) the matches
    at `offset` come from: a burst of photos matched to one phone photo is one piece of
    evidence, however many photos it has."""
    matched = sorted(
        t
        for photo in own
        for t in matches[photo.landmark.name]
        if abs(photo.facts.local - offset - t) <= MATCH_TOLERANCE
    )
    visits, last = 0, None
    for t in matched:
        if last is None or t - last > 2 * MATCH_TOLERANCE:
            visits += 1
        last = t
    return visits


def _aligned(photos, camera: str, clock: Clock) -> list[tuple[datetime, object]]:
    """A camera's placed photos (GPS or landmark) with their UTC times: references for the
    clocks of other cameras."""
    return [
        (p.facts.utc or p.facts.local - clock.offset, p)
        for p in photos
        if p.facts.camera == camera and p.facts.local and (p.gps or p.landmark)
    ]


def _spans(times, local: datetime) -> list[list[timedelta]]:
    """The offsets (reference minus camera reading) each within the tolerance of a match."""
    return _merged(
        [(t - local) - MATCH_TOLERANCE, (t - local) + MATCH_TOLERANCE]
        for t in times
        if abs(t - local) <= MAX_OFFSET
    )


def _merged(spans, join=timedelta(0)) -> list[list]:
    """Overlapping spans (and ones less than `join` apart) joined, in order."""
    merged: list[list] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + join:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def offset_text(offset: timedelta) -> str:
    seconds = int(offset.total_seconds())
    sign, seconds = ("-" if seconds < 0 else "+"), abs(seconds)
    return f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def _position(photo):
    """Where a reference photo was: its GPS, else its recognised landmark (lat, lon)."""
    if photo.gps is not None:
        return photo.gps
    return photo.landmark.latitude, photo.landmark.longitude


def _near(position: tuple[float, float], place, km: float) -> bool:
    return gpx.distance_km(*position, place.latitude, place.longitude) <= km
