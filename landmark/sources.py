"""Getting a data set onto disk: a local folder, a local zip, or a zip at an http(s) URL.

Downloads retry transient failures (tenacity), are verified (size, zip integrity,
optional sha256) and, like extractions, written atomically: a failure leaves nothing half-done
behind, and finished work is reused next time. Zip bombs are refused, and processes building
the same folder at once take turns (`build_lock`) instead of tripping over each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import requests
import tenacity
from tqdm.auto import tqdm

from landmark.config import DataConfig

log = logging.getLogger(__name__)

CHUNK = 1 << 20
GB = 1e9
# Zip-bomb guard: photos barely compress (a real data set inflates about 1x), a bomb ~1000x.
MAX_RATIO = 100  # largest uncompressed / compressed size, of the zip and of each entry...
RATIO_FLOOR = 8 << 20  # ...once it inflates to more bytes than this (small text compresses well)
RETRIES = 4  # attempts after the first, for refused or dropped connections and 429/5xx
RETRY_WAIT = 1.0  # seconds before the first retry; doubling
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class DataSourceError(RuntimeError):
    """The data set could not be fetched, verified or extracted; the message says how to fix it."""


class TransientDownloadError(DataSourceError):
    """A download failure that may not happen again (connection, 429/5xx, body cut short)."""


def fetch(
    source: str,
    cache_dir: str | Path,
    sha256: str = "",
    max_unzipped_gb: float = DataConfig.max_unzipped_gb,
) -> Path:
    """Return a local folder holding the data set named by `source`.

    Args:
        source: a folder (used in place), a `.zip` file, or an http(s) URL of a zip.
        cache_dir: where downloads and extracted zips are kept and reused.
        sha256: if given, the zip must have this sha256.
        max_unzipped_gb: a zip whose entries add up to more is refused (see `extract_zip`).
    """
    cache_dir = Path(cache_dir).expanduser()
    if urllib.parse.urlparse(source).scheme in {"http", "https"}:
        zip_path = download(source, download_path(cache_dir, source), sha256=sha256)
        return extract_zip(zip_path, cache_dir / "datasets", max_unzipped_gb)
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_file() and zipfile.is_zipfile(path):
        if sha256:
            _check_sha256(path, sha256)
        return extract_zip(path, cache_dir / "datasets", max_unzipped_gb)
    if path.is_file():
        raise DataSourceError(f"{path} is neither a folder nor a zip file")
    raise DataSourceError(f"data set {source!r} not found: give a folder, a .zip or an http(s) URL")


def download_path(cache_dir: Path, url: str) -> Path:
    """Where the download of `url` is kept: `downloads/<sha256 of the whole URL>/<its name>`, so
    two URLs ending in the same name (`.../data.zip`) never share a file."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if name in {"", ".", ".."} or len(name.encode()) > 200 or "\0" in name:
        name = "data.zip"  # (a URL ending in "/.." would make the folder itself the file)
    return cache_dir / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


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
        if not dest.exists():
            with contextlib.suppress(OSError):  # not empty: another download is under way
                dest.parent.rmdir()
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


def extract_zip(
    zip_path: Path, datasets_dir: Path, max_unzipped_gb: float = DataConfig.max_unzipped_gb
) -> Path:
    """Extract `zip_path` into its own folder under `datasets_dir` and return that folder.

    The folder is named after the zip and its content hash, so an extracted zip is reused and a
    changed zip gets a new folder. Entries that would land outside it, and zip bombs (see
    `_check_sizes`), are refused before anything is written. Processes extracting the same zip
    at once take turns; the later ones reuse the first one's folder.
    """
    digest = file_sha256(zip_path)[:12]
    target = datasets_dir / f"{zip_path.stem}-{digest}"
    if target.is_dir():
        log.info("Reusing extracted %s", target)
        return target
    datasets_dir.mkdir(parents=True, exist_ok=True)
    with build_lock(target):
        if target.is_dir():  # extracted by another process while this one waited
            log.info("Reusing extracted %s", target)
            return target
        tmp = Path(tempfile.mkdtemp(dir=datasets_dir, prefix=f".{target.name}.", suffix=".part"))
        try:
            _extract_all(zip_path, tmp, max_unzipped_gb)
            publish(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract_all(zip_path: Path, folder: Path, max_unzipped_gb: float) -> None:
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = [m for m in zf.infolist() if _check_member(m, zip_path)]
            _check_sizes(zf.infolist(), zip_path, folder, max_unzipped_gb)
            for member in tqdm(members, desc=f"Extracting {zip_path.name}", unit="file"):
                _extract_member(zf, member, folder, zip_path)
    except zipfile.BadZipFile as e:
        raise DataSourceError(f"{zip_path} is not a valid zip: {e}") from e


def _check_sizes(
    members: list[zipfile.ZipInfo], zip_path: Path, folder: Path, max_unzipped_gb: float
) -> None:
    """Refuse a zip bomb from the sizes its entries declare, before anything is written.

    Refused: entries adding up to more than `max_unzipped_gb` or than the free space at
    `folder`; and, for the whole zip and for each entry that inflates to more than
    `RATIO_FLOOR` bytes, an uncompressed / compressed ratio above `MAX_RATIO`. Photos barely
    compress, so a real data set is near 1 and a bomb near 1000; small entries (a CSV) may
    compress well and are not judged. `_extract_member` holds each entry to its declared size.
    """
    total = sum(m.file_size for m in members)
    if total > max_unzipped_gb * GB:
        raise DataSourceError(
            f"refusing {zip_path}: its entries add up to {_size(total)} unzipped, more than "
            f"max_unzipped_gb={max_unzipped_gb:g}; if the data set really is that large, "
            "raise --max-unzipped-gb"
        )
    free = shutil.disk_usage(folder).free
    if total > free:
        raise DataSourceError(
            f"cannot extract {zip_path}: it needs {_size(total)} but {folder.parent} has only "
            f"{_size(free)} free; free some space or point --cache-dir at a larger disk"
        )
    for m in members:
        _check_ratio(zip_path, repr(m.filename), m.file_size, m.compress_size)
    _check_ratio(zip_path, "the zip", total, sum(m.compress_size for m in members))


def _check_ratio(zip_path: Path, name: str, size: int, compressed: int) -> None:
    if size > RATIO_FLOOR and size > MAX_RATIO * compressed:
        raise DataSourceError(
            f"refusing {zip_path}: {name} inflates {compressed:,} bytes to {size:,} "
            f"({size / max(compressed, 1):.0f}x, more than {MAX_RATIO}x, where photos are near "
            "1x): a zip bomb. If it is genuine, unzip it yourself and pass the folder as data"
        )


def _size(n: int) -> str:
    return f"{n / GB:.3g} GB ({n:,} bytes)"


def _extract_member(
    zf: zipfile.ZipFile, member: zipfile.ZipInfo, folder: Path, zip_path: Path
) -> None:
    """Stream one (checked) entry into `folder`, stopping if it inflates past its declared size:
    the size check trusted the header, so the header must not be able to lie."""
    dest = folder.joinpath(*PurePosixPath(member.filename).parts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(member) as src, open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > member.file_size:
                raise DataSourceError(
                    f"refusing {zip_path}: entry {member.filename!r} inflates past the "
                    f"{member.file_size:,} bytes its header declares (a zip bomb)"
                )
            out.write(chunk)


@contextlib.contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<target>.lock` while building `target`, waiting for any other
    process that holds it; callers re-check for a finished `target` once they have it.

    The empty lock file stays: removing it would let a waiting process and a newcomer lock two
    different files.
    """
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Waiting for another process building %s", target)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def publish(tmp: Path, target: Path) -> None:
    """Rename the finished folder `tmp` to `target`. A `target` completed meanwhile by another
    process (folders only appear there finished) is kept and reused; `tmp` is left to the
    caller to remove."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        log.info("Reusing %s, completed by another process", target)


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
            members = zf.infolist()
            for m in members:  # before testzip inflates everything: a bomb costs no CPU
                _check_ratio(path, repr(m.filename), m.file_size, m.compress_size)
            total = sum(m.file_size for m in members)
            _check_ratio(path, "the zip", total, sum(m.compress_size for m in members))
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
