"""NegGrad / gradient ascent `grad_ascent`: minimise −CE(θ; B_f) on the forget set only.

Thudi et al. 2022 (arXiv 2109.13398); defaults from RUM's README (specs/vision.md §2.4): lr 1e-4, 5 epochs,
SGD momentum 0.9, wd 5e-4, batch 256. The SalUn maintainers advise lr 5e-4 to 1e-3 when forget accuracy does not move.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import param
from . import losses
from ._base import GradientMethod, register_method


@register_method("grad_ascent", paper="Thudi et al. 2022, arXiv 2109.13398 (NegGrad)")
@dataclass
class GradAscent(GradientMethod):
    """Gradient ascent on the forget set."""

    uses = ("forget",)
    pairing = "forget"
    lr: float = param(1e-4, gt=0, help="learning rate")
    epochs: int = param(5, ge=0, help="passes over the forget set")
    batch_size: int = param(256, gt=0, help="forget batch size")

    def loss(self, task, model, forget, retain, frozen):
        return losses.ascent(task, model, forget)
