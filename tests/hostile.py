"""A corpus of hostile inputs, generated on the fly (nothing of it is committed): photos whose
bytes are broken, bombs, odd modes, things that are not photos, and file-system traps.

`PHOTOS` maps a kind to `(file name, bytes, expected)`: `expected` is "answer" (a real photo,
however odd: it must be answered) or the words its refusal must contain. `make_library` lays
them out as files, with the file-system kinds (`FILES`) that only apply to folders.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from conftest import exif_rotated_jpeg, photo_bytes, png_with_header_size, sixteen_bit_png
from PIL import Image

ANSWER = "answer"


def _insert_jpeg_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """`jpeg` with one more marker segment right after SOI."""
    segment = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _insert_png_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """`png` with one more chunk right after IHDR (8-byte signature + 25-byte IHDR)."""
    return png[:33] + _png_chunk(kind, payload) + png[33:]


def raw_png(pixels: np.ndarray, colour_type: int) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): `pixels` uint8 or big-endian
    uint16, (H, W) or (H, W, C)."""
    height, width = pixels.shape[:2]
    depth = 16 if pixels.dtype.itemsize == 2 else 8
    rows = pixels.astype(pixels.dtype.newbyteorder(">")).reshape(height, -1).tobytes()
    stride = len(rows) // height
    scanlines = b"".join(b"\0" + rows[i * stride : (i + 1) * stride] for i in range(height))
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(scanlines))
        + _png_chunk(b"IEND", b"")
    )


def _riff(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"WEBP" + b"".join(
        kind + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
        for kind, data in chunks
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_chunks(webp: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 12
    while pos + 8 <= len(webp):
        kind, size = webp[pos : pos + 4], struct.unpack("<I", webp[pos + 4 : pos + 8])[0]
        chunks.append((kind, webp[pos + 8 : pos + 8 + size]))
        pos += 8 + size + size % 2
    return chunks


def webp_extended(width: int = 80, height: int = 60, exif: bytes = b"") -> bytes:
    """A lossy WebP in the extended (VP8X) layout with an optional EXIF chunk; the canvas size
    in VP8X is `width` x `height` (a bomb's header when larger than the image)."""
    image = [c for c in _webp_chunks(photo_bytes(size=(80, 60), fmt="WEBP")) if c[0] == b"VP8 "]
    flags = 0x08 if exif else 0
    vp8x = struct.pack("<I", flags) + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    return _riff([(b"VP8X", vp8x), *image, *([(b"EXIF", exif)] if exif else [])])


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims `width` x `height`."""
    data = bytearray(photo_bytes(size=(64, 64)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_with_screen(width: int, height: int) -> bytes:
    data = bytearray(photo_bytes(size=(64, 64), fmt="GIF", mode="P"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen size
    return bytes(data)


def _animated(fmt: str) -> bytes:
    frames = [Image.open(io.BytesIO(photo_bytes(colour=c, seed=i))) for i, c in
              enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)])]  # fmt: skip
    out = io.BytesIO()
    frames[0].save(out, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def _huge_exif_jpeg() -> bytes:
    """A JPEG whose EXIF is just under a segment's 64 KB: adding GPS cannot fit."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 65_400  # ImageDescription
    out = io.BytesIO()
    Image.open(io.BytesIO(photo_bytes(size=(200, 150)))).save(out, format="JPEG", exif=exif)
    return out.getvalue()


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    out = io.BytesIO()
    Image.open(io.BytesIO(photo_bytes(size=(80, 60)))).save(out, format="JPEG", exif=exif)
    return out.getvalue()


def _palette_with_transparency() -> bytes:
    img = Image.open(io.BytesIO(photo_bytes(size=(80, 60), fmt="PNG"))).convert("P")
    out = io.BytesIO()
    img.save(out, format="PNG", transparency=0)
    return out.getvalue()


def _flip_png_idat_byte(png: bytes) -> bytes:
    data = bytearray(png)
    data[data.index(b"IDAT") + 10] ^= 0xFF  # the chunk's CRC no longer matches
    return bytes(data)


JUNK = bytes(range(256)) * 4
_GOOD_JPEG = photo_bytes(size=(200, 150), seed=11)
_GOOD_PNG = photo_bytes(size=(200, 150), fmt="PNG", seed=12)
_GOOD_WEBP = photo_bytes(size=(200, 150), fmt="WEBP", seed=13)
_GREY16 = np.linspace(0, 65535, 120 * 90).astype(np.uint16).reshape(90, 120)

# kind: (file name, bytes, "answer" or the words of the refusal)
PHOTOS: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "jpeg broken exif": ("exif.jpg", lambda: _insert_jpeg_segment(
        _GOOD_JPEG, 0xE1, b"Exif\0\0" + JUNK), ANSWER),
    "png broken exif": ("exif.png", lambda: _insert_png_chunk(_GOOD_PNG, b"eXIf", JUNK), ANSWER),
    "webp broken exif": ("exif.webp", lambda: webp_extended(exif=b"Exif\0\0" + JUNK), ANSWER),
    "jpeg exif orientation 99": ("orient99.jpg", lambda: _exif_orientation(99), ANSWER),
    "jpeg exif rotated": ("rotated.jpg", exif_rotated_jpeg, ANSWER),
    "jpeg huge exif": ("huge-exif.jpg", _huge_exif_jpeg, ANSWER),
    "jpeg truncated": ("cut.jpg", lambda: _GOOD_JPEG[: len(_GOOD_JPEG) // 2], "truncated"),
    "png truncated": ("cut.png", lambda: _GOOD_PNG[: len(_GOOD_PNG) // 2], "truncated"),
    "webp truncated": ("cut.webp", lambda: _GOOD_WEBP[: len(_GOOD_WEBP) // 2], "truncated"),
    "jpeg corrupt body": ("garbage.jpg", lambda: _GOOD_JPEG[:400] + JUNK * 8, "corrupt"),
    "png bad crc": ("crc.png", lambda: _flip_png_idat_byte(_GOOD_PNG), "corrupt"),
    "jpeg trailing junk": ("trailing.jpg", lambda: _GOOD_JPEG + JUNK, ANSWER),
    "jpeg progressive": ("progressive.jpg", lambda: photo_bytes(
        size=(200, 150), progressive=True), ANSWER),
    "jpeg pixel bomb": ("bomb.jpg", lambda: _jpeg_with_size(60_000, 60_000), "too large"),
    "png pixel bomb": ("bomb.png", lambda: png_with_header_size(40_000, 40_000), "too large"),
    "png 16-bit pixel bomb": ("bomb16.png", lambda: _resize_header(
        raw_png(_GREY16, 0), 9_400, 9_400), "too large"),
    "webp pixel bomb": ("bomb.webp", lambda: webp_extended(16_383, 16_383), "too large"),
    "gif pixel bomb": ("bomb.gif.png", lambda: _gif_with_screen(65_535, 65_535), "too large"),
    "png 16-bit grey": ("grey16.png", lambda: raw_png(_GREY16, 0), ANSWER),
    "png 16-bit rgb": ("rgb16.png", lambda: raw_png(
        np.stack([_GREY16, _GREY16[::-1], _GREY16[:, ::-1]], -1), 2), ANSWER),
    "png 16-bit grey (Pillow)": ("sixteen.png", lambda: sixteen_bit_png(40_000), ANSWER),
    "jpeg cmyk": ("cmyk.jpg", lambda: photo_bytes(fmt="JPEG", mode="CMYK"), ANSWER),
    "png palette transparent": ("palette.png", _palette_with_transparency, ANSWER),
    "png grey alpha": ("grey-alpha.png", lambda: photo_bytes(fmt="PNG", mode="LA"), ANSWER),
    "gif animated": ("animated.gif.png", lambda: _animated("GIF"), ANSWER),
    "webp animated": ("animated.webp", lambda: _animated("WEBP"), ANSWER),
    "bmp named jpg": ("bitmap.jpg", lambda: photo_bytes(fmt="BMP"), ANSWER),
    "tiff named png": ("tiff.png", lambda: photo_bytes(fmt="TIFF"), ANSWER),
    "panorama 4000x40": ("panorama.jpg", lambda: photo_bytes(size=(4000, 40)), ANSWER),
    "too small 8x8": ("tiny.png", lambda: photo_bytes(size=(8, 8), fmt="PNG"), "too small"),
    "zero bytes": ("empty.jpg", lambda: b"", "zero-byte"),
    "text named jpg": ("notes.jpg", lambda: b"Dear diary, today I saw the Eiffel Tower.\n" * 20,
                       "not an image"),  # fmt: skip
    "pdf named jpg": ("document.jpg", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\n",
                      "not an image"),  # fmt: skip
    "svg named png": ("drawing.png", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>',
                      "not an image"),  # fmt: skip
    "html named webp": ("page.webp", lambda: b"<!doctype html><title>hi</title>", "not an image"),
    "ppm named jpg": ("netpbm.jpg", lambda: photo_bytes(fmt="PPM"), "unsupported format"),
}  # fmt: skip


def _resize_header(png: bytes, width: int, height: int) -> bytes:
    data = bytearray(png)
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def photo_corpus() -> dict[str, tuple[str, bytes, str]]:
    """Every photo kind: `(file name, bytes, expected)`."""
    return {kind: (name, make(), expected) for kind, (name, make, expected) in PHOTOS.items()}


DEEP = 1_100  # nested folders, more than Python's recursion limit
LONG_NAME = "n" * 248 + ".jpg"  # 252 bytes: fine, but its sidecar's name (256) is too long


def make_library(root: Path) -> dict[str, tuple[Path, str]]:
    """Every photo kind as a file below `root`, plus the file-system kinds: odd names, FIFOs,
    devices, link loops, deep folders. {kind: (path, expected)}; expected "answer" means the
    photo is answered (tagged or unsure), anything else is words of its report line's error."""
    root.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for kind, (name, data, expected) in photo_corpus().items():
        (root / name).write_bytes(data)
        kinds[kind] = (root / name, expected)
    good = photo_bytes(size=(120, 90), seed=21)
    names = {
        "name not utf-8": os.fsdecode(b"caf\xe9.jpg"),
        "name with wildcards": "a[1]{x}*?.jpg",
        "name with newline and quotes": 'line\nbreak "quoted" \u00fcber.jpg',
        "name starting with a dash": "-rf.jpg",
    }
    for kind, name in names.items():
        (root / name).write_bytes(good)
        kinds[kind] = (root / name, ANSWER)
    (root / LONG_NAME).write_bytes(good)
    kinds["name too long for a sidecar"] = (root / LONG_NAME, "too long")
    os.mkfifo(root / "fifo.jpg")
    kinds["fifo named jpg"] = (root / "fifo.jpg", "not a regular file")
    (root / "zero.jpg").symlink_to("/dev/zero")
    kinds["link to /dev/zero"] = (root / "zero.jpg", "not a regular file")
    (root / "loop.jpg").symlink_to("loop.jpg")
    kinds["symlink loop"] = (root / "loop.jpg", "cannot read")
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    kinds["dangling symlink"] = (root / "dangling.jpg", "cannot read")
    (root / "fifo-sidecar.jpg").write_bytes(good)
    os.mkfifo(root / "fifo-sidecar.jpg.xmp")
    kinds["sidecar name is a fifo"] = (root / "fifo-sidecar.jpg", "not written by landmark")
    deep = root
    for _ in range(DEEP):  # one by one: Path.mkdir(parents=True) recurses
        deep = deep / "d"
        deep.mkdir()
    (deep / "deep.jpg").write_bytes(good)
    kinds["1,100 nested folders"] = (deep / "deep.jpg", ANSWER)
    (root / "folder.jpg").mkdir()  # a folder with a photo's name: not a photo, not an error
    (root / "loop-folder").symlink_to(".")  # a link to its own folder: never followed
    return kinds


def tree_snapshot(root: Path) -> dict[bytes, tuple[str, str]]:
    """What is below `root`, as {relative path (bytes): (kind, sha256 or link target)}: proof
    that nothing was touched. Never reads a FIFO or a device; any depth."""
    out, stack = {}, [os.fsencode(root)]
    while stack:
        folder = stack.pop()
        for entry in os.scandir(folder):
            info = entry.stat(follow_symlinks=False)
            key = os.path.relpath(entry.path, os.fsencode(root))
            if stat.S_ISLNK(info.st_mode):
                out[key] = ("link", os.fsdecode(os.readlink(entry.path)))
            elif stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
            elif stat.S_ISREG(info.st_mode):
                with open(entry.path, "rb") as f:
                    out[key] = ("file", hashlib.sha256(f.read()).hexdigest())
            else:
                out[key] = ("special", oct(info.st_mode))
    return out


def remove_tree(root: Path) -> None:
    """`shutil.rmtree` without its recursion (it fails on `DEEP` folders, and so would
    pytest's clean-up of old temporary folders)."""
    folders, stack = [], [os.fsencode(root)]
    while stack:
        folder = stack.pop()
        folders.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)
