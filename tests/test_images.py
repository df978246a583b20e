"""Decoding photos: odd modes become RGB, orientation is applied, bad files get a clear reason."""

import numpy as np
import pytest
from conftest import (
    BAD_FILES,
    bad_file_bytes,
    exif_rotated_jpeg,
    photo_bytes,
    png_with_header_size,
    sixteen_bit_png,
)
from hostile import photo_corpus

from landmark.runtime.images import BadImageError, load_rgb


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("PNG", "L"), ("GIF", "P"), ("PNG", "RGBA"), ("PNG", "LA"), ("JPEG", "CMYK"), ("WEBP", "RGB")],
)
def test_any_mode_becomes_rgb_of_same_size(fmt, mode):
    img = load_rgb(photo_bytes(size=(80, 60), fmt=fmt, mode=mode))
    assert img.mode == "RGB"
    assert img.size == (80, 60)


def test_transparent_pixels_become_white():
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)  # fully transparent black
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(out, format="PNG")
    assert np.asarray(load_rgb(out.getvalue())).min() == 255


@pytest.mark.parametrize(("value", "expected"), [(65535, 255), (32896, 128), (0, 0)])
def test_sixteen_bit_values_are_scaled_not_clipped(value, expected):
    arr = np.asarray(load_rgb(sixteen_bit_png(value)))
    assert np.all(arr == expected)


def test_cmyk_colours_survive():
    red = np.asarray(load_rgb(photo_bytes(colour=(230, 20, 20), fmt="JPEG", mode="CMYK")))
    r, g, b = red.reshape(-1, 3).mean(axis=0)
    assert r > 180 and g < 80 and b < 80


def test_exif_orientation_is_applied():
    img = load_rgb(exif_rotated_jpeg(size=(80, 40)))
    assert img.size == (40, 80)  # portrait after rotating 90 degrees
    arr = np.asarray(img).astype(int)
    # Orientation 6: the stored left (red) half ends up on top.
    top, bottom = arr[:30].mean(axis=(0, 1)), arr[-30:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_rejected_with_reason(name):
    with pytest.raises(BadImageError, match=BAD_FILES[name][1]):
        load_rgb(bad_file_bytes(name))


def test_corrupt_jpeg_body_is_rejected():
    good = photo_bytes(size=(200, 150))
    corrupt = good[:400] + bytes(range(256)) * 8  # valid header, garbage entropy-coded data
    with pytest.raises(BadImageError):
        load_rgb(corrupt)


def test_unsupported_format_is_named():
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (64, 64)).save(out, format="PPM")
    with pytest.raises(BadImageError, match="unsupported format PPM"):
        load_rgb(out.getvalue())


def test_limits_are_parameters():
    assert load_rgb(photo_bytes(size=(20, 20)), min_side=10).size == (20, 20)
    with pytest.raises(BadImageError, match="too large"):
        load_rgb(png_with_header_size(100, 100), max_pixels=5_000)


def test_draft_decodes_large_jpeg_at_reduced_scale():
    big = photo_bytes(size=(2000, 1600))
    img = load_rgb(big, draft_size=256)
    assert min(img.size) >= 256
    assert img.size[0] < 2000  # DCT scaling kicked in
    assert load_rgb(big).size == (2000, 1600)


@pytest.mark.parametrize("kind", ["png broken exif", "webp broken exif", "jpeg broken exif"])
def test_a_broken_exif_block_costs_the_orientation_not_the_photo(kind):
    _, data, _ = photo_corpus()[kind]
    assert load_rgb(data).mode == "RGB"  # PNG and WebP raised SyntaxError before (Pillow 13)


def test_a_corrupt_png_is_refused_even_though_its_exif_is_read_first():
    with pytest.raises(BadImageError, match="corrupt PNG"):
        load_rgb(photo_corpus()["png bad crc"][1])


def test_formats_decoded_at_full_size_have_their_own_pixel_limit():
    """A JPEG decodes at reduced size (draft); a PNG must decode whole first, so it gets the
    lower `max_full_pixels`."""
    with pytest.raises(BadImageError, match="> 50,000,000 for a PNG"):
        load_rgb(png_with_header_size(8_000, 8_000), draft_size=256)  # 64 MP > 50 MP
    with pytest.raises(BadImageError, match="too large"):
        load_rgb(png_with_header_size(300, 300), max_full_pixels=80_000)


def test_a_large_sixteen_bit_png_is_reduced_before_any_float_copy():
    """16-bit values were converted through float64 at full size (8 bytes a pixel: ~2 GB for
    9,400 x 9,400 px); now the photo is reduced first and scaled in float32 blocks."""
    import tracemalloc

    data = sixteen_bit_png(40_000, size=(3_000, 2_000))
    tracemalloc.start()
    img = load_rgb(data, draft_size=256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert min(img.size) >= 256 and img.size[0] < 3_000
    assert np.asarray(img).mean() == pytest.approx(40_000 / 65535 * 255, abs=1)
    assert peak < 6_000_000  # numpy's copies; a float64 image would be 48 MB


def test_a_fifo_a_device_and_a_folder_are_refused_without_reading(tmp_path):
    import os

    from landmark.runtime.images import read_photo

    os.mkfifo(tmp_path / "fifo.jpg")  # no writer: a plain open() would wait forever
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")  # a read() would never end
    (tmp_path / "folder.jpg").mkdir()
    for name in ("fifo.jpg", "zero.jpg", "folder.jpg"):
        with pytest.raises(BadImageError, match="not a regular file"):
            load_rgb(tmp_path / name)
    (tmp_path / "big.jpg").write_bytes(b"\xff" * 2_000)
    with pytest.raises(BadImageError, match="2,000 bytes is over the 1,000-byte limit"):
        read_photo(tmp_path / "big.jpg", max_bytes=1_000)
