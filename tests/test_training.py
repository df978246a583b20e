"""The training loop: overfitting one batch, fit smoke test, checkpoints, resume, early stop."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex

import numpy as np
import pytest
import torch
from conftest import build_model

from landmark import data, training
from landmark.config import TrainConfig
from landmark.preprocessing import eval_transform, train_transform
from landmark.runtime.contract import ModelMetadata, Preprocessing

CPU = torch.device("cpu")
METADATA = ModelMetadata("landmark_cnn", ("a", "b", "c"), ("A", "B", "C"), Preprocessing(37, 32))
TINY = TrainConfig(epochs=2, batch_size=8, num_workers=0, lr=3e-3, precision="fp32")


def tiny_model(num_classes: int = 3, norm: str = "batch") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("landmark_cnn", num_classes, image_size=32, width=8, depth=2, norm=norm)


def loaders(data_cfg, model, augment: float = 0.5, num_workers: int = 0):
    dataset = data.load_data(data_cfg)
    train_rows, val_rows = data.stratified_split(dataset.train.labels, 0.25, seed=0)
    pre = model.preprocessing
    train_set = data.CachedImages(dataset.train, train_rows, train_transform(pre, augment))
    val_set = data.CachedImages(dataset.train, val_rows, eval_transform(pre))
    return (
        data.make_loader(
            train_set, 8, seed=5, shuffle=True, augment=augment, num_workers=num_workers
        ),
        data.make_loader(val_set, 8, seed=None, num_workers=num_workers),
    )


def test_overfits_one_batch():
    model = tiny_model(2)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    model.eval()
    assert torch.equal(model(images).argmax(1), labels)


def test_fit_smoke_writes_checkpoints_and_calls_back(data_cfg, tmp_path):
    model = tiny_model()
    train_loader, val_loader = loaders(data_cfg, model)
    seen = []
    result = training.fit(
        model, train_loader, val_loader, TINY, seed=1, checkpoint_dir=tmp_path / "ckpt", device=CPU,
        on_epoch_end=lambda epoch, metrics: seen.append((epoch, metrics)),
        metadata=METADATA,
    )  # fmt: skip
    assert [epoch for epoch, _ in seen] == [0, 1]
    for _, metrics in seen:
        assert {"train/loss", "val/loss", "val/acc", "lr", "images_per_s"} <= set(metrics)
        assert np.isfinite(metrics["train/loss"])
    accuracies = [h["val/acc"] for h in result.history]
    assert result.best_epoch == accuracies.index(max(accuracies))
    assert result.best_val_acc == max(accuracies)
    best = training.load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert best["metadata"] == METADATA
    assert best["train_config"]["epochs"] == 2


def test_fit_leaves_the_best_epochs_weights_in_the_model(data_cfg, tmp_path, monkeypatch):
    """Validation says epoch 1 of 2 was best: the model ends with epoch 1's weights (`best.pt`),
    not the last epoch's (`last.pt`)."""
    model = tiny_model()
    train_loader, val_loader = loaders(data_cfg, model)
    accuracies = iter([0.9, 0.1])
    monkeypatch.setattr(
        training, "evaluate", lambda *args: {"val/loss": 1.0, "val/acc": next(accuracies)}
    )
    result = training.fit(model, train_loader, val_loader, TINY, 1, tmp_path, CPU)
    assert result.best_epoch == 0
    best, last = (
        training.load_checkpoint(tmp_path / name)["model"] for name in ("best.pt", "last.pt")
    )
    assert any(not torch.equal(best[k], last[k]) for k in best)  # the second epoch changed it
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key]), key


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_where_it_stopped(data_cfg, tmp_path, num_workers):
    """Also with loader workers: they are seeded per epoch, not once per run."""
    four = dataclasses.replace(TINY, epochs=4, patience=10)
    straight = tiny_model()
    train_loader, val_loader = loaders(data_cfg, straight, num_workers=num_workers)
    full = training.fit(straight, train_loader, val_loader, four, 7, tmp_path / "a", CPU)

    interrupted = tiny_model()
    stop = RuntimeError("interrupted")

    def crash_after_second(epoch, metrics):
        if epoch == 1:
            raise stop

    with pytest.raises(RuntimeError, match="interrupted"):
        training.fit(interrupted, train_loader, val_loader, four, 7, tmp_path / "b", CPU,
                     on_epoch_end=crash_after_second)  # fmt: skip
    resumed_model = tiny_model()
    resume = dataclasses.replace(four, resume=str(tmp_path / "b" / "last.pt"))
    resumed = training.fit(resumed_model, train_loader, val_loader, resume, 7, tmp_path / "b", CPU)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.history[-1]["train/loss"] == pytest.approx(full.history[-1]["train/loss"])
    for key, value in straight.state_dict().items():
        assert torch.allclose(value.float(), resumed_model.state_dict()[key].float()), key


def test_early_stopping_when_validation_stalls(data_cfg, tmp_path):
    model = tiny_model(norm="none")  # no batch-norm statistics that could still change
    train_loader, val_loader = loaders(data_cfg, model)
    frozen = dataclasses.replace(TINY, epochs=10, patience=2, lr=0.0)  # nothing can improve
    result = training.fit(model, train_loader, val_loader, frozen, 0, tmp_path, CPU)
    assert result.stopped_early
    assert len(result.history) == 3  # the first epoch, then `patience` epochs without progress


@pytest.mark.parametrize(("optimizer", "schedule"), [("sgd", "cosine"), ("adamw", "onecycle")])
def test_optimisers_and_schedules(optimizer, schedule):
    model = tiny_model()
    cfg = dataclasses.replace(TINY, optimizer=optimizer, schedule=schedule, epochs=3)
    opt = training.build_optimizer(model, cfg)
    sched = training.build_scheduler(opt, cfg, steps_per_epoch=4)
    rates = []
    for _ in range(12):
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    assert max(rates) == pytest.approx(cfg.lr, rel=0.05)
    assert rates[-1] < 0.05 * cfg.lr  # annealed by the end
    assert opt.param_groups[1]["weight_decay"] == 0.0  # no decay on biases and norms


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_a_gpu_says_what_to_do():
    assert training.resolve_device("auto") == CPU
    with pytest.raises(ValueError, match="no CUDA GPU; use device=auto or cpu"):
        training.resolve_device("cuda")


def test_checkpoints_written_before_the_contract_still_load(tmp_path):
    """Their metadata was a plain dict (or {} when fit was given none)."""
    from pathlib import Path

    v1 = json.loads((Path(__file__).parent / "fixtures" / "metadata_v1.json").read_text())
    for name, metadata in (("old.pt", v1), ("none.pt", {})):
        torch.save({"model": {}, "metadata": metadata}, tmp_path / name)
    loaded = training.load_checkpoint(tmp_path / "old.pt")["metadata"]
    assert isinstance(loaded, ModelMetadata) and loaded.class_folders == tuple(v1["class_folders"])
    assert training.load_checkpoint(tmp_path / "none.pt")["metadata"] is None


class RunsCode:
    """Unpickling this runs a shell command: what a hostile checkpoint could do."""

    def __init__(self, marker):
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("how", ["load_checkpoint", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, how):
    marker, evil = tmp_path / "code-ran", tmp_path / "evil.pt"
    torch.save({"model": {}, "metadata": None, "payload": RunsCode(marker)}, evil)
    with pytest.raises(ValueError, match=f"refusing checkpoint {re.escape(str(evil))}: .*system"):
        if how == "load_checkpoint":
            training.load_checkpoint(evil)
        else:  # the checkpoint is read before any batch: loaders need only a length
            resume = dataclasses.replace(TINY, resume=str(evil))
            training.fit(tiny_model(), [None], [None], resume, 0, tmp_path / "ckpt", CPU)
    assert not marker.exists()


@pytest.mark.parametrize("optimizer", sorted(training.OPTIMIZERS))
@pytest.mark.parametrize("schedule", sorted(training.SCHEDULES))
def test_checkpoints_of_every_schedule_load_as_weights_only(tmp_path, schedule, optimizer):
    """What `_save` writes needs no globals beyond torch's safe ones, and resumes exactly."""
    cfg = dataclasses.replace(TINY, schedule=schedule, optimizer=optimizer)
    model = tiny_model()
    opt = training.build_optimizer(model, cfg)
    sched = training.build_scheduler(opt, cfg, steps_per_epoch=4)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for _ in range(3):
        opt.zero_grad()
        model(images).logsumexp(1).mean().backward()
        opt.step()
        sched.step()
    state = {"epoch": 0, "best_epoch": 0, "best_val_acc": 0.5, "history": [{"val/acc": 0.5}]}
    path = tmp_path / "last.pt"
    training._save(path, model, opt, sched, state, cfg, METADATA, model.state_dict())
    torch.load(path, map_location="cpu", weights_only=True)  # no extra allowed globals
    checkpoint = training.load_checkpoint(path)
    assert checkpoint["state"] == state and checkpoint["metadata"] == METADATA
    restored_opt = training.build_optimizer(tiny_model(), cfg)
    restored = training.build_scheduler(restored_opt, cfg, steps_per_epoch=4)
    restored_opt.load_state_dict(checkpoint["optimizer"])
    restored.load_state_dict(checkpoint["scheduler"])
    sched.step()
    restored.step()
    assert restored.get_last_lr() == sched.get_last_lr()
    assert restored.last_epoch == sched.last_epoch == 4


@pytest.mark.parametrize("cut", [False, True])
def test_mix_batch_blends_pairs_by_the_share_it_reports(cut):
    np.random.seed(0)
    torch.manual_seed(0)
    images = torch.stack([torch.full((3, 16, 16), 10 * i, dtype=torch.uint8) for i in range(8)])
    labels = torch.arange(8)
    mixed, others, share = training.mix_batch(images, labels, alpha=1.0, cut=cut)
    assert 0.0 < share < 1.0 and mixed.shape == images.shape
    partner = others  # photo i of the batch was mixed with photo others[i] (labels are indices)
    expected_mean = share * images.float().mean((1, 2, 3)) + (1 - share) * images[
        partner
    ].float().mean((1, 2, 3))
    assert torch.allclose(mixed.float().mean((1, 2, 3)), expected_mean, atol=1e-3)
    if cut:  # a box pasted in: uint8 kept, and its true area is the reported share
        assert mixed.dtype == torch.uint8
        pasted = (mixed != images).any(dim=1)[labels != partner]
        assert pasted.float().mean((1, 2)).allclose(torch.tensor(1 - share), atol=1e-6)


def test_mixup_changes_training_and_is_seeded(data_cfg, tmp_path):
    def train(mixup: float) -> list[float]:
        model = tiny_model()
        cfg = dataclasses.replace(TINY, mixup=mixup)
        result = training.fit(model, *loaders(data_cfg, model), cfg, 0, tmp_path / str(mixup), CPU)
        return [h["train/loss"] for h in result.history]

    mixed = train(0.4)
    assert mixed == train(0.4)  # the mixing draws come from the epoch's seed
    assert mixed != train(0.0)
