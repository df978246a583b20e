"""What a photo's EXIF says about when and with what it was taken: the camera (make, model,
serial), the time on its clock (DateTimeOriginal with sub-seconds), the clock's UTC offset if
the camera wrote one (OffsetTimeOriginal), and the GPS time if it has GPS.

Times outside 1990..tomorrow are refused as unset or broken clocks (`Facts.time_problem` says
why); a photo without a usable time is never placed by time.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from PIL import Image

from landmark.runtime import images

EXIF_IFD = 0x8769
MAKE, MODEL = 0x010F, 0x0110
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL, SUBSEC_TIME_ORIGINAL = 0x9003, 0x9011, 0x9291
BODY_SERIAL_NUMBER = 0xA431
GPS_TIME, GPS_DATE = 7, 29
EARLIEST = datetime(1990, 1, 1)
OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})(?::?(\d{2}))?$")


@dataclass(frozen=True)
class Facts:
    """A photo's camera and times. `local` is the camera clock's reading (naive); `utc` is
    known when the camera wrote its clock's offset (or, failing that, from GPS time)."""

    camera: str = ""
    local: datetime | None = None
    utc: datetime | None = None
    time_problem: str = ""
    gps: tuple[float, float] | None = None  # the photo's own EXIF GPS (latitude, longitude)


def parse_offset(text: str) -> timedelta:
    """ "+05:30", "-01:00", "+0530", "-01:00:30" -> the offset; ValueError for anything else."""
    match = OFFSET.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a UTC offset like +05:30 or -01:00")
    sign, hours, minutes, seconds = match.groups()
    value = timedelta(hours=int(hours), minutes=int(minutes), seconds=int(seconds or 0))
    if value > timedelta(hours=26):
        raise ValueError(f"{text!r} is more than 26 hours: not a clock offset")
    return -value if sign == "-" else value


def read_facts(data: bytes, now: datetime | None = None) -> Facts:
    """The camera, times and GPS in a photo's EXIF, parsed once (never decodes pixels)."""
    try:
        exif = Image.Exif()
        exif.load(Image.open(io.BytesIO(data)).info.get("exif", b""))
        sub = exif.get_ifd(EXIF_IFD)
        gps = exif.get_ifd(images.GPS_IFD)
    except Exception:  # no EXIF or unreadable EXIF: nothing known
        return Facts(time_problem="no EXIF time (DateTimeOriginal)")
    camera = camera_name(exif.get(MAKE), exif.get(MODEL), sub.get(BODY_SERIAL_NUMBER))
    local, utc, problem = _times(sub, gps, now or datetime.now(UTC).replace(tzinfo=None))
    return Facts(camera, local, utc, problem, images.gps_of(gps))


def _times(sub, gps, now: datetime) -> tuple[datetime | None, datetime | None, str]:
    """(camera time, UTC time if known, why there is no usable time)."""
    raw = sub.get(DATETIME_ORIGINAL)
    if raw is None:
        return None, None, "no EXIF time (DateTimeOriginal)"
    try:
        local = _exif_time(str(raw), sub.get(SUBSEC_TIME_ORIGINAL))
    except ValueError:
        return None, None, f"DateTimeOriginal {str(raw)[:40]!r} is not a time"
    problem = _implausible(local, now)
    if problem:
        return None, None, problem
    try:
        offset = sub.get(OFFSET_TIME_ORIGINAL)
        utc = local - parse_offset(str(offset)) if offset else _gps_utc(gps)
    except ValueError:  # a broken offset: the camera's clock offset then decides
        utc = None
    return local, utc, ""


def camera_name(make, model, serial=None) -> str:
    """ "Canon" + "Canon EOS R6" + "012345" -> "Canon EOS R6 (012345)"; "" when unknown."""
    make, model = _text(make), _text(model)
    name = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    serial = _text(serial)
    return f"{name} ({serial})" if name and serial else name


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return " ".join(str(value or "").replace("\x00", " ").split())


def _exif_time(raw: str, subsec) -> datetime:
    value = datetime.strptime(raw.strip().rstrip("\x00"), "%Y:%m:%d %H:%M:%S")
    digits = _text(subsec)
    if digits.isdigit():
        value += timedelta(seconds=float(f"0.{digits}"))
    return value


def _implausible(local: datetime, now: datetime) -> str:
    if local < EARLIEST:
        return f"camera time {local:%Y-%m-%d %H:%M} is before 1990: clock not set?"
    if local > now + timedelta(days=1):
        return f"camera time {local:%Y-%m-%d %H:%M} is in the future: clock wrong?"
    return ""


def _gps_utc(gps) -> datetime | None:
    """GPSDateStamp + GPSTimeStamp (always UTC), if both are there and valid."""
    if GPS_DATE not in gps or GPS_TIME not in gps:
        return None
    try:
        day = datetime.strptime(_text(gps[GPS_DATE]), "%Y:%m:%d")
        hours, minutes, seconds = (float(x) for x in gps[GPS_TIME])
    except (ValueError, TypeError, ZeroDivisionError):
        return None
    return day + timedelta(hours=hours, minutes=minutes, seconds=seconds)
