"""Vision classifiers built from torchvision architectures (specs/vision.md §1, "Models"):

- `resnet18`, `resnet50` (He et al., CVPR 2016, arXiv 1512.03385). The default `stem="cifar"` is the CIFAR variant
  used by SSD and RUM: a 3x3 stride-1 first conv and no max-pool, so 32-px images keep 32x32 maps in layer1;
  `stem="imagenet"` keeps torchvision's 7x7 stride-2 conv + max-pool (the memorisation-estimate recipe, RUM §5.1).
- `vgg16_bn` (Simonyan & Zisserman, ICLR 2015, arXiv 1409.1556) with batch norm. `classifier="cifar"` (default)
  pools the last conv map globally to a 512-vector (the CIFAR VGG of the unlearning literature);
  `classifier="imagenet"` keeps torchvision's 7x7 pool and 4096-wide MLP (dropout included) as the penultimate layer.
- `vgg11`: JiT's "VGG16", which is torchvision's vgg11 WITHOUT batch norm, whose whole 1000-way classifier (dropout
  0.5 as torchvision has it) is the penultimate layer, followed by Linear(1000 -> C) (the JiT README says so).
- `vit_b_16` (Dosovitskiy et al., ICLR 2021, arXiv 2010.11929): torchvision's ViT-B/16 with the heads removed, so
  the penultimate vector is the CLS token [B, 768]. Inputs are resized to 224x224 (bilinear) INSIDE the forward,
  i.e. after normalisation as SSD/JiT do with CIFAR; 1-channel inputs are repeated to 3 channels.

Every model is `SmallClassifier(features, width, num_classes)`: `features` maps x [B, C, H, W] to the penultimate
vector [B, width] and `head` is Linear(width, num_classes), so metrics and methods address the same names as for the
small models. The number of input channels comes from `input_shape` (MNIST works). `pretrained=True` loads
torchvision's ImageNet weights (downloads them) into everything but the head; with the CIFAR stem, or with a channel
count other than 3 where the first conv is replaced, that first conv stays freshly initialised (ImageNet-stem
ResNet with 1 channel: the pretrained filters summed over RGB, as timm does).
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._registry import MODELS
from .small import SmallClassifier

RESNET_STEMS = ("cifar", "imagenet")
VGG_CLASSIFIERS = ("cifar", "imagenet")
VIT_SIZE = 224


def check_image_input(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    min_size: int = 1,
    why: str = "",
    channels: Sequence[int] | None = None,
) -> tuple[int, int, int]:
    """Validate (C, H, W) and num_classes before anything is built; errors name the bad value and what is allowed."""
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else input_shape
    if (
        not isinstance(shape, tuple)
        or len(shape) != 3
        or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise ValueError(f"{name}: input_shape={input_shape!r} must be (channels, height, width) of positive integers")
    c, h, w = (int(d) for d in shape)
    if channels is not None and c not in channels:
        raise ValueError(f"{name}: input_shape={shape} has {c} channels; allowed: {', '.join(map(str, channels))}")
    if min(h, w) < min_size:
        raise ValueError(
            f"{name}: input_shape={shape}: images must be at least {min_size}x{min_size} px{why}; got {h}x{w}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"{name}: num_classes={num_classes!r} must be an integer >= 2")
    return c, h, w


def _choice(name: str, option: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: {option}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _torchvision_models() -> Any:
    """`torchvision.models`, or an ImportError that says how to install it."""
    try:
        from torchvision import models
    except ImportError as err:
        raise ImportError("the vision models need torchvision: pip install 'unlearnkit[vision]'") from err
    return models


def _weights(pretrained: bool) -> str | None:
    return "DEFAULT" if pretrained else None  # torchvision's best ImageNet weights for the architecture


def _fresh_conv(old: nn.Conv2d, in_channels: int, kernel: int, stride: int, padding: int) -> nn.Conv2d:
    """A new first conv (He init, fan_out, as torchvision's ResNet/VGG init) with `in_channels` inputs."""
    conv = nn.Conv2d(in_channels, old.out_channels, kernel, stride, padding, bias=old.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _resnet(arch: str, input_shape: Sequence[int], num_classes: int, stem: str, pretrained: bool) -> SmallClassifier:
    _choice(arch, "stem", stem, RESNET_STEMS)
    why = " (the ImageNet stem and four stages downsample 32x)" if stem == "imagenet" else ""
    c, _, _ = check_image_input(arch, input_shape, num_classes, min_size=32 if stem == "imagenet" else 1, why=why)
    models = _torchvision_models()

    net = getattr(models, arch)(weights=_weights(pretrained))
    if stem == "cifar":
        net.conv1, net.maxpool = _fresh_conv(net.conv1, c, 3, 1, 1), nn.Identity()
    elif c != 3:
        old, net.conv1 = net.conv1, _fresh_conv(net.conv1, c, 7, 2, 3)
        if pretrained and c == 1:
            with torch.no_grad():
                net.conv1.weight.copy_(old.weight.sum(1, keepdim=True))
    parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
    features = nn.Sequential(OrderedDict([(p, getattr(net, p)) for p in parts] + [("flatten", nn.Flatten(1))]))
    return SmallClassifier(features, net.fc.in_features, num_classes)  # [B, 512] (resnet18) / [B, 2048] (resnet50)


@MODELS.register("resnet18", task="classifier", paper="arXiv 1512.03385")
def resnet18(
    input_shape: Sequence[int], num_classes: int, stem: str = "cifar", pretrained: bool = False
) -> SmallClassifier:
    """ResNet-18 (torchvision), CIFAR stem by default: 3x3 stride-1 first conv, no max-pool; features [B, 512]."""
    return _resnet("resnet18", input_shape, num_classes, stem, pretrained)


@MODELS.register("resnet50", task="classifier", paper="arXiv 1512.03385")
def resnet50(
    input_shape: Sequence[int], num_classes: int, stem: str = "cifar", pretrained: bool = False
) -> SmallClassifier:
    """ResNet-50 (torchvision), CIFAR stem by default: 3x3 stride-1 first conv, no max-pool; features [B, 2048]."""
    return _resnet("resnet50", input_shape, num_classes, stem, pretrained)


_VGG_WHY = " (VGG halves the image 5 times with 2x2 max-pools)"


def _vgg(arch: str, c: int, pretrained: bool) -> nn.Module:
    models = _torchvision_models()

    net = getattr(models, arch)(weights=_weights(pretrained))
    if c != 3:
        net.features[0] = _fresh_conv(net.features[0], c, 3, 1, 1)
    return net


@MODELS.register("vgg16_bn", task="classifier", paper="arXiv 1409.1556")
def vgg16_bn(
    input_shape: Sequence[int], num_classes: int, classifier: str = "cifar", pretrained: bool = False
) -> SmallClassifier:
    """VGG-16 with batch norm (torchvision); features: global-pooled [B, 512] ("cifar") or the MLP's [B, 4096]."""
    _choice("vgg16_bn", "classifier", classifier, VGG_CLASSIFIERS)
    c, _, _ = check_image_input("vgg16_bn", input_shape, num_classes, min_size=32, why=_VGG_WHY)
    net = _vgg("vgg16_bn", c, pretrained)
    if classifier == "cifar":
        layers = [("convs", net.features), ("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))]
        width = 512
    else:  # torchvision's head minus its last Linear: Linear-ReLU-Dropout-Linear-ReLU-Dropout
        layers = [("convs", net.features), ("avgpool", net.avgpool), ("flatten", nn.Flatten(1))]
        layers.append(("classifier", net.classifier[:-1]))
        width = net.classifier[-1].in_features
    return SmallClassifier(nn.Sequential(OrderedDict(layers)), width, num_classes)


@MODELS.register("vgg11", task="classifier", paper="arXiv 2402.01401")
def vgg11(input_shape: Sequence[int], num_classes: int, pretrained: bool = False) -> SmallClassifier:
    """JiT's "VGG16": torchvision vgg11 without batch norm, its full 1000-way classifier as features, then a head."""
    c, _, _ = check_image_input("vgg11", input_shape, num_classes, min_size=32, why=_VGG_WHY)
    net = _vgg("vgg11", c, pretrained)
    layers = [("convs", net.features), ("avgpool", net.avgpool), ("flatten", nn.Flatten(1))]
    layers.append(("classifier", net.classifier))  # [B, 25088] -> [B, 1000], dropout 0.5 twice
    return SmallClassifier(nn.Sequential(OrderedDict(layers)), net.classifier[-1].out_features, num_classes)


class ResizeToRGB(nn.Module):
    """x [B, C, H, W] (normalised) -> [B, 3, size, size]: bilinear resize, 1 channel repeated to 3."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@MODELS.register("vit_b_16", task="classifier", paper="arXiv 2010.11929")
def vit_b_16(input_shape: Sequence[int], num_classes: int, pretrained: bool = False) -> SmallClassifier:
    """ViT-B/16 (torchvision) on inputs resized to 224 px inside the model; features = CLS token [B, 768]."""
    check_image_input("vit_b_16", input_shape, num_classes, channels=(1, 3))
    models = _torchvision_models()

    net = models.vit_b_16(weights=_weights(pretrained))
    width = net.hidden_dim
    net.heads = nn.Identity()  # torchvision's forward returns heads(x[:, 0]), the CLS token
    features = nn.Sequential(OrderedDict([("resize", ResizeToRGB(VIT_SIZE)), ("vit", net)]))
    return SmallClassifier(features, width, num_classes)
