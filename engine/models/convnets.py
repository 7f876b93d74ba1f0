"""Fourteen small custom convolutional networks, ``convneta`` ... ``convnetn``.

Each is a distinct, classic design scaled down so that it trains on a CPU. All end in global (adaptive)
pooling, so any input side from 16 pixels upwards works; downsampling uses padded pooling or strided
convolutions, which stay defined on a 1x1 map. ``convnetj`` is the legacy API's example model.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models import register_model
from engine.models.base import ImageClassifier


def conv_bn(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Convolution, batch norm and (optionally) ReLU: the repeated unit of most designs here."""
    layers = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def down() -> nn.MaxPool2d:
    """Halve the map; padded so that a 1x1 map stays 1x1 instead of failing."""
    return nn.MaxPool2d(3, stride=2, padding=1)


def linear_head(in_features: int, num_classes: int, drop: float = 0.0) -> nn.Sequential:
    """Global average pooling, dropout and a linear layer."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop), nn.Linear(in_features, num_classes)
    )


def conv_head(in_ch: int, num_classes: int, drop: float = 0.0) -> nn.Sequential:
    """A 1x1 convolution to one map per class, averaged (all-convolutional / NiN / SqueezeNet style)."""
    return nn.Sequential(
        nn.Dropout(drop), nn.Conv2d(in_ch, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


class _Net(ImageClassifier):
    """A convnet given as a feature stack and a head factory."""

    def __init__(self, num_classes: int, features: nn.Module, head_factory, out_channels: int):
        super().__init__(num_classes)
        self._head_factory = head_factory
        self._out_channels = out_channels
        self.features = features
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        return self._head_factory(self._out_channels, num_classes)


class Residual(nn.Module):
    """``relu(body(x) + shortcut(x))``; the shortcut projects when the shape changes."""

    def __init__(self, body: nn.Module, in_ch: int, out_ch: int, stride: int, post: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.post = post if post is not None else nn.Identity()
        self.shortcut = (
            nn.Identity() if stride == 1 and in_ch == out_ch else conv_bn(in_ch, out_ch, 1, stride, act=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.post(self.body(x)) + self.shortcut(x))


def basic_block(in_ch: int, out_ch: int, stride: int) -> Residual:
    """Two 3x3 convolutions with an identity shortcut (ResNet basic block)."""
    body = nn.Sequential(conv_bn(in_ch, out_ch, 3, stride), conv_bn(out_ch, out_ch, act=False))
    return Residual(body, in_ch, out_ch, stride)


def bottleneck_block(in_ch: int, out_ch: int, stride: int, expansion: int = 4) -> Residual:
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50 style bottleneck)."""
    mid = out_ch // expansion
    body = nn.Sequential(
        conv_bn(in_ch, mid, 1), conv_bn(mid, mid, 3, stride), conv_bn(mid, out_ch, 1, act=False)
    )
    return Residual(body, in_ch, out_ch, stride)


class SqueezeExcite(nn.Module):
    """Channel attention: global pooling, bottleneck MLP, sigmoid gate per channel."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


def se_block(in_ch: int, out_ch: int, stride: int) -> Residual:
    """A basic residual block whose residual branch is re-weighted by squeeze-and-excitation."""
    body = nn.Sequential(conv_bn(in_ch, out_ch, 3, stride), conv_bn(out_ch, out_ch, act=False))
    return Residual(body, in_ch, out_ch, stride, post=SqueezeExcite(out_ch))


def separable(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1 (MobileNetV1)."""
    return nn.Sequential(conv_bn(in_ch, in_ch, 3, stride, groups=in_ch), conv_bn(in_ch, out_ch, 1))


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, linear 1x1 projection; identity add when shapes match (MobileNetV2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int = 4):
        super().__init__()
        mid = in_ch * expand
        self.use_add = stride == 1 and in_ch == out_ch
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_add else out


class Inception(nn.Module):
    """Four parallel branches (1x1, 3x3, two 3x3 = 5x5 field, pool + 1x1) concatenated on channels."""

    def __init__(self, in_ch: int, branch: int):
        super().__init__()
        self.b1 = conv_bn(in_ch, branch, 1)
        self.b3 = nn.Sequential(conv_bn(in_ch, branch // 2, 1), conv_bn(branch // 2, branch))
        self.b5 = nn.Sequential(
            conv_bn(in_ch, branch // 2, 1), conv_bn(branch // 2, branch), conv_bn(branch, branch)
        )
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(in_ch, branch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


class DenseBlock(nn.Module):
    """Each layer sees the concatenation of all earlier maps and adds ``growth`` new ones (DenseNet)."""

    def __init__(self, in_ch: int, layers: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(in_ch + i * growth),
                nn.ReLU(inplace=True),
                nn.Conv2d(in_ch + i * growth, growth, 3, 1, 1, bias=False),
            )
            for i in range(layers)
        )
        self.out_channels = in_ch + layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


def transition(in_ch: int, out_ch: int) -> nn.Sequential:
    """Compress channels with a 1x1 convolution and halve the map by average pooling."""
    return nn.Sequential(
        nn.BatchNorm2d(in_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
        nn.AvgPool2d(2, ceil_mode=True),
    )


class Fire(nn.Module):
    """Squeeze with 1x1, expand with parallel 1x1 and 3x3, concatenated (SqueezeNet)."""

    def __init__(self, in_ch: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(in_ch, squeeze, 1), nn.ReLU(inplace=True))
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True))
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], dim=1)


class AvgMaxPoolHead(nn.Module):
    """Concatenated global average and max pooling, dropout, linear (convnetj's head)."""

    def __init__(self, in_ch: int, num_classes: int, drop: float = 0.3):
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.max = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(drop), nn.Linear(2 * in_ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.avg(x), self.max(x)], dim=1))


def _stages(widths: list[int], block, in_ch: int) -> tuple[nn.Sequential, int]:
    # The first stage keeps the resolution, every later one halves it.
    layers = []
    for i, width in enumerate(widths):
        layers.append(block(in_ch, width, 1 if i == 0 else 2))
        in_ch = width
    return nn.Sequential(*layers), in_ch


@register_model("convneta")
def convneta(num_classes: int, in_chans: int = 3, drop: float = 0.2) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(in_chans, 32, 5, padding=2),
        nn.ReLU(inplace=True),
        down(),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(inplace=True),
        down(),
    )
    return _Net(num_classes, features, lambda c, n: linear_head(c, n, drop), 64)


@register_model("convnetb")
def convnetb(num_classes: int, in_chans: int = 3) -> nn.Module:
    features = nn.Sequential(conv_bn(in_chans, 32), down(), conv_bn(32, 64), down(), conv_bn(64, 128), down())
    return _Net(num_classes, features, linear_head, 128)


@register_model("convnetc")
def convnetc(num_classes: int, in_chans: int = 3, drop: float = 0.5) -> nn.Module:
    def stage(i: int, o: int) -> list[nn.Module]:
        return [conv_bn(i, o), conv_bn(o, o), down()]

    features = nn.Sequential(
        *stage(in_chans, 32),
        *stage(32, 64),
        *stage(64, 128),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
    )
    return _Net(num_classes, features, lambda c, n: nn.Sequential(nn.Dropout(drop), nn.Linear(c, n)), 256)


@register_model("convnetd")
def convnetd(num_classes: int, in_chans: int = 3) -> nn.Module:
    features = nn.Sequential(
        conv_bn(in_chans, 32),
        conv_bn(32, 32, stride=2),
        conv_bn(32, 64),
        conv_bn(64, 64, stride=2),
        conv_bn(64, 128),
        conv_bn(128, 128, stride=2),
        conv_bn(128, 128, 1),
    )
    return _Net(num_classes, features, conv_head, 128)


@register_model("convnete")
def convnete(num_classes: int, in_chans: int = 3, drop: float = 0.3) -> nn.Module:
    def mlpconv(i: int, o: int, k: int) -> nn.Sequential:
        return nn.Sequential(conv_bn(i, o, k), conv_bn(o, o, 1), conv_bn(o, o, 1))

    features = nn.Sequential(
        mlpconv(in_chans, 48, 5),
        down(),
        nn.Dropout(drop),
        mlpconv(48, 96, 5),
        down(),
        nn.Dropout(drop),
        mlpconv(96, 96, 3),
    )
    return _Net(num_classes, features, conv_head, 96)


@register_model("convnetf")
def convnetf(num_classes: int, in_chans: int = 3) -> nn.Module:
    body, out = _stages([32, 64, 128], basic_block, 32)
    return _Net(num_classes, nn.Sequential(conv_bn(in_chans, 32), body), linear_head, out)


@register_model("convnetg")
def convnetg(num_classes: int, in_chans: int = 3) -> nn.Module:
    body, out = _stages([64, 128, 256], bottleneck_block, 32)
    return _Net(num_classes, nn.Sequential(conv_bn(in_chans, 32), body), linear_head, out)


@register_model("convneth")
def convneth(num_classes: int, in_chans: int = 3, drop: float = 0.2) -> nn.Module:
    body, out = _stages([32, 64, 128, 256], separable, 32)
    return _Net(
        num_classes, nn.Sequential(conv_bn(in_chans, 32), body), lambda c, n: linear_head(c, n, drop), out
    )


@register_model("convneti")
def convneti(num_classes: int, in_chans: int = 3, drop: float = 0.2) -> nn.Module:
    blocks = [
        InvertedResidual(16, 24, 2),
        InvertedResidual(24, 24, 1),
        InvertedResidual(24, 48, 2),
        InvertedResidual(48, 48, 1),
        InvertedResidual(48, 96, 2),
        InvertedResidual(96, 96, 1),
    ]
    features = nn.Sequential(conv_bn(in_chans, 16), *blocks, conv_bn(96, 256, 1))
    return _Net(num_classes, features, lambda c, n: linear_head(c, n, drop), 256)


@register_model("convnetj")
def convnetj(num_classes: int, in_chans: int = 3, drop: float = 0.3) -> nn.Module:
    widths = [32, 64, 128, 256, 256]
    layers, prev = [], in_chans
    for width in widths:
        layers += [conv_bn(prev, width), down()]
        prev = width
    return _Net(num_classes, nn.Sequential(*layers), lambda c, n: AvgMaxPoolHead(c, n, drop), prev)


@register_model("convnetk")
def convnetk(num_classes: int, in_chans: int = 3) -> nn.Module:
    features = nn.Sequential(
        conv_bn(in_chans, 32),
        down(),
        Inception(32, 16),
        down(),
        Inception(64, 32),
        down(),
        Inception(128, 32),
    )
    return _Net(num_classes, features, linear_head, 128)


@register_model("convnetl")
def convnetl(num_classes: int, in_chans: int = 3, growth: int = 12) -> nn.Module:
    layers, ch = [conv_bn(in_chans, 24)], 24
    for i in range(3):
        block = DenseBlock(ch, 4, growth)
        layers.append(block)
        ch = block.out_channels
        if i < 2:
            layers.append(transition(ch, ch // 2))
            ch //= 2
    layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
    return _Net(num_classes, nn.Sequential(*layers), linear_head, ch)


@register_model("convnetm")
def convnetm(num_classes: int, in_chans: int = 3) -> nn.Module:
    body, out = _stages([32, 64, 128], se_block, 32)
    return _Net(num_classes, nn.Sequential(conv_bn(in_chans, 32), body), linear_head, out)


@register_model("convnetn")
def convnetn(num_classes: int, in_chans: int = 3, drop: float = 0.3) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(in_chans, 48, 3, padding=1),
        nn.ReLU(inplace=True),
        down(),
        Fire(48, 16, 32),
        Fire(64, 16, 32),
        down(),
        Fire(64, 32, 64),
        Fire(128, 32, 64),
        down(),
        Fire(128, 48, 96),
    )
    return _Net(num_classes, features, lambda c, n: conv_head(c, n, drop), 192)
