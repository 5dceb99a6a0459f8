"""SalUn `salun` (Fan et al., ICLR 2024, arXiv 2310.12508) and random-label `random_label` (SalUn without a mask).

    G    = | Σ_{B⊂D_f} ∇_θ(−CE(θ_o; B)) |      one pass over D_f, model.eval(), NO optimiser step
    mask = 1 on the top-ρ fraction of G, ranked globally over all parameters (ties: the lower flat index first)
    train on the shuffled D_f(random labels) ∪ D_r with CE; before each step multiply the gradients by the mask
Random labels are uniform over the C classes, redrawn every epoch, and may equal the true label; they are drawn for
every data set (specs/vision.md §8 V3). The retain set is required (SalUn issue #14). Weight decay is applied by the
optimiser after the mask, as in the reference, so masked weights still decay when weight_decay > 0.
`mask_direction="bottom"` keeps the SMALLEST-|G| weights: RUM's pre-fix SalUn (§8 V1), for comparison only (its
optimiser steps during the gradient pass are not reproduced).
`random_label` is this class with mask_fraction=1.0 (every weight; the gradient pass is skipped).
Defaults: ρ 0.5, lr 0.1, 10 epochs, SGD momentum 0.9, wd 5e-4, batch 256 (RUM's shared optimiser).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import param, validate
from ..tasks._hooks import eval_mode
from ._base import check_data, register_method, variant
from ._influence import iter_batches
from ._loop import LoopParams, default_accelerator, record
from ._relabel import train_relabeled


def saliency_mask(model: nn.Module, task: Any, forget: Dataset, fraction: float,
                  direction: Literal["top", "bottom"] = "top", batch_size: int = 256) -> dict[str, torch.Tensor]:
    """{parameter name: bool mask of its shape}: the `fraction` of all weights with the largest ("top") or smallest
    ("bottom") |Σ_B ∇(−CE(θ; B))| over the forget batches. Computed in eval mode; the weights are not changed and
    the gradients are cleared afterwards."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for _, p in named]
    with eval_mode(model):
        for batch in iter_batches(forget, batch_size, named[0][1].device):
            model.zero_grad(set_to_none=True)
            (-task.loss(model, batch)).backward()
            for g, (_, p) in zip(grads, named, strict=True):
                if p.grad is not None:
                    g += p.grad
        model.zero_grad(set_to_none=True)
    saliency = torch.cat([g.abs().flatten() for g in grads])  # [n_weights]
    keep = max(1, int(fraction * saliency.numel()))
    order = torch.sort(saliency, descending=direction == "top", stable=True).indices  # stable: ties by index
    chosen = torch.zeros_like(saliency, dtype=torch.bool)
    chosen[order[:keep]] = True
    masks, start = {}, 0
    for (name, p) in named:
        masks[name] = chosen[start:start + p.numel()].view_as(p)
        start += p.numel()
    return masks


def apply_mask(masks: dict[str, torch.Tensor], model: nn.Module) -> None:
    """grad ← grad ⊙ mask for every masked parameter (the loop's before_step hook)."""
    for name, p in model.named_parameters():
        if p.grad is not None and name in masks:
            p.grad.mul_(masks[name].to(p.grad.device))


@register_method("salun", paper="Fan et al., ICLR 2024, arXiv 2310.12508 (SalUn)", tasks=("classifier",),
                 kind="gradient")
@dataclass
class SalUn(LoopParams):
    """Random-label training on D_f ∪ D_r, updating only the weights most salient for forgetting."""

    uses = ("forget", "retain")
    mask_fraction: float = param(0.5, gt=0, le=1, help="fraction ρ ∈ (0, 1] of all weights that may change "
                                                       "(1 = no mask: random_label)")
    mask_direction: Literal["top", "bottom"] = param(
        "top", help="top: the largest-|grad| weights (correct); bottom: the smallest (RUM's buggy SalUn, §8 V1)")
    lr: float = param(0.1, gt=0, help="learning rate")
    epochs: int = param(10, ge=0, help="passes over D_f ∪ D_r")
    batch_size: int = param(256, gt=0, help="batch size of the union and of the saliency pass")

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        self.mask_ = None
        if self.mask_fraction < 1.0:
            model.to((accelerator or default_accelerator()).device)
            self.mask_ = saliency_mask(model, task, data.forget, self.mask_fraction, self.mask_direction,
                                       self.batch_size)
        hook = None if self.mask_ is None else (lambda m: apply_mask(self.mask_, m))
        result = train_relabeled(model, data, task, self, mode="uniform", before_step=hook, accelerator=accelerator,
                                 after_step=after_step, desc=self.registry_name)
        return record(self, result)


RandomLabel = register_method("random_label", paper="Golatkar et al. 2020 / Fan et al. 2024 (random-label baseline)",
                              tasks=("classifier",), kind="gradient")(variant(
    SalUn, "RandomLabel", "SalUn without a mask: random-label training on D_f ∪ D_r, every weight updated.",
    mask_fraction=1.0))
