"""IdkDPO `dpo`: direct preference optimisation towards "I don't know" (Rafailov et al. 2023, arXiv 2305.18290; the
IDK variant of TOFU, Maini et al. 2024, arXiv 2401.06121; specs/llm.md §2.5).

    r(y) = log π_θ(y|x) − log π_ref(y|x)                                   # sequence SUMS
    L    = −γ·(2/β)·mean_i log σ(β·[r(y_idk,i) − r(y_f,i)]) + α·NLL_θ(B_r)

y_f is the forget answer, y_idk a refusal for the same prompt. At θ = ref, L_forget = (2/β)·log 2. The forget set
must carry the refusal as `alt_input_ids`, `alt_attention_mask`, `alt_labels` (build it with alternates, e.g.
`QADataset(..., alternates=IDK_ANSWERS)`, which draws one IDK string per example with the run seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..config import param
from . import losses
from ._base import ForgetRetainObjective, register_method

ALTERNATE_KEYS = ("alt_input_ids", "alt_attention_mask", "alt_labels")


def alternate(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The alternate (IDK) answers of a forget batch as a plain causal-LM batch {input_ids, attention_mask, labels}."""
    return {key.removeprefix("alt_"): batch[key] for key in ALTERNATE_KEYS}


def require_alternates(dataset: Any, method: str) -> None:
    """Raise ValueError unless the items of `dataset` carry the alternate-answer keys."""
    item = dataset[0]
    missing = [k for k in ALTERNATE_KEYS if not isinstance(item, Mapping) or k not in item]
    if missing:
        have = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise ValueError(f"method '{method}' needs forget examples with alternate (IDK) answers: keys {missing} are "
                         f"missing (an item has {have}); build the forget set with alternates, e.g. "
                         "QADataset(..., alternates=IDK_ANSWERS)")


@register_method("dpo", paper="Rafailov et al. 2023, arXiv 2305.18290 (DPO); IdkDPO from Maini et al. 2024, "
                              "arXiv 2401.06121 (TOFU)", tasks=("causal_lm",))
@dataclass
class DPO(ForgetRetainObjective):
    """Preference optimisation of the forget prompts' IDK answers over their true answers, against the original."""

    needs_reference = True  # π_ref of the DPO loss itself
    beta: float = param(0.1, gt=0, help="inverse temperature β of the DPO loss")
    retain_loss: Literal["none", "nll", "kl"] = param("nll", help="retain loss: none, NLL(B_r) or KL(ref‖θ) on B_r")

    def check(self, data: Any) -> None:
        super().check(data)
        require_alternates(data.forget, self.registry_name)

    def forget_loss(self, task, model, forget, frozen):
        return losses.dpo(task, model, frozen["ref"], alternate(forget), forget, self.beta)
