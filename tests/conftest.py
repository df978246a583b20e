"""Tiny synthetic photos and data sets, built on the fly (no test depends on downloaded data),
and the helpers that start and stop real server processes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from landmark.config import SCRATCH_ARCH, DataConfig, ScratchConfig, TransferConfig
from landmark.runtime import images

CLASSES = ["00.Eiffel_Tower", "01.Golden_Gate_Bridge", "Taj_Mahal"]
LOCATIONS_CSV = (
    "folder,name,latitude,longitude,country\n"
    "00.Eiffel_Tower,Eiffel Tower,48.8584,2.2945,France\n"
    "01.Golden_Gate_Bridge,Golden Gate Bridge,37.8199,-122.4783,United States\n"
    "Taj_Mahal,Taj Mahal,27.1751,78.0421,India\n"
)


def photo_bytes(size=(80, 60), colour=(200, 30, 30), fmt="JPEG", mode="RGB", seed=0, **save):
    """An encoded photo: a noisy patch of `colour` (noise keeps JPEGs non-trivial)."""
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.int16)[None, None, : len(colour)]
    noise = rng.integers(-20, 20, size=(size[1], size[0], base.shape[-1]))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    if img.mode != mode:
        img = img.convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` (a decompression bomb's header)."""
    data = bytearray(photo_bytes(size=(64, 64), fmt="PNG"))
    # IHDR payload starts at byte 16: width, height (big-endian), then the CRC at byte 29.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def exif_rotated_jpeg(size=(80, 40)) -> bytes:
    """A JPEG stored landscape with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[:, : size[0] // 2] = (255, 0, 0)  # left half red
    arr[:, size[0] // 2 :] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", exif=exif, quality=95)
    return out.getvalue()


def sixteen_bit_png(value: int = 65535, size=(64, 48)) -> bytes:
    img = Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint16))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


# Bad files placed in train/<first class>, with the words their reason must contain.
BAD_FILES = {
    "empty.jpg": (b"", "zero-byte"),
    "notes.jpg": (b"%PDF-1.4 this is a document, not a photo", "not an image"),
    "truncated.jpg": (None, "truncated"),
    "one_pixel.png": (None, "too small"),
    "bomb.png": (None, "too large"),
}


def bad_file_bytes(name: str) -> bytes:
    content, _ = BAD_FILES[name]
    if content is not None:
        return content
    if name == "truncated.jpg":
        full = photo_bytes(size=(200, 150), seed=7)
        return full[: len(full) // 2]
    if name == "one_pixel.png":
        return photo_bytes(size=(1, 1), fmt="PNG")
    return png_with_header_size(40_000, 40_000)


def make_dataset(root: Path, train_per_class: int = 6, test_per_class: int = 2) -> Path:
    """Course-layout data set: 3 classes (numbered and plain names), odd modes and bad files."""
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
    for label, (folder, colour) in enumerate(zip(CLASSES, colours, strict=True)):
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            class_dir = root / split / folder
            class_dir.mkdir(parents=True)
            for i in range(n):
                seed = label * 1000 + i + (500 if split == "test" else 0)
                (class_dir / f"{i:03d}.jpg").write_bytes(photo_bytes(colour=colour, seed=seed))
    odd = root / "train" / CLASSES[0]
    odd_files = {
        "grey.png": photo_bytes(fmt="PNG", mode="L"),
        "palette.gif": photo_bytes(fmt="GIF", mode="P"),
        "alpha.png": photo_bytes(fmt="PNG", mode="RGBA"),
        "cmyk.jpg": photo_bytes(fmt="JPEG", mode="CMYK"),
        "sixteen_bit.png": sixteen_bit_png(),
        "rotated.jpg": exif_rotated_jpeg(),
    }
    for name, content in odd_files.items():
        (odd / name).write_bytes(content)
    for name in BAD_FILES:
        (odd / name).write_bytes(bad_file_bytes(name))
    (root / "landmarks.csv").write_text(LOCATIONS_CSV)
    # A train/test leak: the same bytes on both sides.
    shutil.copy(root / "train" / CLASSES[1] / "000.jpg", root / "test" / CLASSES[1] / "leak.jpg")
    return root


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file below `root`, to prove nothing was touched."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_zip(folder: Path, zip_path: Path, prefix: str = "") -> Path:
    """Zip `folder`'s content, entries under `prefix/` (like the course zip's landmark_images/)."""
    import zipfile

    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, (Path(prefix) / path.relative_to(folder)).as_posix())
    return zip_path


def build_model(arch: str, num_classes: int, **overrides) -> torch.nn.Module:
    """`models.build_model` with the config's defaults for what a test does not set."""
    from landmark import models

    if arch == SCRATCH_ARCH:
        return models.build_model(arch, num_classes, **asdict(ScratchConfig(**overrides)))
    defaults = {"dropout": TransferConfig.dropout, "head_size": TransferConfig.head_size}
    return models.build_model(arch, num_classes, **{**defaults, **overrides})


NAMES = ("Eiffel Tower", "Golden Gate Bridge", "Taj Mahal")


def tiny_metadata(**changes):
    """`ModelMetadata` of a 3-class model that writes every answer (threshold 0) at the
    conftest data set's landmarks."""
    from landmark.runtime.contract import Location, ModelMetadata, Preprocessing

    rows = [line.split(",") for line in LOCATIONS_CSV.strip().splitlines()[1:]]
    locations = {r[0]: Location(r[1], float(r[2]), float(r[3]), r[4]) for r in rows}
    values = dict(arch=SCRATCH_ARCH, class_folders=tuple(CLASSES), class_names=NAMES,
                  preprocessing=Preprocessing(resize_size=73, crop_size=64),
                  locations=locations, threshold=0.0)  # fmt: skip
    return ModelMetadata(**{**values, **changes})


def export_tiny_model(path: Path, metadata=None) -> Path:
    """An untrained tiny CNN exported as TorchScript (seconds, no MLflow): for the tagger's
    file and fault tests, where what matters is what is written, not which landmark."""
    from landmark import export

    torch.manual_seed(0)
    model = build_model(SCRATCH_ARCH, 3, image_size=64, width=8, depth=2, blocks=1).eval()
    return export.export_torchscript(model, metadata or tiny_metadata(), path)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "landmarks")


@pytest.fixture
def data_cfg(dataset_dir: Path, tmp_path: Path) -> DataConfig:
    return DataConfig(data=str(dataset_dir), cache_dir=str(tmp_path / "cache"), cache_size=64)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real sqlite-backed MLflow store in a temporary folder, used by this test only."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts go to ./mlruns of the temporary folder
    return uri


def train_tiny_champion(tmp: Path) -> str:
    """A `landmark-classifier` champion trained on a tiny colour data set in `tmp`; returns its
    tracking URI (sqlite, artifacts in `tmp/mlruns`). For app and tagger tests. No open-set
    evaluation: with 3 classes it would leave a proxy of 2 and a write threshold near 1, and
    these tests are about what is shown and written, not where the threshold lies."""
    from landmark import steps
    from landmark.config import (
        OpenSetConfig,
        PromoteConfig,
        ScratchConfig,
        ScratchTrainConfig,
        TuneConfig,
    )

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)  # the store's artifacts (./mlruns) stay in the temporary folder
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        data = make_dataset(tmp / "landmarks", train_per_class=10)
        data_cfg = DataConfig(data=str(data), cache_dir=str(tmp / "cache"), cache_size=64)
        steps.train_scratch(
            data_cfg,
            ScratchConfig(image_size=48, width=8, depth=2, blocks=1),
            ScratchTrainConfig(epochs=8, batch_size=8, num_workers=0),
            TuneConfig(n_trials=0),
            OpenSetConfig(held_out=0),
        )
        steps.promote(PromoteConfig())
    return uri


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """`train_tiny_champion` once per test module; MLFLOW_TRACKING_URI points at it meanwhile.
    Yields the champion's model URI."""
    uri = train_tiny_champion(tmp_path_factory.mktemp("champion"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield "models:/landmark-classifier@champion"


@pytest.fixture(scope="module")
def browser():
    """Headless chromium (`tests/browser.py`), one per test module."""
    from browser import new_browser

    driver = new_browser()
    yield driver
    driver.quit()


def gps_jpeg(colour, latitude: float, longitude: float) -> bytes:
    """A JPEG photo whose EXIF carries GPS coordinates (north/east, whole degrees)."""
    img = Image.open(io.BytesIO(photo_bytes(size=(400, 300), colour=colour, seed=4)))
    exif = Image.Exif()
    gps = exif.get_ifd(images.GPS_IFD)
    gps.update({1: "N", 2: (latitude, 0.0, 0.0), 3: "E", 4: (longitude, 0.0, 0.0)})
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def timed_jpeg(
    stamp: str | None,
    colour=(128, 128, 128),
    make="Canon",
    model="Canon EOS R6",
    serial="",
    offset="",
    subsec="",
    gps: tuple[float, float] | None = None,
    seed: int = 0,
) -> bytes:
    """A JPEG as a camera writes it: make/model (and serial), DateTimeOriginal `stamp`
    ("YYYY:MM:DD HH:MM:SS" on the camera's clock, None for none), OffsetTimeOriginal,
    SubSecTimeOriginal and GPS when given (EXIF spliced in, image data untouched)."""
    from landmark.runtime import camera, sidecars

    def edit(exif: Image.Exif) -> None:
        exif[camera.MAKE], exif[camera.MODEL] = make, model
        sub = exif.get_ifd(camera.EXIF_IFD)
        values = {
            camera.DATETIME_ORIGINAL: stamp,
            camera.OFFSET_TIME_ORIGINAL: offset,
            camera.SUBSEC_TIME_ORIGINAL: subsec,
            camera.BODY_SERIAL_NUMBER: serial,
        }
        sub.update({tag: value for tag, value in values.items() if value})
        if gps:
            exif.get_ifd(images.GPS_IFD).update(sidecars.gps_tags(*gps))

    return sidecars.jpeg_with_exif(photo_bytes(size=(320, 240), colour=colour, seed=seed), edit)


# Server processes (mlflow server, mlflow models serve, landmark app) for the end-to-end tests.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], url: str, log: Path, env: dict) -> subprocess.Popen:
    """Start a server process and wait until `url` answers 200."""
    process = subprocess.Popen(
        args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[:3]} exited: {log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return process
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    stop(process)
    raise TimeoutError(f"{url} did not come up: {log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
