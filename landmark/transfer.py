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
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from landmark import data, models, training, tuning
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = self.stages(x.float()).mean(dim=(2, 3))
        return self.classifier(self.dropout(x.float()))


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


def builder(
    data_cfg: DataConfig,
    cfg: TransferConfig,
    train_cfg: TrainConfig,
    dataset: data.LandmarkData,
    split: data.TrainValRows,
    device: torch.device,
) -> tuning.Builder:
    """A `tuning.Builder` for transfer models. For EfficientNet-Lite, activations are cached now
    (so a study's timeout is spent on trials) at the lowest stage any trial may train, and
    advanced from there for trials that train fewer stages; torchvision backbones train end
    to end on image loaders with their lower stages frozen."""
    caches: dict[int, ActivationCache] = {}

    def new_model(cfg: TransferConfig) -> nn.Module:
        training.seed_everything(data_cfg.seed)
        kwargs = {"dropout": cfg.dropout, "head_size": cfg.head_size}
        if cfg.arch not in models.efficientnet_lite.VARIANTS:
            kwargs["weights"] = cfg.weights or None
        return models.build_model(cfg.arch, dataset.num_classes, **kwargs)

    def trainable(cfg: TransferConfig) -> int:
        return 0 if cfg.mode == "frozen" else cfg.trainable_blocks

    if cfg.arch in models.efficientnet_lite.VARIANTS:
        model = new_model(cfg)
        lowest = len(model.stages()) - trainable(cfg)
        caches[lowest] = cache_views(
            model, dataset, split.train, split.val, lowest, train_cfg.augment, cfg.views,
            data_cfg.seed, device,
        )  # fmt: skip

    def build(cfg: TransferConfig, train_cfg: TrainConfig) -> tuple:
        model = new_model(cfg)
        if isinstance(model, models.TorchvisionClassifier):
            models.freeze(model, trainable(cfg))
            loaders = data.image_loaders(
                model.preprocessing, dataset, split, train_cfg, data_cfg.seed
            )
            return model, model, *loaders
        start = len(model.stages()) - trainable(cfg)
        if start not in caches:
            caches[start] = advance(caches[min(caches)], model, start, device)
        models.freeze(model, trainable(cfg))
        return (
            model,
            Suffix(model, start),
            *caches[start].loaders(train_cfg.batch_size, data_cfg.seed),
        )

    return build
