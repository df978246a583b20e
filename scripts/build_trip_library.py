"""Build a simulated photo library of trips from a landmark data set, to benchmark placing photos
by their time neighbours and by GPX tracks.

    .venv/bin/python scripts/build_trip_library.py --data ../shared/datasets/landmarks-35 \
        --out /tmp/trips --seed 0 [--trips 48] [--held-out 5] [--force]

A traveller in India (UTC+05:30) visits one known landmark per trip, one or two trips a day from
2026-03-02, shooting bursts with a Canon (clock on home time, UTC+01:00), in some trips a Fujifilm
(India time, 7 minutes fast) and in some a phone (right clock, GPS). Landmark shots are test photos
of the trip's class; fillers (the café next door) are test photos of held-out classes, which a
proxy trained on `known/` never saw (each held-out class stands 5 km or more from every other
class, so its photos are not of a known place). Writes `known/` (links to the original class
folders), `library/YYYY-MM-DD/` (JPEG copies, only their EXIF changed), `truth.csv`,
`tracks/trip-NN.gpx` and `manifest.json`; the data set itself is only read.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from landmark.runtime.sidecars import gps_tags, jpeg_with_exif

Segment = list[tuple[float, float, datetime]]  # GPX points: latitude, longitude, UTC

INDIA = timezone(timedelta(hours=5, minutes=30))
FIRST_DAY = date(2026, 3, 2)
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MIN_TRIPS = 40
APART_KM = 5.0  # a held-out class stands at least this far from every other class
KINDS = ("landmark", "filler", "phone", "no-time")
TRUTH_COLUMNS = ("path", "trip", "kind", "camera", "class", "latitude", "longitude", "utc")


@dataclass(frozen=True)
class Camera:
    make: str
    model: str
    serial: str
    clock: timedelta  # what its clock reads minus UTC
    prefix: str  # file names: prefix + 4-digit counter + ".JPG"
    offset_time: str = ""  # OffsetTimeOriginal; only the phone writes one

    @property
    def name(self) -> str:
        return f"{self.make} {self.model}"


CAMERAS = {
    "canon": Camera("Canon", "Canon EOS R6", "012345", timedelta(hours=1), "IMG_"),
    "fuji": Camera("FUJIFILM", "X-T4", "5AB12345", timedelta(hours=5, minutes=37), "DSCF"),
    "phone": Camera("Apple", "iPhone 13", "", timedelta(hours=5, minutes=30), "IMG_E", "+05:30"),
}


@dataclass
class Photo:
    kind: str
    source: Path
    camera: str = ""  # a CAMERAS key; "" for a no-time PNG
    utc: datetime | None = None  # the true time; None for a no-time PNG
    gps: tuple[float, float] | None = None  # what the phone writes, not the truth
    path: str = ""  # relative to library/, set once every photo is known


@dataclass
class Trip:
    number: int
    cls: str
    day: date
    photos: list[Photo]
    track: bool = False


@dataclass(frozen=True)
class Sources:
    """What trips are made of: test photos by class, held-out (filler) photos, locations."""

    tests: dict[str, list[Path]]
    fillers: list[Path]
    locations: dict[str, tuple[float, float]]


def refuse(message: str) -> None:
    """Stop with exit code 2 and a message saying what is wrong and how to fix it."""
    print(f"build_trip_library: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args() -> argparse.Namespace:
    """The command line, checked: --out must be empty (or --force) and apart from --data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="train/, test/, landmarks.csv")
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trips", type=int, default=48, help=f"at least {MIN_TRIPS}")
    parser.add_argument("--held-out", type=int, default=5, help="classes the proxy never sees")
    parser.add_argument("--force", action="store_true", help="delete a non-empty --out first")
    args = parser.parse_args()
    data, out = args.data.resolve(), args.out.resolve()
    if args.trips < MIN_TRIPS:
        refuse(f"--trips {args.trips} is too few: pass {MIN_TRIPS} or more")
    if not (data / "landmarks.csv").is_file() or not (data / "test").is_dir():
        refuse(f"--data {data} has no landmarks.csv or no test/: pass the data set folder")
    if out == data or data in out.parents or out in data.parents:
        refuse(f"--out {out} overlaps the data set {data}: choose a folder outside it")
    if out.exists() and not out.is_dir():
        refuse(f"--out {out} is a file: choose a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        refuse(f"--out {out} is not empty: choose another folder or pass --force to rebuild it")
    return args


def read_sources(data: Path) -> tuple[dict[str, tuple[float, float]], dict[str, list[Path]]]:
    """Class folder -> (latitude, longitude) from landmarks.csv, and -> its test JPEGs."""
    with open(data / "landmarks.csv", newline="") as f:
        rows = csv.DictReader(f)
        locations = {r["folder"]: (float(r["latitude"]), float(r["longitude"])) for r in rows}
    tests = {}
    for folder in sorted(p for p in (data / "test").iterdir() if p.is_dir()):
        if folder.name not in locations:
            refuse(f"class {folder.name} has no row in landmarks.csv: add its location")
        jpegs = [p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg"}]
        tests[folder.name] = sorted(jpegs)
    return locations, tests


def choose_held_out(rng, tests: dict[str, list[Path]], locations, count: int) -> list[str]:
    """`count` classes with at least 8 test photos, left out of `known/` (they give fillers),
    each standing at least `APART_KM` from every other class: a held-out class must be a place
    no known class stands at. (The Qutub Minar is 50 m from the Iron Pillar: a model that
    calls its photos "Iron Pillar" puts them in the right place, which a filler standing for
    a café elsewhere would count as wrong.)"""
    eligible = [
        c
        for c, photos in tests.items()
        if len(photos) >= 8
        and all(distance_km(locations[c], locations[o]) >= APART_KM for o in tests if o != c)
    ]
    if not 0 < count <= len(eligible) or len(tests) - count < 2:
        refuse(f"--held-out {count}: pass 1 to {len(eligible)} (classes with 8+ test photos, "
               f"{APART_KM:g} km from any other)")  # fmt: skip
    return sorted(rng.sample(eligible, count))


def link_known(data: Path, known_dir: Path, known: list[str]) -> None:
    """`known/`: the data set's layout with only the known classes, as links to the originals."""
    for split in ("train", "test"):
        (known_dir / split).mkdir(parents=True)
        for cls in known:
            if (data / split / cls).is_dir():
                (known_dir / split / cls).symlink_to(data / split / cls, target_is_directory=True)
    shutil.copyfile(data / "landmarks.csv", known_dir / "landmarks.csv")


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (latitude, longitude) points."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2
    h += math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371 * math.asin(math.sqrt(h))


def moved(location: tuple[float, float], east: float, north: float) -> tuple[float, float]:
    """The point `east` and `north` metres from `location` (fine for a few km)."""
    lat, lon = location
    return lat + north / 111_320, lon + east / (111_320 * math.cos(math.radians(lat)))


def draw(rng: random.Random, pool: list[Path], count: int) -> list[Path]:
    """`count` photos from `pool`, each used once before any is used again."""
    picks: list[Path] = []
    while len(picks) < count:
        picks += rng.sample(pool, len(pool))
    return picks[:count]


def burst_offsets(rng: random.Random, count: int) -> list[list[float]]:
    """Seconds from a trip's first shot: bursts of 2-8 photos 1-60 s apart, 3-25 minutes
    between bursts, spread over about 1-4 hours (less for a short trip)."""
    span = rng.uniform(1, 4) * 3600
    bursts = min(max(round(span / 840) + 1, math.ceil(count / 8)), count // 2)
    sizes = [2] * bursts
    for _ in range(count - 2 * bursts):
        sizes[rng.choice([i for i, size in enumerate(sizes) if size < 8])] += 1
    steps = [[rng.uniform(1, 60) for _ in range(size - 1)] for size in sizes]
    gaps = [rng.uniform(3, 25) * 60 for _ in range(bursts - 1)]
    scale = (span - sum(map(sum, steps))) / sum(gaps)
    gaps = [min(max(gap * scale, 180), 1500) for gap in gaps]
    offsets, now = [], 0.0
    for burst_steps, gap in zip(steps, [0.0, *gaps], strict=True):
        now += gap
        burst = [now]
        for step in burst_steps:
            now += step
            burst.append(now)
        offsets.append(burst)
    return offsets


def fujifilm_bursts(rng: random.Random, bursts: list[list[float]]) -> set[int]:
    """In about half the trips, a few bursts (under 40 % of the shots) taken with the Fujifilm."""
    chosen: set[int] = set()
    if rng.random() < 0.5:
        return chosen
    wanted, budget = rng.randint(1, max(1, len(bursts) // 3)), 0.4 * sum(map(len, bursts))
    for index in rng.sample(range(len(bursts)), len(bursts)):
        if len(chosen) < wanted and sum(len(bursts[i]) for i in chosen | {index}) <= budget:
            chosen.add(index)
    return chosen


def shoot(rng: random.Random, number: int, cls: str, start: datetime, src: Sources) -> list[Photo]:
    """One trip's camera photos: 30-60 % landmark shots, the rest fillers, in bursts."""
    bursts = burst_offsets(rng, rng.randint(10, 60))
    count = sum(map(len, bursts))
    landmarks = rng.randint(math.ceil(0.3 * count), math.floor(0.6 * count))
    kinds = ["landmark"] * landmarks + ["filler"] * (count - landmarks)
    rng.shuffle(kinds)
    images = {
        "landmark": iter(draw(rng, src.tests[cls], landmarks)),
        "filler": iter(draw(rng, src.fillers, count - landmarks)),
    }
    fuji, photos = fujifilm_bursts(rng, bursts), []
    for index, burst in enumerate(bursts):
        camera = "fuji" if index in fuji else "canon"
        for offset in burst:
            kind = kinds[len(photos)]
            utc = start + timedelta(seconds=round(offset, 2))
            photos.append(Photo(kind, next(images[kind]), camera, utc))
    return photos


def phone_shots(rng: random.Random, trip: Trip, src: Sources) -> list[Photo]:
    """1-3 phone photos (filler images) within 4 minutes of landmark shots, GPS 10-80 m off."""
    times = [p.utc for p in trip.photos if p.kind == "landmark"]
    shots = []
    for _ in range(rng.randint(1, 3)):
        utc = rng.choice(times) + timedelta(seconds=round(rng.uniform(-240, 240), 2))
        metres, bearing = rng.uniform(10, 80), rng.uniform(0, 2 * math.pi)
        east, north = metres * math.sin(bearing), metres * math.cos(bearing)
        gps = moved(src.locations[trip.cls], east, north)
        shots.append(Photo("phone", rng.choice(src.fillers), "phone", utc, gps))
    return shots


def make_trip(
    rng: random.Random, number: int, cls: str, start: datetime, phone: set[int], src: Sources
) -> Trip:
    """A trip's photos from `start` (UTC): camera bursts, phone photos if its number is in
    `phone`, a no-time PNG every 5th trip."""
    trip = Trip(number, cls, start.astimezone(INDIA).date(), shoot(rng, number, cls, start, src))
    if number in phone:
        trip.photos += phone_shots(rng, trip, src)
    if number % 5 == 0:
        screenshot = rng.choice([p.source for p in trip.photos if p.kind == "filler"])
        trip.photos.append(Photo("no-time", screenshot))
    return trip


def bring_far_class_forward(classes: list[str], index: int, src: Sources) -> bool:
    """Swap into `index` the first class from there on 50-600 km from the one before it (a
    drive or a train ride away: another city the same afternoon); False if there is none."""
    previous = src.locations[classes[index - 1]]
    for j in range(index, len(classes)):
        if 50 <= distance_km(previous, src.locations[classes[j]]) <= 600:
            classes[index], classes[j] = classes[j], classes[index]
            return True
    return False


def plan_trips(rng: random.Random, count: int, known: list[str], src: Sources) -> list[Trip]:
    """Trips day by day from FIRST_DAY through the known classes in a seeded order: the day's
    first trip starts 08:00-11:00 India time; about a day in four has a second trip, 50-600
    km away, starting 1.5-3 h after the first one ends. A third of the trips use the phone."""
    order = rng.sample(known, len(known))
    classes = [order[i % len(order)] for i in range(count)]
    phone = set(rng.sample(range(1, count + 1), round(count / 3)))
    doubles = round(count / 5)  # d days of which d/4 have two trips: d + d/4 = count
    double_days = set(rng.sample(range(count - doubles), doubles))
    trips: list[Trip] = []
    day = FIRST_DAY
    while len(trips) < count:
        local = datetime.combine(day, time(8), INDIA) + timedelta(seconds=rng.randint(0, 10_800))
        number = len(trips) + 1
        trips.append(make_trip(rng, number, classes[number - 1], local.astimezone(UTC), phone, src))
        second = (day - FIRST_DAY).days in double_days and number < count
        if second and bring_far_class_forward(classes, number, src):
            end = max(p.utc for p in trips[-1].photos if p.utc)
            start = end + timedelta(seconds=rng.randint(5400, 10_800))
            trips.append(make_trip(rng, number + 1, classes[number], start, phone, src))
        day += timedelta(days=1)
    return trips


def choose_tracks(rng: random.Random, trips: list[Trip]) -> None:
    """About a third of the trips carry a GPX track: mostly trips without phone photos, a few
    with (so some trips have a phone photo, some a track, some neither, a few both)."""
    with_phone = [t for t in trips if any(p.kind == "phone" for p in t.photos)]
    without = [t for t in trips if all(p.kind != "phone" for p in t.photos)]
    wanted = round(len(trips) / 3)
    both = min(len(with_phone), max(2, wanted // 5))
    chosen = rng.sample(with_phone, both) + rng.sample(without, min(len(without), wanted - both))
    for trip in chosen:
        trip.track = True


def name_files(trips: list[Trip]) -> None:
    """Camera-style names in India-date day folders, each camera counting in shooting order."""
    counters: Counter[str] = Counter()
    for photo in sorted((p for t in trips for p in t.photos if p.utc), key=lambda p: p.utc):
        camera = CAMERAS[photo.camera]
        counters[photo.camera] += 1
        day = photo.utc.astimezone(INDIA).date()
        photo.path = f"{day}/{camera.prefix}{counters[photo.camera]:04d}.JPG"
    for trip in trips:
        for photo in (p for p in trip.photos if not p.utc):
            counters["screenshot"] += 1
            photo.path = f"{trip.day}/Screenshot_{counters['screenshot']:04d}.png"


def exif_editor(photo: Photo) -> Callable[[Image.Exif], None]:
    """The EXIF of one camera photo: its camera, the time its clock read, the phone's GPS."""
    camera = CAMERAS[photo.camera]
    clock = (photo.utc + camera.clock).replace(tzinfo=None)

    def edit(exif: Image.Exif) -> None:
        exif[0x010F], exif[0x0110] = camera.make, camera.model
        tags = exif.get_ifd(EXIF_IFD)
        tags[0x9003] = f"{clock:%Y:%m:%d %H:%M:%S}"  # DateTimeOriginal
        tags[0x9291] = f"{clock.microsecond // 10_000:02d}"  # SubSecTimeOriginal
        if camera.offset_time:
            tags[0x9011] = camera.offset_time  # OffsetTimeOriginal
        if camera.serial:
            tags[0xA431] = camera.serial  # BodySerialNumber
        if photo.gps:
            gps, utc = exif.get_ifd(GPS_IFD), photo.utc
            gps.update(gps_tags(*photo.gps))
            gps[7] = (float(utc.hour), float(utc.minute), utc.second + utc.microsecond / 1e6)
            gps[29] = f"{utc:%Y:%m:%d}"  # GPSDateStamp

    return edit


def write_library(trips: list[Trip], library: Path) -> None:
    """The photos: JPEG copies with new EXIF (image data untouched), PNGs with no metadata."""
    photos = sorted((p for t in trips for p in t.photos), key=lambda p: p.path)
    for photo in tqdm(photos, desc="library", unit="photo"):
        target = library / photo.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if photo.utc is None:
            with Image.open(photo.source) as img:
                img.save(target, "PNG")  # pixels only: PIL writes no EXIF unless asked
        else:
            target.write_bytes(jpeg_with_exif(photo.source.read_bytes(), exif_editor(photo)))


def track_segments(rng: random.Random, trip: Trip, location: tuple[float, float]) -> list[Segment]:
    """(lat, lon, utc) every 15 s from 10 min before the first photo to 10 min after the last: a
    smooth random walk within 400 m of the landmark; a third of the tracks lose 20 minutes."""
    times = [p.utc for p in trip.photos if p.utc]
    now = min(times).replace(microsecond=0) - timedelta(minutes=10)
    end, gap = max(times) + timedelta(minutes=10), timedelta(minutes=20)
    gap_start = now + (end - now - gap) * rng.uniform(0.2, 0.8) if rng.random() < 1 / 3 else None
    east = north = speed_east = speed_north = 0.0
    segments: list[Segment] = [[]]
    while now < end + timedelta(seconds=15):  # the last point at or just after `end`
        speed_east = 0.8 * speed_east + rng.gauss(0, 4) - 0.01 * east  # metres per step
        speed_north = 0.8 * speed_north + rng.gauss(0, 4) - 0.01 * north
        east, north = east + speed_east, north + speed_north
        shrink = min(1.0, 400 / max(math.hypot(east, north), 1e-9))
        east, north = east * shrink, north * shrink
        if gap_start and gap_start <= now < gap_start + gap:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append((*moved(location, east, north), now))
        now += timedelta(seconds=15)
    return segments


def write_gpx(path: Path, name: str, segments: list[Segment]) -> None:
    """A GPX 1.1 file with one track of the given segments."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<gpx version="1.1" creator="landmark build_trip_library"'
        ' xmlns="http://www.topografix.com/GPX/1/1">',
        f"  <trk><name>{name}</name>",
    ]
    for segment in segments:
        lines.append("    <trkseg>")
        for lat, lon, utc in segment:
            time_tag = f"<time>{utc:%Y-%m-%dT%H:%M:%SZ}</time>"
            lines.append(f'      <trkpt lat="{lat:.6f}" lon="{lon:.6f}">{time_tag}</trkpt>')
        lines.append("    </trkseg>")
    path.write_text("\n".join([*lines, "  </trk>", "</gpx>", ""]))


def write_truth(path: Path, trips: list[Trip], src: Sources) -> None:
    """truth.csv: per library photo its trip, kind, camera, source class, true place and time."""
    rows = []
    for trip in trips:
        lat, lon = src.locations[trip.cls]
        for p in trip.photos:
            camera = CAMERAS[p.camera].name if p.camera else ""
            place = (lat, lon) if p.utc else ("", "")  # a screenshot has no true place
            utc = p.utc.isoformat(timespec="milliseconds").replace("+00:00", "Z") if p.utc else ""
            trip_name = f"trip-{trip.number:02d}"
            rows.append((p.path, trip_name, p.kind, camera, p.source.parent.name, *place, utc))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TRUTH_COLUMNS)
        writer.writerows(sorted(rows))


def clock_offset(offset: timedelta) -> str:
    """timedelta(hours=5, minutes=37) -> "+05:37"."""
    minutes = int(offset.total_seconds() // 60)
    return f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def manifest(
    args: argparse.Namespace, held_out: list[str], known: list[str], trips: list[Trip]
) -> dict:
    """What was built and how: the seed, the classes, the cameras' true clocks, the counts."""
    photos = [p for t in trips for p in t.photos]
    cameras = {
        c.name: {
            "make": c.make,
            "model": c.model,
            "serial": c.serial,
            "clock": clock_offset(c.clock),  # what its clock reads minus UTC
            "offset_time_original": c.offset_time,
            "gps": key == "phone",
        }
        for key, c in CAMERAS.items()
    }
    return {
        "seed": args.seed,
        "data": str(args.data.resolve()),
        "first_day": FIRST_DAY.isoformat(),
        "local_time": "+05:30",
        "held_out": held_out,
        "known": known,
        "cameras": cameras,
        "counts": {
            "trips": len(trips),
            "days": len({t.day for t in trips}),
            "tracks": sum(t.track for t in trips),
            "photos": len(photos),
            "kinds": {kind: sum(p.kind == kind for p in photos) for kind in KINDS},
            "cameras": {c.name: sum(p.camera == key for p in photos) for key, c in CAMERAS.items()},
        },
    }


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    data, out = args.data.resolve(), args.out.resolve()
    locations, tests = read_sources(data)
    held_out = choose_held_out(rng, tests, locations, args.held_out)
    known = [c for c in tests if c not in held_out]
    if args.trips < len(known):
        refuse(f"--trips {args.trips} cannot visit all {len(known)} known classes: pass more")
    src = Sources(tests, [p for c in held_out for p in tests[c]], locations)
    trips = plan_trips(rng, args.trips, known, src)
    choose_tracks(rng, trips)
    name_files(trips)
    if out.exists():  # empty, or --force: parse_args refused anything else
        shutil.rmtree(out)
    link_known(data, out / "known", known)
    write_library(trips, out / "library")
    (out / "tracks").mkdir()
    for trip in (t for t in trips if t.track):
        name = f"trip-{trip.number:02d}"
        write_gpx(
            out / "tracks" / f"{name}.gpx", name, track_segments(rng, trip, locations[trip.cls])
        )
    write_truth(out / "truth.csv", trips, src)
    built = manifest(args, held_out, known, trips)
    (out / "manifest.json").write_text(json.dumps(built, indent=2) + "\n")  # last: the done mark
    counts = built["counts"]
    print(f"{counts['trips']} trips, {counts['days']} days, {counts['tracks']} GPX tracks: {out}")
    print("photos: " + ", ".join(f"{n} {kind}" for kind, n in counts["kinds"].items()))
    print("cameras: " + ", ".join(f"{n} {name}" for name, n in counts["cameras"].items()))
    print("held out: " + ", ".join(held_out))


if __name__ == "__main__":
    main()
