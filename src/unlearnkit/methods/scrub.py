"""SCRUB `scrub` (Kurmanji et al., NeurIPS 2023, arXiv 2302.09880).

    teacher = frozen θ_o; student θ ← θ_o; ONE optimiser for both phases (its momentum carries across them)
    KL_T(s, t) = T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch            (losses.kl_distill)
    for epoch e = 1..E:
        if e ≤ msteps: one pass over D_f minimising −KL_T(θ, θ_o)              # max steps
        one pass over D_r minimising γ·CE(θ) + α·KL_T(θ, θ_o)                 # min steps
Exactly `msteps` max-epochs: the reference's off-by-one (msteps + 1, specs/vision.md §8 V7) is not reproduced.
Defaults (RUM): msteps 4, T 4, lr 5e-3, 5 epochs, SGD momentum 0.9, wd 5e-4, batch 256, constant LR. RUM sweeps the
loss weights; we take (α, γ) = (1, 5) from the JiT repo's random and sub-class mains (its full-class main falls back
to the function defaults α 0.001, γ 0.99; meghdadk/SCRUB's large-scale setting is α 0.5, γ 1). SCRUB's extra
distillation term (β) and parameter smoothing are 0 in all of these and are not implemented.
Task-generic: on a causal LM the KL is taken at every answer position (summed, divided by the batch size).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..config import ConfigError, param, validate
from . import losses
from ._base import GradientMethod, check_data, register_method
from ._loop import LoopResult, make_optimizer, record, run_loop


@register_method("scrub", paper="Kurmanji et al., NeurIPS 2023, arXiv 2302.09880 (SCRUB)")
@dataclass
class SCRUB(GradientMethod):
    """Alternate max steps (move away from the teacher on D_f) and min steps (stay close to it on D_r)."""

    uses = ("forget", "retain")
    needs_reference = True  # the teacher
    toy_overrides: ClassVar[dict] = {"lr": 0.02}  # at 5e-3 the toy causal LM's forget loss rises by only 0.2%
    msteps: int = param(4, ge=0, help="epochs (the first ones) that begin with a max pass over D_f")
    temperature: float = param(4.0, gt=0, help="distillation temperature T")
    alpha: float = param(1.0, ge=0, help="weight of KL_T on the retain set (min steps)")
    gamma: float = param(5.0, ge=0, help="weight of CE on the retain set (min steps)")
    lr: float = param(5e-3, gt=0, help="learning rate of both phases")
    epochs: int = param(5, ge=0, help="epochs; each is an optional max pass over D_f, then a min pass over D_r")
    batch_size: int = param(256, gt=0, help="retain (min-step) batch size")
    forget_batch_size: int | None = param(None, gt=0, help="forget (max-step) batch size; None = batch_size")
    schedule: Literal["constant"] = param("constant", help="learning-rate schedule (constant only: the phases "
                                                           "are separate runs of the loop)")

    def max_loss(self, task: Any, model: nn.Module, forget: Any, _retain: Any, frozen: Any) -> torch.Tensor:
        return -losses.distill(task, model, frozen["ref"], forget, self.temperature)

    def min_loss(self, task: Any, model: nn.Module, _forget: Any, retain: Any, frozen: Any) -> torch.Tensor:
        return (self.gamma * losses.nll(task, model, retain)
                + self.alpha * losses.distill(task, model, frozen["ref"], retain, self.temperature))

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        where = f"method.{self.registry_name}"
        validate(self, where=where)
        if self.max_steps is not None:
            raise ConfigError(f"{where}.max_steps = {self.max_steps}: not supported; SCRUB's length is epochs and "
                              "msteps (leave max_steps unset)")
        check_data(self, data)
        frozen = self.frozen_models(model)
        optimizer = make_optimizer(self, [p for p in model.parameters() if p.requires_grad])  # shared by both phases
        seeds = torch.Generator().manual_seed(self.seed)  # a fresh data order for every pass
        runs: list[LoopResult] = []
        self.phase_steps_ = {"max": 0, "min": 0}
        for epoch in range(self.epochs):
            phases = (("max", self.max_loss, {"forget": data.forget}), ("min", self.min_loss, {"retain": data.retain}))
            for phase, loss, dataset in phases[0 if epoch < self.msteps else 1:]:
                batch_size = (self.forget_batch_size or self.batch_size) if phase == "max" else self.batch_size
                params = replace(self, epochs=1, batch_size=batch_size,
                                 seed=int(torch.randint(2**31 - 1, (1,), generator=seeds)))
                done = sum(r.steps for r in runs)
                hook = None if after_step is None else (lambda m, step, done=done: after_step(m, done + step))
                result = run_loop(model, partial(loss, task), params, **dataset,
                                  pairing="forget" if phase == "max" else "retain", frozen=frozen,
                                  optimizer=optimizer, after_step=hook, accelerator=accelerator,
                                  desc=f"{self.registry_name} {phase}")
                runs.append(result)
                self.phase_steps_[phase] += result.steps
                if result.diverged:
                    return record(self, _merge(runs))
        return record(self, _merge(runs) if runs else LoopResult(model.train(False)))


def _merge(runs: list[LoopResult]) -> LoopResult:
    """The runs of the alternating phases as one run."""
    return LoopResult(runs[-1].model, [v for r in runs for v in r.losses], sum(r.steps for r in runs),
                      sum(r.seconds for r in runs), any(r.diverged for r in runs))
