"""Peak memory of decoding one photo, per format, at the size limits: each photo is decoded the
way the endpoint, the app and the tagger do (`images.load_rgb(data, draft_size=256)`) in a fresh
process, whose peak RSS (VmHWM) is printed with the photo's pixel count and outcome. The
16-bit PNG of 9,400 x 9,400 px and two others are also decoded by the decoder before the safety
work (git de9cc0b), side by side.

    .venv/bin/python benchmarks/memory.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BEFORE = "de9cc0b"  # the commit before the safety work
# name: (width, height, PIL mode, format, save options)
PHOTOS = {
    "JPEG 88 MP": (9_400, 9_400, "RGB", "JPEG", {"quality": 90}),
    "JPEG progressive 88 MP": (9_400, 9_400, "RGB", "JPEG", {"progressive": True}),
    "JPEG CMYK 49 MP": (7_000, 7_000, "CMYK", "JPEG", {}),
    "PNG RGB 49 MP": (7_000, 7_000, "RGB", "PNG", {"compress_level": 1}),
    "PNG RGBA 49 MP": (7_000, 7_000, "RGBA", "PNG", {"compress_level": 1}),
    "PNG 16-bit grey 49 MP": (7_000, 7_000, "I;16", "PNG", {"compress_level": 1}),
    "PNG 16-bit grey 88 MP": (9_400, 9_400, "I;16", "PNG", {"compress_level": 1}),
    "WebP 49 MP": (7_000, 7_000, "RGB", "WEBP", {"quality": 80, "method": 0}),
    "GIF 49 MP": (7_000, 7_000, "P", "GIF", {}),
    "TIFF 49 MP": (7_000, 7_000, "RGB", "TIFF", {}),
    "BMP 49 MP": (7_000, 7_000, "RGB", "BMP", {}),
}
COMPARED = {"PNG 16-bit grey 88 MP", "PNG RGBA 49 MP", "WebP 49 MP"}  # also decoded as before
MEASURE = """
import json, sys
sys.path.insert(0, sys.argv[3])
import importlib.util
spec = importlib.util.spec_from_file_location("decoder", sys.argv[2])
decoder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decoder)
def peak():  # VmHWM: this process's own high-water mark (ru_maxrss survives fork + exec)
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0])
base = peak()
data = open(sys.argv[1], "rb").read()
try:
    img = decoder.load_rgb(data, draft_size=256)
    outcome = f"decoded to {img.size[0]}x{img.size[1]}"
except decoder.BadImageError as e:
    outcome = f"refused: {str(e)[:60]}"
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak() / 1024, "outcome": outcome}))
"""


def make(path: Path, width: int, height: int, mode: str, fmt: str, options: dict) -> None:
    """A photo-like image (gradients and noise, so codecs cannot cheat) of that size."""
    rng = np.random.default_rng(0)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    if mode == "I;16":
        grey = (y * 40_000 + x * 20_000).astype(np.uint16)
        grey += rng.integers(0, 2_000, size=(height, width), dtype=np.uint16)
        img = Image.fromarray(grey)
    else:
        base = np.stack([y * 200 + x * 50, x * 220 + 0 * y, (1 - y) * 180 + 0 * x], -1)
        noise = rng.integers(0, 30, size=(height, width, 1), dtype=np.uint8)
        img = Image.fromarray(base.astype(np.uint8) + noise).convert(mode)
    img.save(path, format=fmt, **options)


def measure(path: Path, decoder: Path) -> dict:
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(decoder), repo],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="measure the photos whose name has this")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "images_before.py"
        show = ["git", "-C", str(repo), "show", f"{BEFORE}:landmark/runtime/images.py"]
        source = subprocess.run(show, capture_output=True, text=True, check=True).stdout
        before.write_text(source)
        now = repo / "landmark" / "runtime" / "images.py"
        print(f"{'photo':33s} {'file MB':>8s} {'peak RSS MB':>12s} {'(imports)':>10s}  outcome")
        for name, (width, height, mode, fmt, options) in PHOTOS.items():
            if args.only not in name:
                continue
            path = Path(tmp) / f"photo.{fmt.lower()}"
            make(path, width, height, mode, fmt, options)
            size = path.stat().st_size / 1e6
            runs = [("", now)] + ([(" (before)", before)] if name in COMPARED else [])
            for suffix, decoder in runs:
                r = measure(path, decoder)
                print(f"{name + suffix:33s} {size:8.1f} {r['peak_mb']:12.0f} {r['base_mb']:10.0f}"
                      f"  {r['outcome']}")  # fmt: skip
            path.unlink()


if __name__ == "__main__":
    main()
