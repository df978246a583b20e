"""Transfer learning on cached activations: the frozen part of a backbone runs once per photo.

The backbone is split at a stage boundary. The frozen prefix (normalisation + early stages) is
run once over every photo, for a centre view and a few augmented views, and its outputs are kept
in memory (bf16). Training then runs only the trainable suffix (last stages, pooling, new head)
on those activations: with no trainable stage that is a linear head on pooled features and takes
seconds; with a few stages it is still several times faster than running the whole network.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from landmark import data, evaluation, models, openset, training
from landmark.config import DataConfig, TrainConfig, TransferConfig
from landmark.preprocessing import eval_transform, train_transform

log = logging.getLogger(__name__)


class Suffix(nn.Module):
    """The trainable top of a model: `stages[start:]`, global average pooling, the head.

    With `start == len(stages)` its input is already pooled features `(B, F)`.
    """

    def __init__(self, model: nn.Module, start: int) -> None:
        super().__init__()
        self.stages = nn.Sequential(*model.stages()[start:])
        self.dropout, self.classifier = model.dropout, model.classifier  # shared, not copied

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features `(B, F)` of activations at stage `start` (or of pooled features)."""
        if x.dim() == 4:
            x = self.stages(x.float()).mean(dim=(2, 3))
        return x.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


def prefix(model: nn.Module, start: int) -> nn.Module:
    """The frozen bottom of a model, fused for fast inference: images -> stage `start` input.

    With `start == len(stages)` it is the whole feature extractor (pooled features).
    """
    if start == len(model.stages()):
        body = _FeatureExtractor(model)
    else:
        body = nn.Sequential(model.normalize, *model.stages()[:start])
    return models.fuse_for_inference(body).to(memory_format=torch.channels_last)


class _FeatureExtractor(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


@torch.inference_mode()
def cache_activations(
    body: nn.Module,
    split: data.Split,
    rows: np.ndarray,
    transform: nn.Module,
    seed: int,
    device: torch.device,
    augment: float = 0.0,
    batch_size: int = 32,
    desc: str = "activations",
) -> torch.Tensor:
    """Run `body` on `device` once over `rows` of `split` (one view each, in order); bf16
    outputs `(N, ...)`, kept on the CPU.

    The view's random crops and colour jitter come from `seed` alone.
    """
    images = data.CachedImages(split, rows, transform)
    loader = data.make_loader(images, batch_size, seed=seed, augment=augment, num_workers=1)
    body = body.to(device)
    outputs = []
    for batch, _ in tqdm(loader, desc=desc, unit="batch", leave=False):
        batch = batch.to(device).contiguous(memory_format=torch.channels_last)
        outputs.append(body(batch).to(torch.bfloat16).cpu())
    return torch.cat(outputs)


class CachedViews(torch.utils.data.Dataset):
    """Cached activations of several views per photo; each access picks one view at random."""

    def __init__(self, views: torch.Tensor, labels: np.ndarray) -> None:
        self.views = views  # (V, N, ...)
        self.labels = torch.as_tensor(labels)

    def __len__(self) -> int:
        return self.views.shape[1]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        view = int(torch.randint(self.views.shape[0], ()))
        return self.views[view, i], int(self.labels[i])


@dataclass
class ActivationCache:
    """Activations at the input of backbone stage `start`, for training views and validation."""

    start: int
    train: torch.Tensor  # (V, N, ...) bf16: view 0 is the centre crop, the rest augmented
    val: torch.Tensor  # (M, ...) bf16, centre crops
    train_labels: np.ndarray
    val_labels: np.ndarray

    def without(self, classes: np.ndarray) -> tuple[ActivationCache, torch.Tensor]:
        """This cache without the photos of `classes` (labels renumbered 0..K-1 in order), and
        the centre-view activations of those photos (training and validation rows)."""
        known = np.setdiff1d(np.unique(np.r_[self.train_labels, self.val_labels]), classes)
        renumber = {int(c): i for i, c in enumerate(known)}
        keep_train = np.isin(self.train_labels, known)
        keep_val = np.isin(self.val_labels, known)
        unknown = torch.cat([self.train[0][~keep_train], self.val[~keep_val]])
        cache = ActivationCache(
            start=self.start,
            train=self.train[:, torch.from_numpy(keep_train)],
            val=self.val[torch.from_numpy(keep_val)],
            train_labels=np.array([renumber[int(c)] for c in self.train_labels[keep_train]]),
            val_labels=np.array([renumber[int(c)] for c in self.val_labels[keep_val]]),
        )
        return cache, unknown

    def fold(self, train: np.ndarray, val: np.ndarray) -> ActivationCache:
        """A cache training on the rows `train` of this cache's training photos (all views)
        and validating on the centre view of its rows `val` (positions, not photo indices)."""
        train_t, val_t = torch.from_numpy(train), torch.from_numpy(val)
        return ActivationCache(
            start=self.start,
            train=self.train[:, train_t],
            val=self.train[0][val_t],
            train_labels=self.train_labels[train],
            val_labels=self.train_labels[val],
        )

    def loaders(self, batch_size: int, seed: int) -> tuple[DataLoader, DataLoader]:
        """Training loader (a random view of each photo per epoch) and validation loader."""
        train_set = CachedViews(self.train, self.train_labels)
        val_set = CachedViews(self.val[None], self.val_labels)
        return (
            data.make_loader(train_set, batch_size, seed=seed, shuffle=True, num_workers=0),
            data.make_loader(val_set, 256, seed=None, num_workers=0),
        )


def cache_views(
    model: nn.Module,
    dataset: data.LandmarkData,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    start: int,
    augment: float,
    views: int,
    seed: int,
    device: torch.device,
) -> ActivationCache:
    """Run the model's stages before `start` once over a centre view and `views` augmented
    views of every training photo and over the validation photos; keep the outputs.

    Augmented view `v` is seeded from `(seed, v)`: every view has crops of its own, and the
    same seed gives the same views.
    """
    body = prefix(model, start)
    pre = model.preprocessing
    centre = eval_transform(pre)
    train_views = [
        cache_activations(
            body, dataset.train, train_rows, centre, seed, device, desc="train view 1"
        )
    ]
    for v in range(1, views + 1):
        train_views.append(
            cache_activations(
                body, dataset.train, train_rows, train_transform(pre, augment),
                data.derive_seed(seed, v), device, augment, desc=f"train view {v + 1}",
            )
        )  # fmt: skip
    val = cache_activations(body, dataset.train, val_rows, centre, seed, device, desc="val")
    log.info("Cached %s activations of %d views", tuple(val.shape[1:]), views + 1)
    labels = dataset.train.labels
    train = torch.stack(train_views)
    return ActivationCache(start, train, val, labels[train_rows], labels[val_rows])


@torch.inference_mode()
def advance(
    cache: ActivationCache, model: nn.Module, start: int, device: torch.device
) -> ActivationCache:
    """The same cache one or more stages further up: runs stages `cache.start..start-1` once
    on `device`."""
    if start < cache.start:
        raise ValueError(f"cannot go back from stage {cache.start} to stage {start}")
    if start == cache.start:
        return cache
    stages = model.stages()
    body = nn.Sequential(*stages[cache.start : start])
    if start == len(stages):
        body = nn.Sequential(body, _GlobalPool())
    body = models.fuse_for_inference(body).to(device)

    def run(x: torch.Tensor) -> torch.Tensor:
        chunks = [body(chunk.to(device).float()).to(torch.bfloat16).cpu() for chunk in x.split(256)]
        return torch.cat(chunks)

    train = torch.stack([run(view) for view in cache.train])
    return dataclasses.replace(cache, start=start, train=train, val=run(cache.val))


class _GlobalPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class Builder:
    """A `training.Builder` for transfer models, and the proxies of the open-set evaluation.

    For EfficientNet-Lite, activations are cached on construction (so a study's timeout is
    spent on trials) at the lowest stage any trial may train, and advanced from there for
    trials that train fewer stages; torchvision backbones train end to end on image loaders
    with their lower stages frozen.
    """

    def __init__(
        self,
        data_cfg: DataConfig,
        cfg: TransferConfig,
        train_cfg: TrainConfig,
        dataset: data.LandmarkData,
        split: data.TrainValRows,
        device: torch.device,
    ) -> None:
        self.data_cfg, self.dataset, self.split, self.device = data_cfg, dataset, split, device
        self.caches: dict[int, ActivationCache] = {}
        if cfg.arch in models.efficientnet_lite.VARIANTS:
            model = self.new_model(cfg, dataset.num_classes)
            lowest = len(model.stages()) - _trainable(cfg)
            self.caches[lowest] = cache_views(
                model, dataset, split.train, split.val, lowest, train_cfg.augment, cfg.views,
                data_cfg.seed, device,
            )  # fmt: skip

    def new_model(self, cfg: TransferConfig, num_classes: int) -> nn.Module:
        training.seed_everything(self.data_cfg.seed)
        kwargs = {"dropout": cfg.dropout, "head_size": cfg.head_size}
        if cfg.arch not in models.efficientnet_lite.VARIANTS:
            kwargs["weights"] = cfg.weights or None
        return models.build_model(cfg.arch, num_classes, **kwargs)

    def cache_at(self, start: int, model: nn.Module) -> ActivationCache:
        if start not in self.caches:
            self.caches[start] = advance(self.caches[min(self.caches)], model, start, self.device)
        return self.caches[start]

    def __call__(
        self, cfg: TransferConfig, train_cfg: TrainConfig, rows: data.TrainValRows | None = None
    ) -> tuple:
        """Model, trained module and loaders, training and validating on `rows` (default: the
        split's; other rows must be training rows of the split, e.g. its k folds)."""
        model = self.new_model(cfg, self.dataset.num_classes)
        rows = self.split if rows is None else rows
        if isinstance(model, models.TorchvisionClassifier):
            models.freeze(model, _trainable(cfg))
            pre, seed = model.preprocessing, self.data_cfg.seed
            return model, model, *data.image_loaders(pre, self.dataset, rows, train_cfg, seed)
        start = len(model.stages()) - _trainable(cfg)
        cache = self.cache_at(start, model)
        if rows is not self.split:
            cache = cache.fold(self._positions(rows.train), self._positions(rows.val))
        models.freeze(model, _trainable(cfg))
        return model, Suffix(model, start), *cache.loaders(train_cfg.batch_size, self.data_cfg.seed)

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        """Where training rows of the split are in the cache (which holds `split.train`)."""
        positions = np.searchsorted(self.split.train, rows)  # split.train is sorted
        found = self.split.train[np.minimum(positions, len(self.split.train) - 1)] == rows
        if not found.all():
            raise ValueError(
                f"rows {rows[~found][:5].tolist()} are not training rows of the split: cached "
                "activations exist only for those (folds must split `split.train`)"
            )
        return positions

    def open_set(
        self, cfg: TransferConfig, train_cfg: TrainConfig, rotations: list[np.ndarray]
    ) -> list[openset.RotationResult]:
        """For each set of held-out classes, the proxy (this configuration trained on the
        cached activations without those classes) scores the known classes' validation
        photos and every photo of the held-out classes."""
        results = []
        for r, held_out in enumerate(rotations):
            model = self.new_model(cfg, self.dataset.num_classes - len(held_out))
            start = len(model.stages()) - _trainable(cfg)
            proxy_cache, unknown = self.cache_at(start, model).without(held_out)
            models.freeze(model, _trainable(cfg))
            net = Suffix(model, start)
            loaders = proxy_cache.loaders(
                train_cfg.batch_size, data.derive_seed(self.data_cfg.seed, r)
            )
            with tempfile.TemporaryDirectory() as tmp:
                proxy_cfg = dataclasses.replace(train_cfg, resume="")
                training.fit(net, *loaders, proxy_cfg, self.data_cfg.seed, Path(tmp), self.device)
            results.append(_proxy_scores(net, proxy_cache, unknown, held_out, self.device))
        return results


def _trainable(cfg: TransferConfig) -> int:
    return 0 if cfg.mode == "frozen" else cfg.trainable_blocks


@torch.inference_mode()
def _embed(net: Suffix, x: torch.Tensor, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Logits and pooled features of activations `x`, in chunks."""
    net = net.to(device).eval()
    logits, features = [], []
    for chunk in x.split(256):
        f = net.features(chunk.to(device))
        features.append(f.cpu())
        logits.append(net.classifier(f).cpu())
    return torch.cat(logits).numpy(), torch.cat(features).numpy()


def _proxy_scores(net, cache, unknown, held_out, device) -> openset.RotationResult:
    train_logits, train_features = _embed(net, cache.train[0], device)  # centre views
    val_logits, val_features = _embed(net, cache.val, device)
    unknown_logits, unknown_features = _embed(net, unknown, device)
    stats = openset.fit_feature_stats(train_features, cache.train_labels, openset.BANK, 0)
    temperature = evaluation.fit_temperature(val_logits, cache.val_labels)
    return openset.RotationResult(
        held_out=[int(c) for c in held_out],
        known=openset.known_scores(val_logits, val_features, stats, temperature),
        unknown=openset.known_scores(unknown_logits, unknown_features, stats, temperature),
        known_correct=val_logits.argmax(1) == cache.val_labels,
    )
