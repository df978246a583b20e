"""Tagging photo libraries: find photos, predict their landmark, write XMP sidecars and a report.

Originals are only ever read. Per photo the tagger writes `<photo>.xmp` (keywords, GPS of the
landmark; digiKam, darktable and Lightroom read it), one line of the JSONL report, and on
request a link (or copy) in a per-landmark folder and a JPEG copy with GPS in its EXIF (the
EXIF segment is spliced in; the compressed image data is copied byte for byte).

Nothing half-written is ever taken for done: every file is written under a temporary name
(`.landmark-<pid>-*.tmp`, created with O_EXCL/O_NOFOLLOW) and renamed into place, the sidecar
last of a photo's outputs; a rerun completes what an interrupted run left and removes its
temporary files. One bad photo costs one report line, never the run (README, Safety).

Photos without a confident landmark wait until every photo is scored: then `runtime.trips`
places them from GPX tracks and time neighbours (README, Trips). `--plan` writes the report
only; `--apply PLAN` writes the rows a person accepted in the review (`runtime.review`).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from landmark import tracking
from landmark.config import TagConfig
from landmark.runtime import clocks, files, gpx, images
from landmark.runtime.predictor import Predictor
from landmark.runtime.tagger import Tagger, one_line_at_most

__all__ = ["InputError", "LocalScorer", "Scorer", "Tagger", "find_photos", "tag", "tag_library"]

log = logging.getLogger(__name__)


class InputError(ValueError):
    """An input of the whole run that is unfit (a GPX file, a plan, a clock offset): the
    message names it, and nothing has been written."""


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
            with one_line_at_most(tagger, photo):
                todo = tagger.triage(photo)
                if todo.row is not None:
                    tagger.write(todo.row)
                elif todo.answer is not None:  # tagged before: only outputs are missing
                    tagger.record(photo, todo.data, todo.answer)
            if todo is not None and todo.row is None and todo.answer is None:
                yield photo, todo.data
            bar.set_postfix(photos_s=f"{i / (time.perf_counter() - start):.1f}")

    for photo, data, answer in scorer.score(pending(), tagger.cfg.top_k, threshold):
        with one_line_at_most(tagger, photo):
            tagger.record(photo, data, answer)
    tagger.place_rest()


def tag(paths: list[Path], cfg: TagConfig) -> dict[str, int]:
    """Tag (or with `cfg.plan`, plan) every photo below `paths` with `cfg.model` (an MLflow
    model URI or, for the local engine, a TorchScript file), or apply a reviewed plan
    (`cfg.apply`); return how many photos ended in each status.

    Raises:
        InputError: a GPX track, plan or clock offset that is unfit (nothing written).
    """
    if cfg.apply:
        from landmark.runtime import review

        try:
            return review.apply_plan(Path(cfg.apply), cfg)
        except review.PlanError as e:
            raise InputError(str(e)) from e
    return tag_library(paths, cfg).counts


def tag_library(paths: list[Path], cfg: TagConfig) -> Tagger:
    """`tag` without `apply`; the tagger, with what it observed of every photo."""
    if cfg.engine == "spark" and Path(cfg.model).is_file():
        raise ValueError("--engine spark needs an MLflow model URI, not a file")
    try:
        clocks.given_offsets(cfg)  # at the door: a bad --time-offset or track costs no scoring
        tracks = gpx.read_tracks([Path(p) for p in cfg.gpx])
    except ValueError as e:  # BadTrackError, a bad offset
        raise InputError(str(e)) from e
    with tempfile.TemporaryDirectory() as tmp:
        torchscript, info = tracking.fetch_model(cfg.model, Path(tmp))
        model_id = model_id_of(cfg.model, info, torchscript)
        predictor = Predictor.load(torchscript)
    if cfg.engine == "spark":
        from landmark.runtime.spark import SparkScorer  # pyspark is large: only when asked

        scorer: Scorer = SparkScorer(cfg.model, predictor.metadata, cfg.spark_master, cfg.spark_ui)
    else:
        scorer = LocalScorer(predictor)
    tagger = Tagger(cfg, model_id, predictor.metadata, tracks)
    photos, problems = find_photos(paths, exclude=tagger.outputs())
    removed = (
        0
        if cfg.plan
        else files.sweep(  # a plan writes (and removes) nothing but its report
            {p.parent for p in photos} | set(files.folders_below(tagger.outputs()))
        )
    )
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
    return tagger
