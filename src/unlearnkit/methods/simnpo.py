"""Simple NPO `simnpo` (Fan et al. 2024, arXiv 2410.07163; specs/llm.md §2.4).

    L = γ·(2/β)·mean_i softplus(−β·(avg NLL_θ(i) − δ)) + α·L_retain(B_r)     # avg NLL = S_θ(i)/|y_i|

Length-normalised and reference-free: π_ref is built only for a KL retain term. The paper's margin γ_paper is
δ = γ_paper/β. `simnpo` is the pure loss (the Markov seed's `simnpo`); `simnpo_rt` adds NLL on retain (as
OpenUnlearning's SimNPO, whose γ default is 0.125), `simnpo_kl` adds KL(ref‖θ) on retain.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import param
from . import losses
from ._base import ForgetRetainObjective, register_method, variant

PAPER = "Fan et al. 2024, arXiv 2410.07163 (SimNPO)"


@register_method("simnpo", paper=PAPER)
@dataclass
class SimNPO(ForgetRetainObjective):
    """Reference-free, length-normalised NPO on the forget set."""

    beta: float = param(4.5, gt=0, help="inverse temperature β of the SimNPO loss")
    delta: float = param(0.0, help="reward margin δ (the paper's γ divided by β)")

    def forget_loss(self, task, model, forget, frozen):
        return losses.simnpo(task, model, forget, self.beta, self.delta)


SimNPOKL = register_method("simnpo_kl", paper=PAPER)(variant(
    SimNPO, "SimNPOKL", "SimNPO on the forget set plus KL(ref‖θ) on the retain set.", retain_loss="kl"))
SimNPORT = register_method("simnpo_rt", paper=PAPER)(variant(
    SimNPO, "SimNPORT", "SimNPO on the forget set plus NLL on the retain set.", retain_loss="nll"))
