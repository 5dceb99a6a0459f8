"""Influence unlearning with a WoodFisher inverse-Fisher-vector product `influence` (Jia et al., NeurIPS 2023,
arXiv 2304.04934, "Model sparsity can simplify machine unlearning", its `Wfisher` baseline; specs/vision.md §2.7).

One shot, on the original model θ (evaluation mode), all trainable parameters flattened (P):
    g_f = Σ_{i∈D_f} ∇ℓ_i / (n_f + n_r)                          full-batch sums of per-example losses
    g_r = Σ_{j∈D_r} ∇ℓ_j · n_f / ((n_f + n_r)·n_r)
    v   = g_f − g_r
    F̂   = λI + (1/N)·Σ_{j∈S} g_j g_jᵀ                          S: N retain examples drawn with `seed`
    θ  ← θ + a·F̂⁻¹v,   F̂⁻¹v = (1/λ)·(v − Gᵀ(NλI + GGᵀ)⁻¹Gv)       Woodbury, G = [g_j]_{j∈S} [N, P]
The reference computes F̂⁻¹v with a Sherman–Morrison recursion that keeps one helper vector and only rescales it,
so it corrects v along a single direction (specs/vision.md §8 V8); the Woodbury form here is exact. GGᵀ [N, N] and
Gv are streamed from chunks of per-example gradients when G [N, P] would exceed `max_memory_mb` (`_fisher.py`).
Works for every task kind: ℓ is the task's per-example loss (CE; mean answer-token NLL for a causal LM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..config import param, validate
from ._base import check_data, register_method
from ._fisher import damped_fisher_solve, flat_per_example_grads, gradient_sum, trainable_names, unflatten


@register_method("influence", paper="Jia et al., NeurIPS 2023, arXiv 2304.04934 (Unlearn-Sparse WoodFisher influence)")
@dataclass
class Influence:
    """One Newton-like step θ + a·F̂⁻¹(g_f − g_r) with a damped empirical Fisher of the retain set (WoodFisher)."""

    uses = ("forget", "retain")
    scale: float = param(0.2, gt=0, help="step size a of θ + a·F̂⁻¹v (the reference's shared argparse default "
                                         "alpha=0.2; swept, no tuned value)")
    damping: float = param(1.0, gt=0, help="λ of F̂ = λI + (1/N)·ΣggT, absolute (its scale: fisher_trace_ = "
                                           "mean ||g||², after a run). 1.0 = the reference's implicit value (its "
                                           "recursion starts from F̂⁻¹ = I)")
    num_fisher: int = param(1000, ge=1, help="N, retain examples in the empirical Fisher (capped at |D_r|)")
    batch_size: int = param(64, gt=0, help="examples per gradient batch / per-example-gradient chunk")
    max_memory_mb: float = param(1024.0, gt=0, help="hold G [N, P] in memory when it is at most this big; else "
                                                    "stream GGT from chunks (recomputing per-example gradients)")
    seed: int = param(0, help="seed of the choice of the N Fisher examples")

    def fisher_indices(self, n_retain: int) -> torch.Tensor:
        """The N retain indices of the Fisher (sorted), drawn with `seed`; all of them when N >= |D_r|."""
        if self.num_fisher >= n_retain:
            return torch.arange(n_retain)
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n_retain, generator=gen)[: self.num_fisher].sort().values

    def direction(self, model: nn.Module, data: Any, task: Any) -> torch.Tensor:
        """F̂⁻¹v [P] on the current weights (no change to `model`); sets the diagnostics."""
        names = trainable_names(model)
        n_f, n_r = len(data.forget), len(data.retain)
        g_f = gradient_sum(model, task, data.forget, names, batch_size=self.batch_size) / (n_f + n_r)  # [P]
        g_r = gradient_sum(model, task, data.retain, names, batch_size=self.batch_size) * (n_f / ((n_f + n_r) * n_r))
        v = g_f - g_r  # [P]
        idx = self.fisher_indices(n_r)
        fisher_set = Subset(data.retain, idx.tolist())

        def rows(a: int, b: int) -> torch.Tensor:  # G[a:b] [b − a, P]
            part = Subset(fisher_set, range(a, b))
            return flat_per_example_grads(model, task, part, names, batch_size=self.batch_size)

        row_bytes = v.numel() * v.element_size()
        panel = max(self.batch_size, int(self.max_memory_mb * 2**20 // row_bytes))
        step, info = damped_fisher_solve(rows, len(idx), v, self.damping, chunk=self.batch_size, panel=panel)
        self.fisher_indices_, self.held_in_memory_, self.fisher_trace_ = idx, info["held"], info["fisher_trace"]
        self.v_norm_, self.step_norm_ = float(v.norm()), float(self.scale * step.norm())
        return step

    @torch.no_grad()
    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        with torch.enable_grad():
            step = self.direction(model, data, task)
        named = dict(model.named_parameters())
        for n, delta in unflatten(step, model, trainable_names(model)).items():
            named[n].add_(delta, alpha=self.scale)
        return model
