"""SFT randomisation `sft_randomize`: MIMU's fine-tuning baseline (shared/specs/mimu.md §7). Only MIMU's masked layer
W [m, n] (the bias-free Linear feeding the bias-free head) trains; every other tensor is frozen and BatchNorm stays in
evaluation mode, so frozen layers do not drift (the reference left train mode on). THE loop, AdamW lr 1e-2 (weight
decay 0.01, torch's default, as the reference's AdamW), batch 32, `max_steps` 32 (the reference's default is 50).

    randomize_forget (default)  CE on the forget set (MIMU's class split: the TRAIN samples of the forget class) with
                                labels drawn uniformly from all C classes (the true class included), redrawn for every
                                batch from a torch.Generator seeded with `seed`
    finetune_retain             CE on the retain set with its true labels
    randomize_forget_and_finetune_retain
                                the first, then the second: two runs of `max_steps` each, each with a fresh AdamW
                                (the reference's order)

It does not depend on κ: a pipeline trains it once per (model, forget class, seed), not once per κ (§10 M7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import param, validate
from ._base import check_data, register_method
from ._loop import LoopParams, LoopResult, default_accelerator, run_loop
from ._mimu_masks import _resolve
from .mimu import TOY_MODEL

MODES = {"randomize_forget": ("forget",), "finetune_retain": ("retain",),
         "randomize_forget_and_finetune_retain": ("forget", "retain")}


@register_method("sft_randomize", paper="MIMU's SFT-randomisation baseline (shared/specs/mimu.md §7)",
                 tasks=("classifier",), kind="gradient")
@dataclass
class SFTRandomize(LoopParams):
    """Fine-tune only MIMU's masked layer on the forget set with uniformly random labels (and/or on the retain set)."""

    toy_model: ClassVar[tuple[str, dict[str, Any]]] = TOY_MODEL
    toy_scenario: ClassVar[str] = "class"

    mode: Literal["randomize_forget", "finetune_retain", "randomize_forget_and_finetune_retain"] = param(
        "randomize_forget", help="what to train on (module docstring)")
    masked_layer: str | None = param(None, help="module name of the trained layer (None: the Linear feeding the head)")
    lr: float = param(1e-2, gt=0, help="learning rate")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adamw", help="optimiser")
    weight_decay: float = param(0.01, ge=0, help="weight decay (torch's AdamW default, as the reference)")
    batch_size: int = param(32, gt=0, help="examples per batch")
    max_steps: int | None = param(32, gt=0, help="optimiser steps per run (None: `epochs` passes)")

    @property
    def uses(self) -> tuple[str, ...]:
        return MODES[self.mode]

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        target = _resolve(model, masked_layer=self.masked_layer, data_classes=getattr(data, "num_classes", None))
        model.to((accelerator or default_accelerator()).device)
        weight_name = f"{target.layer}.weight"
        common = {"trainable": lambda name: name == weight_name, "train_mode": False, "accelerator": accelerator,
                  "after_step": after_step, "desc": self.registry_name}
        runs: list[LoopResult] = []
        if "forget" in self.uses:
            labels = torch.Generator().manual_seed(self.seed)

            def randomized(m: nn.Module, batch: Any, _retain: Any, _frozen: Any) -> torch.Tensor:
                x = task.inputs(batch)
                y = torch.randint(0, target.num_classes, (x.shape[0],), generator=labels).to(x.device)
                return F.cross_entropy(task.logits(m, batch), y)

            runs.append(run_loop(model, randomized, self, forget=data.forget, **common))
        if "retain" in self.uses:
            runs.append(run_loop(model, lambda m, _f, batch, _frozen: task.loss(m, batch), self, retain=data.retain,
                                 **common))
        self.masked_layer_ = target.layer
        self.losses_ = [loss for run in runs for loss in run.losses]
        self.steps_ = sum(run.steps for run in runs)
        self.seconds_ = sum(run.seconds for run in runs)
        self.diverged_ = any(run.diverged for run in runs)
        self.setup_ = runs[-1].setup
        return runs[-1].model
