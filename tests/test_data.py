"""The data set: layout, names, locations, validation report, decode cache, split, Dataset."""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BAD_FILES, CLASSES, make_zip, photo_bytes, snapshot

from landmark import data, sources
from landmark.preprocessing import Preprocessing, eval_transform, train_transform


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("09.Golden_Gate_Bridge", "Golden Gate Bridge"),
        ("Taj_Mahal", "Taj Mahal"),
        ("00.Haleakala_National_Park", "Haleakala National Park"),
        ("Brandenburg Gate", "Brandenburg Gate"),
    ],
)
def test_display_name(folder, name):
    assert data.display_name(folder) == name


def test_bad_files_are_reported_excluded_and_untouched(data_cfg, dataset_dir):
    before = snapshot(dataset_dir)
    loaded = data.load_data(data_cfg)
    assert snapshot(dataset_dir) == before  # nothing deleted, moved or modified

    reported = {Path(bad.path).name: bad for bad in loaded.bad_files}
    assert set(reported) == set(BAD_FILES)
    for name, (_, reason) in BAD_FILES.items():
        assert reason in reported[name].reason
        assert reported[name].path == f"train/{CLASSES[0]}/{name}"
    usable = set(loaded.train.paths) | set(loaded.test.paths)
    assert not any(Path(p).name in BAD_FILES for p in usable)
    # Odd but legal photos are kept: grey, palette, alpha, CMYK, 16-bit, EXIF-rotated.
    odd = {"grey.png", "palette.gif", "alpha.png", "cmyk.jpg", "sixteen_bit.png", "rotated.jpg"}
    assert odd <= {Path(p).name for p in loaded.train.paths}
    assert len(loaded.train.paths) == 3 * 6 + len(odd)
    assert loaded.train.images.shape == (len(loaded.train.paths), 64, 64, 3)
    assert loaded.train.images.dtype == np.uint8


def test_classes_names_and_locations(data_cfg):
    loaded = data.load_data(data_cfg)
    assert loaded.class_folders == sorted(CLASSES)
    assert loaded.class_names == ["Eiffel Tower", "Golden Gate Bridge", "Taj Mahal"]
    eiffel = loaded.locations["00.Eiffel_Tower"]
    assert (eiffel.country, eiffel.latitude, eiffel.longitude) == ("France", 48.8584, 2.2945)
    # Labels follow the class folder each photo is in.
    for path, label in zip(loaded.test.paths, loaded.test.labels, strict=True):
        assert path.split("/")[1] == loaded.class_folders[label]


def test_train_test_duplicates_are_reported(data_cfg):
    loaded = data.load_data(data_cfg)
    assert loaded.duplicates == [(f"train/{CLASSES[1]}/000.jpg", f"test/{CLASSES[1]}/leak.jpg")]


def test_cached_pixels_are_the_decoded_photo(data_cfg, dataset_dir):
    loaded = data.load_data(data_cfg)
    row = loaded.train.paths.index(f"train/{CLASSES[0]}/rotated.jpg")
    expected = data.decode_square(dataset_dir / loaded.train.paths[row], data_cfg)
    np.testing.assert_array_equal(loaded.train.images[row], expected)
    # The EXIF rotation put the red half on top of the cached square.
    top, bottom = loaded.train.images[row][:10].mean(axis=(0, 1)), expected[-10:].mean(axis=(0, 1))
    assert top[0] > 150 > bottom[0]


def caches(cfg) -> list[Path]:
    """The decode caches built under `cfg.cache_dir` (folders; lock files are not caches)."""
    return sorted(p for p in (Path(cfg.cache_dir) / "cache").iterdir() if p.is_dir())


def test_cache_is_reused_then_rebuilt_when_a_photo_changes(data_cfg, dataset_dir, tmp_path):
    first = data.load_data(data_cfg)
    caches_before = caches(data_cfg)
    assert len(caches_before) == 1
    index_mtime = (caches_before[0] / "index.json").stat().st_mtime_ns

    again = data.load_data(data_cfg)
    assert again.fingerprint == first.fingerprint
    assert (caches_before[0] / "index.json").stat().st_mtime_ns == index_mtime  # not rebuilt

    changed = dataset_dir / "train" / CLASSES[2] / "000.jpg"
    changed.write_bytes(photo_bytes(colour=(255, 255, 0), seed=99))
    rebuilt = data.load_data(data_cfg)
    assert rebuilt.fingerprint != first.fingerprint
    assert len(caches(data_cfg)) == 2
    row = rebuilt.train.paths.index(f"train/{CLASSES[2]}/000.jpg")
    assert rebuilt.train.images[row][..., 0].mean() > 200  # the new yellow photo


def test_zip_and_folder_give_the_same_fingerprint(data_cfg, dataset_dir, tmp_path):
    archive = make_zip(dataset_dir, tmp_path / "landmark_images.zip", prefix="landmark_images")
    from_folder = data.load_data(data_cfg)
    from_zip = data.load_data(dataclasses.replace(data_cfg, data=str(archive)))
    assert from_zip.fingerprint == from_folder.fingerprint
    assert from_zip.root.name == "landmark_images"
    assert from_zip.train.paths == from_folder.train.paths


def test_the_full_decode_limit_applies_and_keys_the_cache(data_cfg, dataset_dir):
    """A PNG decodes at full size: `max_full_decode_pixels` excludes a large one, and a cache
    built under another limit is not reused."""
    big = f"train/{CLASSES[0]}/big.png"
    (dataset_dir / big).write_bytes(photo_bytes(size=(200, 150), fmt="PNG"))  # 30,000 px
    assert big in data.load_data(data_cfg).train.paths
    strict = dataclasses.replace(data_cfg, max_full_decode_pixels=20_000)
    loaded = data.load_data(strict)
    reasons = {bad.path: bad.reason for bad in loaded.bad_files}
    assert "too large: 200x150 = 30,000 px > 20,000" in reasons[big]
    assert big not in loaded.train.paths
    assert f"train/{CLASSES[0]}/grey.png" in loaded.train.paths  # 80x60: within the limit
    assert len(caches(data_cfg)) == 2


def test_load_data_refuses_a_zip_over_max_unzipped_gb(data_cfg, dataset_dir, tmp_path):
    archive = make_zip(dataset_dir, tmp_path / "landmark_images.zip")
    tiny = dataclasses.replace(data_cfg, data=str(archive), max_unzipped_gb=1e-6)  # 1 kB
    with pytest.raises(sources.DataSourceError, match="more than max_unzipped_gb=1e-06"):
        data.load_data(tiny)


def load_at_once(barrier, results, cfg) -> None:
    """Run in a child process: wait for the others, then load; report the cache or error."""
    barrier.wait()
    try:
        loaded = data.load_data(cfg)
        results.put(("ok", str(Path(loaded.train.images.filename).parent)))
    except Exception as e:
        results.put(("failed", repr(e)))


def test_two_processes_building_the_same_cache_at_once(data_cfg):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=load_at_once, args=(barrier, results, data_cfg)) for _ in "ab"]
    for worker in workers:
        worker.start()
    try:
        outcomes = [results.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert [status for status, _ in outcomes] == ["ok", "ok"], outcomes
    assert outcomes[0][1] == outcomes[1][1]
    # One cache, no `.part` folder of the other process left behind.
    assert [str(p) for p in caches(data_cfg)] == [outcomes[0][1]]


def test_missing_layout_is_explained(tmp_path):
    (tmp_path / "photos" / "A").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no train/ and test/"):
        data.find_root(tmp_path / "photos")


def test_test_class_unknown_to_train_is_refused(dataset_dir):
    (dataset_dir / "test" / "99.Atlantis").mkdir()
    with pytest.raises(ValueError, match="99.Atlantis"):
        data.list_files(dataset_dir)


def test_bad_locations_csv_names_the_line(dataset_dir):
    csv_path = dataset_dir / "landmarks.csv"
    csv_path.write_text(csv_path.read_text() + "Taj_Mahal,Taj Mahal,north,78.0,India\n")
    with pytest.raises(ValueError, match="line 5"):
        data.read_locations(dataset_dir, CLASSES)


def test_dataset_without_locations_is_fine(data_cfg, dataset_dir):
    (dataset_dir / "landmarks.csv").unlink()
    assert data.load_data(data_cfg).locations == {}


def test_stratified_split_is_seeded_disjoint_and_stratified():
    labels = np.repeat(np.arange(4), [40, 20, 10, 1])
    train, val = data.stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [8, 4, 2, 0]
    again, val_again = data.stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(val, val_again) and np.array_equal(train, again)
    _, other = data.stratified_split(labels, 0.2, seed=4)
    assert not np.array_equal(val, other)


def test_loaders_give_uint8_batches(data_cfg):
    loaded = data.load_data(data_cfg)
    pre = Preprocessing(resize_size=64, crop_size=56)
    train = data.CachedImages(loaded.train, transform=train_transform(pre, strength=0.7))
    image, label = train[0]
    assert image.shape == (3, 56, 56) and image.dtype == torch.uint8
    assert label == int(loaded.train.labels[0])
    loader = data.make_loader(train, batch_size=4, seed=1, shuffle=True, augment=0.7, num_workers=2)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 56, 56) and images.dtype == torch.uint8
    assert labels.shape == (4,)

    test = data.CachedImages(loaded.test, rows=np.array([1, 0]), transform=eval_transform(pre))
    assert len(test) == 2
    eval_loader = data.make_loader(test, batch_size=2, seed=None, num_workers=0)
    first, second = next(iter(eval_loader))[0], next(iter(eval_loader))[0]
    assert torch.equal(first, second)  # evaluation is deterministic and in order
    assert torch.equal(first[1], eval_transform(pre)(test.images[0].permute(2, 0, 1)))
