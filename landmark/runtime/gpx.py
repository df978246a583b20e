"""GPX tracks: read track points (every track and segment of several files) and tell where the
track was at a moment, interpolated between two points of one segment no more than `max_gap`
apart (exiftool's geotagging does the same, with 30 minutes by default) and no farther apart
than places that agree.

Times are UTC, as GPX says; a point time with an offset (`+02:00`) is converted, and a file
whose times carry no zone at all is refused (they could be any zone).
"""

from __future__ import annotations

import bisect
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MAX_GPX_BYTES = 500_000_000
EARTH_RADIUS_KM = 6371.0088


class BadTrackError(ValueError):
    """A GPX file that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class Segment:
    """One track segment's points in time order: UTC times (naive), latitudes, longitudes."""

    file: str
    times: tuple[datetime, ...]
    latitudes: tuple[float, ...]
    longitudes: tuple[float, ...]


@dataclass(frozen=True)
class Fix:
    """Where a track says a photo was: the position, the file, and the gap between the two
    track points it was interpolated from (seconds; 0 on a point)."""

    latitude: float
    longitude: float
    file: str
    gap_s: float


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def read_tracks(paths: list[Path]) -> list[Segment]:
    """Every segment with points of every file.

    Raises:
        BadTrackError: a file that is missing, too large, not XML, not GPX, or has no timed
            points, or whose times have no time zone.
    """
    return [segment for path in paths for segment in _read_file(Path(path))]


def _read_file(path: Path) -> list[Segment]:
    if path.is_dir():
        raise BadTrackError(f"{path} is a folder, not a GPX file (photo folders go before "
                            "--gpx, whose values run to the next flag)")  # fmt: skip
    try:
        if path.stat().st_size > MAX_GPX_BYTES:
            raise BadTrackError(f"{path}: larger than {MAX_GPX_BYTES:,} bytes")
        root = ET.parse(path).getroot()
    except OSError as e:
        raise BadTrackError(f"{path}: cannot read it ({e.strerror or e})") from e
    except ET.ParseError as e:
        raise BadTrackError(f"{path}: not a GPX file (not XML: {e})") from e
    if _local(root.tag) != "gpx":
        raise BadTrackError(f"{path}: not a GPX file (its root element is <{_local(root.tag)}>)")
    segments = []
    for number, element in enumerate(_children(root, "trk", "trkseg"), 1):
        points = [_point(path, number, p) for p in element if _local(p.tag) == "trkpt"]
        points = sorted(p for p in points if p is not None)
        if len(points) >= 1:
            times, lats, lons = zip(*points, strict=True)
            segments.append(Segment(path.name, times, lats, lons))
    if not segments:
        raise BadTrackError(f"{path}: no track points with a <time> (nothing to place photos by)")
    return segments


def _point(path: Path, segment: int, element) -> tuple[datetime, float, float] | None:
    stamp = next((c.text for c in element if _local(c.tag) == "time" and c.text), None)
    if stamp is None:
        return None
    try:
        lat, lon = float(element.get("lat")), float(element.get("lon"))
        when = datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
    except (TypeError, ValueError) as e:
        raise BadTrackError(f"{path}: segment {segment} has a bad point ({e})") from e
    if when.tzinfo is None:
        raise BadTrackError(
            f"{path}: point time {stamp.strip()!r} has no time zone (GPX times are UTC: they "
            "end in Z or an offset such as +02:00); fix the file's times"
        )
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadTrackError(f"{path}: segment {segment} has a point at ({lat}, {lon})")
    return when.astimezone(UTC).replace(tzinfo=None), lat, lon


def _children(root, *names: str):
    """Elements reached from `root` through `names` (namespaces ignored: GPX 1.0 and 1.1)."""
    level = [root]
    for name in names:
        level = [c for e in level for c in e if _local(c.tag) == name]
    return level


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def position_at(
    segments: list[Segment], utc: datetime, max_gap_s: float, max_km: float
) -> Fix | None:
    """Where the tracks were at `utc`: on a point, or interpolated between the two points of a
    segment around it when they are at most `max_gap_s` and `max_km` apart (not across a
    train ride); None outside every track, or when tracks covering that moment disagree by
    more than `max_km`."""
    fixes = [fix for seg in segments if (fix := _fix(seg, utc, max_gap_s, max_km)) is not None]
    if not fixes:
        return None
    first = fixes[0]
    if any(distance_km(first.latitude, first.longitude, f.latitude, f.longitude) > max_km
           for f in fixes[1:]):  # fmt: skip
        return None
    return min(fixes, key=lambda f: f.gap_s)


def _fix(seg: Segment, utc: datetime, max_gap_s: float, max_km: float) -> Fix | None:
    i = bisect.bisect_left(seg.times, utc)
    if i < len(seg.times) and seg.times[i] == utc:
        return Fix(seg.latitudes[i], seg.longitudes[i], seg.file, 0.0)
    if i == 0 or i == len(seg.times):
        return None
    before, after = seg.times[i - 1], seg.times[i]
    gap = (after - before).total_seconds()
    lat0, lon0, lat1, lon1 = (
        seg.latitudes[i - 1],
        seg.longitudes[i - 1],
        seg.latitudes[i],
        seg.longitudes[i],
    )
    if gap > max_gap_s or distance_km(lat0, lon0, lat1, lon1) > max_km:
        return None
    share = (utc - before).total_seconds() / gap
    step = (lon1 - lon0 + 180) % 360 - 180  # the short way, also across the 180th meridian
    lon = (lon0 + share * step + 180) % 360 - 180
    return Fix(lat0 + share * (lat1 - lat0), lon, seg.file, gap)


def times_near(segments: list[Segment], latitude: float, longitude: float, km: float):
    """The UTC times at which a track point was within `km` of a place."""
    return [
        t
        for seg in segments
        for t, lat, lon in zip(seg.times, seg.latitudes, seg.longitudes, strict=True)
        if distance_km(lat, lon, latitude, longitude) <= km
    ]
