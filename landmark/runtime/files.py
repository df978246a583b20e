"""Writing files so that nothing half-written is ever taken for done, and names that fit.

Every file is written under a temporary name (`.landmark-<pid>-<random>.tmp`, created with
O_EXCL and O_NOFOLLOW by `tempfile`) in its final folder and then linked or renamed into place;
`sweep` removes what a killed run left. Used by the tagger; imports nothing of training. And
a photo's identity (size, mtime, hash), which `--apply` checks against its plan.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from landmark.runtime.images import BadImageError, read_photo

TEMP_PREFIX = ".landmark-"  # + "<pid>-<random>.tmp": our temporary files
MAX_NAME_BYTES = 255  # of one file or folder name (Linux, macOS, Windows)


def names_for(folder: Path, photo: Path) -> list[Path]:
    """The names `photo` may take in `folder`: its own, else one with a short hash of its path
    (another photo of the same name got there first); both within the 255-byte name limit."""
    digest = hashlib.sha1(os.fsencode(photo.resolve())).hexdigest()[:8]
    stem, suffix = photo.stem, photo.suffix
    return [folder / _fit(stem, suffix), folder / _fit(stem, f"-{digest}{suffix}")]


def _fit(stem: str, tail: str) -> str:
    """`stem + tail`, the stem cut (never inside a UTF-8 character) to fit the name limit."""
    raw, room = os.fsencode(stem), MAX_NAME_BYTES - len(os.fsencode(tail))
    if len(raw) <= room:
        return stem + tail
    while room > 0 and raw[room] & 0xC0 == 0x80:  # a continuation byte: step back
        room -= 1
    return os.fsdecode(raw[:room]) + tail


def safe_name(name: str) -> str:
    """A landmark or country name as one folder name: no separators, control characters, `.` or
    `..`, at most 255 bytes (a longer name keeps its start and gets a short hash)."""
    cleaned = re.sub(r"[/\\:\x00-\x1f\x7f]", "_", name).strip()
    if cleaned in {"", ".", ".."}:
        cleaned = cleaned.replace(".", "_") or "_"
    if len(os.fsencode(cleaned)) > MAX_NAME_BYTES:
        return _fit(cleaned, "-" + hashlib.sha1(os.fsencode(cleaned)).hexdigest()[:8])
    return cleaned


def links_to(link: Path, photo: Path) -> bool:
    try:
        return link.resolve(strict=True) == photo.resolve(strict=True)
    except (OSError, RuntimeError):  # dangling, a loop
        return False


def same_content(target: Path, photo: Path) -> bool:
    try:
        return target.is_file() and not target.is_symlink() and filecmp.cmp(target, photo, False)
    except OSError:
        return False


def has_content(target: Path, content: bytes) -> bool:
    try:
        return (
            target.is_file()
            and target.stat().st_size == len(content)
            and (target.read_bytes() == content)
        )
    except OSError:
        return False


def temporary(folder: Path) -> tuple[int, Path]:
    """A new empty temporary file in `folder`, open for writing: a random name, created with
    O_EXCL and O_NOFOLLOW (tempfile), named so that a later run can tell it is stale (`sweep`).
    Write through the descriptor, never by name: the name may be swapped meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".tmp")
    return fd, Path(name)


def publish(content: bytes, path: Path, replace: Callable[[Path], bool]) -> None:
    """Write `content` to `path` all at once: to a temporary file, then linked into place if
    `path` is free, or renamed over it if `replace(path)` allows; else FileExistsError."""
    fd, tmp = temporary(path.parent)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(content)
        _link_or_replace(fd, tmp, path, replace)
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)


def publish_copy(photo: Path, target: Path) -> None:
    """A copy of `photo` (with its times) at `target`, which must be free; never half-written."""
    fd, tmp = temporary(target.parent)
    try:
        with open(photo, "rb") as source, os.fdopen(fd, "wb", closefd=False) as f:
            shutil.copyfileobj(source, f)
            f.flush()
            info = os.fstat(source.fileno())
        os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
        _link_or_replace(fd, tmp, target, replace=lambda path: False)
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)


def _link_or_replace(fd: int, tmp: Path, path: Path, replace: Callable[[Path], bool]) -> None:
    """Put the file open as `fd` (named `tmp`) at `path`, after checking that `tmp` still is
    that file (not a link someone swapped in)."""
    written, named = os.fstat(fd), os.lstat(tmp)
    if (written.st_dev, written.st_ino) != (named.st_dev, named.st_ino):
        raise OSError(f"{tmp} was replaced while being written: not published")
    try:
        os.link(tmp, path)  # fails if the name is taken, unlike rename
        return
    except FileExistsError:
        if not replace(path):
            raise
    except OSError as e:  # no hard links here (FAT, some network shares): check, then rename
        if e.errno not in {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}:
            raise
        if (path.exists() or path.is_symlink()) and not replace(path):
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from e
    os.replace(tmp, path)


def sweep(folders: Iterable[Path]) -> int:
    """Remove the temporary files that interrupted runs (their process is gone) left in
    `folders`; return how many."""
    removed = 0
    for folder in folders:
        try:
            with os.scandir(folder) as scan:
                stale = [e.path for e in scan if _stale(e.name)]
        except OSError:
            continue
        for path in stale:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
    return removed


def _stale(name: str) -> bool:
    match = re.fullmatch(rf"{re.escape(TEMP_PREFIX)}(\d+)-\w+\.tmp", name)
    if not match:
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False  # alive (another user's), or not a pid
    return False


def json_line(row: dict[str, Any]) -> str:
    """One report line. A path that is not valid UTF-8 (`caf\\xe9.jpg`) keeps its exact bytes
    as JSON escapes (Python reads it back with `os.fsencode`), the rest stays readable."""
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode()
    except UnicodeEncodeError:
        line = json.dumps(row)
    return line + "\n"


def end_last_line(report: Path) -> None:
    """Drop a last line that a killed run left half-written, so appended lines stay whole."""
    try:
        with report.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(max(0, size - 1_000_000))
            tail = f.read()
            f.truncate(size - len(tail) + tail.rfind(b"\n") + 1)
    except FileNotFoundError:
        return


def walk(
    root: Path,
    skip: Callable[[Path], bool] = lambda folder: False,
    on_error: Callable[[OSError], None] | None = None,
) -> Iterator[Path]:
    """Every entry below `root` that is not a folder (files, links, FIFOs, ...), in name order,
    at any depth (its own stack: no recursion limit). Hidden names (".") are left out, links to
    folders are not followed, and folders for which `skip` is true are not entered. A folder
    that cannot be read goes to `on_error` (default: raise)."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as e:
            if on_error is None:
                raise
            on_error(e)
            continue
        below = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if not is_folder(entry):
                yield path
            elif not skip(path):
                below.append(path)
        stack += reversed(below)  # the first folder is walked next: name order overall


def folders_below(roots: list[Path]) -> Iterator[Path]:
    """`roots` and every folder below them (our output folders, for `sweep`)."""
    stack = [r for r in roots if r.is_dir()]
    while stack:
        folder = stack.pop()
        yield folder
        try:
            with os.scandir(folder) as scan:
                stack += [Path(e.path) for e in scan if is_folder(e)]
        except OSError:
            continue


def is_folder(entry: os.DirEntry) -> bool:
    """A real folder (not a link to one); False for what cannot be looked at."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def identity(photo: Path, data: bytes) -> dict[str, Any]:
    """What `--apply` checks to know a photo is the one planned: size, mtime, SHA-256."""
    try:
        stat = photo.stat()
    except OSError:
        return {}
    digest = hashlib.sha256(data).hexdigest()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}


def changed_since(row: dict[str, Any]) -> tuple[str, bytes | None]:
    """Why the photo is not the one planned ("" if it is), and its bytes."""
    photo = Path(row["path"])
    try:
        stat = photo.stat()
        data = read_photo(photo)
    except (OSError, BadImageError) as e:
        return f"cannot read it any more ({e})", None
    if "sha256" not in row:
        return "the plan has no size, time and hash of it: plan again", None
    if stat.st_size != row.get("size") or stat.st_mtime_ns != row.get("mtime_ns"):
        return "changed since the plan (size or modification time): plan again", None
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        return "changed since the plan (content): plan again", None
    return "", data
