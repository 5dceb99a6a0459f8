"""Fine-tuning `finetune`: minimise CE(θ; D_r) starting from θ_o (catastrophic forgetting of D_f).

Defaults from RUM's README (specs/vision.md §2.2): lr 0.01, 10 epochs, SGD momentum 0.9, wd 5e-4, batch 256.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import param
from . import losses
from ._base import GradientMethod, register_method


@register_method("finetune", paper="Warnecke et al. 2023 / Golatkar et al. 2020 (fine-tuning on D_r)")
@dataclass
class Finetune(GradientMethod):
    """Fine-tune on the retain set only."""

    uses = ("retain",)
    pairing = "retain"
    lr: float = param(0.01, gt=0, help="learning rate")
    epochs: int = param(10, ge=0, help="passes over the retain set")
    batch_size: int = param(256, gt=0, help="retain batch size")

    def loss(self, task, model, forget, retain, frozen):
        return losses.nll(task, model, retain)
