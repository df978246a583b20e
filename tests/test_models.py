"""Models: shapes, no NaN, gradients, freezing, scripting, fusion, and the ImageNet weights."""

from __future__ import annotations

import pytest
import torch
from conftest import build_model

from landmark import efficientnet_lite, models, transfer

SMALL = {"landmark_cnn": {"image_size": 48, "width": 8, "depth": 3}}
TORCHVISION = ["resnet50", "convnext_tiny", "efficientnet_v2_s"]
# (resize_size, crop_size) each model's weights were trained with; landmark_cnn: 48 / 0.875.
GEOMETRY = {
    "landmark_cnn": (55, 48),
    "efficientnet_lite0": (256, 224),
    "efficientnet_lite1": (272, 240),
    "efficientnet_lite2": (292, 260),
    "resnet50": (232, 224),
    "convnext_tiny": (236, 224),
    "efficientnet_v2_s": (384, 384),
}


def build(arch: str, num_classes: int = 5) -> torch.nn.Module:
    kwargs = dict(SMALL.get(arch, {}))
    if arch in TORCHVISION:
        kwargs["weights"] = None  # offline: the architecture only
    if arch.startswith("efficientnet_lite"):
        kwargs["pretrained"] = False
    return build_model(arch, num_classes, **kwargs)


def photos(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)


@pytest.mark.parametrize("arch", sorted(models.ARCHITECTURES))
def test_every_model_has_the_interface_and_scripts(arch):
    torch.manual_seed(0)
    model = build(arch).eval()
    x = photos()
    logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    features = model.forward_features(x)
    assert features.shape == (2, model.num_features)
    pre = model.preprocessing
    assert (pre.resize_size, pre.crop_size) == GEOMETRY[arch] and len(model.stages()) >= 3
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), logits, atol=1e-5)


# The models transfer learning splits at a stage boundary (`transfer.prefix`, `Suffix`). The
# torchvision backbones are only frozen by stage (ResNet's stages leave out the stem's pooling).
@pytest.mark.parametrize("arch", ["landmark_cnn", *sorted(efficientnet_lite.VARIANTS)])
def test_the_stages_in_order_are_the_whole_network(arch):
    torch.manual_seed(0)
    model = build(arch).eval()
    x = photos()
    with torch.no_grad():
        logits = model(x)
        activations = model.normalize(x)
        for start, stage in enumerate(model.stages()):
            suffix = transfer.Suffix(model, start)
            assert torch.allclose(suffix(activations), logits, atol=1e-5), start
            activations = stage(activations)
        features = activations.mean(dim=(2, 3))
        assert torch.allclose(features, model.forward_features(x), atol=1e-5)
        suffix = transfer.Suffix(model, len(model.stages()))
        assert torch.allclose(suffix(features), logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["landmark_cnn", "efficientnet_lite0"])
def test_every_trainable_parameter_gets_a_gradient(arch):
    model = build(arch).train()
    loss = torch.nn.functional.cross_entropy(model(photos(4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not missing and not zero


def test_frozen_stages_stay_frozen():
    model = build("efficientnet_lite0")
    models.freeze(model, trainable_stages=2)
    frozen = model.stages()[:-2]
    before = [{k: v.clone() for k, v in s.state_dict().items()} for s in frozen]
    trainable_before = model.classifier.weight.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(photos(4)), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for stage, state in zip(frozen, before, strict=True):
        for key, value in stage.state_dict().items():  # weights and batch-norm statistics
            assert torch.equal(value, state[key]), key
    assert not any(p.requires_grad for s in frozen for p in s.parameters())
    assert not torch.equal(model.classifier.weight, trainable_before)


@pytest.mark.parametrize("arch", ["landmark_cnn", "efficientnet_lite0"])
def test_fused_inference_model_matches(arch):
    model = build(arch).eval()
    model.apply(_randomise_batchnorm)
    x = photos()
    fused = models.fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert torch.allclose(fused(x), model(x), atol=1e-4)


def _randomise_batchnorm(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.BatchNorm2d):  # make folding the statistics matter
        module.running_mean.uniform_(-0.5, 0.5)
        module.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize("variant", sorted(efficientnet_lite.VARIANTS))
def test_imagenet_logits_match_the_reference_package(variant):
    """Our EfficientNet-Lite with the package's weights = efficientnet_lite_pytorch's."""
    reference_model = pytest.importorskip("efficientnet_lite_pytorch").EfficientNet
    ours = build_model(variant, 1000).eval()
    efficientnet_lite.load_imagenet_weights(ours, include_classifier=True)
    weights = str(efficientnet_lite.weights_file(variant))
    reference = reference_model.from_pretrained(variant.replace("_", "-"), weights_path=weights)
    size = ours.preprocessing.crop_size
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    pre = ours.preprocessing
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    with torch.no_grad():
        expected = reference.eval()(((x.float() / 255) - mean) / std)
        got = ours(x)
    assert torch.allclose(got, expected, atol=1e-3, rtol=1e-4)
    assert got.abs().max() > 1  # real logits, not a degenerate output


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="unknown architecture 'vgg99'"):
        models.build_model("vgg99", 3)


def test_stochastic_depth_skips_blocks_in_training_only_and_scripts():
    torch.manual_seed(0)
    model = build_model("landmark_cnn", 3, image_size=48, width=8, depth=2, blocks=2, drop_path=0.5)
    rates = [m.drop_path.p for m in model.modules() if isinstance(m, models.ResidualBlock)]
    assert rates == [0.125, 0.25, 0.375, 0.5]  # rising linearly to the last block
    x = photos(8, 48)
    model.train()
    torch.manual_seed(1)
    first = model.forward_features(x)
    assert not torch.allclose(first, model.forward_features(x))  # other blocks dropped
    model.eval()
    assert torch.equal(model(x), model(x))
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), model(x), atol=1e-5)
    plain = build_model("landmark_cnn", 3, image_size=48, width=8, depth=2, blocks=2)
    assert plain.state_dict().keys() == model.state_dict().keys()  # no new weights
