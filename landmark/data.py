"""The landmark data set: course layout, class names, locations, validation and the decode cache.

A data set is `train/` and `test/` with one folder per class (`09.Golden_Gate_Bridge` or plain
names) and an optional `landmarks.csv`. Every photo is decoded once, validated and stored as a
uint8 square in an on-disk cache; epochs read that cache and never decode a JPEG again.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from landmark import sources
from landmark.config import DataConfig, TrainConfig
from landmark.preprocessing import Collate, eval_transform, square_crop, train_transform
from landmark.runtime import images
from landmark.runtime.contract import Location, Preprocessing
from landmark.runtime.files import walk as files_below

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
LOCATIONS_FILE = "landmarks.csv"
CACHE_FORMAT = 1  # bump when the cache layout or decoding changes


@dataclass(frozen=True)
class BadFile:
    """A file excluded from the data set, with the reason; the file itself is left untouched."""

    path: str  # relative to the data set root
    reason: str


@dataclass
class Split:
    """The usable photos of one split: cached pixels and labels, row for row."""

    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    labels: np.ndarray  # (N,) int64
    paths: list[str]  # relative to the data set root


@dataclass
class LandmarkData:
    """A validated, cached data set: what every later step trains and evaluates on."""

    root: Path
    fingerprint: str  # sha256 over every file's path and content
    class_folders: list[str]
    locations: dict[str, Location]
    train: Split
    test: Split
    bad_files: list[BadFile] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (train, test) leaks

    @property
    def class_names(self) -> list[str]:
        """Names to show people: from `landmarks.csv` when it has one, else from the folder."""
        return [
            self.locations[f].name if f in self.locations else display_name(f)
            for f in self.class_folders
        ]

    @property
    def num_classes(self) -> int:
        return len(self.class_folders)


def display_name(folder: str) -> str:
    """ "09.Golden_Gate_Bridge" -> "Golden Gate Bridge"; plain names only lose underscores."""
    return re.sub(r"^\d+\.", "", folder).replace("_", " ").strip()


def find_root(path: Path) -> Path:
    """The folder at or one level below `path` that holds `train/` and `test/`."""
    candidates = [path] + sorted(p for p in path.iterdir() if p.is_dir())
    for candidate in candidates:
        if all((candidate / split).is_dir() for split in SPLITS):
            return candidate
    raise FileNotFoundError(
        f"no train/ and test/ folders in {path} (or one level below); expected the course "
        "layout train/<class>/<photo>, test/<class>/<photo>"
    )


def list_files(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class folders (from `train/`) and every file of each split as `(relative path, label)`."""
    class_folders = sorted(p.name for p in (root / "train").iterdir() if _visible_dir(p))
    if not class_folders:
        raise FileNotFoundError(f"{root / 'train'} has no class folders")
    unknown = sorted(p.name for p in (root / "test").iterdir() if _visible_dir(p))
    unknown = [name for name in unknown if name not in class_folders]
    if unknown:
        raise ValueError(f"test/ has classes that train/ lacks: {unknown}")
    files: dict[str, list[tuple[str, int]]] = {}
    for split in SPLITS:
        files[split] = []
        for label, folder in enumerate(class_folders):
            class_dir = root / split / folder
            if not class_dir.is_dir():
                continue
            # Every entry but folders (FIFOs, broken links and folders that cannot be read too:
            # decoding reports them by name).
            unreadable: list[Path] = []
            found = list(files_below(class_dir, on_error=lambda e, out=unreadable: out.append(
                Path(e.filename))))  # fmt: skip
            for path in sorted(found + unreadable):
                files[split].append((path.relative_to(root).as_posix(), label))
    return class_folders, files


def _visible_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith((".", "__"))


def read_locations(root: Path, class_folders: list[str]) -> dict[str, Location]:
    """Read `landmarks.csv` (folder, name, latitude, longitude, country) if the data set has one."""
    path = root / LOCATIONS_FILE
    if not path.is_file():
        return {}
    locations = {}
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                locations[row["folder"]] = Location(
                    name=row["name"],
                    latitude=float(row["latitude"]),
                    longitude=float(row["longitude"]),
                    country=row["country"],
                )
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{path} line {line}: expected columns folder,name,latitude,longitude,"
                    f"country with numeric coordinates, got {row}"
                ) from e
    missing = [folder for folder in class_folders if folder not in locations]
    if missing:
        log.warning("%s has no location for %d classes: %s", path, len(missing), missing)
    return locations


def load_data(cfg: DataConfig) -> LandmarkData:
    """Fetch, validate and cache the data set of `cfg`, reusing a cache that is still valid."""
    root = find_root(sources.fetch(cfg.data, cfg.cache_dir, cfg.sha256, cfg.max_unzipped_gb))
    class_folders, files = list_files(root)
    hashes = _hash_files(root, [path for split in SPLITS for path, _ in files[split]])
    fingerprint = _fingerprint(root, hashes)
    cache = _cache_path(fingerprint, cfg)
    if not (cache / "index.json").is_file():
        _build_cache(root, files, cfg, cache)
    else:
        log.info("Reusing decode cache %s", cache)
    index = json.loads((cache / "index.json").read_text())
    splits = {
        split: Split(
            # Copy-on-write mapping: writable, so torch can view it without a copy; never written.
            images=np.load(cache / f"{split}.npy", mmap_mode="c"),
            labels=np.asarray(index[split]["labels"], dtype=np.int64),
            paths=index[split]["paths"],
        )
        for split in SPLITS
    }
    return LandmarkData(
        root=root,
        fingerprint=fingerprint,
        class_folders=class_folders,
        locations=read_locations(root, class_folders),
        train=splits["train"],
        test=splits["test"],
        bad_files=[BadFile(**bad) for bad in index["bad_files"]],
        duplicates=_leaks(files, hashes),
    )


def _cache_path(fingerprint: str, cfg: DataConfig) -> Path:
    """The decode cache of these photos under every setting that changes what it holds."""
    settings = [cfg.cache_size, cfg.min_image_side, cfg.max_image_pixels]
    settings += [cfg.max_full_decode_pixels, CACHE_FORMAT]
    key = hashlib.sha256(json.dumps([fingerprint, *settings]).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir).expanduser() / "cache" / f"{key}-{cfg.cache_size}px"


def _hash_files(root: Path, paths: list[str]) -> dict[str, str]:
    bar = tqdm(paths, desc="Fingerprinting", unit="file", leave=False)
    return {path: _content_hash(root / path) for path in bar}


def _content_hash(path: Path) -> str:
    """sha256 of a photo file; for what cannot be read as one (a FIFO, a broken link, too
    large) the reason instead, which decoding reports."""
    try:
        return hashlib.sha256(images.read_photo(path)).hexdigest()
    except images.BadImageError as e:
        return f"unreadable: {e}"


def printable(path: str) -> str:
    """A file name for people and text files: bytes that are not UTF-8 shown as `\\xe9`."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fingerprint(root: Path, hashes: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(hashes):
        digest.update(f"{path}\0{hashes[path]}\n".encode("utf-8", "surrogateescape"))
    if (root / LOCATIONS_FILE).is_file():
        digest.update(sources.file_sha256(root / LOCATIONS_FILE).encode())
    return digest.hexdigest()


def _leaks(
    files: dict[str, list[tuple[str, int]]], hashes: dict[str, str]
) -> list[tuple[str, str]]:
    """Byte-identical photos present in both train/ and test/."""
    train_by_hash: dict[str, str] = {}
    for path, _ in files["train"]:
        train_by_hash.setdefault(hashes[path], path)
    return [(train_by_hash[hashes[p]], p) for p, _ in files["test"] if hashes[p] in train_by_hash]


def _build_cache(
    root: Path, files: dict[str, list[tuple[str, int]]], cfg: DataConfig, cache: Path
) -> None:
    """Decode every photo once into `<split>.npy` uint8 arrays; written atomically.

    Processes building the same cache at once take turns; the later ones reuse the first's.
    """
    cache.parent.mkdir(parents=True, exist_ok=True)
    with sources.build_lock(cache):
        if (cache / "index.json").is_file():  # built by another process while this one waited
            log.info("Reusing decode cache %s", cache)
            return
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".part"))
        try:
            index: dict = {"bad_files": []}
            for split in SPLITS:
                good, bad = _decode_split(root, files[split], cfg, tmp / f"{split}.npy")
                index[split] = {"paths": [p for p, _ in good], "labels": [n for _, n in good]}
                index["bad_files"] += [dataclasses.asdict(b) for b in bad]
            (tmp / "index.json").write_text(json.dumps(index, indent=1))
            sources.publish(tmp, cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _decode_split(
    root: Path, files: list[tuple[str, int]], cfg: DataConfig, out: Path
) -> tuple[list[tuple[str, int]], list[BadFile]]:
    size = cfg.cache_size
    # Rows are written for good photos only; the array is trimmed to their count at the end.
    arr = np.lib.format.open_memmap(
        out, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3)
    )
    good: list[tuple[str, int]] = []
    bad: list[BadFile] = []
    for path, label in tqdm(files, desc=f"Decoding {out.stem}", unit="photo"):
        try:
            arr[len(good)] = decode_square(root / path, cfg)
        except images.BadImageError as e:
            log.warning("Excluding %s: %s", path, e)
            bad.append(BadFile(path=path, reason=str(e)))
            continue
        good.append((path, label))
    arr.flush()
    del arr
    if bad:
        _truncate_npy(out, len(good))
    return good, bad


def decode_square(path: Path, cfg: DataConfig) -> np.ndarray:
    """Decode one photo into the cached form: uint8 `(S, S, 3)`, shorter side resized to S."""
    img = images.load_rgb(
        path,
        cfg.min_image_side,
        cfg.max_image_pixels,
        draft_size=cfg.cache_size,
        max_full_pixels=cfg.max_full_decode_pixels,
    )
    return square_crop(np.asarray(img), cfg.cache_size)


def _truncate_npy(path: Path, rows: int) -> None:
    full = np.load(path, mmap_mode="r")
    kept = np.lib.format.open_memmap(
        path.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint8, shape=(rows, *full.shape[1:])
    )
    kept[:] = full[:rows]
    kept.flush()
    del kept, full
    os.replace(path.with_suffix(".tmp.npy"), path)


class TrainValRows(NamedTuple):
    """Row indices of `train/` used for training and for validation."""

    train: np.ndarray
    val: np.ndarray


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> TrainValRows:
    """Seeded per-class split of row indices into (train, validation).

    Each class with at least two photos gives `round(n * val_fraction)` of them (at least one)
    to validation, so small classes are still validated and class shares are preserved.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(len(rows) * val_fraction)) if len(rows) >= 2 else 0
        val_idx.append(rows[:n_val])
        train_idx.append(rows[n_val:])
    return TrainValRows(np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx)))


def stratified_folds(labels: np.ndarray, rows: np.ndarray, k: int, seed: int) -> list[TrainValRows]:
    """`k` seeded, stratified folds of `rows` (row indices into `labels`): fold f validates on
    every k-th photo of each shuffled class starting at f and trains on the rest, so each row is
    validated exactly once and every fold keeps the class shares."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(rows), dtype=int)
    offset = 0  # classes continue where the last one stopped, so the folds stay the same size
    for label in np.unique(labels[rows]):
        members = rng.permutation(np.flatnonzero(labels[rows] == label))
        fold_of[members] = (offset + np.arange(len(members))) % k
        offset += len(members)
    return [TrainValRows(rows[fold_of != f], rows[fold_of == f]) for f in range(k)]


def summarize(data: LandmarkData, val_fraction: float, seed: int) -> dict:
    """Counts per class and split, fingerprint, bad files and leaks, as a JSON-able dict."""
    train_idx, val_idx = stratified_split(data.train.labels, val_fraction, seed)
    counts = {
        "train": np.bincount(data.train.labels[train_idx], minlength=data.num_classes),
        "val": np.bincount(data.train.labels[val_idx], minlength=data.num_classes),
        "test": np.bincount(data.test.labels, minlength=data.num_classes),
    }
    classes = []
    for label, folder in enumerate(data.class_folders):
        location = data.locations.get(folder)
        classes.append(
            {
                "folder": folder,
                "name": data.class_names[label],
                **{split: int(c[label]) for split, c in counts.items()},
                "location": dataclasses.asdict(location) if location else None,
            }
        )
    return {
        "root": str(data.root),
        "fingerprint": data.fingerprint,
        "num_classes": data.num_classes,
        "counts": {split: int(c.sum()) for split, c in counts.items()},
        "num_bad_files": len(data.bad_files),
        "num_train_test_duplicates": len(data.duplicates),
        "classes": classes,
        "bad_files": [dataclasses.asdict(b) for b in data.bad_files],
        "train_test_duplicates": [{"train": a, "test": b} for a, b in data.duplicates],
    }


class CachedImages(torch.utils.data.Dataset):
    """Rows of a cached split as `(transform(uint8 (3, S, S) tensor), label)` pairs."""

    def __init__(self, split: Split, rows: np.ndarray | None = None, transform=None) -> None:
        self.split = split
        self.images = torch.from_numpy(split.images)  # (N, S, S, 3) uint8, no copy
        self.rows = np.arange(len(split.labels)) if rows is None else np.asarray(rows)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.rows[i]
        img = self.images[row].permute(2, 0, 1)  # (3, S, S), channels-last view
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.split.labels[row])


def derive_seed(seed: int, *indices: int) -> int:
    """A 32-bit seed of its own for `(seed, *indices)`, e.g. `(cfg.seed, view)` or
    `(cfg.seed, epoch)`: independent streams, none of them "seeded 0 by default"."""
    return int(np.random.SeedSequence([seed, *indices]).generate_state(1)[0])


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    *,
    seed: int | None,
    shuffle: bool = False,
    augment: float = 0.0,
    num_workers: int,
) -> torch.utils.data.DataLoader:
    """uint8 `(B, 3, H, W)` batches of the dataset's photos with their labels.

    `shuffle` (training) also drops an incomplete last batch; `augment` > 0 colour-jitters
    each photo. All randomness comes from `seed`: the loader's generator orders the photos and
    draws the seeds of the worker processes, which do the random crops and the jitter. Workers
    are started afresh for every pass over the data, so a pass is fixed by the generator's state
    when it starts (`fit` reseeds it every epoch): a resumed run repeats an uninterrupted one.
    With `num_workers=0` the work runs in this process on the global RNGs (`seed_everything`).
    `seed=None` is for loaders without randomness (evaluation).
    """
    if seed is None and (shuffle or augment):
        raise ValueError("a shuffled or augmented loader needs a seed")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) > batch_size,
        num_workers=num_workers,
        # Persistent workers would keep their RNG state from the first epoch on, so a resumed
        # run's workers (seeded at its first epoch) would crop differently from the original's.
        persistent_workers=False,
        collate_fn=Collate(augment),
        generator=None if seed is None else torch.Generator().manual_seed(seed),
    )


def image_loaders(
    pre: Preprocessing, dataset: LandmarkData, split: TrainValRows, cfg: TrainConfig, seed: int
) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Training loader (random crops and jitter of strength `cfg.augment`, shuffled) and
    validation loader (the evaluation geometry) over the decode cache of `train/`."""
    train_set = CachedImages(dataset.train, split.train, train_transform(pre, cfg.augment))
    val_set = CachedImages(dataset.train, split.val, eval_transform(pre))
    return (
        make_loader(
            train_set,
            cfg.batch_size,
            seed=seed,
            shuffle=True,
            augment=cfg.augment,
            num_workers=cfg.num_workers,
        ),  # fmt: skip
        make_loader(val_set, cfg.batch_size, seed=None, num_workers=cfg.num_workers),
    )


EVAL_BATCH, EVAL_WORKERS = 64, 1  # evaluation passes: order kept, one worker crops ahead


def eval_loader(pre: Preprocessing, split: Split, rows: np.ndarray | None = None):
    """The photos of `split` (all, or `rows`) in order, in the evaluation geometry."""
    images = CachedImages(split, rows, eval_transform(pre))
    return make_loader(images, EVAL_BATCH, seed=None, num_workers=EVAL_WORKERS)
