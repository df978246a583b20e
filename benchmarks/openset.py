"""Open-set figures on a real data set: how well each score tells known landmarks from ones the
model never saw, with the held-out-classes protocol, and what the shipped model would write.

    .venv/bin/python benchmarks/openset.py --data ../shared/datasets/landmarks-35

Per rotation, a proxy (the default transfer configuration, trained on the cached activations
without 5 held-out classes) scores the known classes' validation photos and every photo of the
held-out classes. Then the shipped model (all 35 classes) sets its write threshold from its own
validation photos at the known-photo recall the proxies allowed, and the test split says how
many known-landmark photos it would write and how many of those are right.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from landmark import data, evaluation, models, openset, training, transfer
from landmark.config import DataConfig, TrainConfig, TransferConfig


def shipped_scores(builder, cfg, train_cfg, dataset, split, device):
    """Train the shipped model; its scores on known validation and on test photos."""
    model, net, train_loader, val_loader = builder(cfg, train_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        training.fit(net, train_loader, val_loader, train_cfg, 42, Path(tmp), device)
    # `net` shares its layers with `model`; features of every photo through the whole model
    inference = models.fuse_for_inference(model)
    pre = model.preprocessing

    def embed(split_, rows):
        feats, labels = training.extract_features(
            inference, data.eval_loader(pre, split_, rows), device
        )
        feats = feats.numpy()
        logits = inference.forward_head(torch.from_numpy(feats)).detach().numpy()
        return logits, feats, labels.numpy()

    train_logits, train_feats, train_labels = embed(dataset.train, split.train)
    val_logits, val_feats, val_labels = embed(dataset.train, split.val)
    test_logits, test_feats, test_labels = embed(dataset.test, None)
    stats = openset.fit_feature_stats(train_feats, train_labels, 4096, 0)
    temperature = evaluation.fit_temperature(val_logits, val_labels)
    return (
        openset.known_scores(val_logits, val_feats, stats, temperature),
        openset.known_scores(test_logits, test_feats, stats, temperature),
        test_logits.argmax(1) == test_labels,
        val_logits.argmax(1) == val_labels,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--held-out", type=int, default=5)
    parser.add_argument("--rotations", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = training.resolve_device("auto")
    data_cfg, cfg, train_cfg = DataConfig(data=args.data), TransferConfig(), TrainConfig()
    dataset = data.load_data(data_cfg)
    split = data.stratified_split(dataset.train.labels, data_cfg.val_fraction, data_cfg.seed)
    start = time.perf_counter()
    builder = transfer.Builder(data_cfg, cfg, train_cfg, dataset, split, device)
    cached = time.perf_counter()
    rotations = openset.holdout_rotations(
        dataset.num_classes, args.held_out, args.rotations, data_cfg.seed
    )
    results = builder.open_set(cfg, train_cfg, rotations)
    proxies = time.perf_counter()
    summary = openset.summarise(results, 0.02)
    val, test, correct, val_correct = shipped_scores(
        builder, cfg, train_cfg, dataset, split, device
    )
    done = time.perf_counter()
    names = [[dataset.class_names[c] for c in r] for r in rotations]
    print(f"held out per rotation: {names}")
    print(
        f"caching {cached - start:.0f} s, {len(rotations)} proxies {proxies - cached:.0f} s, "
        f"shipped model + scores {done - proxies:.0f} s"
    )
    print(
        f"{'score':<12} {'AUROC':>6} {'recall@2%FA':>11} {'FA carried (per rotation)':>28}"
        f" {'test written':>12} {'their acc':>9}"
    )
    for name, row in summary.items():
        threshold = openset.threshold_for_recall(val[name], row["recall_at_max_false_accept"])
        written = test[name] >= threshold
        carried = ", ".join(f"{row[f'carried_false_accept_{i}']:.1%}" for i in range(len(results)))
        accuracy = correct[written].mean() if written.any() else float("nan")
        print(
            f"{name:<12} {row['auroc']:6.3f} {row['recall_at_max_false_accept']:11.1%} "
            f"{carried:>28} {written.mean():12.1%} {accuracy:9.1%}"
        )
    print(f"best by recall at 2% false accepts: {openset.best_score(summary)}")
    # Before this evaluation existed the threshold kept 95 % of the correct validation answers.
    for i, r in enumerate(results):
        old = np.quantile(r.known["max_prob"][r.known_correct], 0.05)
        fa = openset.share_at_or_above(r.unknown["max_prob"], old)
        recall = openset.share_at_or_above(r.known["max_prob"], old)
        print(
            f"old threshold (95 % of correct), rotation {i}: false accepts {fa:.1%}, "
            f"known written {recall:.1%}"
        )
    old = np.quantile(val["max_prob"][val_correct], 0.05)
    written = test["max_prob"] >= old
    print(
        f"old-style threshold on the shipped model: test written {written.mean():.1%}, "
        f"their accuracy {correct[written].mean():.1%}"
    )
    latency(builder, cfg, dataset)


def latency(builder, cfg, dataset, photos: int = 60) -> None:
    """Per-photo time of the exported model with and without prototypes, taking turns."""
    from landmark import export
    from landmark.runtime.predictor import torchscript_on_purpose

    model = builder.new_model(cfg, dataset.num_classes).eval()
    prototypes = torch.randn(dataset.num_classes, model.num_features)
    with torchscript_on_purpose():
        plain = torch.jit.script(export.ExportedClassifier(model).eval())
        with_prototypes = torch.jit.script(export.ExportedClassifier(model, 1.0, prototypes).eval())
    images = torch.from_numpy(np.array(dataset.test.images[:photos])).permute(0, 3, 1, 2)
    times = {"plain": [], "prototypes": []}
    with torch.inference_mode():
        for image in images:
            for name, module in (("plain", plain), ("prototypes", with_prototypes)):
                start = time.perf_counter()
                module.answer(image.contiguous())
                times[name].append(time.perf_counter() - start)
    a, b = (np.median(times[k][5:]) * 1000 for k in ("plain", "prototypes"))
    print(
        f"exported model, one photo: {a:.1f} ms without prototypes, {b:.1f} ms with: {b / a:.3f}x"
    )


if __name__ == "__main__":
    main()
