"""Fisher forgetting `fisher` (Golatkar et al., CVPR 2020, arXiv 1911.04933), as run in the SSD/JiT reference code
(if-loops/selective-synaptic-dampening, `FisherForgetting`; specs/vision.md §2.13).

On the original model (evaluation mode), for every trainable parameter tensor θ:
    F     = (1/n_r)·Σ_{x∈D_r} Σ_y p_θ(y|x)·(∂ log p_θ(y|x)/∂θ)²         exact over all C labels (`_fisher.py`)
noise="reference" (the SSD/JiT code):
    var   = a·min(1/(F + 1e-8), 1e3)          (1e2 for the classifier layer = the model's final nn.Linear)
    var   = mean of var over dim 1             (tensors with >= 2 dims; broadcast back)
    μ = θ; class forgetting: μ = 0, var = 1e-4 on the forget-class rows of the classifier layer
    var  ×= 10                                 (classifier layer and 1-D parameters; after the row rule, as in the
                                                reference, so a forget row ends at 1e-3)
    θ    ~ N(μ, var)
noise="paper" (the paper's scrubbing, exponent as commonly cited, UNVERIFIED):
    θ    ← θ + (λσ²)^{1/4}·min(1/(F + 1e-8), 1e3)^{1/4}⊙ε,  ε ~ N(0, I),  with `alpha` read as λσ²
The noise is drawn on the CPU from a generator seeded with `seed`, so the same seed gives the same weights on any
device. Parameters that do not require gradients are left as they are (the reference perturbs them with var = a·1e3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..config import param, validate
from ._base import check_data, register_method
from ._fisher import expected_fisher_diagonal, trainable_names
from ._influence import select_parameters


def classifier_layer(model: nn.Module, num_classes: int | None) -> list[str]:
    """The parameter names of the model's final nn.Linear (the classifier layer); an error if there is none or its
    output size is not `num_classes`."""
    try:
        names = select_parameters(model, [])
    except ValueError as err:
        raise ValueError(f"fisher needs a final nn.Linear classifier layer: {err}") from None
    out = dict(model.named_parameters())[names[0]].shape[0]
    if num_classes is not None and out != num_classes:
        raise ValueError(f"fisher: the last nn.Linear ({names[0]}) has {out} outputs, not num_classes={num_classes}; "
                         "the classifier layer must be the model's final nn.Linear")
    return names


def reference_mean_var(theta: Tensor, fisher: Tensor, alpha: float, *, is_head: bool,
                       forget_rows: tuple[int, ...] = ()) -> tuple[Tensor, Tensor]:
    """(μ, var) of one parameter tensor under the SSD/JiT reference rules (module docstring)."""
    var = alpha * (1.0 / (fisher + 1e-8)).clamp(max=1e2 if is_head else 1e3)
    if var.dim() >= 2:
        var = var.mean(dim=1, keepdim=True).expand_as(var).clone()  # [out, 1, ...] -> [out, in, ...]
    mu = theta.clone()
    if is_head and forget_rows:
        rows = list(forget_rows)
        mu[rows], var[rows] = 0.0, 1e-4
    if is_head or var.dim() == 1:
        var = var * 10
    return mu, var


@register_method("fisher", paper="Golatkar et al., CVPR 2020, arXiv 1911.04933 (Fisher forgetting)",
                 tasks=("classifier",))
@dataclass
class Fisher:
    """Add Gaussian noise shaped by the inverse diagonal Fisher of the retain set (and zero the forget-class rows)."""

    uses = ("retain",)
    alpha: float = param(1e-6, gt=0, help="a of var = a·min(1/F, 1e3) (reference 1e-6); λσ² for noise='paper'")
    noise: Literal["reference", "paper"] = param("reference", help="reference: the SSD/JiT N(μ, var) rules; paper: "
                                                                   "θ + (λσ²)^1/4·F^-1/4·ε (unverified exponent)")
    max_samples: int | None = param(None, ge=1, help="retain examples in F (the first ones after a seeded shuffle); "
                                                     "None = all of D_r, as the reference")
    batch_size: int = param(32, gt=0, help="examples per vmapped Fisher batch (memory ≈ batch_size·C·P floats)")
    seed: int = param(0, help="seed of the noise (and of the Fisher subsample)")

    @torch.no_grad()
    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        named = dict(model.named_parameters())
        head = classifier_layer(model, data.num_classes)  # [weight, bias]
        num_classes = named[head[0]].shape[0]
        bad = [c for c in data.forget_classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"fisher: forget_classes {bad} are not classes of a {num_classes}-class model")
        gen = torch.Generator().manual_seed(self.seed)
        retain = data.retain
        if self.max_samples is not None and self.max_samples < len(retain):
            keep = torch.randperm(len(retain), generator=gen)[: self.max_samples].sort().values
            retain = torch.utils.data.Subset(retain, keep.tolist())
        names = trainable_names(model)
        fisher = expected_fisher_diagonal(model, task, retain, names, batch_size=self.batch_size)
        for n in names:  # named_parameters() order: the draws are reproducible
            theta, f = named[n], fisher[n]
            eps = torch.randn(theta.shape, generator=gen, dtype=theta.dtype).to(theta.device)
            if self.noise == "paper":
                theta.add_(self.alpha ** 0.25 * (1.0 / (f + 1e-8)).clamp(max=1e3) ** 0.25 * eps)
            else:
                mu, var = reference_mean_var(theta, f, self.alpha, is_head=n in head,
                                             forget_rows=tuple(data.forget_classes))
                theta.copy_(mu + var.sqrt() * eps)
        return model
