"""Weighted gradient ascent `wga` (Wang et al. 2025, "Rethinking LLM unlearning objectives: a gradient perspective
and go beyond", arXiv 2502.19301; specs/llm.md §2.10).

    L = −γ·mean_{t∈A_f} [sg(p_t)^β·ℓ_t] + α·NLL_θ(B_r)       # ℓ_t = −log p_t, A_f = the forget batch's answer tokens

Tokens the model no longer predicts (small p_t) stop contributing, so the ascent saturates instead of diverging.
No reference model is built (unlike the reference code, §6 P7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import param
from . import losses
from ._base import ForgetRetainObjective, register_method


@register_method("wga", paper="Wang et al. 2025, arXiv 2502.19301 (WGA)", tasks=("causal_lm",))
@dataclass
class WGA(ForgetRetainObjective):
    """Token-level gradient ascent weighted by each token's (stop-gradient) probability to the power β."""

    beta: float = param(1.0, ge=0, help="exponent β of the weight sg(p_t)^β")
    retain_loss: Literal["none", "nll", "kl"] = param("nll", help="retain loss: none, NLL(B_r) or KL(ref‖θ) on B_r")
    epochs: int = param(5, ge=0, help="passes over the forget set (the retain set is cycled beside it)")

    def forget_loss(self, task, model, forget, frozen):
        beta = self.beta
        return losses.token_weighted_ascent(task, model, forget, lambda p: p**beta)
