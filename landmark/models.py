"""The models: `LandmarkCNN` (from scratch), EfficientNet-Lite and torchvision backbones.

All share one interface: they take uint8 (or 0..255 float) images `(B, 3, H, W)`, normalise
them themselves, and offer `forward_features` (pooled features `(B, F)`), `forward_head`
(features -> logits) and `forward`, a `preprocessing` that says what input they expect, and
`stages()` (backbone stages in order, for freezing). All of them script.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops import FrozenBatchNorm2d, StochasticDepth

from landmark import efficientnet_lite
from landmark.config import SCRATCH_ARCH, TRANSFER_ARCHS
from landmark.preprocessing import Normalize
from landmark.runtime.contract import Preprocessing

NORMS: dict[str, Callable[[int], nn.Module]] = {  # the choices of `ScratchConfig.norm`
    "batch": nn.BatchNorm2d,
    "group": lambda channels: nn.GroupNorm(min(8, channels), channels),
    "none": lambda channels: nn.Identity(),
}


def _norm(kind: str, channels: int) -> nn.Module:
    return NORMS[kind](channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (1x1 projection when the shape changes); in
    training the convolutions are skipped for a share `drop_path` of the photos (stochastic
    depth)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, drop_path: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=norm == "none"),
            _norm(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=norm == "none"),
            _norm(norm, cout),
        )
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=norm == "none"), _norm(norm, cout)
            )
        else:
            self.shortcut = nn.Identity()
        # Identity when off, so a model without it draws no random numbers in training.
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop_path(self.body(x)) + self.shortcut(x))


class LandmarkCNN(nn.Module):
    """A residual CNN for landmark photos, trained from scratch. Every size is given
    (`config.ScratchConfig` holds the defaults).

    Args:
        num_classes: number of landmarks (from the data).
        depth: number of stages; each halves the resolution and doubles the channels.
        width: channels of the first stage.
        blocks: residual blocks per stage.
        norm: "batch", "group" or "none".
        dropout: dropout before the classifier.
        drop_path: stochastic depth of the last block; earlier blocks get linearly less.
        image_size: side of the (square) input crop.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        depth: int,
        width: int,
        blocks: int,
        norm: str,
        dropout: float,
        drop_path: float,
        image_size: int,
    ) -> None:
        super().__init__()
        self.preprocessing = Preprocessing(
            resize_size=round(image_size / 0.875), crop_size=image_size
        )
        self.normalize = Normalize(self.preprocessing)
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=norm == "none"), _norm(norm, width), nn.ReLU(True)
        )
        stages, cin, total = [], width, depth * blocks
        for i in range(depth):
            cout = width * 2**i
            layers = []
            for b in range(blocks):
                rate = drop_path * (i * blocks + b + 1) / total
                stride = 2 if i > 0 and b == 0 else 1
                layers.append(ResidualBlock(cin if b == 0 else cout, cout, stride, norm, rate))
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stages_ = nn.Sequential(*stages)
        self.num_features = cin
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.stages_]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages_(self.stem(self.normalize(x))).mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def classifier(num_features: int, num_classes: int, head_size: int = 0) -> nn.Module:
    """A new head: one linear layer, or with `head_size` hidden units a two-layer MLP."""
    if head_size <= 0:
        return nn.Linear(num_features, num_classes)
    return nn.Sequential(
        nn.Linear(num_features, head_size), nn.GELU(), nn.Linear(head_size, num_classes)
    )


class LiteClassifier(efficientnet_lite.EfficientNetLite):
    """EfficientNet-Lite taking uint8 images, with its ImageNet weights unless `pretrained` is
    false (tests); `dropout` and `head_size` as `config.TransferConfig` says."""

    def __init__(
        self,
        num_classes: int,
        variant: str,
        *,
        dropout: float,
        head_size: int,
        pretrained: bool = True,
    ) -> None:
        super().__init__(num_classes, variant, dropout=dropout)
        self.preprocessing = efficientnet_lite.preprocessing(variant)
        self.normalize = Normalize(self.preprocessing)
        if pretrained:
            efficientnet_lite.load_imagenet_weights(self)
        if head_size:
            self.classifier = classifier(self.classifier.in_features, num_classes, head_size)

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.blocks, self.head]


class TorchvisionClassifier(nn.Module):
    """A torchvision backbone (resnet50, convnext_tiny, efficientnet_v2_s, ...) with a new head.

    Args:
        weights: a torchvision weights name ("DEFAULT", "IMAGENET1K_V2"), or None for random
            initialisation. Downloading weights needs internet access the first time.
    """

    def __init__(
        self,
        num_classes: int,
        arch: str,
        *,
        weights: str | None,
        dropout: float,
        head_size: int,
    ) -> None:
        super().__init__()
        enum = torchvision.models.get_model_weights(arch)
        chosen = enum[weights] if weights else enum.DEFAULT  # its preprocessing applies either way
        self.backbone = torchvision.models.get_model(arch, weights=chosen if weights else None)
        meta = chosen.transforms()
        self.preprocessing = Preprocessing(
            resize_size=meta.resize_size[0],
            crop_size=meta.crop_size[0],
            mean=tuple(meta.mean),
            std=tuple(meta.std),
        )
        self.normalize = Normalize(self.preprocessing)
        self.num_features = _strip_classifier(self.backbone)
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier(self.num_features, num_classes, head_size)

    def stages(self) -> list[nn.Module]:
        net = self.backbone
        if hasattr(net, "layer4"):  # ResNets
            return [
                nn.ModuleList([net.conv1, net.bn1]),
                net.layer1,
                net.layer2,
                net.layer3,
                net.layer4,
            ]
        return list(net.features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _strip_classifier(net: nn.Module) -> int:
    """Replace the ImageNet classification layer with Identity; return the feature size."""
    if isinstance(getattr(net, "fc", None), nn.Linear):
        features, net.fc = net.fc.in_features, nn.Identity()
        return features
    head = net.classifier
    last = len(head) - 1
    features = head[last].in_features
    head[last] = nn.Identity()
    if isinstance(head[0], nn.Dropout):  # our own head has the dropout
        head[0] = nn.Identity()
    return features


# The names configs allow (`config.SCRATCH_ARCH`, `config.TRANSFER_ARCHS`); a test checks both.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    SCRATCH_ARCH: LandmarkCNN,
    **{
        arch: partial(LiteClassifier, variant=arch)
        if arch in efficientnet_lite.VARIANTS
        else partial(TorchvisionClassifier, arch=arch)
        for arch in TRANSFER_ARCHS
    },
}


def build_model(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by name (see `ARCHITECTURES`) for `num_classes` landmarks."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](num_classes=num_classes, **kwargs)


def freeze(model: nn.Module, trainable_stages: int) -> None:
    """Freeze all backbone stages but the last `trainable_stages`; the head stays trainable.

    Frozen batch norms become `FrozenBatchNorm2d`, so their statistics stay as trained.
    """
    stages = model.stages()
    for stage in stages[: len(stages) - trainable_stages]:
        stage.requires_grad_(False)
        _freeze_batchnorm(stage)


def _freeze_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every conv + batch norm pair folded into one conv."""
    fused = copy.deepcopy(model).eval()
    _fuse(fused)
    return fused


def _fuse(module: nn.Module) -> None:
    children = list(module.named_children())
    for (name, child), (next_name, after) in zip(children, children[1:], strict=False):
        if isinstance(child, nn.Conv2d) and isinstance(after, nn.BatchNorm2d | FrozenBatchNorm2d):
            if isinstance(after, FrozenBatchNorm2d):
                after = _as_batchnorm(after)
            setattr(module, name, fuse_conv_bn_eval(child, after))
            setattr(module, next_name, nn.Identity())
    for _, child in module.named_children():
        _fuse(child)


def _as_batchnorm(frozen: FrozenBatchNorm2d) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(frozen.weight.numel(), eps=frozen.eps).eval()
    bn.weight.data.copy_(frozen.weight)
    bn.bias.data.copy_(frozen.bias)
    bn.running_mean.copy_(frozen.running_mean)
    bn.running_var.copy_(frozen.running_var)
    return bn
