"""Getting a data set onto disk: a local folder, a local zip, or a zip at an http(s) URL.

Downloads retry transient failures (tenacity), are verified (size, zip integrity,
optional sha256) and, like extractions, written atomically: a failure leaves nothing half-done
behind, and finished work is reused next time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import urllib.parse
import zipfile
from pathlib import Path, PurePosixPath

import requests
import tenacity
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRIES = 4  # attempts after the first, for refused or dropped connections and 429/5xx
RETRY_WAIT = 1.0  # seconds before the first retry; doubling
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class DataSourceError(RuntimeError):
    """The data set could not be fetched, verified or extracted; the message says how to fix it."""


class TransientDownloadError(DataSourceError):
    """A download failure that may not happen again (connection, 429/5xx, body cut short)."""


def fetch(source: str, cache_dir: str | Path, sha256: str = "") -> Path:
    """Return a local folder holding the data set named by `source`.

    Args:
        source: a folder (used in place), a `.zip` file, or an http(s) URL of a zip.
        cache_dir: where downloads and extracted zips are kept and reused.
        sha256: if given, the zip must have this sha256.
    """
    cache_dir = Path(cache_dir).expanduser()
    if urllib.parse.urlparse(source).scheme in {"http", "https"}:
        name = Path(urllib.parse.urlparse(source).path).name or "data.zip"
        zip_path = download(source, cache_dir / "downloads" / name, sha256=sha256)
        return extract_zip(zip_path, cache_dir / "datasets")
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_file() and zipfile.is_zipfile(path):
        if sha256:
            _check_sha256(path, sha256)
        return extract_zip(path, cache_dir / "datasets")
    if path.is_file():
        raise DataSourceError(f"{path} is neither a folder nor a zip file")
    raise DataSourceError(f"data set {source!r} not found: give a folder, a .zip or an http(s) URL")


def download(url: str, dest: Path, sha256: str = "") -> Path:
    """Download `url` to `dest` with a progress bar, verify it, and move it into place.

    Transient failures (refused or dropped connections, HTTP 429 and 5xx, a body cut short) are
    retried `RETRIES` times with exponential waits; the integrity checks (size, zip CRCs,
    sha256) run on the finished file. An existing `dest` is reused (after the sha256 check, when
    one is given). The bytes go to a temporary file next to `dest` that is removed on any
    failure, including Ctrl-C.
    """
    if dest.exists():
        if sha256:
            _check_sha256(dest, sha256)
        log.info("Reusing %s", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientDownloadError),
            stop=tenacity.stop_after_attempt(1 + RETRIES),
            wait=tenacity.wait_exponential(multiplier=RETRY_WAIT, max=60),
            before_sleep=_log_retry,
            reraise=True,
        )(_download_once, url, tmp)
        if sha256:
            _check_sha256(tmp, sha256)
        _check_zip(tmp, url)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _log_retry(state: tenacity.RetryCallState) -> None:
    log.warning("%s; retrying (attempt %d)", state.outcome.exception(), state.attempt_number + 1)


def _download_once(url: str, path: Path) -> None:
    """One attempt: stream `url` into `path` (from the start), or raise."""
    try:
        response = requests.get(url, stream=True, timeout=60, headers={"User-Agent": "landmark"})
    except requests.RequestException as e:  # refused, reset, timed out
        raise TransientDownloadError(f"cannot download {url}: {e}") from e
    with response:
        if response.status_code in TRANSIENT_STATUS:
            raise TransientDownloadError(f"cannot download {url}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise DataSourceError(f"cannot download {url}: HTTP {response.status_code}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length else None
        received, broken = 0, None
        with (
            path.open("wb") as out,
            tqdm(total=expected, unit="B", unit_scale=True, desc=f"Downloading {url}") as bar,
        ):
            try:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as e:  # the connection broke mid-way
                broken = e
    if broken is not None or (expected is not None and received != expected):
        total = f"{expected:,}" if expected is not None else "?"
        raise TransientDownloadError(
            f"download of {url} stopped after {received:,} of {total} bytes"
        ) from broken


def extract_zip(zip_path: Path, datasets_dir: Path) -> Path:
    """Extract `zip_path` into its own folder under `datasets_dir` and return that folder.

    The folder is named after the zip and its content hash, so an extracted zip is reused and a
    changed zip gets a new folder. Entries that would land outside it are refused before
    anything is written.
    """
    digest = file_sha256(zip_path)[:12]
    target = datasets_dir / f"{zip_path.stem}-{digest}"
    if target.is_dir():
        log.info("Reusing extracted %s", target)
        return target
    datasets_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=datasets_dir, prefix=f".{target.name}.", suffix=".part"))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [m for m in zf.infolist() if _check_member(m, zip_path)]
            for member in tqdm(members, desc=f"Extracting {zip_path.name}", unit="file"):
                zf.extract(member, tmp)
        os.replace(tmp, target)
    except zipfile.BadZipFile as e:
        raise DataSourceError(f"{zip_path} is not a valid zip: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_member(member: zipfile.ZipInfo, zip_path: Path) -> bool:
    """Refuse entries with absolute paths, `..`, drive letters or symbolic links."""
    name = member.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise DataSourceError(
            f"refusing {zip_path}: entry {member.filename!r} would be written outside the "
            "target folder"
        )
    if stat.S_ISLNK(member.external_attr >> 16):
        raise DataSourceError(f"refusing {zip_path}: entry {member.filename!r} is a symbolic link")
    return not member.is_dir()


def _check_zip(path: Path, origin: str) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except zipfile.BadZipFile as e:
        raise DataSourceError(f"{origin} did not give a valid zip file: {e}") from e
    if bad is not None:
        raise DataSourceError(f"{origin}: zip entry {bad!r} fails its CRC check")


def _check_sha256(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual != expected.lower():
        raise DataSourceError(f"{path} has sha256 {actual}, expected {expected}")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
