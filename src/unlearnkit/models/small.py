"""Small classifiers for the embedded `digits` benchmark and the tests.

Both expose `features` (input -> penultimate representation) and `head` (the final Linear), so metrics can ask for
hidden states at layer "features" and methods can address the classifier layer by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from .._registry import MODELS


class SmallClassifier(nn.Module):
    """features -> head. Shapes: x [B, *input_shape] -> logits [B, num_classes]."""

    def __init__(self, features: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


@MODELS.register("mlp", task="classifier")
def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128, 64)) -> SmallClassifier:
    """Multi-layer perceptron: Flatten, then Linear+ReLU per hidden width, then a Linear head."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return SmallClassifier(nn.Sequential(*layers), width, num_classes)


@MODELS.register("cnn", task="classifier")
def cnn(input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32),
        hidden: int = 64) -> SmallClassifier:
    """Two 3x3 conv+ReLU blocks (padding 1), one 2x2 max-pool, then Linear(hidden)+ReLU and a Linear head."""
    c_in, h, w = input_shape
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
        c_in = c
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c_in * (h // 2) * (w // 2), hidden), nn.ReLU()]
    return SmallClassifier(nn.Sequential(*layers), hidden, num_classes)
