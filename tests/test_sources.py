"""Fetching data sets: folders, zips and URLs served by a real local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import multiprocessing
import random
import struct
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_zip

from landmark import sources
from landmark.sources import DataSourceError, fetch


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    for split in ("train", "test"):
        (folder / split / "A").mkdir(parents=True)
        (folder / split / "A" / "1.jpg").write_bytes(b"x" * 1000)
    return folder


class Server:
    """A real HTTP server on 127.0.0.1 serving files, with a log of requested paths."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        self.failures = 0  # answers 503 to this many requests under /flaky/
        self.short_answers = 0  # then cuts this many answers short
        owner = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(owner.root), **kwargs)

            def do_GET(self):
                owner.requests.append(self.path)
                if self.path.startswith("/flaky/") and owner.failures > 0:
                    owner.failures -= 1
                    self.send_error(503, "busy, try again")
                    return
                if self.path.startswith("/flaky/") and owner.short_answers > 0:
                    owner.short_answers -= 1
                    self.path = "/short" + self.path.removeprefix("/flaky")
                if self.path.startswith("/flaky/"):
                    self.path = self.path.removeprefix("/flaky")
                if self.path.startswith("/short/"):  # promise more bytes than are sent
                    body = (owner.root / self.path.removeprefix("/short/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) * 2))
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    srv = Server(root)
    yield srv
    srv.close()


def leftovers(cache: Path) -> list[str]:
    """Everything below `cache` but lock files (empty; they stay on purpose, see `build_lock`)."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.suffix != ".lock")


def recording_open(monkeypatch) -> list:
    """Record the zip entries opened for reading (what extraction does first, per entry)."""
    opened = []
    real_open = zipfile.ZipFile.open

    def record(self, member, *args, **kwargs):
        opened.append(member)
        return real_open(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", record)
    return opened


def test_folder_is_used_in_place(photos, tmp_path):
    assert fetch(str(photos), tmp_path / "cache") == photos.resolve()
    assert not (tmp_path / "cache").exists()


def test_zip_is_extracted_once_and_reused(photos, tmp_path):
    archive = make_zip(photos, tmp_path / "data.zip", prefix="landmark_images")
    cache = tmp_path / "cache"
    first = fetch(str(archive), cache)
    assert (first / "landmark_images" / "train" / "A" / "1.jpg").read_bytes() == b"x" * 1000
    marker = first / "marker"
    marker.write_text("still here")
    assert fetch(str(archive), cache) == first
    assert marker.exists()  # not extracted again


@pytest.mark.parametrize(
    "entry", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt", "C:/evil.txt", "link"]
)
def test_zip_entries_escaping_the_target_are_refused(tmp_path, entry, monkeypatch):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train/A/1.jpg", b"fine")
        if entry == "link":
            info = zipfile.ZipInfo("train/A/link.jpg")
            info.external_attr = 0o120777 << 16  # a symbolic link to /etc/passwd
            zf.writestr(info, "/etc/passwd")
        else:
            zf.writestr(entry, b"evil")
    extracted = recording_open(monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match="refusing"):
        fetch(str(archive), cache)
    assert extracted == []  # refused before anything is written, not halfway through
    assert leftovers(cache / "datasets") == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_url_is_downloaded_verified_and_reused(photos, server, tmp_path):
    make_zip(photos, server.root / "landmark_images.zip")
    digest = hashlib.sha256((server.root / "landmark_images.zip").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    url = f"{server.url}/landmark_images.zip"
    root = fetch(url, cache, sha256=digest)
    assert (root / "train" / "A" / "1.jpg").is_file()
    assert fetch(url, cache, sha256=digest) == root
    assert server.requests == ["/landmark_images.zip"]  # the second fetch reused the download
    assert [p.name for p in (cache / "downloads").rglob("*") if p.is_file()] == [
        "landmark_images.zip"
    ]


@pytest.mark.parametrize(
    "url", ["http://h/a/..", "http://h/", "http://h/%2e%2e", "http://h/" + "x" * 300 + ".zip"]
)
def test_a_url_without_a_usable_name_is_kept_as_data_zip(tmp_path, url):
    path = sources.download_path(tmp_path, url)
    assert path.name == "data.zip" and path.parent.parent == tmp_path / "downloads"


def test_urls_ending_in_the_same_name_keep_their_own_download(photos, server, tmp_path):
    """Two servers' `/data.zip` are two data sets, not one cached file."""
    other_photos = tmp_path / "other"
    (other_photos / "train" / "B").mkdir(parents=True)
    (other_photos / "train" / "B" / "2.jpg").write_bytes(b"y" * 500)
    make_zip(photos, server.root / "data.zip")
    (tmp_path / "www2").mkdir()
    other = Server(tmp_path / "www2")
    try:
        make_zip(other_photos, other.root / "data.zip")
        cache = tmp_path / "cache"
        first = fetch(f"{server.url}/data.zip", cache)
        second = fetch(f"{other.url}/data.zip", cache)
        assert other.requests == ["/data.zip"]  # downloaded, not taken from the first's cache
    finally:
        other.close()
    assert (first / "train" / "A" / "1.jpg").read_bytes() == b"x" * 1000
    assert (second / "train" / "B" / "2.jpg").read_bytes() == b"y" * 500
    assert not (second / "train" / "A").exists()
    assert fetch(f"{server.url}/data.zip", cache) == first  # each still reused


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(sources, "RETRY_WAIT", 0.01)


def test_transient_failures_are_retried(photos, server, tmp_path):
    make_zip(photos, server.root / "data.zip")
    server.failures = 2
    root = fetch(f"{server.url}/flaky/data.zip", tmp_path / "cache")
    assert (root / "train" / "A" / "1.jpg").is_file()
    assert server.requests == ["/flaky/data.zip"] * 3  # two 503s, then the file


def test_a_body_cut_short_is_downloaded_again(photos, server, tmp_path):
    make_zip(photos, server.root / "data.zip")
    server.short_answers = 1
    root = fetch(f"{server.url}/flaky/data.zip", tmp_path / "cache")
    assert (root / "train" / "A" / "1.jpg").is_file()
    assert server.requests == ["/flaky/data.zip"] * 2  # cut short once, then whole


def test_a_server_that_stays_down_is_named_after_the_retries(server, tmp_path):
    server.failures = 100
    with pytest.raises(DataSourceError, match="cannot download .*flaky/data.zip: HTTP 503"):
        fetch(f"{server.url}/flaky/data.zip", tmp_path / "cache")
    assert len(server.requests) == 1 + sources.RETRIES
    assert leftovers(tmp_path / "cache" / "downloads") == []


def test_interrupted_download_leaves_nothing(photos, server, tmp_path):
    make_zip(photos, server.root / "data.zip")
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match="stopped after"):
        fetch(f"{server.url}/short/data.zip", cache)
    assert len(server.requests) == 1 + sources.RETRIES  # retried, then given up
    assert leftovers(cache / "downloads") == []


def test_download_that_is_not_a_zip_is_refused(server, tmp_path):
    (server.root / "page.zip").write_text("<html>Access denied</html>")
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match="not give a valid zip"):
        fetch(f"{server.url}/page.zip", cache)
    assert leftovers(cache / "downloads") == []


def test_sha256_mismatch_is_refused(photos, server, tmp_path):
    make_zip(photos, server.root / "data.zip")
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match="expected 0000"):
        fetch(f"{server.url}/data.zip", cache, sha256="0" * 64)
    assert leftovers(cache / "downloads") == []


def test_missing_url_names_the_problem(server, tmp_path):
    with pytest.raises(DataSourceError, match="cannot download.*404"):
        fetch(f"{server.url}/nope.zip", tmp_path / "cache")


def test_missing_path_and_non_zip_file_are_explained(tmp_path):
    with pytest.raises(DataSourceError, match="not found"):
        fetch(str(tmp_path / "nothing"), tmp_path / "cache")
    text = tmp_path / "data.txt"
    text.write_text("hello")
    with pytest.raises(DataSourceError, match="neither a folder nor a zip"):
        fetch(str(text), tmp_path / "cache")


def test_failed_extraction_leaves_no_partial_folder(photos, tmp_path):
    archive = make_zip(photos, tmp_path / "data.zip")
    corrupted = bytearray(archive.read_bytes())
    start = corrupted.index(b"x" * 100)
    corrupted[start : start + 100] = b"y" * 100  # content no longer matches its CRC
    archive.write_bytes(bytes(corrupted))
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match="data.zip is not a valid zip: Bad CRC-32"):
        fetch(str(archive), cache)
    assert leftovers(cache / "datasets") == []
    make_zip(photos, archive)  # intact again: extracted in full, nothing of the failure left
    root = fetch(str(archive), cache)
    assert (root / "train" / "A" / "1.jpg").read_bytes() == b"x" * 1000
    assert [p.name for p in (cache / "datasets").iterdir() if p.is_dir()] == [root.name]


def zeros_zip(path: Path, sizes: list[int]) -> Path:
    """A zip bomb in miniature: entries of zeros (deflate shrinks them about 1000x)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, size in enumerate(sizes):
            with zf.open(f"train/A/{i}.jpg", "w") as entry:
                for start in range(0, size, sources.CHUNK):
                    entry.write(bytes(min(sources.CHUNK, size - start)))
    return path


@pytest.mark.parametrize(
    ("sizes", "culprit"),
    [([20_000_000], "'train/A/0.jpg'"), ([200_000] * 60, "the zip")],
    ids=["one-huge-entry", "many-small-entries"],
)
def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path, monkeypatch, sizes, culprit):
    archive = zeros_zip(tmp_path / "bomb.zip", sizes)
    opened = recording_open(monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match=rf"bomb.zip: {culprit} inflates .* more than 100x"):
        fetch(str(archive), cache)
    assert opened == []
    assert leftovers(cache / "datasets") == []


def test_a_zip_larger_than_max_unzipped_gb_is_refused(tmp_path, monkeypatch):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # stored: photos barely compress
        zf.writestr("train/A/1.jpg", random.Random(0).randbytes(2_000_000))
    opened = recording_open(monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(
        DataSourceError,
        match=r"big.zip: its entries add up to .*2,000,000 bytes.* more than "
        r"max_unzipped_gb=0.001; .*raise --max-unzipped-gb",
    ):
        fetch(str(archive), cache, max_unzipped_gb=0.001)
    assert opened == []
    assert leftovers(cache / "datasets") == []
    assert (fetch(str(archive), cache) / "train" / "A" / "1.jpg").stat().st_size == 2_000_000


def test_a_zip_that_does_not_fit_on_the_disk_is_refused(photos, tmp_path, monkeypatch):
    archive = make_zip(photos, tmp_path / "data.zip")  # 2 x 1000 bytes unzipped
    real_usage = sources.shutil.disk_usage

    def almost_full(path):
        return real_usage(path)._replace(free=1999)

    monkeypatch.setattr(sources.shutil, "disk_usage", almost_full)
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match=r"data.zip: it needs .*2,000 bytes.* only .*1,999"):
        fetch(str(archive), cache)
    assert leftovers(cache / "datasets") == []


def test_an_entry_inflating_past_its_declared_size_is_stopped(photos, tmp_path, monkeypatch):
    """A reader that believes the compressed stream over the header (zipfile itself cuts an
    entry at its declared size; this guard does not rely on it)."""
    archive = make_zip(photos, tmp_path / "data.zip")

    def endless_open(self, member, *args, **kwargs):
        declared = member if isinstance(member, zipfile.ZipInfo) else self.getinfo(member)
        return io.BytesIO(bytes(declared.file_size + 3 * sources.CHUNK))

    monkeypatch.setattr(zipfile.ZipFile, "open", endless_open)
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match=r"'test/A/1.jpg' inflates past the 1,000 bytes"):
        fetch(str(archive), cache)
    assert leftovers(cache / "datasets") == []


def test_a_header_that_understates_an_entry_is_refused(tmp_path):
    archive = zeros_zip(tmp_path / "liar.zip", [5_000_000])
    raw = bytearray(archive.read_bytes())
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, 1000)  # uncompressed size in the directory
    struct.pack_into("<I", raw, 22, 1000)  # and in the local header
    archive.write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with pytest.raises(DataSourceError, match="liar.zip"):
        fetch(str(archive), cache)
    assert leftovers(cache / "datasets") == []


def fetch_at_once(barrier, results, *args) -> None:
    """Run in a child process: wait for the others, then fetch; report the folder or error."""
    barrier.wait()
    try:
        results.put(("ok", str(fetch(*args))))
    except Exception as e:
        results.put(("failed", repr(e)))


def run_at_once(target, *args, processes: int = 2) -> list[tuple[str, str]]:
    """Start `processes` fresh interpreters running `target(barrier, results, *args)` together."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=target, args=(barrier, results, *args)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        return [results.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()


def test_two_processes_extracting_the_same_zip_at_once(tmp_path):
    folder = tmp_path / "many"
    (folder / "train" / "A").mkdir(parents=True)
    rng = random.Random(1)
    for i in range(400):  # enough work that both processes are extracting at the same time
        (folder / "train" / "A" / f"{i}.jpg").write_bytes(rng.randbytes(20_000))
    archive = make_zip(folder, tmp_path / "data.zip")
    cache = tmp_path / "cache"
    outcomes = run_at_once(fetch_at_once, str(archive), str(cache))
    assert [status for status, _ in outcomes] == ["ok", "ok"], outcomes
    assert outcomes[0][1] == outcomes[1][1]
    extracted = Path(outcomes[0][1])
    assert len(list(extracted.rglob("*.jpg"))) == 400
    # One folder, no `.part` folder of the other process left behind.
    assert [p.name for p in (cache / "datasets").iterdir() if p.is_dir()] == [extracted.name]
