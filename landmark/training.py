"""The one training loop: `train_one_epoch`, `evaluate` and `fit(..., on_epoch_end=callback)`.

Model-agnostic: any module mapping a batch to logits. MLflow logging and Optuna pruning are
callbacks. Checkpoints (`last.pt` to resume, `best.pt` for the best validation accuracy) carry
the optimiser, scheduler and early-stopping state and any metadata the caller adds.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import pickle
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from landmark.config import TrainConfig
from landmark.data import derive_seed
from landmark.runtime.contract import ModelMetadata

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
# build(model_cfg, train_cfg, rows=None) -> (model, trained module, train loader, val loader):
# what the final training and every tuning trial start from (`scratch.Builder`,
# `transfer.Builder`); `rows` (a `data.TrainValRows`, e.g. a fold) replaces the split.
Builder = Callable[..., tuple]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA if available, else CPU; otherwise the named device, which must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this machine has no CUDA GPU; use device=auto or cpu")
    return device


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """True fp32 on CUDA (no TF32 convolutions or matmuls): what the exported model computes
    on the CPU, so evaluation and served answers agree."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for "bf16", or for "auto" where the hardware runs it natively; else None (fp32)."""
    if precision == "auto":
        native = (
            torch.cuda.is_bf16_supported()
            if device.type == "cuda"
            else torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
        return torch.bfloat16 if native else None
    return {"bf16": torch.bfloat16, "fp32": None}[precision]


# The choices of `TrainConfig.optimizer` (a test checks they agree).
OPTIMIZERS: dict[str, Callable[[list[dict], float], torch.optim.Optimizer]] = {
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
    "sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters; no weight decay on biases and norms."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return OPTIMIZERS[cfg.optimizer](groups, cfg.lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: one-cycle, or cosine decay after one linear warm-up epoch."""
    return SCHEDULES[cfg.schedule](optimizer, cfg.lr, cfg.epochs * steps_per_epoch, steps_per_epoch)


def _cosine(optimizer, lr: float, total: int, steps_per_epoch: int):
    warmup = min(steps_per_epoch, total // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# The choices of `TrainConfig.schedule`: (optimizer, peak lr, total steps, steps per epoch).
SCHEDULES: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler]] = {
    "onecycle": lambda opt, lr, total, _: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total
    ),
    "cosine": _cosine,
}


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    desc: str = "train",
    dtype: torch.dtype | None = None,
    mixup: float = 0.0,
) -> dict[str, float]:
    """One pass over `loader`; returns `train/loss`, `train/acc`, `lr`, `images_per_s`.

    `dtype` (e.g. bf16) turns on autocast for the forward pass; `mixup` > 0 blends the batches
    (`mix_batch`), and loss and accuracy then count both labels by their shares.
    """
    model.train()
    total_loss, correct, seen = 0.0, 0.0, 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", leave=False)
    for step, (images, labels) in enumerate(bar):
        images, labels = images.to(device), labels.to(device)
        others, share = labels, 1.0
        if mixup > 0:
            images, others, share = mix_batch(images, labels, mixup, cut=step % 2 == 1)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        loss = loss_fn(logits.float(), labels)
        if share < 1.0:
            loss = share * loss + (1.0 - share) * loss_fn(logits.float(), others)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        predicted = logits.argmax(1)
        hits = share * (predicted == labels).sum() + (1 - share) * (predicted == others).sum()
        correct += hits.item()
        seen += len(labels)
        rate = seen / (time.perf_counter() - start)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", img_s=f"{rate:.0f}")
    return {
        "train/loss": total_loss / max(seen, 1),
        "train/acc": correct / max(seen, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": seen / (time.perf_counter() - start),
    }


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, alpha: float, cut: bool
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (`cut` false: each photo blended with another of the batch) or CutMix (`cut`: a
    box of another photo pasted in); returns the images, the other photos' labels and the share
    `lam` of the original photo, drawn from Beta(alpha, alpha) (for CutMix, the box's true area).

    Randomness comes from the global RNGs, which `fit` seeds every epoch.
    """
    lam = float(np.random.beta(alpha, alpha))
    order = torch.randperm(len(labels), device=labels.device)
    if not cut or images.dim() != 4:  # pooled features cannot be cut
        mixed = lam * images.float() + (1.0 - lam) * images[order].float()
        return mixed, labels[order], lam
    height, width = images.shape[-2:]
    box_h, box_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
    top, left = np.random.randint(0, height - box_h + 1), np.random.randint(0, width - box_w + 1)
    images = images.clone()
    images[..., top : top + box_h, left : left + box_w] = images[order][
        ..., top : top + box_h, left : left + box_w
    ]
    return images, labels[order], 1.0 - box_h * box_w / (height * width)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `(N, C)` and labels `(N,)` of every batch of `loader`, in order, computed on
    `device` (the model is moved there)."""
    model.to(device).eval()
    logits, labels = [], []
    for images, targets in tqdm(loader, desc="predict", unit="batch", leave=False):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits.append(model(images.to(device)).float().cpu())
        labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


@torch.no_grad()
def extract_features(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features `(N, F)` (`model.forward_features`) and labels of every batch, in order."""
    model.to(device).eval()
    features, labels = [], []
    for images, targets in tqdm(loader, desc="features", unit="batch", leave=False):
        features.append(model.forward_features(images.to(device)).float().cpu())
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """`val/loss` and `val/acc` of `model` on `loader`."""
    logits, labels = predict(model, loader, device, dtype)
    return {
        "val/loss": loss_fn(logits, labels).item(),
        "val/acc": (logits.argmax(1) == labels).float().mean().item(),
    }


@dataclass
class FitResult:
    """What `fit` leaves behind: the best epoch, its validation accuracy, every epoch's metrics."""

    best_epoch: int
    best_val_acc: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


def fit(
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    val_loader: torch.utils.data.DataLoader,
    cfg: TrainConfig,
    seed: int,
    checkpoint_dir: Path,
    device: torch.device,
    on_epoch_end: EpochCallback | None = None,
    metadata: ModelMetadata | None = None,
) -> FitResult:
    """Train with early stopping on validation accuracy; leave the best weights in `model`.

    Every epoch writes `checkpoint_dir/last.pt`; a better validation accuracy also writes
    `best.pt`. With `cfg.resume`, training continues from that checkpoint's next epoch with
    its optimiser, scheduler, early-stopping state and history. Each epoch is seeded from
    `(seed, epoch)`, so a resumed run repeats what an uninterrupted one would have done.

    Args:
        on_epoch_end: called as `on_epoch_end(epoch, metrics)` after each epoch; it may raise
            (e.g. `optuna.TrialPruned`) to stop training.
        metadata: saved in the checkpoints (e.g. architecture, class names, preprocessing).
    """
    model.to(device)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    dtype = autocast_dtype(cfg.precision, device)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader))
    state = {"epoch": -1, "best_epoch": -1, "best_val_acc": -1.0, "history": []}
    best_weights = copy.deepcopy(model.state_dict())
    if cfg.resume:
        state, best_weights = _resume(Path(cfg.resume), model, optimizer, scheduler)
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        if epoch - state["best_epoch"] > cfg.patience and state["best_epoch"] >= 0:
            log.info("Early stop: no better val/acc for %d epochs", cfg.patience)
            break
        start = time.perf_counter()
        _seed_epoch(train_loader, seed, epoch)
        metrics = train_one_epoch(
            model, train_loader, loss_fn, optimizer, scheduler, device, f"epoch {epoch + 1}",
            dtype, cfg.mixup,
        )  # fmt: skip
        metrics.update(evaluate(model, val_loader, loss_fn, device, dtype))
        metrics["epoch_seconds"] = time.perf_counter() - start
        state["history"].append({"epoch": epoch, **metrics})
        state["epoch"] = epoch
        if metrics["val/acc"] > state["best_val_acc"]:
            state.update(best_epoch=epoch, best_val_acc=metrics["val/acc"])
            best_weights = copy.deepcopy(model.state_dict())
            _save(checkpoint_dir / "best.pt", model, optimizer, scheduler, state, cfg, metadata)
        _save(
            checkpoint_dir / "last.pt",
            model,
            optimizer,
            scheduler,
            state,
            cfg,
            metadata,
            best_weights,
        )
        log.info(
            "epoch %d/%d: train/loss %.3f, val/loss %.3f, val/acc %.4f, %.0f img/s, %.0f s",
            epoch + 1, cfg.epochs, metrics["train/loss"], metrics["val/loss"],
            metrics["val/acc"], metrics["images_per_s"], metrics["epoch_seconds"],
        )  # fmt: skip
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    model.load_state_dict(best_weights)
    return FitResult(
        best_epoch=state["best_epoch"],
        best_val_acc=state["best_val_acc"],
        history=state["history"],
        stopped_early=state["epoch"] + 1 < cfg.epochs,
    )


def _seed_epoch(loader: torch.utils.data.DataLoader, seed: int, epoch: int) -> None:
    epoch_seed = derive_seed(seed, epoch)
    seed_everything(epoch_seed)
    if loader.generator is not None:  # shuffling order and worker seeds
        loader.generator.manual_seed(epoch_seed)


def _save(path, model, optimizer, scheduler, state, cfg, metadata, best_weights=None) -> None:
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state,
        "train_config": asdict(cfg),
        "metadata": metadata.to_json() if metadata else None,
    }
    if best_weights is not None:
        checkpoint["best_model"] = best_weights
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)  # a crash while saving never leaves a half-written checkpoint


def _resume(path: Path, model, optimizer, scheduler) -> tuple[dict, dict]:
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: checkpoint {path} does not exist")
    checkpoint = _load(path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    state = checkpoint["state"]
    log.info("Resuming from %s after epoch %d", path, state["epoch"] + 1)
    return state, checkpoint.get("best_model", checkpoint["model"])


def save_weights(path: Path, model: nn.Module, result: FitResult) -> None:
    """The trained weights and how they trained (`FitResult`), atomically: what a complete
    tuning trial keeps, so that it can be the final model (`load_weights`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "result": asdict(result)}, tmp)
    tmp.replace(path)


def load_weights(path: Path, model: nn.Module) -> FitResult:
    """Load weights saved by `save_weights` into `model`; how they trained."""
    saved = _load(path)
    model.load_state_dict(saved["model"])
    return FitResult(**saved["result"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by `fit`: weights, optimiser state, history, config, and its
    `ModelMetadata` (None if `fit` was given none).

    Raises:
        ValueError: the file holds more than tensors and plain values (see `_load`).
    """
    checkpoint = _load(path)
    metadata = checkpoint.get("metadata")
    if isinstance(metadata, dict):  # written before ModelMetadata: a plain dict, or {} for none
        metadata = json.dumps(metadata) if metadata else None
    checkpoint["metadata"] = ModelMetadata.from_json(metadata) if metadata else None
    return checkpoint


def _load(path: Path) -> dict[str, Any]:
    """Read a checkpoint as tensors and plain Python values only (`weights_only`), so a file
    from elsewhere cannot run code while it is unpickled. What `_save` writes needs nothing more:
    state dicts, numbers, strings, lists and dicts (the config, the metadata's JSON)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = [line for line in str(e).splitlines() if "GLOBAL" in line]
        raise ValueError(
            f"refusing checkpoint {path}: it holds objects that unpickling would have to run "
            f"code for ({found[0] if found else e}); use a checkpoint written by `fit`, or if you "
            "trust the file, load it yourself and re-save only its tensors and plain values"
        ) from e
