"""Placing trips on small synthetic timelines: each evidence type places what it should and
nothing else, disagreeing anchors give `unsure`, no chains, per-camera clocks (given, written,
estimated, unknown), trips split by gaps; EXIF times and GPX files, good and bad."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import timed_jpeg

from landmark.config import TagConfig
from landmark.runtime import camera, gpx, trips
from landmark.runtime.camera import Facts

T0 = datetime(2026, 3, 2, 9, 0)  # a camera's reading
TAJ = trips.Place("Taj Mahal", 27.1751, 78.0421, "India", 0.95)
QUTUB = trips.Place("Qutub Minar", 28.5245, 77.1855, "India", 0.9)
CANON, PHONE = "Canon EOS R6 (012345)", "Apple iPhone 13"


def shot(name, minutes, cam=CANON, landmark=None, gps=None, utc_offset=None):
    """A photo `minutes` after T0 on its camera's clock; `utc_offset`: the camera wrote it."""
    local = T0 + timedelta(minutes=minutes)
    utc = local - utc_offset if utc_offset is not None else None
    return trips.Observation(name, Facts(cam, local, utc), gps, landmark)


def place(photos, tracks=(), **cfg):
    return trips.place_all(photos, list(tracks), TagConfig(**cfg))


def test_a_landmark_places_its_time_neighbours_within_the_window_only():
    placed = place([shot("a", 0, landmark=TAJ), shot("b", 10), shot("c", -25), shot("d", 45)])
    assert placed["a"].source == "landmark"
    b, c, d = placed["b"], placed["c"], placed["d"]
    assert (b.source, b.anchor, b.gap_s) == ("time-neighbour", "a", 600.0)
    assert b.place.name == "Taj Mahal"
    assert (c.source, c.gap_s) == ("time-neighbour", -1500.0)
    assert 0.5 * TAJ.confidence < c.place.confidence < b.place.confidence < TAJ.confidence
    assert d.source is None and "within 30 min" in d.reason  # 45 min > the 30-minute window
    assert place([shot("a", 0, landmark=TAJ), shot("b", 10)], time_window=0)["b"].source is None


def test_disagreeing_anchors_on_both_sides_make_it_unsure_with_both_named():
    photos = [shot("a", 0, landmark=TAJ), shot("b", 10), shot("c", 25, landmark=QUTUB)]
    b = place(photos)["b"]
    assert b.source is None and [c.anchor for c in b.candidates] == ["a", "c"]
    assert "Taj Mahal (a)" in b.reason and "Qutub Minar (c)" in b.reason
    # the same places on one side: the nearest one places it
    photos = [shot("q", -20, landmark=QUTUB), shot("a", 0, landmark=TAJ), shot("b", 10)]
    assert place(photos)["b"].place.name == "Taj Mahal"
    # anchors that agree (within agree_km) on both sides: placed, from the nearer one
    near_taj = trips.Place("Taj Mahal", 27.1760, 78.0430, "India", 0.9)
    photos = [shot("a", 0, landmark=TAJ), shot("b", 10), shot("c", 15, landmark=near_taj)]
    assert place(photos)["b"].anchor == "c"


def test_no_chains_a_time_neighbour_is_never_an_anchor():
    placed = place([shot("a", 0, landmark=TAJ), shot("b", 20), shot("c", 45)])
    assert placed["b"].source == "time-neighbour"
    assert placed["c"].source is None  # 25 min after b, but b is only a time neighbour


def test_exif_gps_is_an_anchor_and_names_the_place_after_a_known_landmark():
    phone = shot("p", 0, cam=PHONE, gps=(27.1752, 78.0422), utc_offset=timedelta(hours=5.5))
    other = shot("q", 5, cam=PHONE, utc_offset=timedelta(hours=5.5))
    placed = trips.place_all([phone, other], [], TagConfig(), [TAJ])
    assert placed["p"].source == "exif" and placed["p"].place.name == "near Taj Mahal"
    assert placed["q"].source == "time-neighbour" and placed["q"].anchor == "p"


def test_a_camera_with_an_unknown_clock_never_uses_another_cameras_anchors():
    # the phone's photo at the Taj is 5 minutes from the Canon's photo on their clocks' faces,
    # but the Canon's clock offset is unknown: nothing links them
    phone = shot("p", 0, cam=PHONE, gps=(27.1751, 78.0421), utc_offset=timedelta(hours=5.5))
    placed = place([phone, shot("c", 5)])
    assert placed["c"].source is None and placed["c"].clock.startswith("unknown")
    # its own landmark photo is an anchor for it
    placed = place([phone, shot("c", 5), shot("own", 8, landmark=QUTUB)])
    assert placed["c"].anchor == "own"


def test_a_given_offset_puts_the_camera_on_the_common_timeline():
    # the Canon reads home time (UTC+01:00), the phone India time (UTC+05:30): the Canon's
    # 05:35 is the phone's 10:05
    phone = shot("p", 60, cam=PHONE, gps=(27.1751, 78.0421), utc_offset=timedelta(hours=5.5))
    canon = shot("c", 60 - 270 + 5)
    placed = place([phone, canon], time_offset=("Canon EOS R6=+01:00",))
    c = placed["c"]
    assert (c.source, c.anchor, c.gap_s) == ("time-neighbour", "p", 300)
    assert placed["c"].clock.startswith("given (+01:00)")
    with pytest.raises(ValueError, match="CAMERA=\\+HH:MM"):
        trips.given_offsets(TagConfig(time_offset=("+01:00",)))
    with pytest.raises(ValueError, match="not a UTC offset"):
        trips.given_offsets(TagConfig(time_offset=("Canon EOS R6=1 hour",)))


def test_an_offset_is_estimated_from_landmark_photos_matching_a_phone_with_gps():
    india = timedelta(hours=5, minutes=30)
    photos = [  # the phone at the Taj at 10:00 and 10:20 India time; the Canon reads UTC+01:00
        shot("p1", 60, cam=PHONE, gps=(27.1751, 78.0421), utc_offset=india),
        shot("p2", 80, cam=PHONE, gps=(27.1751, 78.0421), utc_offset=india),
        shot("c1", 60 - 270 + 2, landmark=TAJ),
        shot("c2", 80 - 270 - 3, landmark=TAJ),
        shot("c3", 80 - 270 + 1),  # no landmark: placed once the clock is known
    ]
    clocks = trips.clocks_for(photos, [], TagConfig())
    assert abs(clocks[CANON].offset - timedelta(hours=1)) <= trips.MATCH_TOLERANCE
    assert "estimated from 2 photos" in clocks[CANON].source
    assert trips.place_all(photos, [], TagConfig())["c3"].utc is not None
    # one matching photo is not enough
    assert CANON not in trips.clocks_for(photos[:3] + photos[4:], [], TagConfig())


def write_track(path: Path, start: datetime, points: int, step_s=60, zone="Z", lat=27.17):
    """A GPX file: one segment walking north from (lat, 78.04), `step_s` apart."""
    pts = "".join(
        f'<trkpt lat="{lat + i * 0.001:.4f}" lon="78.04"><time>'
        f"{(start + timedelta(seconds=i * step_s)).isoformat()}{zone}</time></trkpt>"
        for i in range(points)
    )
    path.write_text(
        '<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1">'
        f"<trk><trkseg>{pts}</trkseg></trk></gpx>"
    )
    return path


def test_gpx_places_photos_inside_the_track_only_and_interpolates(tmp_path):
    utc0 = datetime(2026, 3, 2, 4, 0)
    tracks = gpx.read_tracks([write_track(tmp_path / "walk.gpx", utc0, 11)])
    offset = ("Canon EOS R6=+05:30",)
    photos = [shot("in", 30 + 5.5), shot("out", 60 + 30), shot("before", -20)]  # local times
    placed = place(photos, tracks, time_offset=offset, time_window=0)
    fix = placed["in"]
    assert (fix.source, fix.gpx_file, fix.gpx_gap_s) == ("gpx", "walk.gpx", 60.0)
    assert fix.place.latitude == pytest.approx(27.17 + 5.5 * 0.001)
    assert placed["out"].source is None and placed["before"].source is None
    # points too far apart: no interpolation (exiftool's 30 minutes by default)
    sparse = gpx.read_tracks([write_track(tmp_path / "sparse.gpx", utc0, 3, step_s=3600)])
    assert place(photos[:1], sparse, time_offset=offset)["in"].source is None
    assert place(photos[:1], sparse, time_offset=offset, gpx_max_gap=90)["in"].source == "gpx"
    # a camera with an unknown clock is never placed by a track
    assert place(photos[:1], tracks)["in"].source is None


def test_a_track_written_in_another_time_zone_gives_the_same_places(tmp_path):
    utc0 = datetime(2026, 3, 2, 4, 0)
    z = gpx.read_tracks([write_track(tmp_path / "z.gpx", utc0, 11)])
    plus2 = gpx.read_tracks(
        [write_track(tmp_path / "p.gpx", utc0 + timedelta(hours=2), 11, zone="+02:00")]
    )
    assert z[0].times == plus2[0].times


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("this is not xml <", "not XML"),
        ("<kml></kml>", "root element is <kml>"),
        ('<gpx><trk><trkseg><trkpt lat="1" lon="2"/></trkseg></trk></gpx>', "no track points"),
        (
            '<gpx><trk><trkseg><trkpt lat="1" lon="2"><time>2026-03-02T04:00:00</time>'
            "</trkpt></trkseg></trk></gpx>",
            "has no time zone",
        ),
    ],
)
def test_bad_gpx_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.gpx"
    path.write_text(content)
    with pytest.raises(gpx.BadTrackError, match=message) as refused:
        gpx.read_tracks([path])
    assert str(path) in str(refused.value)
    with pytest.raises(gpx.BadTrackError, match="cannot read"):
        gpx.read_tracks([tmp_path / "missing.gpx"])


def test_trips_split_at_gaps_and_neighbours_stay_in_their_trip():
    photos = [shot("a", 0, landmark=TAJ), shot("b", 20), shot("x", 20 + 181)]
    placed = place(photos, time_window=240)
    assert placed["a"].trip == placed["b"].trip != placed["x"].trip
    assert placed["x"].source is None  # within the window, but on the next trip
    assert placed["x"].trip.startswith("trip 2 · 2026-03-02")


def test_photos_without_a_usable_time_are_never_placed_by_time():
    no_time = trips.Observation("screenshot", Facts("", None, None, "no EXIF time"))
    placed = place([shot("a", 0, landmark=TAJ), no_time])
    assert placed["screenshot"].source is None and placed["screenshot"].trip is None
    assert placed["screenshot"].reason == "no EXIF time"


def test_exif_times_offsets_subseconds_and_cameras_are_read():
    data = timed_jpeg("2026:03:02 10:00:05", offset="+05:30", subsec="25", make="Apple",
                      model="iPhone 13")  # fmt: skip
    facts = camera.read_facts(data)
    assert facts.camera == "Apple iPhone 13"
    assert facts.local == datetime(2026, 3, 2, 10, 0, 5, 250000)
    assert facts.utc == datetime(2026, 3, 2, 4, 30, 5, 250000)
    canon = camera.read_facts(timed_jpeg("2026:03:02 10:00:05", serial="012345"))
    assert (canon.camera, canon.utc) == (CANON, None)


@pytest.mark.parametrize(
    ("stamp", "problem"),
    [
        ("2026:13:45 99:00:00", "is not a time"),
        ("1980:01:01 00:00:00", "before 1990"),
        ("2099:01:01 00:00:00", "in the future"),
        (None, "no EXIF time"),
    ],
)
def test_broken_camera_times_are_refused_with_a_reason(stamp, problem):
    facts = camera.read_facts(timed_jpeg(stamp))
    assert facts.local is None and problem in facts.time_problem
    assert camera.read_facts(b"not a photo").time_problem.startswith("no EXIF time")
