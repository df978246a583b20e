"""The tagger on synthetic photo folders with a tiny trained champion: XMP sidecars read back by
exiftool, untouched originals, GPS left alone, bad files reported, resume, organize, lossless
GPS copies, and the Spark engine giving the same report as the local one."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import gps_jpeg, photo_bytes, snapshot
from PIL import Image

from landmark import tracking
from landmark.config import TagConfig
from landmark.runtime import images, tagging
from landmark.runtime.predictor import Predictor

EXIFTOOL = shutil.which("exiftool")
RED, GREEN, BLUE = (200, 30, 30), (30, 200, 30), (30, 30, 200)  # the tiny data set's classes


def library(root: Path) -> Path:
    """Nested folders of photos: three landmarks, one with GPS, bad files, non-photos."""
    files = {
        "2024/paris/red.jpg": photo_bytes(size=(640, 480), colour=RED, seed=1),
        "2024/sf/green.png": photo_bytes(size=(500, 400), colour=GREEN, fmt="PNG", seed=2),
        "2025/agra/blue.WEBP": photo_bytes(size=(400, 600), colour=BLUE, fmt="WEBP", seed=3),
        "2025/has_gps.jpg": gps_jpeg(GREEN, 10.0, 20.0),
        "2025/broken.jpg": b"%PDF-1.4 not a photo",
        "2025/cut.jpg": photo_bytes(size=(640, 480), seed=5)[:2500],
        "notes.txt": b"not a photo, not looked at",
        ".thumbnails/red.jpg": photo_bytes(colour=RED),
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def tag_config(model: str, report: Path, **paths_and_flags) -> TagConfig:
    """`TagConfig` for `model`, writing `report`; folder options may be given as paths."""
    values = {k: str(v) if isinstance(v, Path) else v for k, v in paths_and_flags.items()}
    return TagConfig(model=model, report=str(report), **values)


def rows_by_name(report: str | Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in Path(report).read_text().splitlines()]
    return {Path(r["path"]).name: r for r in rows}


def test_tags_a_library_without_touching_it(champion, tmp_path):
    photos = library(tmp_path / "photos")
    before = snapshot(photos)
    cfg = tag_config(champion, tmp_path / "report.jsonl", organize=tmp_path / "by-place")
    counts = tagging.tag([photos], cfg)
    assert counts == {"tagged": 3, "has_gps": 1, "error": 2}
    after = snapshot(photos)
    assert {k: v for k, v in after.items() if not k.endswith(".xmp")} == before
    rows = rows_by_name(cfg.report)
    assert set(rows) == {
        "red.jpg",
        "green.png",
        "blue.WEBP",
        "has_gps.jpg",
        "broken.jpg",
        "cut.jpg",
    }
    red = rows["red.jpg"]
    assert (red["status"], red["name"], red["country"]) == ("tagged", "Eiffel Tower", "France")
    assert len(red["top_k"]) == 3 and red["top_k"][0][0] == "Eiffel Tower"
    assert red["model"] == "landmark-classifier/1"
    assert rows["blue.WEBP"]["name"] == "Taj Mahal"
    assert rows["has_gps.jpg"] == {
        **rows["has_gps.jpg"],
        "status": "has_gps",
        "photo_gps": [10.0, 20.0],
    }
    assert not (photos / "2025/has_gps.jpg.xmp").exists()
    assert rows["broken.jpg"]["error"].startswith("not an image file")
    assert rows["cut.jpg"]["error"].startswith("truncated or corrupt JPEG")
    link = tmp_path / "by-place/France/Eiffel Tower/red.jpg"
    assert link.is_symlink() and link.resolve() == (photos / "2024/paris/red.jpg").resolve()


@pytest.mark.skipif(not EXIFTOOL, reason="needs exiftool (Debian libimage-exiftool-perl)")
def test_exiftool_reads_the_sidecar_keywords_and_coordinates(champion, tmp_path):
    photos = library(tmp_path / "photos")
    tagging.tag([photos], tag_config(champion, tmp_path / "r.jsonl"))
    sidecar = photos / "2024/sf/green.png.xmp"
    out = subprocess.run(
        [EXIFTOOL, "-j", "-n", "-XMP:all", str(sidecar)], capture_output=True, text=True, check=True
    )
    (tags,) = json.loads(out.stdout)
    assert tags["Subject"] == ["Golden Gate Bridge", "United States"]
    assert tags["HierarchicalSubject"] == "Places|United States|Golden Gate Bridge"
    assert tags["GPSLatitude"] == pytest.approx(37.8199, abs=1e-5)
    assert tags["GPSLongitude"] == pytest.approx(-122.4783, abs=1e-5)
    assert tags["Country"] == "United States"


def test_rerun_skips_done_photos_and_an_interrupted_run_keeps_its_work(champion, tmp_path):
    photos = library(tmp_path / "photos")
    cfg = tag_config(champion, tmp_path / "report.jsonl")
    found, _ = tagging.find_photos([photos])
    path, _ = tracking.fetch_model(champion, tmp_path / "model")
    predictor = Predictor.load(path)
    tagger = tagging.Tagger(cfg, "landmark-classifier/1", predictor.metadata)

    class CtrlC(tagging.LocalScorer):
        def score(self, photos, top_k, threshold):
            for n, answered in enumerate(super().score(photos, top_k, threshold), 1):
                yield answered
                if n == 2:  # Ctrl-C after two photos
                    raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tagging.tag_photos(found, tagger, CtrlC(predictor))
    tagger.close()
    first = [json.loads(line) for line in Path(cfg.report).read_text().splitlines()]
    assert [r["status"] for r in first] == ["tagged", "tagged"]
    assert all(Path(r["path"] + ".xmp").is_file() for r in first)
    counts = tagging.tag([photos], cfg)
    assert counts == {"skipped": 2, "tagged": 1, "has_gps": 1, "error": 2}
    again = tagging.tag([photos], cfg)
    assert again["skipped"] == 3 and "tagged" not in again


def test_gps_photos_are_tagged_only_when_asked(champion, tmp_path):
    photos = library(tmp_path / "photos")
    cfg = tag_config(champion, tmp_path / "r.jsonl", overwrite_gps=True)
    tagging.tag([photos / "2025/has_gps.jpg"], cfg)
    assert rows_by_name(cfg.report)["has_gps.jpg"]["status"] == "tagged"


def test_write_errors_and_foreign_sidecars_are_reported_not_fatal(champion, tmp_path):
    photos = library(tmp_path / "photos")
    (photos / "2024/paris/red.jpg.xmp").mkdir()  # the sidecar's name is taken by a folder
    (photos / "2024/sf/green.png.xmp").write_text("<x:xmpmeta>darktable's edits</x:xmpmeta>")
    (photos / "gone.jpg").symlink_to(photos / "nowhere.jpg")  # vanished before reading
    not_a_folder = tmp_path / "by-place"
    not_a_folder.write_text("a file where the organized folders should go")
    cfg = tag_config(champion, tmp_path / "r.jsonl", organize=not_a_folder)
    counts = tagging.tag([photos], cfg)
    rows = rows_by_name(cfg.report)
    assert "was not written by landmark" in rows["red.jpg"]["error"]
    assert "was not written by landmark" in rows["green.png"]["error"]
    assert "darktable" in (photos / "2024/sf/green.png.xmp").read_text()  # left alone
    assert rows["gone.jpg"]["error"] == "cannot read: No such file or directory"
    assert rows["blue.WEBP"]["status"] == "error"
    assert rows["blue.WEBP"]["error"].startswith("cannot write: [Errno 20] Not a directory")
    assert counts == {"error": 6, "has_gps": 1}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_folder_is_reported(champion, tmp_path):
    photos = library(tmp_path / "photos")
    folder = photos / "2024/paris"
    folder.chmod(0o555)
    try:
        cfg = tag_config(champion, tmp_path / "r.jsonl")
        tagging.tag([photos], cfg)
    finally:
        folder.chmod(0o755)
    assert "cannot write" in rows_by_name(cfg.report)["red.jpg"]["error"]


def test_gps_copy_is_lossless(champion, tmp_path):
    photos = library(tmp_path / "photos")
    cfg = tag_config(champion, tmp_path / "r.jsonl", gps_copies=tmp_path / "with-gps")
    tagging.tag([photos / "2024"], cfg)
    original = (photos / "2024/paris/red.jpg").read_bytes()
    copy = (tmp_path / "with-gps/red.jpg").read_bytes()
    scan = original.index(b"\xff\xda")  # the compressed image data starts at SOS
    assert copy.endswith(original[scan:])
    pixels = [np.asarray(Image.open(io.BytesIO(b))) for b in (original, copy)]
    assert np.array_equal(*pixels)
    assert images.gps_coordinates(copy) == pytest.approx((48.8584, 2.2945), abs=1e-4)
    assert not (tmp_path / "with-gps/green.png").exists()  # PNGs get no EXIF copy
    if EXIFTOOL:
        out = subprocess.run([EXIFTOOL, "-j", "-n", "-GPS:all", str(tmp_path / "with-gps/red.jpg")],
                             capture_output=True, text=True, check=True)  # fmt: skip
        (tags,) = json.loads(out.stdout)
        assert tags["GPSLatitude"] == pytest.approx(48.8584, abs=1e-4)
        assert tags["GPSLongitudeRef"] == "E"


@pytest.mark.skipif(not shutil.which("java"), reason="Spark needs Java (.ci/run installs it)")
def test_spark_engine_writes_the_same_report(champion, tmp_path):
    reports, counts = {}, {}
    for engine in ("local", "spark"):
        photos = library(tmp_path / engine)
        cfg = tag_config(champion, tmp_path / f"{engine}.jsonl", engine=engine)
        counts[engine] = tagging.tag([photos], cfg)
        rows = [json.loads(line) for line in Path(cfg.report).read_text().splitlines()]
        reports[engine] = {str(Path(r["path"]).relative_to(photos)): r for r in rows}
        assert len(reports[engine]) == len(rows)  # one row per photo
    assert counts["local"] == counts["spark"] == {"tagged": 3, "has_gps": 1, "error": 2}
    local, spark = reports["local"], reports["spark"]
    assert set(local) == set(spark)
    for name, row in local.items():
        other = spark[name]
        assert other["status"] == row["status"], name
        assert other.get("label") == row.get("label"), name
        assert other.get("error") == row.get("error"), name
        if "top_k" in row:
            assert [t[0] for t in other["top_k"]] == [t[0] for t in row["top_k"]]
            assert other["probability"] == pytest.approx(row["probability"], abs=1e-5)


def test_an_exported_model_file_works_like_the_registry_uri(champion, tmp_path):
    """`--model file.pt` (tagger and app): the same answers, named by the file and its hash."""
    from landmark.runtime import app

    path, info = tracking.fetch_model(champion, tmp_path / "model")
    assert info["version"] == "1" and tracking.fetch_model(str(path), tmp_path) == (path, {})
    photos = library(tmp_path / "photos")
    cfg = tag_config(str(path), tmp_path / "file.jsonl")
    assert tagging.tag([photos], cfg) == {"tagged": 3, "has_gps": 1, "error": 2}
    red = rows_by_name(cfg.report)["red.jpg"]
    assert red["name"] == "Eiffel Tower" and red["model"].startswith(f"{path.name}@")
    with pytest.raises(ValueError, match="needs an MLflow model URI"):
        tagging.tag([photos], dataclasses.replace(cfg, engine="spark"))
    classifier, _ = app.load_classifier(str(path))
    assert classifier.description.startswith(f"model file {path.name} · ")


def test_landmark_tag_from_the_command_line(champion, tmp_path):
    """`landmark tag` as a user types it: flags generated from `TagConfig`, the same report."""
    photos = library(tmp_path / "photos")
    landmark = str(Path(sys.executable).parent / "landmark")
    report, by_place = tmp_path / "cli.jsonl", tmp_path / "by-place"
    command = [landmark, "tag", str(photos), "--report", str(report), "--organize", str(by_place)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = rows_by_name(report)
    assert rows["red.jpg"]["status"] == "tagged" and rows["red.jpg"]["name"] == "Eiffel Tower"
    assert rows["cut.jpg"]["status"] == "error" and rows["has_gps.jpg"]["status"] == "has_gps"
    assert (by_place / "France" / "Eiffel Tower" / "red.jpg").is_symlink()
    assert (photos / "2024/paris/red.jpg.xmp").is_file()
    refused = subprocess.run(
        [landmark, "tag", str(photos), "--threshold", "2"], capture_output=True, text=True
    )
    assert (
        refused.returncode == 2 and "TagConfig.threshold: 2.0 must be in [0, 1]" in refused.stderr
    )


def test_nothing_below_the_write_threshold_is_written(champion, tmp_path):
    """The model's own write threshold decides, and `--threshold` overrides it both ways."""
    path, _ = tracking.fetch_model(champion, tmp_path / "model")
    predictor = Predictor.load(path)
    for name, threshold in (("own", None), ("none", 0.0), ("all", 1.0)):
        photos = library(tmp_path / name)
        cfg = tag_config(champion, tmp_path / f"{name}.jsonl", threshold=threshold)
        tagging.tag([photos], cfg)
        scored = [r for r in rows_by_name(cfg.report).values() if "probability" in r]
        assert len(scored) == 3
        for row in scored:
            _, known = predictor.scores(Path(row["path"]).read_bytes())
            limit = predictor.threshold if threshold is None else threshold
            written = known >= limit
            assert row["status"] == ("tagged" if written else "unsure"), (name, row)
            assert Path(row["path"] + ".xmp").is_file() == written
        if threshold == 0.0:
            assert all(r["status"] == "tagged" for r in scored)
