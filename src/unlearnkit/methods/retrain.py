"""Retrain from scratch `retrain`: the gold standard every metric compares against.

A fresh model (every submodule re-initialised from `init_seed`, not only the top-level children: specs/vision.md §8
V9) trained on D_r with the original recipe. The benchmark pipelines pass the original training recipe, so the
`retrain` row of a report IS the cached gold-standard model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import param, validate
from ._base import check_data, register_method
from ._loop import LoopParams, LoopResult, record, run_loop


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw every parameter of `model` in place from `seed` with each module's own `reset_parameters()`
    (transformers models: their `_init_weights`). A parameter whose module cannot re-initialise it is an error."""
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(model, "_init_weights") and callable(model._init_weights):
                model._init_weights(module)
            elif callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            else:
                continue
            covered.update(id(p) for p in module.parameters(recurse=False))
    missed = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missed:
        raise ValueError(f"cannot re-initialise {missed[:3]}: their modules have no reset_parameters(); "
                         "build a fresh model with the model builder instead")
    return model


def fit(model: nn.Module, dataset: Dataset, task: Any, params: LoopParams, *, accelerator: Any = None,
        desc: str = "train", progress: bool | None = None) -> LoopResult:
    """Train `model` on `dataset` with the task's loss: original training and retraining share this."""
    return run_loop(model, lambda m, _f, batch, _refs: task.loss(m, batch), params, retain=dataset,
                    pairing="retain", accelerator=accelerator, desc=desc, progress=progress)


@register_method("retrain", paper="gold standard: retrain from scratch on D_r", kind="gradient")
@dataclass
class Retrain(LoopParams):
    """Re-initialise the model and train it on the retain set with the original recipe."""

    uses = ("retain",)
    lr: float = param(0.1, gt=0, help="learning rate of the original recipe")
    epochs: int = param(30, ge=0, help="epochs of the original recipe")
    batch_size: int = param(256, gt=0, help="batch size of the original recipe")
    schedule: Literal["constant", "cosine", "linear"] = param("cosine", help="learning-rate schedule")
    init_seed: int = param(0, help="seed of the fresh initialisation")
    reinitialize: bool = param(True, help="re-draw every weight first; False trains the given model as it is (the "
                                          "pipelines then pass a fresh model from the builder, e.g. pretrained)")

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None) -> nn.Module:
        validate(self, where="method.retrain")
        check_data(self, data)
        start = reinitialize(model, self.init_seed) if self.reinitialize else model
        result = fit(start, data.retain, task, self, accelerator=accelerator, desc="retrain")
        return record(self, result)
