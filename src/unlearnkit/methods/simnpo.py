"""Simple NPO `simnpo` (Fan et al. 2024, arXiv 2410.07163; specs/llm.md §2.4).

    L = γ·(2/β)·mean_i softplus(−β·(avg NLL_θ(i) − δ)) + α·L_retain(B_r)     # avg NLL = S_θ(i)/|y_i|

Length-normalised and reference-free: π_ref is built only for a KL retain term. The paper's margin γ_paper is
δ = γ_paper/β. `simnpo` is the pure loss (the Markov seed's `simnpo`); `simnpo_rt` adds NLL on retain (as
OpenUnlearning's SimNPO, whose γ default is 0.125), `simnpo_kl` adds KL(ref‖θ) on retain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import param
from . import losses
from ._base import GradientMethod, register_method, variant
from .grad_diff import objective, reads

PAPER = "Fan et al. 2024, arXiv 2410.07163 (SimNPO)"


@register_method("simnpo", paper=PAPER)
@dataclass
class SimNPO(GradientMethod):
    """Reference-free, length-normalised NPO on the forget set."""

    pairing = "forget"
    beta: float = param(4.5, gt=0, help="inverse temperature β of the SimNPO loss")
    delta: float = param(0.0, help="reward margin δ (the paper's γ divided by β)")
    gamma: float = param(1.0, ge=0, help="weight of the SimNPO forget loss")
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

    @property
    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"

    def loss(self, task, model, forget, retain, frozen):
        return objective(self, task, model, losses.simnpo(task, model, forget, self.beta, self.delta), retain, frozen)


SimNPOKL = register_method("simnpo_kl", paper=PAPER)(variant(
    SimNPO, "SimNPOKL", "SimNPO on the forget set plus KL(ref‖θ) on the retain set.", retain_loss="kl"))
SimNPORT = register_method("simnpo_rt", paper=PAPER)(variant(
    SimNPO, "SimNPORT", "SimNPO on the forget set plus NLL on the retain set.", retain_loss="nll"))
