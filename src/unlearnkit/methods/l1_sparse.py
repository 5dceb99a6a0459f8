"""ℓ1-sparse unlearning `l1_sparse` (Jia et al., NeurIPS 2023, arXiv 2304.04934, OPTML-Group/Unlearn-Sparse FT_l1).

    epoch e = 0..E−1:  L = CE(θ; B_r) + a_e·‖θ‖₁,   a_e = a·(1 − e/E)     # ℓ1 over all parameters, linear decay
Fine-tuning on D_r with a sparsity prior; no pruning mask is applied. Defaults: lr 0.01, 10 epochs, SGD momentum 0.9,
wd 5e-4, batch 256 (the paper's FT setting). The paper sweeps `a` and gives no tuned value (the reference argparse
default 0.2 is shared with other methods); our default a = 5e-4 is the default of the same group's
`unlearn_with_l1_sparsity` (cisco-open/modelsmith); SalUn-derived scripts use 1e-4. With `max_steps`, passes beyond
E keep a_e = 0. Task-generic (CE = the task's loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import param, validate
from . import losses
from ._base import check_data, register_method
from ._loop import LoopParams, record, run_loop


@register_method("l1_sparse", paper="Jia et al., NeurIPS 2023, arXiv 2304.04934 (ℓ1-sparse unlearning)",
                 kind="gradient")
@dataclass
class L1Sparse(LoopParams):
    """Fine-tune on the retain set with an ℓ1 penalty whose weight decays linearly to 0."""

    uses = ("retain",)
    alpha: float = param(5e-4, ge=0, help="initial ℓ1 weight a (decays linearly to 0 over the epochs)")
    lr: float = param(0.01, gt=0, help="learning rate")
    epochs: int = param(10, ge=0, help="passes over the retain set")
    batch_size: int = param(256, gt=0, help="retain batch size")

    def l1_weight(self, epoch: int) -> float:
        """a_e = a·(1 − e/E) for the 0-based epoch e, 0 from epoch E on."""
        return self.alpha * max(0.0, 1.0 - epoch / self.epochs) if self.epochs else 0.0

    def loss(self, task: Any, model: nn.Module, retain: Any, weight: float) -> torch.Tensor:
        """CE(θ; B_r) + weight·‖θ‖₁."""
        penalty = losses.l1(list(model.parameters())) if weight else 0.0
        return losses.nll(task, model, retain) + weight * penalty

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        weight = [self.l1_weight(0)]  # a_e of the current epoch, set by the loop before each pass

        def on_epoch(epoch: int) -> None:
            weight[0] = self.l1_weight(epoch)

        result = run_loop(model, lambda m, _f, retain, _refs: self.loss(task, m, retain, weight[0]), self,
                          retain=data.retain, pairing="retain", on_epoch=on_epoch, accelerator=accelerator,
                          desc=self.registry_name, after_step=after_step)
        self.l1_weights_ = [self.l1_weight(e) for e in range(self.epochs)]
        return record(self, result)
