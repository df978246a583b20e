"""Plan, review, apply, end to end on a small synthetic trip with the tiny champion: `--plan`
writes nothing but the report, the review page in a real browser (accept a group, reject a
photo, pick a place for an unsure one), `--apply` writes the accepted rows only (read back by
exiftool) and refuses photos changed since the plan; bad plans and tracks are refused at the
door with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from browser import CHROMEDRIVER, CHROMIUM, screenshot, wait_for
from conftest import free_port, snapshot, start, stop, timed_jpeg

from landmark.config import TagConfig
from landmark.runtime import review, tagging

EXIFTOOL = shutil.which("exiftool")
BIN = Path(sys.executable).parent
RED, BLUE, GREY = (200, 30, 30), (30, 30, 200), (128, 128, 128)  # Eiffel, Taj, unsure
# One morning: the Eiffel Tower, two photos after it, a lone photo, the Taj Mahal, a photo
# between the Taj and the Eiffel Tower again, and a screenshot without a camera time.
TRIP = {
    "IMG_0001.jpg": ("10:00:00", RED),
    "IMG_0002.jpg": ("10:05:00", GREY),
    "IMG_0003.jpg": ("10:10:00", GREY),
    "IMG_0004.jpg": ("11:00:00", GREY),
    "IMG_0005.jpg": ("12:00:00", BLUE),
    "IMG_0006.jpg": ("12:10:00", GREY),
    "IMG_0007.jpg": ("12:25:00", RED),
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
        "IMG_0006.jpg": ("unsure", None),  # the Taj 10 min before, the Eiffel Tower 15 after
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


def test_apply_writes_accepted_rows_only_and_refuses_changed_photos(planned, tmp_path):
    photos, before, report = planned
    accept = {n: (True, None) for n in ("IMG_0001.jpg", "IMG_0002.jpg", "IMG_0003.jpg")}
    decide(report, {**accept, "IMG_0005.jpg": (False, None), "IMG_0006.jpg": (True, 1)})
    edited = photos / "IMG_0003.jpg"
    edited.write_bytes(edited.read_bytes() + b"edited")  # after the plan
    counts = tagging.tag([], TagConfig(report=str(report), apply=str(report)))
    assert counts == {"tagged": 3, "changed": 1, "rejected": 1, "undecided": 1}
    written = {p.name for p in photos.glob("*.xmp")}
    assert written == {"IMG_0001.jpg.xmp", "IMG_0002.jpg.xmp", "IMG_0006.jpg.xmp"}
    applied = rows_by_name(report.with_name("plan.applied.jsonl"))
    assert "changed since the plan" in applied["IMG_0003.jpg"]["error"]
    after = snapshot(photos)
    assert {k: v for k, v in after.items() if not k.endswith(".xmp")} == {
        **before,
        "IMG_0003.jpg": after["IMG_0003.jpg"],  # the edit is the user's own
    }
    if EXIFTOOL:
        check_sidecars(photos)


def check_sidecars(photos: Path) -> None:
    landmark = exif(photos / "IMG_0001.jpg.xmp")
    assert landmark["XMP-landmark:Source"] == "landmark"
    assert "Eiffel Tower" in landmark["XMP-dc:Subject"]
    neighbour = exif(photos / "IMG_0002.jpg.xmp")
    assert neighbour["XMP-landmark:Source"] == "time-neighbour"
    assert neighbour["XMP-landmark:Anchor"] == "IMG_0001.jpg"
    assert neighbour["XMP-landmark:TimeGap"] == 300
    assert neighbour["XMP-exif:GPSLatitude"] == pytest.approx(landmark["XMP-exif:GPSLatitude"])
    assert "XMP-dc:Subject" not in neighbour  # no landmark claimed for a time neighbour
    picked = exif(photos / "IMG_0006.jpg.xmp")  # the reviewer picked the Eiffel Tower
    assert picked["XMP-landmark:Place"] == "Eiffel Tower"
    assert picked["XMP-landmark:Reviewed"] == "accepted"


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
        taj = browser.find_element(
            By.XPATH, "//div[@data-index][.//*[text()='IMG_0005.jpg']]"
        )
        taj.find_element(By.CSS_SELECTOR, ".reject").click()
        unsure = browser.find_element(By.CSS_SELECTOR, ".photo[data-status='unsure']")
        Select(unsure.find_element(By.CSS_SELECTOR, ".place-pick")).select_by_value("0")
        unsure.find_element(By.CSS_SELECTOR, ".accept").click()
        WebDriverWait(browser, 30).until(
            lambda d: summary.text == "5 accepted · 1 rejected · 0 undecided"
        )
        assert "rejected" in taj.get_attribute("class")
        screenshot(browser, "review.png")
    finally:
        stop(server)
    done = subprocess.run([str(BIN / "landmark"), "tag", "--apply", str(report)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in photos.glob("*.xmp"))
    assert written == [f"IMG_000{i}.jpg.xmp" for i in (1, 2, 3, 6, 7)]
    assert exif(photos / "IMG_0006.jpg.xmp")["XMP-landmark:Place"] == "Taj Mahal"
    assert exif(photos / "IMG_0003.jpg.xmp")["XMP-landmark:Source"] == "time-neighbour"
