"""The tagger against what kills or corrupts runs: names that are not UTF-8, a huge EXIF, FIFOs,
deep folders, interrupted copies, reruns that ask for more outputs, planted links at temporary
names, sidecars that appear mid-run, landmark names that are paths. Each costs one report line
at most; nothing half-written is ever taken for done. A tiny exported model file (no MLflow)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import export_tiny_model, gps_jpeg, photo_bytes, tiny_metadata
from hostile import DEEP, photo_corpus, remove_tree

from landmark.config import TagConfig
from landmark.runtime import files, images, sidecars, tagging
from landmark.runtime.contract import Location
from landmark.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return export_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def rows(report: Path) -> dict[str, dict]:
    lines = report.read_text(encoding="utf-8").splitlines()
    return {Path(row["path"]).name: row for row in map(json.loads, lines)}


def config(model: Path, tmp: Path, **values) -> TagConfig:
    values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    return TagConfig(model=str(model), report=str(tmp / "report.jsonl"), **values)


def photos(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    made = [folder / f"p{i}.jpg" for i in range(count)]
    for i, path in enumerate(made):
        path.write_bytes(photo_bytes(size=(160, 120), seed=i))
    return made


@pytest.mark.timeout(120)
def test_names_not_utf8_fifos_devices_and_deep_folders_cost_one_line_each(model, tmp_path):
    """Before: the report write died on `caf\\xe9.jpg` (and every rerun, its sidecar being
    written), a FIFO hung the run, /dev/zero filled memory, 1,100 folders raised
    RecursionError before any work."""
    lib = tmp_path / "photos"
    photos(lib, 1)
    cafe = lib / os.fsdecode(b"caf\xe9.jpg")
    cafe.write_bytes(photo_bytes(seed=5))
    os.mkfifo(lib / "fifo.jpg")
    (lib / "zero.jpg").symlink_to("/dev/zero")
    deep = lib
    for _ in range(DEEP):
        deep = deep / "d"
        deep.mkdir()
    (deep / "deep.jpg").write_bytes(photo_bytes(seed=6))
    try:
        counts = tagging.tag([lib], config(model, tmp_path))
        again = tagging.tag([lib], config(model, tmp_path))
        found = rows(tmp_path / "report.jsonl")
    finally:
        remove_tree(lib)
    assert counts == {"tagged": 3, "error": 2} and again == {"skipped": 3, "error": 2}
    assert found["fifo.jpg"]["error"] == found["zero.jpg"]["error"]
    assert "not a regular file" in found["fifo.jpg"]["error"]
    assert found["deep.jpg"]["status"] == "skipped"
    (line,) = [r for r in found.values() if "caf" in r["path"]]
    assert os.fsencode(line["path"]) == os.fsencode(cafe)  # the report names it exactly


def test_a_huge_exif_gets_its_sidecar_and_a_reason_instead_of_a_gps_copy(model, tmp_path):
    """Before: `jpeg_with_gps` raised OverflowError and the run died."""
    lib = tmp_path / "photos"
    lib.mkdir()
    (lib / "huge.jpg").write_bytes(photo_corpus()["jpeg huge exif"][1])
    photos(lib, 1)
    cfg = config(model, tmp_path, gps_copies=tmp_path / "gps")
    assert tagging.tag([lib], cfg) == {"tagged": 2}
    huge = rows(tmp_path / "report.jsonl")["huge.jpg"]
    assert "65,533 bytes a JPEG segment holds" in huge["gps_copy_error"]
    assert Path(huge["sidecar"]).is_file()
    assert sorted(p.name for p in (tmp_path / "gps").iterdir()) == ["p0.jpg"]
    assert tagging.tag([lib], cfg) == {"skipped": 2}  # nothing left that can be done


def test_an_interrupted_copy_never_counts_as_done(model, tmp_path, monkeypatch):
    """Before: `--copy` wrote straight to the final name; a Ctrl-C left a truncated copy that
    every rerun took for done."""
    made = photos(tmp_path / "photos", 2)
    cfg = config(model, tmp_path, organize=tmp_path / "by-place", copy=True)
    real_copy = shutil.copyfileobj

    def half_then_ctrl_c(source, target):
        target.write(source.read()[:500])
        raise KeyboardInterrupt

    monkeypatch.setattr(files.shutil, "copyfileobj", half_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        tagging.tag([tmp_path / "photos"], cfg)
    left = [p for p in (tmp_path / "by-place").rglob("*") if p.is_file()]
    assert left == []  # neither a truncated copy nor its temporary file
    monkeypatch.setattr(files.shutil, "copyfileobj", real_copy)
    assert tagging.tag([tmp_path / "photos"], cfg) == {"tagged": 2}
    copies = sorted(p for p in (tmp_path / "by-place").rglob("*.jpg"))
    assert [c.read_bytes() for c in copies] == [p.read_bytes() for p in made]


def test_a_rerun_that_asks_for_more_outputs_completes_every_photo(model, tmp_path, monkeypatch):
    """Before: resume looked at the sidecar only, so adding --organize or --gps-copies to a
    rerun skipped every tagged photo."""
    made = photos(tmp_path / "photos", 3)
    assert tagging.tag([tmp_path / "photos"], config(model, tmp_path)) == {"tagged": 3}
    more = config(model, tmp_path, organize=tmp_path / "by-place", gps_copies=tmp_path / "gps")
    predictor_calls = []
    original = Predictor.predict
    monkeypatch.setattr(
        Predictor,
        "predict",
        lambda self, *a, **k: predictor_calls.append(1) or original(self, *a, **k),
    )
    assert tagging.tag([tmp_path / "photos"], more) == {"tagged": 3}
    assert predictor_calls == []  # completed from the sidecars, not scored again
    assert len(list((tmp_path / "by-place").rglob("*.jpg"))) == len(made)
    assert len(list((tmp_path / "gps").glob("*.jpg"))) == len(made)
    assert tagging.tag([tmp_path / "photos"], more) == {"skipped": 3}


def test_links_planted_at_the_old_temporary_names_are_not_written_through(model, tmp_path):
    """Before: sidecars went through `.<name>.<pid>.tmp` in the photo's folder, opened without
    O_EXCL/O_NOFOLLOW: a link planted there had the victim overwritten."""
    made = photos(tmp_path / "photos", 2)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for photo in made:
        planted = photo.with_name(f".{photo.name}.xmp.{os.getpid()}.tmp")
        planted.symlink_to(victim)
    assert tagging.tag([tmp_path / "photos"], config(model, tmp_path)) == {"tagged": 2}
    assert victim.read_text() == "precious"


def test_temporary_files_of_a_killed_run_are_removed_and_live_ones_kept(model, tmp_path):
    made = photos(tmp_path / "photos", 1)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = made[0].parent / f"{files.TEMP_PREFIX}{dead.pid}-x1y2.tmp"
    live = made[0].parent / f"{files.TEMP_PREFIX}{os.getppid()}-a1b2.tmp"  # pytest's parent
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    tagging.tag([tmp_path / "photos"], config(model, tmp_path))
    assert not stale.exists() and live.exists()


def test_a_sidecar_that_appears_during_the_run_is_left_alone(model, tmp_path):
    """The Spark engine scores everything first: another program may write a sidecar between
    triage and writing. Before, it was overwritten."""
    made = photos(tmp_path / "photos", 2)
    predictor = Predictor.load(model)
    cfg = config(model, tmp_path)
    tagger = tagging.Tagger(cfg, "tiny", predictor.metadata)

    class MeanwhileDarktable(tagging.LocalScorer):
        def score(self, pending, top_k, threshold):
            answered = list(super().score(pending, top_k, threshold))
            sidecars.sidecar_path(made[0]).write_text("<x:xmpmeta>darktable's edits</x:xmpmeta>")
            yield from answered

    tagging.tag_photos(made, tagger, MeanwhileDarktable(predictor), 0.0)
    tagger.close()
    report = rows(tmp_path / "report.jsonl")
    assert "appeared during the run" in report["p0.jpg"]["error"]
    assert "darktable" in sidecars.sidecar_path(made[0]).read_text()
    assert report["p1.jpg"]["status"] == "tagged"


def test_landmark_and_country_names_never_leave_the_organize_folder(tmp_path):
    """Before: a landmark named `..` organized photos one folder up; a 300-byte name failed."""
    folders = ("a", "b", "c")
    names = ("..", "x" * 300, "Tour/../../etc")
    countries = (".", "..", "ü" * 200)
    where = {f: Location(n, 1.0, 2.0, c) for f, n, c in zip(folders, names, countries, strict=True)}
    model = export_tiny_model(tmp_path / "odd.pt", tiny_metadata(
        class_folders=folders, class_names=names, locations=where))  # fmt: skip
    made = photos(tmp_path / "photos", 6)
    organize = tmp_path / "sorted" / "by-place"
    cfg = config(model, tmp_path, organize=organize, gps_copies=tmp_path / "gps")
    assert tagging.tag([tmp_path / "photos"], cfg) == {"tagged": len(made)}
    for row in rows(tmp_path / "report.jsonl").values():
        target = Path(row["organized"])
        assert Path(os.path.normpath(target)).parent.parent.parent == organize  # no `..` escape
        assert all(len(part.encode()) <= 255 for part in target.parts)
        assert target.is_symlink() and target.resolve() == Path(row["path"]).resolve()
    assert files.safe_name("..") == "__" and files.safe_name(".") == "_"


def test_a_half_written_last_report_line_is_dropped_before_appending(model, tmp_path):
    """A run killed inside a report write leaves a partial last line; appending after it
    would glue the next line to it."""
    report = tmp_path / "report.jsonl"
    report.write_text('{"path": "a.jpg", "status": "tagged"}\n{"path": "b.jp')
    photos(tmp_path / "photos", 1)
    tagging.tag([tmp_path / "photos"], config(model, tmp_path))
    lines = report.read_text().splitlines()
    assert [json.loads(line)["path"].endswith(n) for line, n in zip(lines, ["a.jpg", "p0.jpg"],
            strict=True)] == [True, True]  # fmt: skip


def test_scoring_that_fails_for_one_photo_costs_that_photo_only(model, tmp_path, monkeypatch):
    made = photos(tmp_path / "photos", 3)
    bad = made[1].read_bytes()
    original = Predictor.scores

    def scores(self, photo, row=0):
        if photo == bad:
            raise RuntimeError("out of memory on the model's thread")
        return original(self, photo, row)

    monkeypatch.setattr(Predictor, "scores", scores)
    assert tagging.tag([tmp_path / "photos"], config(model, tmp_path)) == {"tagged": 2, "error": 1}
    assert "scoring failed: RuntimeError" in rows(tmp_path / "report.jsonl")["p1.jpg"]["error"]


def test_a_photo_whose_sidecar_cannot_be_written_gets_no_other_output(model, tmp_path):
    """Checked before anything is written: no organized copy is left without its sidecar."""
    long = tmp_path / "photos" / ("n" * 249 + ".jpg")  # its sidecar's name: 257 bytes
    long.parent.mkdir()
    long.write_bytes(photo_bytes(seed=9))
    cfg = config(model, tmp_path, organize=tmp_path / "by-place", copy=True)
    assert tagging.tag([tmp_path / "photos"], cfg) == {"error": 1}
    assert "too long" in rows(tmp_path / "report.jsonl")[long.name]["error"]
    assert not (tmp_path / "by-place").exists()


def test_reading_a_photo_s_gps_never_decodes_its_pixels(monkeypatch):
    """Before, `getexif()` of a PNG decoded the whole image, past every pixel limit (a 334 KB
    9,000 x 9,000 px PNG: 310 MB), for every PNG the tagger triaged and the app answered."""
    from PIL import ImageFile

    plain = [photo_bytes(fmt=fmt) for fmt in ("PNG", "JPEG", "WEBP")]  # (saving decodes)
    with_gps = gps_jpeg((1, 2, 3), 10.0, 20.0)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.format))
    assert [images.gps_coordinates(photo) for photo in plain] == [None, None, None]
    assert images.gps_coordinates(with_gps) == pytest.approx((10, 20))
    assert decoded == []
