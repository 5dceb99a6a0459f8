"""Primal-dual unlearning `pdu` (Entesari et al. 2025, "Constrained entropic unlearning: a primal-dual framework for
large language models", arXiv 2506.05314; specs/llm.md §2.11).

    L_f     = mean_{t∈A_f} (max_v z_t,v − mean_v z_t,v)²          # flatten the logit margin on the forget set
    L_k     = γ·L_f + α_k·(L_retain − ε)                          # Lagrangian of  min L_f  s.t.  L_retain ≤ ε
    α_{k+1} = max(0, α_k + η·(L_retain,k − ε))                    # dual ascent, after step k's loss is formed

update="step": the dual update uses each step's retain loss (each batch's under gradient accumulation, as the
reference does); update="epoch": it runs at each epoch end (before the next pass) on the retain loss averaged over
a full evaluation-mode pass over the retain set. Dual updates start once the number of completed epochs reaches
`dual_warmup_epochs`. ε has no default. α_k and L_retain,k of every step are kept in `alphas_` and `retain_losses_`;
the hyperparameter `alpha` (α_0) is never changed. L_f averages over labelled positions only (§6 P4; the reference
includes prompt and padding). The community run script uses α_0=100, η=5, ε=0.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..config import param
from ..tasks._hooks import eval_mode
from . import losses
from ._base import ForgetRetainObjective, register_method
from ._loop import default_accelerator, record, run_loop


def dual_step(alpha: float, retain_loss: float, epsilon: float, eta: float) -> float:
    """α_{k+1} = max(0, α_k + η·(L_retain − ε))."""
    return max(0.0, alpha + eta * (retain_loss - epsilon))


@register_method("pdu", paper="Entesari et al. 2025, arXiv 2506.05314 (PDU: primal-dual unlearning)",
                 tasks=("causal_lm",))
@dataclass
class PDU(ForgetRetainObjective):
    """Logit-margin flattening on the forget set under a retain-loss constraint L_retain ≤ ε, by primal-dual steps."""

    # at lr 1e-5 the toy's forget loss barely moves within its few steps
    toy_overrides: ClassVar[dict[str, Any]] = {"epsilon": 0.1, "dual_warmup_epochs": 0, "lr": 1e-3}
    epsilon: float | None = param(None, help="REQUIRED: the retain-loss bound ε of the constraint L_retain ≤ ε")
    primal_dual: bool = param(True, help="update α by dual ascent (false: α stays alpha)")
    eta: float = param(1.0, ge=0, help="dual step size η")
    update: Literal["step", "epoch"] = param("step", help="dual update every step, or at each epoch end")
    dual_warmup_epochs: int = param(5, ge=0, help="completed epochs before the first dual update")
    alpha: float = param(1.0, ge=0, help="initial dual variable α_0 (the retain weight)")
    retain_loss: Literal["nll", "kl"] = param("nll", help="retain loss: NLL(B_r) or KL(ref‖θ) on B_r")

    def check(self, data: Any) -> None:
        if self.epsilon is None:
            raise ValueError(f"method.{self.registry_name}.epsilon is required (the retain-loss bound ε; the "
                             "community script uses 0.3): set it, e.g. method.pdu.epsilon=0.3")
        super().check(data)

    def forget_loss(self, task, model, forget, frozen):
        return losses.logit_margin(task, model, forget)

    def retain_loss_value(self, task: Any, model: nn.Module, retain: Any, frozen: Any) -> torch.Tensor:
        return losses.retain_term(self.retain_loss, task, model, retain, frozen.get("ref"), self.kl_reduction)

    def lagrangian(self, task: Any, model: nn.Module, forget: Any, retain: Any, frozen: Any,
                   alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(γ·L_f + α·(L_retain − ε), L_retain) at the dual variable α."""
        l_retain = self.retain_loss_value(task, model, retain, frozen)
        return self.gamma * self.forget_loss(task, model, forget, frozen) + alpha * (l_retain - self.epsilon), l_retain

    def loss(self, task, model, forget, retain, frozen):
        """The Lagrangian at α = α_0 (`unlearn` uses the current α_k)."""
        return self.lagrangian(task, model, forget, retain, frozen, self.alpha)[0]

    @torch.no_grad()
    def mean_retain_loss(self, task: Any, model: nn.Module, dataset: Any, frozen: Any) -> float:
        """The retain loss averaged (weighted by batch size) over one evaluation-mode pass over `dataset`."""
        from accelerate.utils import send_to_device

        device = next(model.parameters()).device
        total, count = 0.0, 0
        with eval_mode(model):
            for batch in torch.utils.data.DataLoader(dataset, batch_size=self.batch_size,
                                                     collate_fn=getattr(dataset, "collate", None)):
                batch = send_to_device(batch, device)
                n = task.batch_size(batch)
                total += float(self.retain_loss_value(task, model, batch, frozen)) * n
                count += n
        return total / count

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        self.check(data)
        acc = accelerator or default_accelerator()
        frozen = self.frozen_models(model)
        epsilon, state = float(self.epsilon), {"alpha": float(self.alpha), "epoch": 0}
        self.alphas_, self.retain_losses_ = [], []  # α_k and L_retain,k of every loss evaluation

        def loss(m: nn.Module, forget: Any, retain: Any, refs: Any) -> torch.Tensor:
            alpha = state["alpha"]
            total, l_retain = self.lagrangian(task, m, forget, retain, refs, alpha)
            value = l_retain.detach()
            if acc.num_processes > 1:  # one α on every process
                value = acc.reduce(value, reduction="mean")
            self.alphas_.append(alpha)
            self.retain_losses_.append(float(value))
            if self.primal_dual and self.update == "step" and state["epoch"] >= self.dual_warmup_epochs:
                state["alpha"] = dual_step(alpha, self.retain_losses_[-1], epsilon, self.eta)
            return total

        def on_epoch(epoch: int) -> None:  # before pass `epoch` = after `epoch` completed passes
            state["epoch"] = epoch
            if self.primal_dual and self.update == "epoch" and epoch >= max(1, self.dual_warmup_epochs):
                retain_loss = self.mean_retain_loss(task, model, data.retain, frozen)
                state["alpha"] = dual_step(state["alpha"], retain_loss, epsilon, self.eta)

        result = run_loop(model, loss, self, forget=data.forget, retain=data.retain, pairing=self.pairing,
                          frozen=frozen, on_epoch=on_epoch, accelerator=acc, desc=self.registry_name,
                          after_step=after_step)
        return record(self, result)
