"""Gradient difference `grad_diff` (Liu et al. 2022, PMLR 199; as a TOFU baseline: Maini et al. 2024, arXiv
2401.06121), with the Markov seed's `kl` and `grad_diff_kl_forget` (specs/markov_imu.md §3, specs/llm.md §2.2).

    L = −γ·NLL_θ(B_f) + α·L_retain(B_r)  [+ KL(π_ref ‖ π_θ) on B_f when forget_kl]
    L_retain = NLL_θ(B_r) ("nll") or KL(π_ref ‖ π_θ) on B_r ("kl")

One epoch is one pass over the forget set; the retain set is cycled beside it. π_ref is built only for a KL term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import param
from . import losses
from ._base import ForgetRetainObjective, register_method, variant


@register_method("grad_diff", paper="Liu et al. 2022 (PMLR 199); Maini et al. 2024, arXiv 2401.06121 (TOFU)")
@dataclass
class GradDiff(ForgetRetainObjective):
    """Gradient ascent on the forget set plus a retain loss (NLL or KL to the original)."""

    retain_loss: Literal["nll", "kl"] = param("nll", help="retain loss: NLL(B_r) or KL(ref‖θ) on B_r")
    forget_kl: bool = param(False, help="also add KL(ref‖θ) on the forget batch")

    @property
    def needs_reference(self) -> bool:
        return self.retain_loss == "kl" or self.forget_kl

    def forget_loss(self, task, model, forget, frozen):
        return losses.ascent(task, model, forget)

    def loss(self, task, model, forget, retain, frozen):
        total = super().loss(task, model, forget, retain, frozen)  # γ·(−NLL_f) + α·L_retain
        if not self.forget_kl:
            return total
        return total + losses.kl_to_reference(task, model, frozen["ref"], forget,
                                              per_token=losses.kl_per_token(self.kl_reduction))


KL = register_method("kl", paper="Markov-chain seed (specs/markov_imu.md §3); Maini et al. 2024 (TOFU)")(variant(
    GradDiff, "KL", "Gradient ascent on the forget set plus KL(ref‖θ) on the retain set.", retain_loss="kl"))
GradDiffKLForget = register_method("grad_diff_kl_forget", paper="Markov-chain seed (specs/markov_imu.md §3)")(variant(
    GradDiff, "GradDiffKLForget", "GradDiff plus KL(ref‖θ) on the forget set.", forget_kl=True))
