"""UNSIR `unsir` (Tarun et al., IEEE TNNLS 2023, arXiv 2111.08947, "Fast yet effective machine unlearning"), full-class,
as run in the SSD/JiT reference code (specs/vision.md §2.12).

For each forget class c (model in evaluation mode, weights fixed):
    N_c ∈ R^{noise_batch × input_shape} ~ N(0, 1)                                   (seeded)
    noise_steps Adam(noise_lr) steps on N_c minimising  −CE(θ(N_c), c) + noise_l2·mean_i ‖N_c,i‖²
R = up to `retain_per_class` retain examples of every retained class (seeded choice)
impair: 1 epoch of Adam(impair_lr), batch 32, on {noise_copies copies of N_c labelled c, for each c} ∪ R
repair: 1 epoch of Adam(repair_lr), batch 128, on R
Both epochs run THE loop (`retrain.fit`, train mode). The noise is always labelled with its own class (the original
Fast-Machine-Unlearning code labels it 0, its issue #2), and all `noise_batch` rows of every copy are used (the SSD/JiT
copy keeps only the first `batch[0].size(0)` = 3 rows of each copy).
Random forgetting (no data.forget_classes) is OUR extension: one noise batch per distinct label present in D_f,
labelled with that label; R is then drawn from every class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Subset, TensorDataset

from ..config import param, validate
from ..tasks._hooks import eval_mode
from ._base import check_data, register_method
from ._loop import LoopParams, record
from ._relabel import labels_of
from .retrain import fit


def error_maximizing_noise(model: nn.Module, label: int, shape: tuple[int, ...], *, steps: int, lr: float,
                           l2: float, generator: torch.Generator) -> Tensor:
    """N [*shape] minimising −CE(model(N), label) + l2·mean_i ‖N_i‖² by Adam on N (the weights get no gradient)."""
    param0 = next(model.parameters())
    noise = torch.randn(shape, generator=generator).to(param0).requires_grad_(True)  # [B, *input_shape]
    opt = torch.optim.Adam([noise], lr=lr)
    target = torch.full((shape[0],), label, dtype=torch.long, device=param0.device)
    with eval_mode(model):
        for _ in range(steps):
            loss = -F.cross_entropy(model(noise), target) + l2 * noise.pow(2).flatten(1).sum(1).mean()
            (noise.grad,) = torch.autograd.grad(loss, [noise])
            opt.step()
    return noise.detach()


@register_method("unsir", paper="Tarun et al., IEEE TNNLS 2023, arXiv 2111.08947 (UNSIR)", tasks=("classifier",))
@dataclass
class Unsir:
    """Learn error-maximising noise for the forget class(es), then impair (noise ∪ retain) and repair (retain)."""

    uses = ("forget", "retain")
    toy_overrides: ClassVar[dict] = {"impair_lr": 1e-2, "repair_lr": 1e-3}
    """At toy scale (one epoch of 84 impair steps) Adam 1e-4 barely moves the 8-32-4 MLP; 1e-2 impairs it."""
    toy_scenario: ClassVar[str] = "class"
    noise_batch: int = param(32, gt=0, help="rows of each learnt noise batch N")
    noise_steps: int = param(25, ge=0, help="Adam steps on the noise")
    noise_lr: float = param(0.1, gt=0, help="learning rate of the noise")
    noise_l2: float = param(0.1, ge=0, help="weight of mean_i ||N_i||² in the noise objective")
    noise_copies: int = param(80, ge=1, help="copies of each noise batch in the impair data")
    retain_per_class: int = param(500, ge=1, help="retain examples per retained class in impair and repair")
    impair_lr: float = param(1e-4, gt=0, help="Adam learning rate of the impair epoch")
    impair_batch_size: int = param(32, gt=0, help="batch size of the impair epoch")
    repair_lr: float = param(1e-4, gt=0, help="Adam learning rate of the repair epoch")
    repair_batch_size: int = param(128, gt=0, help="batch size of the repair epoch")
    seed: int = param(0, help="seed of the noise, the retain choice and the data order")

    def forget_labels(self, data: Any, task: Any) -> list[int]:
        """The classes whose noise is learnt: data.forget_classes, else (our extension) the labels present in D_f."""
        return sorted(set(data.forget_classes)) or labels_of(task, data.forget).unique().tolist()

    def retain_subset(self, data: Any, task: Any, gen: torch.Generator) -> Subset:
        """Up to `retain_per_class` retain examples of each class not forgotten, chosen with the seeded generator."""
        labels = labels_of(task, data.retain)
        order = torch.randperm(len(labels), generator=gen)
        chosen = [order[labels[order] == c][: self.retain_per_class] for c in labels.unique().tolist()
                  if c not in data.forget_classes]
        return Subset(data.retain, torch.cat([torch.zeros(0, dtype=torch.long), *chosen]).sort().values.tolist())

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        classes = self.forget_labels(data, task)
        if data.num_classes is not None and not all(0 <= c < data.num_classes for c in classes):
            raise ValueError(f"unsir: forget classes {classes} are not all in [0, {data.num_classes})")
        gen = torch.Generator().manual_seed(self.seed)
        retain = self.retain_subset(data, task, gen)
        if len(retain) == 0:
            raise ValueError(f"unsir: the retain set has no example outside the forget classes {classes}")
        shape = (self.noise_batch, *data.forget[0][0].shape)  # [noise_batch, *input_shape]
        noises, noise_labels = [], []
        for c in classes:  # [noise_batch, *input_shape] each
            noise = error_maximizing_noise(model, c, shape, steps=self.noise_steps, lr=self.noise_lr,
                                           l2=self.noise_l2, generator=gen).cpu()
            noises.append(noise.repeat(self.noise_copies, *([1] * (noise.dim() - 1))))
            noise_labels.append(torch.full((len(noises[-1]),), c, dtype=torch.long))
        noisy = TensorDataset(torch.cat(noises), torch.cat(noise_labels))
        impair = LoopParams(lr=self.impair_lr, epochs=1, batch_size=self.impair_batch_size, optimizer="adam",
                            weight_decay=0.0, seed=self.seed)
        repair = LoopParams(lr=self.repair_lr, epochs=1, batch_size=self.repair_batch_size, optimizer="adam",
                            weight_decay=0.0, seed=self.seed + 1)
        first = fit(model, ConcatDataset([noisy, retain]), task, impair, accelerator=accelerator, desc="unsir impair")
        result = fit(first.model, retain, task, repair, accelerator=accelerator, desc="unsir repair")
        self.noise_ = torch.stack([n[: self.noise_batch] for n in noises])  # [classes, noise_batch, *input_shape]
        self.forget_labels_, self.impair_losses_ = classes, first.losses
        return record(self, result)
