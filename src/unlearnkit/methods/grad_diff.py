"""Gradient difference `grad_diff` (Liu et al. 2022, PMLR 199; as a TOFU baseline: Maini et al. 2024, arXiv
2401.06121), with the Markov seed's `kl` and `grad_diff_kl_forget` (specs/markov_imu.md §3, specs/llm.md §2.2).

    L = −γ·NLL_θ(B_f) + α·L_retain(B_r)  [+ KL(π_ref ‖ π_θ) on B_f when forget_kl]
    L_retain = NLL_θ(B_r) ("nll") or KL(π_ref ‖ π_θ) on B_r ("kl")

One epoch is one pass over the forget set; the retain set is cycled beside it. π_ref is built only for a KL term.
`objective` and `reads` below are shared with NPO and SimNPO (same γ·L_forget + α·L_retain form, llm.md §1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..config import param
from . import losses
from ._base import GradientMethod, register_method, variant


def reads(retain_loss: str) -> tuple[str, ...]:
    """The data sets that γ·L_forget + α·L_retain reads: the retain set too unless retain_loss is "none"."""
    return ("forget",) if retain_loss == "none" else ("forget", "retain")


def objective(method: Any, task: Any, model: nn.Module, forget_loss: torch.Tensor, retain: Any,
              frozen: Mapping[str, nn.Module]) -> torch.Tensor:
    """method.gamma·forget_loss + method.alpha·retain_term(method.retain_loss, B_r)."""
    retain_loss = losses.retain_term(method.retain_loss, task, model, retain, frozen.get("ref"))
    return method.gamma * forget_loss + method.alpha * retain_loss


@register_method("grad_diff", paper="Liu et al. 2022 (PMLR 199); Maini et al. 2024, arXiv 2401.06121 (TOFU)")
@dataclass
class GradDiff(GradientMethod):
    """Gradient ascent on the forget set plus a retain loss (NLL or KL to the original)."""

    uses = ("forget", "retain")
    pairing = "forget"
    gamma: float = param(1.0, ge=0, help="weight of the forget ascent −NLL(B_f)")
    alpha: float = param(1.0, ge=0, help="weight of the retain loss (llm.md's α; NOT neggrad_plus's mixing alpha)")
    retain_loss: Literal["nll", "kl"] = param("nll", help="retain loss: NLL(B_r) or KL(ref‖θ) on B_r")
    forget_kl: bool = param(False, help="also add KL(ref‖θ) on the forget batch")
    lr: float = param(1e-5, gt=0, help="learning rate")
    epochs: int = param(10, ge=0, help="passes over the forget set")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adamw", help="optimiser")
    weight_decay: float = param(0.01, ge=0, help="weight decay")
    batch_size: int = param(32, gt=0, help="forget / retain batch size")

    @property
    def needs_reference(self) -> bool:
        return self.retain_loss == "kl" or self.forget_kl

    def loss(self, task, model, forget, retain, frozen):
        total = objective(self, task, model, losses.ascent(task, model, forget), retain, frozen)
        if self.forget_kl:
            total = total + losses.kl_to_reference(task, model, frozen["ref"], forget)
        return total


KL = register_method("kl", paper="Markov-chain seed (specs/markov_imu.md §3); Maini et al. 2024 (TOFU)")(variant(
    GradDiff, "KL", "Gradient ascent on the forget set plus KL(ref‖θ) on the retain set.", retain_loss="kl"))
GradDiffKLForget = register_method("grad_diff_kl_forget", paper="Markov-chain seed (specs/markov_imu.md §3)")(variant(
    GradDiff, "GradDiffKLForget", "GradDiff plus KL(ref‖θ) on the forget set.", forget_kl=True))
