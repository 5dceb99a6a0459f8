"""Saturation-importance weighted ascent `satimp` (Yang et al. 2025, "Exploring criteria of loss reweighting to
enhance LLM unlearning", arXiv 2505.11953; specs/llm.md §2.9).

    L = −γ·mean_{t∈A_f} [sg(p_t)^β1·sg(1 − p_t)^β2·ℓ_t] + α·NLL_θ(B_r)      # ℓ_t = −log p_t

The weight favours tokens that are likely but not yet saturated. Defaults are the reference CONFIG's (β1=5, β2=1,
γ=0.1, α=1, lr 1e-5, 5 epochs), which is what the reference code runs; its README gives γ=1, α=0.1 instead, the
opposite ratio. The conflict is unresolved upstream; set gamma/alpha to follow the README. No reference model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import param
from . import losses
from ._base import ForgetRetainObjective, register_method


@register_method("satimp", paper="Yang et al. 2025, arXiv 2505.11953 (SatImp)", tasks=("causal_lm",))
@dataclass
class SatImp(ForgetRetainObjective):
    """Token-level gradient ascent weighted by sg(p_t)^β1·sg(1 − p_t)^β2."""

    beta1: float = param(5.0, ge=0, help="exponent β1 of sg(p_t)")
    beta2: float = param(1.0, ge=0, help="exponent β2 of sg(1 − p_t)")
    gamma: float = param(0.1, ge=0, help="weight of the forget loss (config 0.1; the README says 1)")
    alpha: float = param(1.0, ge=0, help="weight of the retain loss (config 1; the README says 0.1)")
    retain_loss: Literal["none", "nll", "kl"] = param("nll", help="retain loss: none, NLL(B_r) or KL(ref‖θ) on B_r")
    epochs: int = param(5, ge=0, help="passes over the forget set (the retain set is cycled beside it)")

    def forget_loss(self, task, model, forget, frozen):
        beta1, beta2 = self.beta1, self.beta2
        return losses.token_weighted_ascent(task, model, forget, lambda p: p**beta1 * (1 - p) ** beta2)
