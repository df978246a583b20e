"""Fault injection: `landmark tag --organize --copy --gps-copies` killed with SIGKILL at seeded
random moments, 20 times, rerun after each. After the last rerun every photo has each of its
outputs exactly once, no temporary file is left, the report is whole JSON lines and the
originals are byte-identical. (`-m slow`: 60 kills.)"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import export_tiny_model, photo_bytes
from hostile import tree_snapshot

from landmark.runtime import sidecars

BIN = Path(sys.executable).parent


PHOTOS = 200


def library(root: Path) -> list[Path]:
    """200 distinct photos; the same names in two folders (their organized copies collide)."""
    made = []
    for folder in ("2024", "2025"):
        for i in range(PHOTOS // 2):
            fmt, suffix = ("PNG", "png") if i % 4 == 3 else ("JPEG", "jpg")
            path = root / folder / f"img{i:03d}.{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            seed = len(made)
            path.write_bytes(photo_bytes(size=(96, 72), fmt=fmt, seed=seed,
                                         colour=(seed % 256, 90, 200 - seed % 200)))  # fmt: skip
            made.append(path)
    return made


def run_and_kill(
    command: list[str], report: Path, done: int, rng: random.Random, early: bool
) -> int:
    """Start the tagger and SIGKILL it: `early`, at a random moment of its start-up; else a
    random few milliseconds after the report line of a random one of the next 20 photos it
    tags (`done` photos are tagged: their lines come first), inside a photo's writes too.
    Its return code."""
    offset = report.stat().st_size if report.exists() else 0
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if early:
        time.sleep(rng.uniform(0.2, 3.0))
    else:
        lines, wanted = 0, done + rng.randint(1, 20)
        while process.poll() is None and lines < wanted:
            with report.open("rb") if report.exists() else open(os.devnull, "rb") as f:
                f.seek(offset)
                lines = f.read().count(b"\n")
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.01))
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    return process.wait()


def outputs_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())


@pytest.mark.parametrize("kills", [20, pytest.param(60, marks=pytest.mark.slow)])
def test_killed_runs_leave_every_output_exactly_once_and_nothing_half_done(tmp_path, kills):
    model = export_tiny_model(tmp_path / "tiny.pt")
    photos = library(tmp_path / "photos")
    before = tree_snapshot(tmp_path / "photos")
    report, organize, gps = tmp_path / "report.jsonl", tmp_path / "by-place", tmp_path / "gps"
    command = [str(BIN / "landmark"), "tag", str(tmp_path / "photos"), "--model", str(model),
               "--report", str(report), "--organize", str(organize), "--copy",
               "--gps-copies", str(gps)]  # fmt: skip
    rng = random.Random(1234)
    codes = []
    for i in range(kills):
        done = sum(sidecars.sidecar_path(p).exists() for p in photos)
        codes.append(run_and_kill(command, report, done, rng, early=i % 5 == 4))
    assert -signal.SIGKILL in codes  # runs were really cut short
    final = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]

    lines = report.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole, even after the kills
    last_run = {row["path"]: row for row in rows[-len(photos) :]}
    assert {r["status"] for r in last_run.values()} <= {"skipped", "tagged"}
    for photo in photos:
        assert sidecars.tagged_by(sidecars.sidecar_path(photo)) == last_run[str(photo)]["model"]
    copies = [p.read_bytes() for p in outputs_below(organize)]
    assert sorted(copies) == sorted(p.read_bytes() for p in photos)  # each photo once
    jpegs = [p for p in photos if p.suffix == ".jpg"]
    assert len(outputs_below(gps)) == len(jpegs)
    scans = sorted(p.read_bytes()[p.read_bytes().index(b"\xff\xda") :] for p in outputs_below(gps))
    assert scans == sorted(p.read_bytes()[p.read_bytes().index(b"\xff\xda") :] for p in jpegs)
    everything = [tmp_path / "photos", organize, gps]
    assert not [p for root in everything for p in root.rglob(".landmark-*")]
    after = tree_snapshot(tmp_path / "photos")
    assert {k: after.get(k) for k in before} == before
    assert all(k.endswith(b".xmp") for k in set(after) - set(before))
