"""Tagging photo libraries: find photos, predict their landmark, write XMP sidecars and a report.

Originals are only ever read. Per photo the tagger writes `<photo>.xmp` (keywords, GPS of the
landmark; digiKam, darktable and Lightroom read it), one line of the JSONL report, and on
request a link (or copy) in a per-landmark folder and a JPEG copy with GPS in its EXIF (the
EXIF segment is spliced in; the compressed image data is copied byte for byte).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol
from xml.sax.saxutils import escape, quoteattr

from PIL import Image
from tqdm.auto import tqdm

from landmark import tracking
from landmark.config import TagConfig
from landmark.runtime import images
from landmark.runtime.predictor import Predictor

log = logging.getLogger(__name__)

MODEL_ATTRIBUTE = "landmark:Model"
NAMESPACE = "https://github.com/landmark-mlops/landmark/ns/1.0/"


class Scorer(Protocol):
    """Answers for photos: this process (`LocalScorer`) or a Spark cluster (`spark.SparkScorer`).

    `score` takes `(photo, bytes)` pairs and yields `(photo, bytes or None, answer)`; an answer
    for a bad photo carries `error`. It may answer one by one or all at the end.
    """

    def score(
        self, photos: Iterable[tuple[Path, bytes]], top_k: int, threshold: float | None
    ) -> Iterator[tuple[Path, bytes | None, dict[str, Any]]]: ...


class LocalScorer:
    """Scores each photo in this process as soon as it comes (`Predictor`)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def score(self, photos, top_k, threshold):
        for photo, data in photos:
            (answer,) = self.predictor.predict([data], top_k, threshold, errors="report")
            yield photo, data, answer


def find_photos(paths: Iterable[Path]) -> tuple[list[Path], list[dict[str, Any]]]:
    """Every photo (JPEG, PNG, WebP) below `paths`, sorted; and the folders that could not be
    read, as report rows."""
    found, problems = set(), []

    def unreadable(error: OSError) -> None:
        problems.append({"path": str(error.filename), "status": "error", "error": str(error)})

    for path in paths:
        if path.is_file():
            found.add(path)
            continue
        if not path.exists():
            problems.append({"path": str(path), "status": "error", "error": "does not exist"})
        for folder, dirs, files in os.walk(path, onerror=unreadable):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if Path(name).suffix.lower() in images.PHOTO_SUFFIXES and not name.startswith("."):
                    found.add(Path(folder) / name)
    return sorted(found), problems


def sidecar_path(photo: Path) -> Path:
    """`photo.jpg` -> `photo.jpg.xmp`, the name digiKam and darktable look for."""
    return photo.with_name(photo.name + ".xmp")


def tagged_by(sidecar: Path) -> str | None:
    """The model recorded in one of our sidecars; "" for someone else's sidecar; None if none."""
    try:
        text = sidecar.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:  # a folder of that name, no permission: not ours to touch either way
        return ""
    match = re.search(rf'{MODEL_ATTRIBUTE}="([^"]*)"', text)
    return match[1] if match else ""


def xmp_sidecar(answer: dict[str, Any], model_id: str) -> str:
    """XMP with the landmark as keywords, its country and its coordinates as the photo's GPS."""
    location = answer["location"] or {}
    name, country = answer["name"], location.get("country", "")
    keywords = [name] + ([country] if country else [])
    hierarchy = "|".join(["Places", country, name] if country else ["Places", name])
    attributes = {
        "landmark:Label": answer["label"],
        "landmark:Probability": f"{answer['probability']:.4f}",
        MODEL_ATTRIBUTE: model_id,
    }
    if location:
        attributes["exif:GPSLatitude"] = _xmp_coordinate(location["latitude"], "NS")
        attributes["exif:GPSLongitude"] = _xmp_coordinate(location["longitude"], "EW")
        attributes["exif:GPSVersionID"] = "2.3.0.0"
    if country:
        attributes["photoshop:Country"] = country
    attrs = "\n".join(f"    {k}={quoteattr(v)}" for k, v in attributes.items())
    items = "".join(f"<rdf:li>{escape(k)}</rdf:li>" for k in keywords)
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="landmark">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:lr="http://ns.adobe.com/lightroom/1.0/"
    xmlns:exif="http://ns.adobe.com/exif/1.0/"
    xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"
    xmlns:landmark="{NAMESPACE}"
{attrs}>
   <dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>
   <lr:hierarchicalSubject><rdf:Bag><rdf:li>{escape(hierarchy)}</rdf:li></rdf:Bag></lr:hierarchicalSubject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def _xmp_coordinate(value: float, hemispheres: str) -> str:
    """XMP's GPS form "DDD,MM.mmmmmK" (degrees, decimal minutes, hemisphere)."""
    hemisphere = hemispheres[0] if value >= 0 else hemispheres[1]
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    return f"{degrees},{minutes:.5f}{hemisphere}"


def jpeg_with_gps(jpeg: bytes, latitude: float, longitude: float) -> bytes:
    """The same JPEG with GPS tags in its EXIF: only the EXIF segment changes; the other
    segments and the compressed image data are copied byte for byte (no re-encoding)."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    exif = Image.open(io.BytesIO(jpeg)).getexif()
    gps = exif.get_ifd(images.GPS_IFD)
    gps.clear()
    gps.update(
        {
            0: b"\x02\x03\x00\x00",  # GPSVersionID 2.3
            1: "N" if latitude >= 0 else "S",
            2: _dms(latitude),
            3: "E" if longitude >= 0 else "W",
            4: _dms(longitude),
        }
    )
    segments, data_start = _jpeg_segments(jpeg)
    kept = [s for s in segments if not (s[1] == 0xE1 and s[0][4:10] == b"Exif\x00\x00")]
    payload = exif.tobytes()  # b"Exif\0\0" + TIFF structure
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    head = 1 if kept and kept[0][1] == 0xE0 else 0  # after JFIF's APP0, where readers expect it
    before, after = [s[0] for s in kept[:head]], [s[0] for s in kept[head:]]
    return b"\xff\xd8" + b"".join(before) + app1 + b"".join(after) + jpeg[data_start:]


def _jpeg_segments(jpeg: bytes) -> tuple[list[tuple[bytes, int]], int]:
    """The marker segments between SOI and the first scan, and where the scan starts."""
    pos, segments = 2, []
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF:
        marker = jpeg[pos + 1]
        if marker == 0xDA:  # start of scan: compressed data follows
            break
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        segments.append((jpeg[pos : pos + 2 + length], marker))
        pos += 2 + length
    return segments, pos


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60, 4)
    return float(degrees), float(minutes), seconds


def model_id_of(source: str, info: dict[str, Any], torchscript: Path) -> str:
    """A stable name for the model, recorded in sidecars to make reruns resumable."""
    if "version" in info:
        return f"{info['name']}/{info['version']}"
    digest = hashlib.sha256(torchscript.read_bytes()).hexdigest()[:12]
    return f"{Path(source).name}@{digest}"


class Tagger:
    """Writes the outcome for each photo: sidecar, report line, organized link, GPS copy."""

    def __init__(self, cfg: TagConfig, model_id: str) -> None:
        self.cfg, self.model_id = cfg, model_id
        self.organize = Path(cfg.organize) if cfg.organize else None
        self.gps_copies = Path(cfg.gps_copies) if cfg.gps_copies else None
        self.counts: dict[str, int] = {}
        report = Path(cfg.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        self.report = report.open("a")

    def close(self) -> None:
        self.report.close()

    def triage(self, photo: Path) -> tuple[dict[str, Any] | None, bytes | None]:
        """(report row, None) when the photo needs no prediction, else (None, its bytes)."""
        row = {"path": str(photo), "model": self.model_id}
        sidecar = sidecar_path(photo)
        owner = tagged_by(sidecar)
        if owner == self.model_id:
            return {**row, "status": "skipped", "sidecar": str(sidecar)}, None
        if owner == "":
            reason = f"{sidecar.name} exists and was not written by landmark: left alone"
            return {**row, "status": "error", "error": reason}, None
        try:
            data = photo.read_bytes()
        except OSError as e:  # vanished, permission denied, ...
            return {**row, "status": "error", "error": f"{type(e).__name__}: {e.strerror}"}, None
        gps = images.gps_coordinates(data)
        if gps and not self.cfg.overwrite_gps:
            return {**row, "status": "has_gps", "photo_gps": list(gps)}, None
        return None, data

    def record(self, photo: Path, data: bytes | None, answer: dict[str, Any]) -> dict[str, Any]:
        """Act on one prediction and write its report line. `data` (the photo's bytes) is read
        again only when a GPS copy needs it and the scorer did not keep it."""
        row: dict[str, Any] = {"path": str(photo), "model": self.model_id}
        if answer.get("error"):
            return self.write({**row, "status": "error", "error": answer["error"]})
        location = answer.get("location") or {}
        row.update(
            label=answer["label"],
            name=answer["name"],
            probability=round(float(answer["probability"]), 6),
            top_k=[[t["name"], round(float(t["probability"]), 6)] for t in answer["top_k"]],
            country=location.get("country"),
            latitude=location.get("latitude"),
            longitude=location.get("longitude"),
        )
        if not answer["known"]:
            return self.write({**row, "status": "unsure"})
        try:
            sidecar = sidecar_path(photo)
            _write_atomically(sidecar, xmp_sidecar(answer, self.model_id).encode())
            row["sidecar"] = str(sidecar)
            if self.organize:
                row["organized"] = str(self._organize(photo, answer))
            if self.gps_copies and location and data is None:
                data = photo.read_bytes()
            if self.gps_copies and location and data[:2] == b"\xff\xd8":
                copy = self._unique(self.gps_copies / photo.name, photo)
                _write_atomically(
                    copy, jpeg_with_gps(data, location["latitude"], location["longitude"])
                )
                row["gps_copy"] = str(copy)
        except OSError as e:
            return self.write({**row, "status": "error", "error": f"cannot write: {e}"})
        return self.write({**row, "status": "tagged"})

    def write(self, row: dict[str, Any]) -> dict[str, Any]:
        self.report.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.report.flush()  # an interrupted run keeps every line written so far
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        return row

    def _organize(self, photo: Path, answer: dict[str, Any]) -> Path:
        country = (answer.get("location") or {}).get("country") or "Unknown country"
        folder = self.organize / _safe(country) / _safe(answer["name"])
        target = self._unique(folder / photo.name, photo)
        if target.exists() or target.is_symlink():
            return target  # the same photo, organized by an earlier run
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.cfg.copy:
            shutil.copy2(photo, target)
        else:
            target.symlink_to(photo.resolve())
        return target

    @staticmethod
    def _unique(target: Path, photo: Path) -> Path:
        """`target`, or a name with a short hash of the photo's path when another photo of the
        same name got there first."""
        if not (target.exists() or target.is_symlink()):
            return target
        if target.is_symlink() and target.resolve() == photo.resolve():
            return target
        digest = hashlib.sha1(str(photo.resolve()).encode()).hexdigest()[:8]
        return target.with_name(f"{target.stem}-{digest}{target.suffix}")


def _safe(name: str) -> str:
    return re.sub(r"[/\\:\x00]", "_", name).strip() or "_"


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content)
    tmp.replace(path)


def tag_photos(
    photos: list[Path], tagger: Tagger, scorer: Scorer, threshold: float | None = None
) -> None:
    """The tagger's one loop: triage each photo (resume, GPS, unreadable), score the rest with
    `scorer`, and record every outcome (each report line is written as soon as it is known)."""
    start = time.perf_counter()
    bar = tqdm(photos, desc="tagging", unit="photo")

    def pending() -> Iterator[tuple[Path, bytes]]:
        for i, photo in enumerate(bar, 1):
            row, data = tagger.triage(photo)
            if row is None:
                yield photo, data
            else:
                tagger.write(row)
            bar.set_postfix(photos_s=f"{i / (time.perf_counter() - start):.1f}")

    for photo, data, answer in scorer.score(pending(), tagger.cfg.top_k, threshold):
        tagger.record(photo, data, answer)


def tag(paths: list[Path], cfg: TagConfig) -> dict[str, int]:
    """Tag every photo below `paths` with `cfg.model` (an MLflow model URI or, for the local
    engine, a TorchScript file); return how many photos ended in each status."""
    if cfg.engine == "spark" and Path(cfg.model).is_file():
        raise ValueError("--engine spark needs an MLflow model URI, not a file")
    with tempfile.TemporaryDirectory() as tmp:
        torchscript, info = tracking.fetch_model(cfg.model, Path(tmp))
        model_id = model_id_of(cfg.model, info, torchscript)
        predictor = Predictor.load(torchscript)
    if cfg.engine == "spark":
        from landmark.runtime.spark import SparkScorer  # pyspark is large: only when asked

        scorer: Scorer = SparkScorer(cfg.model, predictor.metadata, cfg.spark_master)
    else:
        scorer = LocalScorer(predictor)
    photos, problems = find_photos(paths)
    log.info("%d photos to tag with %s (%s engine)", len(photos), model_id, cfg.engine)
    tagger = Tagger(cfg, model_id)
    start = time.perf_counter()
    try:
        for row in problems:
            tagger.write(row)
        tag_photos(photos, tagger, scorer, cfg.threshold)
    finally:
        tagger.close()
    seconds = time.perf_counter() - start
    log.info(
        "%d photos in %.1f s (%.1f photos/s): %s; report %s",
        len(photos), seconds, len(photos) / max(seconds, 1e-9), tagger.counts, cfg.report,
    )  # fmt: skip
    return tagger.counts
