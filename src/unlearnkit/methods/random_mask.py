"""Random masking `random_mask`: MIMU's same-budget baseline (shared/specs/mimu.md §7). Zero exactly κ weights of
MIMU's masked layer W [m, n] (the bias-free Linear feeding the bias-free head), at positions drawn uniformly without
replacement from a torch.Generator seeded with `seed`. Reads no data; nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from ..config import param, validate
from ._base import register_method
from ._mimu_masks import _resolve, apply_mask, random_keep_mask
from .mimu import TOY_MODEL


@register_method("random_mask", paper="MIMU's random-masking baseline (shared/specs/mimu.md §7)",
                 tasks=("classifier",))
@dataclass
class RandomMask:
    """Zero κ uniformly random weights of MIMU's masked layer (the budget MIMU zeroes)."""

    uses: ClassVar[tuple[str, ...]] = ()
    toy_model: ClassVar[tuple[str, dict[str, Any]]] = TOY_MODEL
    toy_scenario: ClassVar[str] = "class"

    masked_layer: str | None = param(None, help="module name of the masked layer (None: the Linear feeding the head)")
    kappa: int | float = param(0.5, ge=0, help="κ: weights zeroed, an int or a fraction of N")
    seed: int = param(0, help="seed of the zeroed positions")

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        target = _resolve(model, masked_layer=self.masked_layer, kappa=self.kappa)
        keep = random_keep_mask(target.num_weights, target.kappa, self.seed)     # [N], exactly κ zeros
        apply_mask(model, target.layer, keep)
        self.masked_layer_, self.kappa_, self.keep_mask_ = target.layer, target.kappa, keep.bool()
        return model
