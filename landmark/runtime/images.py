"""Decoding photos safely: one function turns a file or bytes into an upright 8-bit RGB image.

Used by the data validation pass, and later by serving and tagging, so that every part of the
product accepts and rejects the same photos for the same, clearly worded reasons.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Formats we decode. MPO is the multi-picture JPEG many cameras write.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF", "TIFF"})
# File suffixes the app and the tagger look for in photo folders.
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})


class BadImageError(ValueError):
    """A photo that cannot be used; the message says why."""


def load_rgb(
    source: str | Path | bytes,
    min_side: int = 32,
    max_pixels: int = 89_478_485,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode a photo completely into an upright RGB image.

    Args:
        source: a file path or the encoded bytes.
        min_side: smallest accepted width/height in pixels.
        max_pixels: largest accepted width*height (decompression-bomb guard), checked from the
            header before any pixel is decoded.
        draft_size: if given, JPEGs may be decoded at a reduced scale (DCT scaling) as long as
            both sides stay >= this size, which makes 12-megapixel photos cheap.

    Raises:
        BadImageError: zero-byte, not an image, unsupported format, too small, too large,
            truncated or corrupt data.
    """
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    if len(data) == 0:
        raise BadImageError("zero-byte file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImageError(f"too large (decompression bomb): {e}") from e
        except Exception as e:  # PIL raises several types for unreadable data
            raise BadImageError(f"not an image file: starts with {data[:8]!r}") from e
    _check_header(img, min_side, max_pixels)
    if draft_size and img.format in {"JPEG", "MPO"}:
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
    except Exception as e:
        raise BadImageError(f"truncated or corrupt {img.format} data: {e}") from e
    return to_rgb(ImageOps.exif_transpose(img))


def _check_header(img: Image.Image, min_side: int, max_pixels: int) -> None:
    if img.format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS))
        raise BadImageError(f"unsupported format {img.format}; expected one of {allowed}")
    width, height = img.size
    if min(width, height) < min_side:
        raise BadImageError(f"too small: {width}x{height} px, need at least {min_side} px a side")
    if width * height > max_pixels:
        raise BadImageError(
            f"too large: {width}x{height} = {width * height:,} px > {max_pixels:,} "
            "(possible decompression bomb; raise max_image_pixels if the photo is genuine)"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (palette, grey, 16-bit, CMYK, with alpha) to 8-bit RGB.

    Transparent areas become white, 16-bit values are scaled (not clipped) to 8 bits.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    has_alpha = img.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


GPS_IFD = 0x8825


def gps_coordinates(data: bytes) -> tuple[float, float] | None:
    """The (latitude, longitude) in a photo's EXIF GPS tags, in decimal degrees; None if absent
    or unreadable."""
    try:
        gps = Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_IFD)
        lat, lon = _degrees(gps[2], gps[1]), _degrees(gps[4], gps[3])
    except Exception:  # no EXIF, no GPS block, malformed values: all mean "no coordinates"
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _degrees(dms, ref: str) -> float:
    degrees, minutes, seconds = (float(x) for x in dms)
    value = degrees + minutes / 60 + seconds / 3600
    return -value if str(ref).strip().upper() in {"S", "W"} else value
