"""Amnesiac unlearning `amnesiac`, in the relabelling form run by the SSD/JiT code (Foster et al., arXiv 2308.07707;
after Graves et al., AAAI 2021, arXiv 2010.10981).

    y'_i ~ uniform over the C − 1 classes ≠ y_i, for each i ∈ D_f     # drawn ONCE (seeded), never the true label
    minimise CE on the shuffled D_f(y') ∪ D_r for 3 epochs, Adam 1e-4, batch 128

It shares its data and loop with `salun` / `random_label` (methods/_relabel.py). The differences: the new labels
avoid the true class and stay fixed for the whole run (random-label training draws uniformly over all classes and
redraws every epoch), there is no saliency mask, and the optimiser is Adam without weight decay (the SSD/JiT code's
`torch.optim.Adam(lr=1e-4)`). Graves et al.'s original form (subtracting the logged parameter updates of the batches
that contained D_f) is a different method and is not implemented here (specs/vision.md §2.11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from ..config import param, validate
from ._base import check_data, register_method
from ._loop import LoopParams, record
from ._relabel import train_relabeled


@register_method("amnesiac", paper="Graves et al., AAAI 2021 (arXiv 2010.10981); relabelling form of the SSD/JiT code",
                 tasks=("classifier",), kind="gradient")
@dataclass
class Amnesiac(LoopParams):
    """Train on D_f relabelled to random wrong classes (fixed) together with D_r."""

    uses = ("forget", "retain")
    lr: float = param(1e-4, gt=0, help="learning rate")
    epochs: int = param(3, ge=0, help="passes over D_f ∪ D_r")
    batch_size: int = param(128, gt=0, help="batch size of the union")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adam", help="optimiser")
    weight_decay: float = param(0.0, ge=0, help="weight decay")

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        result = train_relabeled(model, data, task, self, mode="other", accelerator=accelerator,
                                 after_step=after_step, desc=self.registry_name)
        return record(self, result)
