"""Plan, review, apply, end to end on a small synthetic trip with the tiny champion: `--plan`
writes nothing but the report, the review page in a real browser (accept a group, reject a
photo, pick a place for an unsure one), `--apply` writes the accepted rows only (read back by
exiftool) and refuses photos changed since the plan; bad plans and tracks are refused at the
door with nothing written."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from browser import CHROMEDRIVER, CHROMIUM, screenshot, wait_for
from conftest import free_port, snapshot, start, stop, timed_jpeg

from landmark.config import TagConfig
from landmark.runtime import review, tagging

EXIFTOOL = shutil.which("exiftool")
BIN = Path(sys.executable).parent
RED, BLUE, GREY = (200, 30, 30), (30, 30, 200), (128, 128, 128)  # Eiffel, Taj, unsure
# One morning: the Eiffel Tower, two photos after it, a lone photo, the Taj Mahal, a photo
# between the Taj and the Eiffel Tower again (the tiny data set's world is small: its anchors
# are 50 minutes apart, so neither is too far from the other to be believed), and a
# screenshot without a camera time.
TRIP = {
    "IMG_0001.jpg": ("10:00:00", RED),
    "IMG_0002.jpg": ("10:05:00", GREY),
    "IMG_0003.jpg": ("10:10:00", GREY),
    "IMG_0004.jpg": ("11:00:00", GREY),
    "IMG_0005.jpg": ("12:00:00", BLUE),
    "IMG_0006.jpg": ("12:25:00", GREY),
    "IMG_0007.jpg": ("12:50:00", RED),
}
THRESHOLD = 0.8  # the tiny champion: red and blue photos above, grey ones below


def trip(root: Path) -> Path:
    root.mkdir(parents=True)
    for i, (name, (clock, colour)) in enumerate(TRIP.items()):
        (root / name).write_bytes(timed_jpeg(f"2026:03:02 {clock}", colour, seed=i))
    shutil.copy(root / "IMG_0002.jpg", root / "screenshot.png")  # same pixels, no EXIF...
    (root / "screenshot.png").write_bytes(timed_jpeg(None, GREY, seed=9))  # ...no camera time
    return root


def plan(photos: Path, tmp: Path, champion: str) -> Path:
    report = tmp / "plan.jsonl"
    cfg = TagConfig(model=champion, report=str(report), plan=True, threshold=THRESHOLD)
    tagging.tag([photos], cfg)
    return report


def rows_by_name(report: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    return {Path(r["path"]).name: r for r in rows}


def exif(path: Path) -> dict:
    out = subprocess.run(
        [EXIFTOOL, "-j", "-G1", "-n", str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)[0]


@pytest.fixture
def planned(champion, tmp_path):
    photos = trip(tmp_path / "photos")
    before = snapshot(photos)
    return photos, before, plan(photos, tmp_path, champion)


def test_plan_writes_only_the_report_and_proposes_places_with_evidence(planned):
    photos, before, report = planned
    assert snapshot(photos) == before  # no sidecar, no link, no copy
    rows = rows_by_name(report)
    status = {name: (r["status"], r.get("source")) for name, r in rows.items()}
    assert status == {
        "IMG_0001.jpg": ("planned", "landmark"),
        "IMG_0002.jpg": ("planned", "time-neighbour"),
        "IMG_0003.jpg": ("planned", "time-neighbour"),
        "IMG_0004.jpg": ("unsure", None),  # no anchor within 30 minutes
        "IMG_0005.jpg": ("planned", "landmark"),
        "IMG_0006.jpg": ("unsure", None),  # the Taj 25 min before, the Eiffel Tower 25 after
        "IMG_0007.jpg": ("planned", "landmark"),
        "screenshot.png": ("unsure", None),
    }
    second = rows["IMG_0002.jpg"]
    assert second["anchor"].endswith("IMG_0001.jpg") and second["gap_s"] == 300
    assert second["name"] == "Eiffel Tower" and second["guess"]["probability"] < THRESHOLD
    assert [c["place"] for c in rows["IMG_0006.jpg"]["candidates"]] == ["Taj Mahal", "Eiffel Tower"]
    assert rows["screenshot.png"]["reason"].startswith("no EXIF time")
    assert rows["IMG_0001.jpg"]["trip"] == second["trip"] == "trip 1 · 2026-03-02"
    assert len(second["sha256"]) == 64 and second["size"] > 0


def decide(report: Path, names: dict[str, tuple[bool, int | None]]) -> None:
    under_review = review.Review(report)
    index = {Path(r["path"]).name: i for i, r in enumerate(under_review.rows)}
    for name, (accept, place) in names.items():
        under_review.decide([index[name]], accept, place)


@pytest.mark.skipif(not EXIFTOOL, reason="needs exiftool (.ci/run installs it)")
def test_apply_writes_accepted_rows_only_and_refuses_changed_photos(planned, tmp_path):
    photos, before, report = planned
    accept = {n: (True, None) for n in ("IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg")}
    decide(report, {**accept, "IMG_0005.jpg": (False, None), "IMG_0006.jpg": (True, 0),
                    "IMG_0007.jpg": (True, None)})  # fmt: skip
    edited = photos / "IMG_0007.jpg"  # after the plan: same size, same mtime, one byte off
    stat, content = edited.stat(), bytearray(edited.read_bytes())
    content[len(content) // 2] ^= 0xFF
    edited.write_bytes(bytes(content))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    counts = tagging.tag([], TagConfig(report=str(report), apply=str(report)))
    assert counts == {"tagged": 3, "changed": 1, "rejected": 1, "anchor_not_written": 1}
    written = {p.name for p in photos.glob("*.xmp")}
    assert written == {"IMG_0001.jpg.xmp", "IMG_0002.jpg.xmp", "IMG_0003.jpg.xmp"}
    applied = rows_by_name(report.with_name("plan.applied.jsonl"))
    assert "changed since the plan (content)" in applied["IMG_0007.jpg"]["error"]
    # the Taj was picked for IMG_0006, but its anchor IMG_0005 was rejected
    assert "its anchor IMG_0005.jpg was not written" in applied["IMG_0006.jpg"]["error"]
    after = snapshot(photos)
    assert {k: v for k, v in after.items() if not k.endswith(".xmp")} == {
        **before,
        "IMG_0007.jpg": after["IMG_0007.jpg"],  # the edit is the user's own
    }
    landmark = exif(photos / "IMG_0001.jpg.xmp")
    assert landmark["XMP-landmark:Source"] == "landmark"
    assert "Eiffel Tower" in landmark["XMP-dc:Subject"]
    neighbour = exif(photos / "IMG_0002.jpg.xmp")
    assert neighbour["XMP-landmark:Source"] == "time-neighbour"
    assert neighbour["XMP-landmark:Anchor"] == "IMG_0001.jpg"
    assert neighbour["XMP-landmark:TimeGap"] == 300
    assert neighbour["XMP-landmark:Reviewed"] == "accepted"
    assert neighbour["XMP-exif:GPSLatitude"] == pytest.approx(landmark["XMP-exif:GPSLatitude"])
    assert "XMP-dc:Subject" not in neighbour  # no landmark claimed for a time neighbour


def test_plan_with_organize_and_gps_copies_still_writes_nothing(champion, tmp_path):
    photos = trip(tmp_path / "photos")
    (photos / ".landmark-1-left.tmp").write_bytes(b"a killed run's")  # a plan removes nothing
    before = snapshot(photos)
    outputs = {"organize": str(tmp_path / "by-place"), "gps_copies": str(tmp_path / "gps")}
    report = str(tmp_path / "p.jsonl")
    cfg = TagConfig(model=champion, report=report, plan=True, threshold=THRESHOLD, **outputs)
    assert tagging.tag([photos], cfg)["planned"] == 5
    assert snapshot(photos) == before
    assert not (tmp_path / "by-place").exists() and not (tmp_path / "gps").exists()


def test_a_plan_edited_into_invalid_json_is_refused_naming_the_line(planned):
    photos, before, report = planned
    decide(report, {"IMG_0001.jpg": (True, None)})
    lines = report.read_text().splitlines()
    report.write_text("\n".join([lines[0], lines[1][:-5], *lines[2:]]) + "\n")
    with pytest.raises(tagging.InputError, match=r"plan.jsonl line 2 is not valid JSON"):
        tagging.tag([], TagConfig(report=str(report), apply=str(report)))
    assert snapshot(photos) == before


def test_decisions_about_another_plan_and_no_decisions_are_refused(planned, champion):
    photos, before, report = planned
    with pytest.raises(tagging.InputError, match="review it with `landmark app --review"):
        tagging.tag([], TagConfig(report=str(report), apply=str(report)))
    decide(report, {"IMG_0001.jpg": (True, None)})
    report.write_text(report.read_text() + report.read_text().splitlines()[0] + "\n")
    with pytest.raises(tagging.InputError, match="another version of plan.jsonl"):
        tagging.tag([], TagConfig(report=str(report), apply=str(report)))
    assert snapshot(photos) == before


def test_an_unsure_photo_needs_a_picked_place_to_be_accepted(planned):
    _, _, report = planned
    under_review = review.Review(report)
    unsure = next(i for i, r in enumerate(under_review.rows) if r["status"] == "unsure")
    with pytest.raises(review.PlanError, match="pick one of its places"):
        under_review.decide([unsure], True, None)
    assert under_review.decide([unsure], True, 0) == {str(unsure): {"accept": True, "place": 0}}
    assert review.Review(report).decisions == under_review.decisions  # saved: resumable


def test_the_command_line_refuses_a_bad_track_before_anything(champion, tmp_path):
    photos = trip(tmp_path / "photos")
    before = snapshot(photos)
    track = tmp_path / "track.gpx"
    track.write_text("<gpx><trk><trkseg></trkseg></trk></gpx>")
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    command = [str(BIN / "landmark"), "tag", str(photos), "--gpx", str(track)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 2 and f"{track}: no track points" in done.stderr
    assert snapshot(photos) == before and not (tmp_path / "landmark-report.jsonl").exists()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER and EXIFTOOL), reason="needs chromium, "
                    "chromium-driver and exiftool (.ci/run installs them)")  # fmt: skip
def test_review_page_in_a_browser_then_apply(planned, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    photos, _, report = planned
    port = free_port()
    command = [str(BIN / "landmark"), "app", "--review", str(report), "--port", str(port)]
    server = start(
        command, f"http://127.0.0.1:{port}/review", tmp_path / "app.log", dict(os.environ)
    )
    try:
        browser.get(f"http://127.0.0.1:{port}/review")
        wait_for(browser, ".group .photo")
        groups = browser.find_elements(By.CSS_SELECTOR, "section.group")
        eiffel = next(g for g in groups if "Eiffel Tower" in g.text)
        eiffel.find_element(By.CSS_SELECTOR, ".accept-group").click()
        summary = browser.find_element(By.ID, "summary")
        WebDriverWait(browser, 30).until(lambda d: summary.text.startswith("4 accepted"))
        taj = browser.find_element(By.XPATH, "//div[@data-index][.//*[text()='IMG_0005.jpg']]")
        taj.find_element(By.CSS_SELECTOR, ".reject").click()
        unsure = browser.find_element(By.CSS_SELECTOR, ".photo[data-status='unsure']")
        Select(unsure.find_element(By.CSS_SELECTOR, ".place-pick")).select_by_value("1")
        unsure.find_element(By.CSS_SELECTOR, ".accept").click()
        WebDriverWait(browser, 30).until(
            lambda d: summary.text == "5 accepted · 1 rejected · 0 undecided"
        )
        assert "rejected" in taj.get_attribute("class")
        screenshot(browser, "review.png")
        # another web site's "simple" POST (text/plain, no preflight) cannot decide anything
        forged = requests.post(f"http://127.0.0.1:{port}/api/review/decisions",
                               data=json.dumps({"rows": [4], "accept": True}),
                               headers={"Content-Type": "text/plain"}, timeout=10)  # fmt: skip
        assert forged.status_code == 415
    finally:
        stop(server)
    done = subprocess.run([str(BIN / "landmark"), "tag", "--apply", str(report)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (report.with_name("plan.applied.jsonl")).exists()  # next to the plan, not the cwd
    written = sorted(p.name for p in photos.glob("*.xmp"))
    assert written == [f"IMG_000{i}.jpg.xmp" for i in (1, 2, 3, 6, 7)]
    picked = exif(photos / "IMG_0006.jpg.xmp")  # the Eiffel Tower, from IMG_0007 (accepted)
    assert (picked["XMP-landmark:Place"], picked["XMP-landmark:Anchor"]) == (
        "Eiffel Tower",
        "IMG_0007.jpg",
    )
    assert exif(photos / "IMG_0003.jpg.xmp")["XMP-landmark:Source"] == "time-neighbour"


@pytest.mark.skipif(not EXIFTOOL, reason="needs exiftool (.ci/run installs it)")
def test_tag_without_a_plan_writes_track_and_neighbour_places_at_once(champion, tmp_path):
    photos = trip(tmp_path / "photos")
    before = snapshot(photos)
    track = tmp_path / "walk.gpx"  # 10:50-11:10 on the camera (India time): around IMG_0004
    points = "".join(
        f'<trkpt lat="{48.8600 + i * 0.0001:.4f}" lon="2.3000"><time>2026-03-02T05:{20 + i}:00Z'
        "</time></trkpt>"
        for i in range(21)
    )
    track.write_text(f'<gpx version="1.1"><trk><trkseg>{points}</trkseg></trk></gpx>')
    clocks = {"gpx": (str(track),), "time_offset": ("Canon EOS R6=+05:30",)}
    cfg = TagConfig(model=champion, report=str(tmp_path / "r.jsonl"), threshold=THRESHOLD, **clocks)
    counts = tagging.tag([photos], cfg)
    assert counts["tagged"] == 6 and counts["unsure"] == 2  # IMG_0006 and the screenshot
    after = snapshot(photos)
    assert {k: v for k, v in after.items() if not k.endswith(".xmp")} == before
    placed = exif(photos / "IMG_0004.jpg.xmp")
    assert (placed["XMP-landmark:Source"], placed["XMP-landmark:GPXFile"]) == ("gpx", "walk.gpx")
    assert placed["XMP-exif:GPSLatitude"] == pytest.approx(48.8610, abs=1e-4)
    assert "XMP-dc:Subject" not in placed and "XMP-landmark:Reviewed" not in placed
    assert exif(photos / "IMG_0003.jpg.xmp")["XMP-landmark:Source"] == "time-neighbour"
    # resumed: a lost sidecar is placed again from its anchor, which the rerun only skips
    (photos / "IMG_0003.jpg.xmp").unlink()
    assert tagging.tag([photos], cfg) == {"skipped": 5, "tagged": 1, "unsure": 2}
    assert exif(photos / "IMG_0003.jpg.xmp")["XMP-landmark:Anchor"] == "IMG_0001.jpg"
    # a plan over the tagged library that asks for more (links) can be applied: rows carry
    # what --apply checks
    replan = TagConfig(**{**dataclasses.asdict(cfg), "plan": True, "organize": str(tmp_path / "o"),
                          "report": str(tmp_path / "again.jsonl")})  # fmt: skip
    tagging.tag([photos], replan)
    planned = [
        r for r in rows_by_name(tmp_path / "again.jsonl").values() if r["status"] == "planned"
    ]
    assert planned and all(len(r["sha256"]) == 64 for r in planned)
