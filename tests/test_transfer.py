"""Cached activations: augmented views of their own, advancing a cache by frozen stages equals
caching there directly, and the suffix on cached activations equals the whole model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_model

from landmark import data, transfer
from landmark.preprocessing import LUMA, eval_transform

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", 3, pretrained=False, head_size=16).eval()


def test_advanced_cache_equals_a_cache_made_there(lite, data_cfg):
    dataset = data.load_data(data_cfg)
    rows = torch.arange(len(dataset.train.labels)).numpy()
    train, val = rows[:12], rows[12:16]
    n = len(lite.stages())
    low = transfer.cache_views(
        lite, dataset, train, val, n - 3, augment=0.5, views=1, seed=0, device=CPU
    )
    for start in (n - 1, n):  # one stage left, and pooled features
        direct = transfer.cache_views(
            lite, dataset, train, val, start, augment=0.5, views=0, seed=0, device=CPU
        )
        advanced = transfer.advance(low, lite, start, CPU)
        assert advanced.start == start and advanced.train.shape[0] == 2
        # view 0 is the centre crop; bf16 storage limits the agreement
        torch.testing.assert_close(
            advanced.train[0].float(), direct.train[0].float(), atol=0.1, rtol=0.05
        )
        torch.testing.assert_close(advanced.val.float(), direct.val.float(), atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="cannot go back"):
        transfer.advance(transfer.advance(low, lite, n, CPU), lite, n - 1, CPU)


def test_suffix_on_cached_activations_equals_the_whole_model(lite, data_cfg):
    dataset = data.load_data(data_cfg)
    rows = torch.arange(8).numpy()
    start = len(lite.stages()) - 2
    cache = transfer.cache_views(
        lite, dataset, rows, rows, start, augment=0.0, views=0, seed=0, device=CPU
    )
    suffix = transfer.Suffix(lite, start).eval()
    _, val_loader = cache.loaders(batch_size=4, seed=0)
    images = torch.from_numpy(np.array(dataset.train.images[rows])).permute(0, 3, 1, 2)
    whole = lite(eval_transform(lite.preprocessing)(images))
    cached = torch.cat([suffix(x) for x, _ in val_loader])
    torch.testing.assert_close(cached, whole, atol=0.15, rtol=0.05)
    assert lite.classifier[0].out_features == 16  # head_size 16: a two-layer head


def _luma(views: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Luminance `(V, N, H*W)` of cached normalised crops `(V, N, 3, H, W)`."""
    pre = model.preprocessing
    std, mean = torch.tensor(pre.std).view(3, 1, 1), torch.tensor(pre.mean).view(3, 1, 1)
    rgb = views.float() * std + mean
    return torch.einsum("vnchw,c->vnhw", rgb, torch.tensor(LUMA)).flatten(2)


def test_every_augmented_view_has_crops_of_its_own(data_cfg):
    """With stage 0 as the split point the cache holds the normalised crops themselves. The
    colour jitter maps each photo's luminance linearly, so two views with the same geometry
    correlate almost perfectly and two different crops of a noisy photo do not."""
    dataset = data.load_data(data_cfg)
    torch.manual_seed(0)
    model = build_model("landmark_cnn", 3, image_size=32, width=8, depth=2).eval()
    rows = np.arange(8)

    def views(seed: int) -> torch.Tensor:
        cache = transfer.cache_views(
            model, dataset, rows, rows[:2], 0, 0.8, views=2, seed=seed, device=CPU
        )
        return cache.train  # (3 views, 8 photos, 3, 32, 32)

    first = views(seed=3)
    luma = _luma(first[1:], model)
    correlation = torch.stack([torch.corrcoef(pair)[0, 1] for pair in luma.transpose(0, 1)])
    assert (correlation < 0.9).sum() >= 6, correlation  # different crops, not just colours
    assert torch.equal(views(seed=3), first)  # the same seed gives the same views
    assert not torch.equal(views(seed=4)[1:], first[1:])
