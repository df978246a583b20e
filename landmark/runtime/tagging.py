"""Tagging photo libraries: find photos, predict their landmark, write XMP sidecars and a report.

Originals are only ever read. Per photo the tagger writes `<photo>.xmp` (keywords, GPS of the
landmark; digiKam, darktable and Lightroom read it), one line of the JSONL report, and on
request a link (or copy) in a per-landmark folder and a JPEG copy with GPS in its EXIF (the
EXIF segment is spliced in; the compressed image data is copied byte for byte).

Nothing half-written is ever taken for done: every file is written under a temporary name
(`.landmark-<pid>-*.tmp`, created with O_EXCL/O_NOFOLLOW) and renamed into place, the sidecar
last of a photo's outputs; a rerun completes what an interrupted run left and removes its
temporary files. One bad photo costs one report line, never the run (README, Safety).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from landmark import tracking
from landmark.config import TagConfig
from landmark.runtime import files, images
from landmark.runtime.contract import ModelMetadata
from landmark.runtime.predictor import Predictor
from landmark.runtime.sidecars import (
    LABEL_ATTRIBUTE,
    MODEL_ATTRIBUTE,
    PROBABILITY_ATTRIBUTE,
    jpeg_with_gps,
    read_sidecar,
    sidecar_path,
    tagged_by,
    xmp_sidecar,
)

log = logging.getLogger(__name__)


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
            try:
                (answer,) = self.predictor.predict([data], top_k, threshold, errors="report")
            except Exception as e:  # not the photo's fault (a bad photo answers an error)
                log.exception("scoring %s failed", photo)
                answer = {"error": f"scoring failed: {type(e).__name__}: {e}"}
            yield photo, data, answer


def find_photos(
    paths: Iterable[Path], exclude: Iterable[Path] = ()
) -> tuple[list[Path], list[dict[str, Any]]]:
    """Every photo (JPEG, PNG, WebP) below `paths`, sorted; and the folders that could not be
    read, as report rows. Hidden files and folders, and the folders in `exclude` (our own
    outputs), are left out; symbolic links to folders are not followed. Any depth: the walk
    keeps its own stack."""
    found: set[Path] = set()
    problems: list[dict[str, Any]] = []
    skip = {p.resolve() for p in exclude}
    for path in paths:
        if not path.exists() and not path.is_symlink():
            problems.append({"path": str(path), "status": "error", "error": "does not exist"})
        elif not path.is_dir():
            found.add(path)  # given by name: triage says what is wrong with it, if anything
        else:
            found.update(_walk(path, skip, problems))
    return sorted(found), problems


def _walk(root: Path, skip: set[Path], problems: list[dict[str, Any]]) -> Iterator[Path]:
    def unreadable(error: OSError) -> None:
        problems.append({"path": str(error.filename), "status": "error", "error": str(error)})

    for path in files.walk(root, lambda folder: folder.resolve() in skip, unreadable):
        if path.suffix.lower() in images.PHOTO_SUFFIXES:
            yield path


def model_id_of(source: str, info: dict[str, Any], torchscript: Path) -> str:
    """A stable name for the model, recorded in sidecars to make reruns resumable."""
    if "version" in info:
        return f"{info['name']}/{info['version']}"
    digest = hashlib.sha256(torchscript.read_bytes()).hexdigest()[:12]
    return f"{Path(source).name}@{digest}"


@dataclasses.dataclass
class Triage:
    """What a photo needs: a report `row` (nothing to do), or scoring of its `data`, or, with
    `answer` (from our own sidecar), only the outputs a former run did not finish."""

    row: dict[str, Any] | None = None
    data: bytes | None = None
    answer: dict[str, Any] | None = None


class Tagger:
    """Writes the outcome for each photo: organized link, GPS copy, sidecar, report line."""

    def __init__(self, cfg: TagConfig, model_id: str, metadata: ModelMetadata) -> None:
        self.cfg, self.model_id, self.metadata = cfg, model_id, metadata
        self.organize = Path(cfg.organize) if cfg.organize else None
        self.gps_copies = Path(cfg.gps_copies) if cfg.gps_copies else None
        self.counts: dict[str, int] = {}
        report = Path(cfg.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        files.end_last_line(report)
        self.report = report.open("a", encoding="utf-8")

    def close(self) -> None:
        self.report.close()

    def outputs(self) -> list[Path]:
        """The folders this run writes into besides the photos' own (never searched for photos)."""
        return [p for p in (self.organize, self.gps_copies) if p is not None]

    def triage(self, photo: Path) -> Triage:
        """What `photo` needs, from its sidecar, its bytes and its EXIF GPS."""
        row = {"path": str(photo), "model": self.model_id}
        sidecar = sidecar_path(photo)
        attributes = read_sidecar(sidecar)
        if attributes == {}:
            reason = f"{sidecar.name} exists and was not written by landmark: left alone"
            return Triage({**row, "status": "error", "error": reason})
        problem = _unwritable(sidecar)
        if problem:  # known before any output is written, so none is left without its sidecar
            return Triage({**row, "status": "error", "error": f"cannot write: {problem}"})
        ours = attributes is not None and attributes.get(MODEL_ATTRIBUTE) == self.model_id
        answer = self._answer_from(attributes) if ours else None
        if ours and answer is None:
            return Triage({**row, "status": "skipped", "sidecar": str(sidecar)})
        # A tagged photo's bytes are read only when its GPS copy is to be checked.
        needs_bytes = answer is None or self._gps_copy_wanted(None, answer)
        try:
            data = images.read_photo(photo) if needs_bytes else None
        except images.BadImageError as e:  # vanished, no permission, a FIFO, too large, ...
            return Triage({**row, "status": "error", "error": str(e)})
        if answer is not None:
            if not self._missing(photo, data, answer):
                return Triage({**row, "status": "skipped", "sidecar": str(sidecar)})
            return Triage(data=data, answer=answer)
        gps = images.gps_coordinates(data)
        if gps and not self.cfg.overwrite_gps:
            return Triage({**row, "status": "has_gps", "photo_gps": list(gps)})
        return Triage(data=data)

    def _answer_from(self, attributes: dict[str, str]) -> dict[str, Any] | None:
        """The answer our sidecar records (label, from which the rest follows)."""
        label = attributes.get(LABEL_ATTRIBUTE)
        if label not in self.metadata.class_folders:
            return None
        try:
            probability = float(attributes.get(PROBABILITY_ATTRIBUTE, ""))
        except ValueError:  # edited by hand: the label is what matters
            probability = 0.0
        location = self.metadata.location(label)
        name = self.metadata.class_names[self.metadata.class_folders.index(label)]
        return {
            "label": label, "name": name, "probability": probability, "known": True,
            "location": dataclasses.asdict(location) if location else None, "top_k": [],
        }  # fmt: skip

    def _missing(self, photo: Path, data: bytes | None, answer: dict[str, Any]) -> list[str]:
        """The requested outputs of a tagged photo that are not there (yet); its GPS copy is
        checked when its `data` is given (`triage` reads it when a copy is wanted)."""
        missing = []
        if self.organize and self._organized(photo, answer) is None:
            missing.append("organize")
        if data is not None and self._gps_copy_wanted(data, answer):
            try:
                done = self._gps_copy(photo, data, answer, write=False) is not None
            except ValueError:  # no copy possible: its report line said why
                done = True
            if not done:
                missing.append("gps_copies")
        return missing

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
            if self.organize:
                row["organized"] = str(self._organize(photo, answer))
            if self.gps_copies and location and data is None:
                data = images.read_photo(photo)
            if self._gps_copy_wanted(data, answer):
                try:
                    row["gps_copy"] = str(self._gps_copy(photo, data, answer))
                except ValueError as e:  # no room for GPS in its EXIF: the rest is still done
                    row["gps_copy_error"] = str(e)
            row["sidecar"] = str(self._write_sidecar(photo, answer))  # last: the photo is done
        except (OSError, images.BadImageError) as e:
            return self.write({**row, "status": "error", "error": f"cannot write: {e}"})
        return self.write({**row, "status": "tagged"})

    def write(self, row: dict[str, Any]) -> dict[str, Any]:
        self.report.write(files.json_line(row))
        self.report.flush()  # an interrupted run keeps every line written so far
        self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
        return row

    def _write_sidecar(self, photo: Path, answer: dict[str, Any]) -> Path:
        sidecar = sidecar_path(photo)
        content = xmp_sidecar(answer, self.model_id).encode()
        try:  # replace only a sidecar of ours: one another program wrote since triage is kept
            files.publish(content, sidecar, replace=lambda path: bool(tagged_by(path)))
        except FileExistsError as e:
            raise OSError(f"{sidecar.name} appeared during the run, not written by landmark: "
                          "left alone") from e  # fmt: skip
        return sidecar

    def _organize(self, photo: Path, answer: dict[str, Any]) -> Path:
        done = self._organized(photo, answer)
        if done is not None:
            return done  # an earlier run organized it
        for target in self._organize_targets(photo, answer):
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.cfg.copy:
                    files.publish_copy(photo, target)
                else:
                    target.symlink_to(photo.resolve())  # atomic, and never replaces a file
                return target
            except FileExistsError:
                continue  # another photo of that name got there first
        raise OSError(f"no free name for {photo.name} in {target.parent}")

    def _organized(self, photo: Path, answer: dict[str, Any]) -> Path | None:
        """Where an earlier run organized `photo`, if it did."""
        for target in self._organize_targets(photo, answer):
            if self.cfg.copy and files.same_content(target, photo):
                return target
            if not self.cfg.copy and target.is_symlink() and files.links_to(target, photo):
                return target
        return None

    def _organize_targets(self, photo: Path, answer: dict[str, Any]) -> list[Path]:
        country = (answer.get("location") or {}).get("country") or "Unknown country"
        folder = self.organize / files.safe_name(country) / files.safe_name(answer["name"])
        return files.names_for(folder, photo)

    def _gps_copy_wanted(self, data: bytes | None, answer: dict[str, Any]) -> bool:
        wanted = self.gps_copies is not None and bool(answer.get("location"))
        return wanted and (data is None or data[:2] == b"\xff\xd8")

    def _gps_copy(
        self, photo: Path, data: bytes, answer: dict[str, Any], write: bool = True
    ) -> Path | None:
        """Where `photo`'s GPS copy is: written by an earlier run, else (`write`) now."""
        content = self._gps_content(data, answer)
        for target in files.names_for(self.gps_copies, photo):
            if files.has_content(target, content):
                return target
            if not write:
                continue
            try:
                files.publish(content, target, replace=lambda path: False)
                return target
            except FileExistsError:
                continue  # another photo of that name got there first
        if write:
            raise OSError(f"no free name for {photo.name} in {self.gps_copies}")
        return None

    @staticmethod
    def _gps_content(data: bytes, answer: dict[str, Any]) -> bytes:
        location = answer["location"]
        return jpeg_with_gps(data, location["latitude"], location["longitude"])


def _unwritable(sidecar: Path) -> str:
    """Why the sidecar cannot be written ("" if it can, as far as can be known beforehand)."""
    if len(os.fsencode(sidecar.name)) > files.MAX_NAME_BYTES:
        return f"the sidecar's name would be too long (over {files.MAX_NAME_BYTES} bytes)"
    if not os.access(sidecar.parent, os.W_OK):
        return f"{sidecar.parent} is not writable (read-only folder?)"
    return ""


def tag_photos(
    photos: list[Path], tagger: Tagger, scorer: Scorer, threshold: float | None = None
) -> None:
    """The tagger's one loop: triage each photo (resume, GPS, unreadable), score the rest with
    `scorer`, and record every outcome (each report line is written as soon as it is known)."""
    start = time.perf_counter()
    bar = tqdm(photos, desc="tagging", unit="photo")

    def pending() -> Iterator[tuple[Path, bytes]]:
        for i, photo in enumerate(bar, 1):
            todo = None
            with _one_line_at_most(tagger, photo):
                todo = tagger.triage(photo)
                if todo.row is not None:
                    tagger.write(todo.row)
                elif todo.answer is not None:  # tagged before: only outputs are missing
                    tagger.record(photo, todo.data, todo.answer)
            if todo is not None and todo.row is None and todo.answer is None:
                yield photo, todo.data
            bar.set_postfix(photos_s=f"{i / (time.perf_counter() - start):.1f}")

    for photo, data, answer in scorer.score(pending(), tagger.cfg.top_k, threshold):
        with _one_line_at_most(tagger, photo):
            tagger.record(photo, data, answer)


@contextlib.contextmanager
def _one_line_at_most(tagger: Tagger, photo: Path) -> Iterator[None]:
    """A photo whose handling fails unexpectedly costs one report line, not the run."""
    try:
        yield
    except Exception as e:
        log.exception("%s", photo)
        row = {"path": str(photo), "model": tagger.model_id, "status": "error"}
        tagger.write({**row, "error": f"unexpected {type(e).__name__}: {e}"})


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

        scorer: Scorer = SparkScorer(cfg.model, predictor.metadata, cfg.spark_master, cfg.spark_ui)
    else:
        scorer = LocalScorer(predictor)
    tagger = Tagger(cfg, model_id, predictor.metadata)
    photos, problems = find_photos(paths, exclude=tagger.outputs())
    removed = files.sweep({p.parent for p in photos} | set(files.folders_below(tagger.outputs())))
    log.info("%d photos to tag with %s (%s engine)", len(photos), model_id, cfg.engine)
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
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
