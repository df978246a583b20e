"""Decoding photos safely: one function turns a file or bytes into an upright 8-bit RGB image.

Used by the data validation pass, and later by serving and tagging, so that every part of the
product accepts and rejects the same photos for the same, clearly worded reasons.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from landmark.config import LIMITS

log = logging.getLogger(__name__)

# Formats we decode. MPO is the multi-picture JPEG many cameras write.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
# Formats that decode at reduced size (DCT scaling); the others decode at full size first.
DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
# File suffixes the app and the tagger look for in photo folders.
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
ORIENTATION = 0x0112
# EXIF orientation -> the transposition that makes the photo upright (as ImageOps.exif_transpose).
UPRIGHT = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
ROWS_PER_BLOCK = 512  # 16-bit photos are scaled to 8 bits this many rows at a time


class BadImageError(ValueError):
    """A photo that cannot be used; the message says why."""


def read_photo(path: str | bytes | Path, max_bytes: int = LIMITS.max_bytes) -> bytes:
    """The bytes of a photo file, read without ever blocking or reading without bound.

    Raises:
        BadImageError: the file cannot be opened, is not a regular file (a FIFO, a device, a
            folder: these would hang or never end) or is larger than `max_bytes`.
    """
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise BadImageError(f"cannot read: {e.strerror}") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadImageError("not a regular file (a FIFO, a device or a folder)")
        if info.st_size > max_bytes:
            raise BadImageError(f"{info.st_size:,} bytes is over the {max_bytes:,}-byte limit")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise BadImageError(f"cannot read: {e.strerror}") from e
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while we read
        raise BadImageError(f"over the {max_bytes:,}-byte limit")
    return data


def load_rgb(
    source: str | Path | bytes,
    min_side: int = LIMITS.min_side,
    max_pixels: int = LIMITS.max_pixels,
    draft_size: int | None = None,
    max_full_pixels: int = LIMITS.max_full_pixels,
) -> Image.Image:
    """Decode a photo completely into an upright RGB image, in bounded memory.

    Args:
        source: a file path or the encoded bytes.
        min_side: smallest accepted width/height in pixels.
        max_pixels: largest accepted width*height of a JPEG decoded at reduced size
            (decompression-bomb guard), checked from the header before any pixel is decoded.
        draft_size: if given, the photo is reduced as early as possible as long as both sides
            stay >= this size: JPEGs decode at reduced scale (DCT scaling), other formats are
            reduced (box filter) right after decoding, so 12-megapixel photos are cheap.
        max_full_pixels: largest width*height of a photo that must decode at full size (every
            format but JPEG, and JPEGs without `draft_size`).

    Raises:
        BadImageError: zero-byte, not an image, unsupported format, too small, too large,
            truncated or corrupt data. Nothing else escapes, whatever the bytes.
    """
    data = read_photo(source) if isinstance(source, (str, Path)) else source
    if len(data) == 0:
        raise BadImageError("zero-byte file")
    img = _open(data)
    reduced = bool(draft_size) and img.format in DRAFT_FORMATS
    _check_header(img, min_side, max_pixels if reduced else min(max_pixels, max_full_pixels))
    try:
        if reduced:
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        orientation = _orientation(img)  # after load: a PNG may keep its EXIF after the pixels
        img = _reduce(img, draft_size) if draft_size else img
        for method in UPRIGHT.get(orientation, ()):
            img = img.transpose(method)
        return to_rgb(img)
    except MemoryError as e:
        raise BadImageError(f"not enough memory to decode {img.width}x{img.height} px") from e
    except Exception as e:  # PIL and its codecs raise many types for bad data
        raise BadImageError(f"truncated or corrupt {img.format} data: {e}") from e


def decoded_pixels(data: bytes, draft_size: int | None = None) -> int:
    """How many pixels `load_rgb(data, draft_size=...)` would decode, from the header alone
    (0 if there is none: decoding will refuse it at once). JPEGs count at their DCT-scaled
    size (1/2, 1/4 or 1/8 a side)."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
    except Exception:  # no header: refused before any pixel is decoded
        return 0
    scale = 1
    if draft_size and img.format in DRAFT_FORMATS:
        while scale < 8 and min(width, height) // (scale * 2) >= draft_size:
            scale *= 2
    return (width // scale) * (height // scale)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # over twice PIL's limit: refused at once
        raise BadImageError(f"too large (decompression bomb): {e}") from e
    except Exception as e:  # PIL raises several types for unreadable data
        kind = _signature(data)
        if kind:
            raise BadImageError(f"truncated or corrupt {kind} data: {e}") from e
        raise BadImageError(f"not an image file: starts with {data[:8]!r}") from e


def _signature(data: bytes) -> str:
    """The format a file's first bytes announce ("" if none we know)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    starts = {b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"II*\0": "TIFF",
              b"MM\0*": "TIFF"}  # fmt: skip
    return next((kind for magic, kind in starts.items() if data.startswith(magic)), "")


def _check_header(img: Image.Image, min_side: int, max_pixels: int) -> None:
    if img.format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise BadImageError(f"unsupported format {img.format}; expected one of {allowed}")
    width, height = img.size
    if min(width, height) < min_side:
        raise BadImageError(f"too small: {width}x{height} px, need at least {min_side} px a side")
    if width * height > max_pixels:
        raise BadImageError(
            f"too large: {width}x{height} = {width * height:,} px > {max_pixels:,} for a "
            f"{img.format} (a decompression bomb? the limits and how to raise them: README, Safety)"
        )


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1: as stored). A broken EXIF block only loses the orientation: the
    photo itself may be fine, and viewers show it as stored too."""
    try:
        return int(img.getexif().get(ORIENTATION, 1))
    except Exception as e:  # junk after b"Exif\0\0": SyntaxError, struct.error, ValueError, ...
        log.debug("ignoring unreadable EXIF: %s", e)
        return 1


def _reduce(img: Image.Image, draft_size: int) -> Image.Image:
    """Shrink by an integer factor while both sides stay >= `draft_size` (what draft does for
    JPEG), so the conversions that follow work on a small image."""
    factor = min(img.size) // draft_size
    if factor < 2:
        return img
    if img.mode in {"P", "PA", "1"}:  # palette indices cannot be averaged
        img = to_rgb(img)
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    return img.reduce(factor)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (palette, grey, 16-bit, CMYK, with alpha) to 8-bit RGB.

    Transparent areas become white, 16-bit values are scaled (not clipped) to 8 bits.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_to_8_bits(np.asarray(img)), mode="L").convert("RGB")
    has_alpha = img.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _to_8_bits(arr: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit) grey values scaled to uint8, a block of rows at a time in float32."""
    peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
    out = np.empty(arr.shape, dtype=np.uint8)
    for top in range(0, arr.shape[0], ROWS_PER_BLOCK):
        block = arr[top : top + ROWS_PER_BLOCK].astype(np.float32)
        out[top : top + ROWS_PER_BLOCK] = np.clip(block * (255.0 / peak) + 0.5, 0, 255)
    return out


GPS_IFD = 0x8825


def gps_coordinates(data: bytes) -> tuple[float, float] | None:
    """The (latitude, longitude) in a photo's EXIF GPS tags, in decimal degrees; None if absent
    or unreadable."""
    try:
        exif = Image.Exif()
        exif.load(Image.open(io.BytesIO(data)).info["exif"])  # never decodes pixels, unlike
        gps = exif.get_ifd(GPS_IFD)  # getexif() of a PNG whose EXIF follows them
    except Exception:  # no EXIF, no GPS block: no coordinates
        return None
    return gps_of(gps)


def gps_of(gps: dict) -> tuple[float, float] | None:
    """The (latitude, longitude) of an EXIF GPS IFD; None if absent or malformed."""
    try:
        lat, lon = _degrees(gps[2], gps[1]), _degrees(gps[4], gps[3])
    except Exception:  # missing tags, malformed values: all mean "no coordinates"
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _degrees(dms, ref: str) -> float:
    degrees, minutes, seconds = (float(x) for x in dms)
    value = degrees + minutes / 60 + seconds / 3600
    return -value if str(ref).strip().upper() in {"S", "W"} else value
