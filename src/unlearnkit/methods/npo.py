"""Negative preference optimisation `npo` (Zhang et al. 2024, arXiv 2404.05868; specs/llm.md §2.3).

    L = γ·(2/β)·mean_i softplus(β·(log π_θ(y_i|x_i) − log π_ref(y_i|x_i))) + α·L_retain(B_r)     # sequence SUMS

At the start L_forget = (2/β)·log 2; its gradient is gradient ascent weighted per example by 2σ(β·log π_θ/π_ref),
which vanishes as forgetting proceeds. `npo` itself is the pure NPO loss (retain_loss "none", the Markov seed's
`npo`); OpenUnlearning's `NPO` (NPO + NLL on retain) is our `npo_rt`, and `npo_kl` adds KL(ref‖θ) on retain.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import param
from . import losses
from ._base import ForgetRetainObjective, register_method, variant

PAPER = "Zhang et al. 2024, arXiv 2404.05868 (NPO)"


@register_method("npo", paper=PAPER)
@dataclass
class NPO(ForgetRetainObjective):
    """Negative preference optimisation on the forget set against the original model."""

    needs_reference = True  # π_ref of the NPO loss itself
    beta: float = param(0.1, gt=0, help="inverse temperature β of the NPO loss")

    def forget_loss(self, task, model, forget, frozen):
        return losses.npo(task, model, frozen["ref"], forget, self.beta)


NPOKL = register_method("npo_kl", paper=PAPER)(variant(
    NPO, "NPOKL", "NPO on the forget set plus KL(ref‖θ) on the retain set.", retain_loss="kl"))
NPORT = register_method("npo_rt", paper=PAPER)(variant(
    NPO, "NPORT", "NPO on the forget set plus NLL on the retain set (OpenUnlearning's NPO).", retain_loss="nll"))
