"""NegGrad+ `neggrad_plus` (Kurmanji et al., NeurIPS 2023, arXiv 2302.09880).

    for B_r in D_r: pair with the next B_f (cycled);  L = α·CE(θ; B_r) − (1 − α)·CE(θ; B_f)

One epoch is a pass over D_r, so D_f is seen about |D_r|/|D_f| times per epoch (specs/vision.md §2.5).
Defaults: lr 0.01, 5 epochs, α 0.99 (swept 0.97–0.99 in RUM), SGD momentum 0.9, wd 5e-4, batch 256.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import param
from . import losses
from ._base import GradientMethod, register_method


@register_method("neggrad_plus", paper="Kurmanji et al. 2023, arXiv 2302.09880 (NegGrad+)")
@dataclass
class NegGradPlus(GradientMethod):
    """Retain descent mixed with forget ascent, one epoch = one pass over the retain set."""

    uses = ("forget", "retain")
    pairing = "retain"
    alpha: float = param(0.99, ge=0, le=1, help="weight of the retain loss; 1 − alpha weighs the forget ascent")
    lr: float = param(0.01, gt=0, help="learning rate")
    epochs: int = param(5, ge=0, help="passes over the retain set")
    batch_size: int = param(256, gt=0, help="batch size of both sets")

    def loss(self, task, model, forget, retain, frozen):
        return losses.retain_forget_mix(losses.nll(task, model, retain), losses.nll(task, model, forget), self.alpha)
