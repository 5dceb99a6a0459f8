"""Negative preference optimisation `npo` (Zhang et al. 2024, arXiv 2404.05868; specs/llm.md §2.3).

    L = γ·(2/β)·mean_i softplus(β·(log π_θ(y_i|x_i) − log π_ref(y_i|x_i))) + α·L_retain(B_r)     # sequence SUMS

At the start L_forget = (2/β)·log 2; its gradient is gradient ascent weighted per example by 2σ(β·log π_θ/π_ref),
which vanishes as forgetting proceeds. `npo` itself is the pure NPO loss (retain_loss "none", the Markov seed's
`npo`); OpenUnlearning's `NPO` (NPO + NLL on retain) is our `npo_rt`, and `npo_kl` adds KL(ref‖θ) on retain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import param
from . import losses
from ._base import GradientMethod, register_method, variant
from .grad_diff import objective, reads

PAPER = "Zhang et al. 2024, arXiv 2404.05868 (NPO)"


@register_method("npo", paper=PAPER)
@dataclass
class NPO(GradientMethod):
    """Negative preference optimisation on the forget set against the original model."""

    pairing = "forget"
    needs_reference = True  # π_ref of the NPO loss itself
    beta: float = param(0.1, gt=0, help="inverse temperature β of the NPO loss")
    gamma: float = param(1.0, ge=0, help="weight of the NPO forget loss")
    alpha: float = param(1.0, ge=0, help="weight of the retain loss")
    retain_loss: Literal["none", "nll", "kl"] = param("none", help="retain loss: none, NLL(B_r) or KL(ref‖θ) on B_r")
    lr: float = param(1e-5, gt=0, help="learning rate")
    epochs: int = param(10, ge=0, help="passes over the forget set")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adamw", help="optimiser")
    weight_decay: float = param(0.01, ge=0, help="weight decay")
    batch_size: int = param(32, gt=0, help="forget / retain batch size")

    @property
    def uses(self) -> tuple[str, ...]:
        return reads(self.retain_loss)

    def loss(self, task, model, forget, retain, frozen):
        return objective(self, task, model, losses.npo(task, model, frozen["ref"], forget, self.beta), retain, frozen)


NPOKL = register_method("npo_kl", paper=PAPER)(variant(
    NPO, "NPOKL", "NPO on the forget set plus KL(ref‖θ) on the retain set.", retain_loss="kl"))
NPORT = register_method("npo_rt", paper=PAPER)(variant(
    NPO, "NPORT", "NPO on the forget set plus NLL on the retain set (OpenUnlearning's NPO).", retain_loss="nll"))
