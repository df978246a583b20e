"""Placing trips on small synthetic timelines: each evidence type places what it should and
nothing else, disagreeing anchors give `unsure`, no chains, per-camera clocks (given, written,
estimated, unknown), trips split by gaps; EXIF times and GPX files, good and bad."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import timed_jpeg

from landmark.config import TagConfig
from landmark.runtime import camera, clocks, gpx, trips
from landmark.runtime.camera import Facts

T0 = datetime(2026, 3, 2, 9, 0)  # a camera's reading
TAJ = trips.Place("Taj Mahal", 27.1751, 78.0421, "India", 0.95)
QUTUB = trips.Place("Qutub Minar", 28.5245, 77.1855, "India", 0.9)
RED_FORT = trips.Place("Red Fort", 28.6562, 77.2410, "India", 0.9)  # 15 km from the Qutub
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
    photos = [shot("a", 0, landmark=QUTUB), shot("b", 10), shot("c", 25, landmark=RED_FORT)]
    b = place(photos)["b"]
    assert b.source is None and [c.anchor for c in b.candidates] == ["a", "c"]
    assert "Qutub Minar (a)" in b.reason and "Red Fort (c)" in b.reason
    # the same places on one side: the nearest one places it
    photos = [shot("r", -20, landmark=RED_FORT), shot("a", 0, landmark=QUTUB), shot("b", 10)]
    assert place(photos)["b"].place.name == "Qutub Minar"
    # anchors that agree (within agree_km) on both sides: placed, from the nearer one
    near_taj = trips.Place("Taj Mahal", 27.1760, 78.0430, "India", 0.9)
    photos = [shot("a", 0, landmark=TAJ), shot("b", 10), shot("c", 15, landmark=near_taj)]
    assert place(photos)["b"].anchor == "c"


def test_a_landmark_too_far_from_better_supported_anchors_is_no_anchor():
    # three photos of the Taj, and one "Qutub Minar" (Delhi, 180 km) five minutes later: no one
    # gets there in five minutes, and the Taj has more support
    photos = [shot(f"taj{i}", i, landmark=TAJ) for i in range(3)]
    photos += [shot("qutub?", 7, landmark=QUTUB), shot("after", 9)]
    placed = place(photos)
    wrong = placed["qutub?"]  # no anchor: where the others are is its place, by time
    assert (wrong.source, wrong.anchor, wrong.place.name) == ("time-neighbour", "taj2", "Taj Mahal")
    assert "recognised Qutub Minar, but taj2 5 min earlier is at Taj Mahal" in wrong.demoted
    assert placed["after"].anchor == "taj2" and placed["taj0"].source == "landmark"
    # as well supported on both sides: neither is an anchor
    placed = place([shot("taj", 0, landmark=TAJ), shot("qutub", 5, landmark=QUTUB)])
    assert placed["taj"].source is placed["qutub"].source is None
    # a day apart: both stand (a camera may travel)
    placed = place([shot("taj", 0, landmark=TAJ), shot("qutub", 60 * 24, landmark=QUTUB)])
    assert placed["taj"].source == placed["qutub"].source == "landmark"


def test_a_photos_own_gps_outranks_a_landmark_that_cannot_be_there():
    phone = shot("p", 0, cam=PHONE, gps=(27.1751, 78.0421), utc_offset=timedelta(hours=5.5))
    wrong = shot("q", 3, cam=PHONE, landmark=QUTUB, utc_offset=timedelta(hours=5.5))
    placed = place([phone, wrong])
    assert placed["p"].source == "exif" and placed["q"].anchor == "p"
    assert placed["q"].demoted.startswith("recognised Qutub Minar, but p 3 min earlier")


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
        clocks.given_offsets(TagConfig(time_offset=("+01:00",)))
    with pytest.raises(ValueError, match="not a UTC offset"):
        clocks.given_offsets(TagConfig(time_offset=("Canon EOS R6=1 hour",)))


def test_an_offset_is_estimated_from_landmark_photos_matching_a_phone_with_gps():
    india = timedelta(hours=5, minutes=30)
    photos = [  # the phone at the Taj at 10:00 and 10:30 India time; the Canon reads UTC+01:00
        shot("p1", 60, cam=PHONE, gps=(27.1751, 78.0421), utc_offset=india),
        shot("p2", 90, cam=PHONE, gps=(27.1751, 78.0421), utc_offset=india),
        shot("c1", 60 - 270 + 2, landmark=TAJ),
        shot("c2", 90 - 270 - 3, landmark=TAJ),
        shot("c3", 90 - 270 + 1),  # no landmark: placed once the clock is known
    ]
    found = clocks.clocks_for(photos, [], TagConfig())
    assert abs(found[CANON].offset - timedelta(hours=1)) <= clocks.MATCH_TOLERANCE
    assert "estimated from 2 photos on 2 visits" in found[CANON].source
    c3 = trips.place_all(photos, [], TagConfig())["c3"]
    assert abs(c3.utc - (T0 + timedelta(minutes=90 - 270 + 1 - 60))) <= clocks.MATCH_TOLERANCE
    # one matching photo is not enough
    assert CANON not in clocks.clocks_for(photos[:3] + photos[4:], [], TagConfig())


def test_a_burst_matched_to_one_phone_photo_is_one_visit_not_enough():
    india = timedelta(hours=5, minutes=30)
    photos = [  # the phone at the Taj the day before; a two-photo burst of the Canon there
        shot("p", 0, cam=PHONE, gps=(27.1751, 78.0421), utc_offset=india),
        shot("c1", 18 * 60, landmark=TAJ),
        shot("c2", 18 * 60 + 1, landmark=TAJ),
    ]
    assert CANON not in clocks.clocks_for(photos, [], TagConfig())


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
    placed = place(photos, time_window=240, trip_gap=180)
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


def test_photos_without_a_camera_name_never_share_a_timeline():
    scan = trips.Observation("scan", Facts("", T0, None), landmark=TAJ)
    other = trips.Observation("other", Facts("", T0 + timedelta(minutes=2), None))
    assert place([scan, other])["other"].source is None  # any two devices, unknown clocks


def test_an_ambiguous_clock_offset_is_not_estimated():
    india = timedelta(hours=5, minutes=30)
    at_taj = (27.1751, 78.0421)
    photos = [  # the phone at the Taj at sunrise and at sunset; two Canon photos fit either
        shot("dawn1", 0, cam=PHONE, gps=at_taj, utc_offset=india),
        shot("dawn2", 30, cam=PHONE, gps=at_taj, utc_offset=india),
        shot("dusk1", 600, cam=PHONE, gps=at_taj, utc_offset=india),
        shot("dusk2", 630, cam=PHONE, gps=at_taj, utc_offset=india),
        shot("c1", 300, landmark=TAJ),
        shot("c2", 330, landmark=TAJ),
    ]
    assert CANON not in clocks.clocks_for(photos, [], TagConfig())
    assert CANON in clocks.clocks_for(photos[:2] + photos[4:], [], TagConfig())


def test_a_camera_that_writes_utc_keeps_it_and_lends_it_to_its_other_photos():
    gps_time = Facts(CANON, T0, T0 - timedelta(hours=1))  # GPS time on one photo: UTC+1
    photos = [trips.Observation("g", gps_time), shot("c", 30)]
    found = clocks.clocks_for(photos, [], TagConfig())
    assert found[CANON].offset == timedelta(hours=1) and "own UTC times" in found[CANON].source
    placed = trips.place_all(photos, [], TagConfig())
    assert placed["c"].utc == T0 + timedelta(minutes=30) - timedelta(hours=1)


def test_gpx_never_interpolates_across_a_journey_or_between_disagreeing_tracks(tmp_path):
    utc0 = datetime(2026, 3, 2, 4, 0)
    offset = ("Canon EOS R6=+05:30",)
    photo = [shot("in", 40)]  # 09:40 on the camera, 04:10 UTC
    # two points 20 minutes apart but 22 km apart: a train ride, not a walk
    train = write_track(tmp_path / "train.gpx", utc0, 2, step_s=1200)
    train.write_text(train.read_text().replace('lat="27.1710"', 'lat="27.3700"'))
    assert place(photo, gpx.read_tracks([train]), time_offset=offset)["in"].source is None
    walk = write_track(tmp_path / "walk.gpx", utc0, 30)
    elsewhere = write_track(tmp_path / "far.gpx", utc0, 30, lat=28.5)
    assert place(photo, gpx.read_tracks([walk]), time_offset=offset)["in"].source == "gpx"
    both = gpx.read_tracks([walk, elsewhere])
    assert place(photo, both, time_offset=offset)["in"].source is None
    with pytest.raises(gpx.BadTrackError, match="is a folder"):
        gpx.read_tracks([tmp_path])


def test_with_anchor_support_2_a_lone_recognition_lends_its_place_to_no_one():
    lone = [shot("a", 0, landmark=TAJ), shot("b", 10)]
    assert place(lone, anchor_support=2)["b"].source is None
    assert place(lone, anchor_support=2)["a"].source == "landmark"  # its own, still
    assert place(lone)["b"].anchor == "a"  # the default: one is enough
    burst = [shot("a", 0, landmark=TAJ), shot("a2", 1, landmark=TAJ), shot("b", 10)]
    assert place(burst, anchor_support=2)["b"].anchor == "a2"
    gps = [shot("p", 0, gps=(27.1751, 78.0421)), shot("b", 10)]  # a photo's own GPS: trusted
    assert place(gps, anchor_support=2)["b"].anchor == "p"


def test_a_track_outranks_a_landmark_it_was_nowhere_near(tmp_path):
    utc0 = datetime(2026, 3, 2, 4, 0)
    tracks = gpx.read_tracks([write_track(tmp_path / "walk.gpx", utc0, 30)])  # at the Taj
    offset = ("Canon EOS R6=+05:30",)
    placed = place([shot("q", 40, landmark=QUTUB), shot("t", 42, landmark=TAJ)], tracks,
                   time_offset=offset)  # fmt: skip
    assert (
        placed["q"].source == "gpx"
        and "recognised Qutub Minar, but the track" in placed["q"].demoted
    )
    assert placed["t"].source == "landmark"


def test_a_camera_whose_clock_is_known_pins_the_clock_of_another():
    india, fuji = timedelta(hours=5, minutes=30), "FUJIFILM X-T4"
    at_taj = (27.1751, 78.0421)
    photos = [  # 10:00 India time: the phone, and the Canon (UTC+01:00) at the Taj
        shot("p1", 60, cam=PHONE, gps=at_taj, utc_offset=india),
        shot("p2", 95, cam=PHONE, gps=at_taj, utc_offset=india),
        shot("c1", 60 - 270, landmark=TAJ),
        shot("c2", 95 - 270, landmark=TAJ),
        # from 12:00 India time at the Qutub: the Canon and the Fujifilm (India time + 7 min)
        shot("c3", 180 - 270, landmark=QUTUB),
        shot("c4", 215 - 270, landmark=QUTUB),
        shot("f1", 180 + 7 + 1, cam=fuji, landmark=QUTUB),
        shot("f2", 215 + 7 - 1, cam=fuji, landmark=QUTUB),
    ]
    found = clocks.clocks_for(photos, [], TagConfig())
    assert abs(found[CANON].offset - timedelta(hours=1)) <= clocks.MATCH_TOLERANCE
    assert abs(found[fuji].offset - timedelta(hours=5, minutes=37)) <= clocks.MATCH_TOLERANCE
    assert clocks.clocks_for(photos[4:], [], TagConfig()) == {}  # nothing pins either alone


def test_a_moving_track_places_nothing_on_an_estimated_clock(tmp_path):
    india = timedelta(hours=5, minutes=30)
    at_taj = (27.1751, 78.0421)
    photos = [  # the Canon's clock (UTC+01:00) estimated from two visits with the phone
        shot("p1", 60, cam=PHONE, gps=at_taj, utc_offset=india),
        shot("p2", 95, cam=PHONE, gps=at_taj, utc_offset=india),
        shot("c1", 60 - 270, landmark=TAJ),
        shot("c2", 95 - 270, landmark=TAJ),
        shot("train", 200 - 270),  # 12:20 India time, on a train doing 47 km/h
    ]
    start = datetime(2026, 3, 2, 6, 30)  # UTC: 12:00 India time
    moving = gpx.read_tracks([write_track(tmp_path / "t.gpx", start, 60, step_s=60)])
    moving[0] = dataclasses.replace(
        moving[0],
        latitudes=tuple(27.2 + i * 0.009 for i in range(60)),  # 1 km a minute
    )
    assert place(photos, moving)["train"].source is None
    given = place(photos, moving, time_offset=("Canon EOS R6=+01:00",))["train"]
    assert given.source == "gpx"  # a given clock is trusted to the second


def test_interpolation_takes_the_short_way_across_the_180th_meridian(tmp_path):
    start = datetime(2026, 3, 2, 4, 0)
    track = tmp_path / "fiji.gpx"
    track.write_text(
        '<gpx><trk><trkseg><trkpt lat="-17.0" lon="179.998"><time>2026-03-02T04:00:00Z</time>'
        '</trkpt><trkpt lat="-17.0" lon="-179.998"><time>2026-03-02T04:02:00Z</time></trkpt>'
        "</trkseg></trk></gpx>"
    )
    fix = gpx.position_at(gpx.read_tracks([track]), start + timedelta(minutes=1), 1800, 1.0)
    assert abs(abs(fix.longitude) - 180) < 1e-6  # on the meridian, not near 0
