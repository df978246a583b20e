"""The Spark engine's safety: its driver listens on 127.0.0.1 only (no web UI unless asked), and
one Spark run answers every file by name, however odd: glob characters in names, a FIFO, a
vanished or oversized file cost one error row each, never the job, and nothing hangs."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import pytest
import requests
from conftest import photo_bytes

from landmark import tracking
from landmark.config import ServeConfig
from landmark.runtime import spark
from landmark.runtime.predictor import Predictor

needs_java = pytest.mark.skipif(not shutil.which("java"), reason="Spark needs Java")
RED, GREEN, BLUE = (200, 30, 30), (30, 200, 30), (30, 30, 200)  # the tiny data set's classes
WILDCARDS = {"0.0.0.0", "::"}


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on: its socket inodes looked up
    in /proc/net/tcp and tcp6 (state 0A is LISTEN); IPv4-mapped IPv6 shown as IPv4."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed since listed
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                found.append(_address(fields[1], family))
    return found


def _address(hex_address: str, family: int) -> tuple[str, int]:
    """("127.0.0.1", 8080) for "0100007F:1F90": /proc prints each 32-bit word in host order."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(socket.inet_ntop(family, raw))
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address), int(port, 16)


@contextlib.contextmanager
def released_after(fifo: Path, seconds: float) -> Iterator[None]:
    """Every `seconds`, let go whoever blocks opening `fifo` for reading (it then reads an empty
    file): a reader that would hang makes a failed assertion instead of a stuck test."""
    done = threading.Event()

    def release() -> None:
        while not done.wait(seconds):
            with contextlib.suppress(OSError):  # ENXIO: nobody is waiting to read
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_read_photos_answers_each_path_without_blocking(tmp_path):
    """No Spark: the pandas UDF the executors run gives each path its bytes or its error, at
    once, for a FIFO, a device, a folder and a vanished file too."""
    photo = tmp_path / "ok.jpg"
    photo.write_bytes(photo_bytes())
    os.mkfifo(tmp_path / "pipe.jpg")
    paths = [photo, tmp_path / "pipe.jpg", Path("/dev/null"), tmp_path, tmp_path / "gone.jpg"]
    with released_after(tmp_path / "pipe.jpg", 10):
        files = spark.read_photos(pd.Series([str(p) for p in paths]))
    assert list(files.columns) == ["content", "error"] and len(files) == len(paths)
    assert files["content"][0] == photo.read_bytes() and pd.isna(files["error"][0])
    assert list(files["content"][1:]) == [b""] * 4
    for error in files["error"][1:4]:
        assert error.startswith("not a regular file"), error
    assert files["error"][4].startswith("cannot read")


@needs_java
def test_spark_driver_listens_on_loopback_only():
    """The session the scorer starts, UI off (default) and on: no socket on a wildcard address,
    none off 127.0.0.1 (local master); the UI answers on 127.0.0.1 only; small Arrow batches."""
    for ui in (False, True):
        session = spark.start_session("local[2]", ui=ui)
        try:
            sockets = listening(session.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
            url = session.sparkContext.uiWebUrl
            if ui:
                assert requests.get(f"http://127.0.0.1:{urlparse(url).port}/", timeout=10).ok
            batch = session.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
        finally:
            session.stop()
        assert sockets, "the driver listens at least for its RPC"
        assert not [s for s in sockets if s[0] in WILDCARDS], (ui, sockets)
        assert {host for host, _ in sockets} == {"127.0.0.1"}, (ui, sockets)
        if ui:
            assert [host for host, port in sockets if port == urlparse(url).port] == ["127.0.0.1"]
        else:
            assert url is None and not [p for _, p in sockets if 4040 <= p <= 4056], sockets
        assert int(batch) == spark.BATCH_ROWS <= ServeConfig().max_rows
    with pytest.raises(ValueError, match="only be started with a local master"):
        spark.start_session("spark://cluster:7077", ui=True)


@needs_java
@pytest.mark.timeout(300)
def test_one_spark_run_answers_every_file_by_name(champion, tmp_path):
    """Glob characters in names, a FIFO, a vanished, an oversized and a broken file: one run,
    the photos scored as the local engine scores them, one error row for each other file. 130
    more photos put over 64 (the pyfunc's `max_rows`) in each of the 2 partitions."""
    photos = {"a[1].jpg": RED, "b{x}.jpg": GREEN, "c*.jpg": BLUE, "d?.jpg": RED, "ok.jpg": GREEN}
    for seed, (name, colour) in enumerate(photos.items()):
        (tmp_path / name).write_bytes(photo_bytes(size=(120, 90), colour=colour, seed=seed))
    os.mkfifo(tmp_path / "e.jpg")
    with (tmp_path / "huge.jpg").open("wb") as huge:
        huge.truncate(spark.SPARK_MAX_BYTES + 1)  # sparse: no disk space, no time
    (tmp_path / "broken.jpg").write_bytes(b"%PDF-1.4 not a photo")
    errors = {
        "e.jpg": "not a regular file",
        "huge.jpg": f"{spark.SPARK_MAX_BYTES + 1:,} bytes is over",
        "gone.jpg": "cannot read",
        "broken.jpg": "not an image",  # the pyfunc's own answer, kept
    }
    path, _ = tracking.fetch_model(champion, tmp_path / "model")
    predictor = Predictor.load(path)
    scorer = spark.SparkScorer(champion, predictor.metadata, "local[2]")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(130):
        (many / f"{i:03d}.jpg").write_bytes(photo_bytes(colour=BLUE, seed=i))
    pending = [(tmp_path / name, b"") for name in [*photos, *errors]]
    pending += [(photo, b"") for photo in sorted(many.iterdir())]
    with released_after(tmp_path / "e.jpg", 30):
        scored = list(scorer.score(pending, 2, None))
    assert [photo for photo, _, _ in scored] == [photo for photo, _ in pending]  # all, in order
    answers = {photo.name: answer for photo, _, answer in scored}
    for name in photos:
        (local,) = predictor.predict([(tmp_path / name).read_bytes()], 2, errors="report")
        got = answers[name]
        assert got["error"] is None and got["label"] == local["label"], (name, got)
        assert got["probability"] == pytest.approx(local["probability"], abs=1e-5)
        assert got["location"] == local["location"]
    for name, reason in errors.items():
        got = answers[name]
        assert got["error"].startswith(reason) and got["label"] is None, (name, got)
    assert all(a["error"] is None for _, _, a in scored[-130:]), "a batch over max_rows?"
