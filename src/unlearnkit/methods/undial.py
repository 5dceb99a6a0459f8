"""UNDIAL `undial`: unlearning via self-distillation with adjusted logits (Dong et al. 2024, arXiv 2402.10052;
specs/llm.md §2.7).

    q_t = softmax(z_ref,t − β·onehot(y_t))                 # teacher = the frozen original, true token lowered by β
    L   = γ·mean_{t∈A} [−Σ_v q_t,v·log p_θ(v)_t]  [+ α·NLL_θ(B_r) when α > 0]

Labelled positions only, and −100 never indexes the vocabulary (§6 P3). The retain term is off by default (α = 0),
and then the retain set is not read. The paper trains LoRA adapters (r=8, alpha=16) over β ∈ {3, 10, 30}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import param
from . import losses
from ._base import ForgetRetainObjective, register_method


@register_method("undial", paper="Dong et al. 2024, arXiv 2402.10052 (UNDIAL)", tasks=("causal_lm",))
@dataclass
class UNDIAL(ForgetRetainObjective):
    """Self-distillation on the forget set towards the original's prediction with the true token's logit lowered."""

    needs_reference = True  # the teacher
    beta: float = param(10.0, ge=0, help="amount β subtracted from the true token's teacher logit")
    alpha: float = param(0.0, ge=0, help="weight of the retain loss (0: no retain term, the retain set is not read)")
    retain_loss: Literal["none", "nll", "kl"] = param("nll", help="retain loss (when alpha > 0): none, NLL or KL")
    lr: float = param(1e-4, gt=0, help="learning rate")

    @property
    def uses(self) -> tuple[str, ...]:
        return ("forget",) if self.alpha == 0 or self.retain_loss == "none" else ("forget", "retain")

    def forget_loss(self, task, model, forget, frozen):
        return losses.undial(task, model, frozen["ref"], forget, self.beta)
