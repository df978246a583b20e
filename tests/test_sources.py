"""Fetching data sets: folders, zips and URLs served by a real local HTTP server."""

from __future__ import annotations

import hashlib
import http.server
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
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


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
    extracted = []
    extract = zipfile.ZipFile.extract

    def recording_extract(self, member, *args, **kwargs):
        extracted.append(member)
        return extract(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "extract", recording_extract)
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
    assert leftovers(cache / "downloads") == ["landmark_images.zip"]


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
    assert [p.name for p in (cache / "datasets").iterdir()] == [root.name]
