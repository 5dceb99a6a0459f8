"""MIMU's target classifiers (shared/specs/mimu.md §2): the reference's `HookedMLPClassifier` and `HookedResnet`,
as `SmallClassifier(features, width, num_classes)` whose last two layers are bias-free nn.Linear: the masked layer
W [m, n] = [outputs, inputs] ends `features` and feeds the bias-free `head` Linear(m -> C).

- `mlp_mimu`: Flatten -> Linear(d -> 128) + ReLU -> Linear(128 -> 64) + ReLU -> head Linear(64 -> C), all bias-free;
  the masked layer is `features.fc2` (128 -> 64, W [64, 128], N = 8 192).
- `resnet18_mimu`: the ResNet-18 backbone with BN (torchvision's 7x7 stride-2 stem + max-pool by default, as the
  reference, also at 28/32 px) -> global avg-pool [B, 512] -> `features.fc` Linear(512 -> 128) -> head
  Linear(128 -> C), both bias-free, no nonlinearity between them (W [128, 512], N = 65 536).

`unlearnkit.methods._mimu_capture.check_mimu_head` finds the masked layer of these and of any classifier that fits
the same contract.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from .._registry import MODELS
from .small import SmallClassifier
from .vision import _resnet


def _bias_free_head(features: nn.Module, width: int, num_classes: int) -> SmallClassifier:
    model = SmallClassifier(features, width, num_classes)
    model.head = nn.Linear(width, num_classes, bias=False)  # [B, m] -> logits [B, C]
    return model


@MODELS.register("mlp_mimu", task="classifier", spec="mimu.md §2")
def mlp_mimu(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128, 64)) -> SmallClassifier:
    """MIMU's bias-free MLP: Flatten, Linear+ReLU per hidden width, a Linear head; masks the last hidden Linear.

    The masked layer is `features.fc{len(hidden)}` (the reference's HookedMLPClassifier)."""
    sizes = tuple(hidden)
    if not sizes or not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h > 0 for h in sizes):
        raise ValueError(f"mlp_mimu: hidden={hidden!r} must be one or more positive widths (the last hidden Linear is "
                         "the masked layer)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"mlp_mimu: num_classes={num_classes!r} must be an integer >= 2")
    width = math.prod(input_shape)
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for k, h in enumerate(sizes, start=1):
        layers += [(f"fc{k}", nn.Linear(width, int(h), bias=False)), (f"relu{k}", nn.ReLU())]
        width = int(h)
    return _bias_free_head(nn.Sequential(OrderedDict(layers)), width, num_classes)


@MODELS.register("resnet18_mimu", task="classifier", spec="mimu.md §2")
def resnet18_mimu(input_shape: Sequence[int], num_classes: int, width: int = 128, stem: str = "imagenet",
                  pretrained: bool = False) -> SmallClassifier:
    """MIMU's ResNet-18: backbone [B, 512] -> bias-free Linear(512 -> width) -> bias-free head; masks the former.

    The masked layer is `features.fc`, with no nonlinearity before the head Linear(width -> C) (the reference's
    HookedResnet); torchvision's 7x7 stride-2 stem + max-pool by default."""
    if isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1:
        raise ValueError(f"resnet18_mimu: width={width!r} must be a positive integer (the masked layer's outputs)")
    backbone = _resnet("resnet18", input_shape, num_classes, stem, pretrained).features   # x -> [B, 512]
    layers = [*backbone.named_children(), ("fc", nn.Linear(512, int(width), bias=False))]
    return _bias_free_head(nn.Sequential(OrderedDict(layers)), int(width), num_classes)
