"""Bad Teacher `bad_teacher` (Chundawat et al., AAAI 2023, arXiv 2205.08096).

    teachers: competent = frozen θ_o; incompetent = a randomly initialised model of the same architecture
    data:     D_f (tag 1) ∪ a random `retain_fraction` (30%) of D_r (tag 0), shuffled, one epoch
    q = tag·softmax(z_incompetent/T) + (1 − tag)·softmax(z_competent/T)                       [B, C]
    L = KL(q ‖ softmax(z_student/T)), summed over classes, averaged over the batch ("batchmean")

The reference calls `F.kl_div` with its default reduction, the mean over batch × classes, so its loss is ours divided
by C: Adam's steps are almost unchanged (Adam ignores the loss scale up to ε), an SGD step would be C times smaller
there. No T² factor, as in the reference.
Defaults: Adam 1e-4 (no weight decay), 1 epoch, batch 256 (the reference uses 128 for ViT), T = 1.
Task-generic: on a causal LM, q and the KL are taken at every scored (answer) position, summed over the positions and
divided by the batch size, as in `losses.kl_to_reference`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Subset

from ..config import param, validate
from . import losses
from ._base import GradientMethod, check_data, register_method
from ._loop import record, run_loop
from ._relabel import TaggedUnion, is_forget
from .retrain import reinitialize


def target_distribution(tag: torch.Tensor, incompetent_logits: torch.Tensor, competent_logits: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """q = tag·softmax(z_inc/T) + (1 − tag)·softmax(z_comp/T); tag [B], logits [B, ..., C] -> q [B, ..., C]."""
    tag = tag.to(competent_logits.dtype).view(-1, *[1] * (competent_logits.dim() - 1))
    return (tag * torch.softmax(incompetent_logits / temperature, dim=-1)
            + (1 - tag) * torch.softmax(competent_logits / temperature, dim=-1))


@register_method("bad_teacher", paper="Chundawat et al., AAAI 2023, arXiv 2205.08096 (Bad Teacher)")
@dataclass
class BadTeacher(GradientMethod):
    """Distil from the original model on retain data and from a random model on forget data."""

    uses = ("forget", "retain")
    needs_reference = True  # the competent teacher is the original model
    toy_overrides: ClassVar[dict] = {"lr": 1e-2}  # 1 epoch of Adam 1e-4 = 2 toy steps: the forget loss stays flat
    temperature: float = param(1.0, gt=0, help="distillation temperature T")
    retain_fraction: float = param(0.3, ge=0, le=1, help="fraction of D_r drawn (once, seeded) into the data")
    lr: float = param(1e-4, gt=0, help="learning rate")
    epochs: int = param(1, ge=0, help="passes over D_f ∪ the drawn part of D_r")
    batch_size: int = param(256, gt=0, help="batch size")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adam", help="optimiser")
    weight_decay: float = param(0.0, ge=0, help="weight decay")

    def frozen_models(self, model: nn.Module) -> dict[str, nn.Module]:
        return {"competent": copy.deepcopy(model), "incompetent": reinitialize(copy.deepcopy(model), self.seed)}

    def loss(self, task: Any, model: nn.Module, batch: Any, _retain: Any, frozen: dict[str, nn.Module]) -> torch.Tensor:
        logp, mask = task.distribution(model, batch)  # [B, C] (classifier) or [B, T-1, V]; mask [B] or [B, T-1]
        with torch.no_grad():
            competent, _ = task.distribution(frozen["competent"], batch)
            incompetent, _ = task.distribution(frozen["incompetent"], batch)
            target = target_distribution(is_forget(batch), incompetent, competent, self.temperature)
        kl = losses.kl_to_target(logp, target, self.temperature)  # [B] or [B, T-1]
        return (kl * mask).sum() / task.batch_size(batch)

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        generator = torch.Generator().manual_seed(self.seed)
        drawn = torch.randperm(len(data.retain), generator=generator)[:int(self.retain_fraction * len(data.retain))]
        union = TaggedUnion(data.forget, Subset(data.retain, drawn.tolist()))
        result = run_loop(model, partial(self.loss, task), self,
                          forget=union, frozen=self.frozen_models(model), accelerator=accelerator,
                          desc=self.registry_name, after_step=after_step)
        return record(self, result)
