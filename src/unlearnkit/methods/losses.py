"""Pure loss atoms. Each takes a task adapter, a model and a batch (or precomputed tensors) and returns a scalar,
so one atom serves classifiers and causal LMs alike. Methods compose these; they never re-derive them.

Notation: NLL = the task's mean loss (batch-mean CE; token-weighted mean NLL for causal LMs); log π(y|x) = the
per-example log-probability (a sequence SUM for causal LMs); avg NLL_i = per-example mean token NLL (= −log p for a
classifier). `ref` is a frozen copy of the original model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def nll(task: Any, model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean negative log-likelihood: batch-mean cross-entropy (classifier) or mean token NLL (causal LM)."""
    return task.loss(model, batch)


def ascent(task: Any, model: nn.Module, batch: Any) -> torch.Tensor:
    """Gradient ascent on the data: −NLL."""
    return -task.loss(model, batch)


def retain_forget_mix(retain_loss: torch.Tensor, forget_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·L_retain − (1 − α)·L_forget (NegGrad+, Kurmanji et al. 2023)."""
    return alpha * retain_loss - (1 - alpha) * forget_loss


def kl_to_reference(task: Any, model: nn.Module, ref: nn.Module, batch: Any) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) summed over the scored positions (answer tokens; one per example for a classifier), divided
    by the batch size (specs/markov_imu.md §3): `distill` at T = 1. The reference runs without gradients."""
    return distill(task, model, ref, batch, 1.0)


def kl_to_target(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(q ‖ softmax(s/T)) at every position: Σ_c q_c·(log q_c − log softmax(s/T)_c), with 0·log 0 = 0.
    student_logits, target_probs: [..., C] -> [...]. Log-probabilities serve as logits (softmax is shift-invariant)."""
    log_p = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    return (torch.xlogy(target_probs, target_probs) - target_probs * log_p).sum(-1)


def kl_distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton-style distillation KL_T(s, t) = T²·KL(softmax(t/T) ‖ softmax(s/T)) at every position: [..., C] -> [...].
    The T² keeps the gradient scale independent of T (SCRUB, RepDistiller's DistillKL)."""
    target = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    return temperature**2 * kl_to_target(student_logits, target, temperature)


def distill(task: Any, model: nn.Module, teacher: nn.Module, batch: Any, temperature: float) -> torch.Tensor:
    """KL_T(θ, teacher) summed over the scored positions (one per example for a classifier: the batch mean), divided
    by the batch size. The teacher runs without gradients."""
    logp, mask = task.distribution(model, batch)
    with torch.no_grad():
        logp_teacher, _ = task.distribution(teacher, batch)
    return (kl_distill(logp, logp_teacher, temperature) * mask).sum() / task.batch_size(batch)


def npo(task: Any, model: nn.Module, ref: nn.Module, batch: Any, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024, arXiv 2404.05868): (2/β)·mean_i softplus(β·(log π_θ(y_i|x_i) − log π_ref(y_i|x_i))),
    log π as sequence sums. Equals (2/β)·log 2 at the start; its gradient is gradient ascent weighted by
    2σ(β·log π_θ/π_ref), which vanishes as forgetting proceeds."""
    logp = task.per_example_logprob(model, batch)
    with torch.no_grad():
        logp_ref = task.per_example_logprob(ref, batch)
    return (2.0 / beta) * F.softplus(beta * (logp - logp_ref)).mean()


def simnpo(task: Any, model: nn.Module, batch: Any, beta: float, delta: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al. 2024, arXiv 2410.07163): (2/β)·mean_i softplus(−β·(avg NLL_i − δ)), length-normalised and
    reference-free; minimising it raises the forget NLL."""
    return (2.0 / beta) * F.softplus(-beta * (task.per_example_loss(model, batch) - delta)).mean()


def weighted_ascent(per_example_nll: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """−Σ_i w_i·NLL_i / Σ_i w_i: gradient ascent with per-example weights (IMU, arXiv 2508.01620)."""
    return -(weights * per_example_nll).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


def l1(parameters: list[torch.Tensor]) -> torch.Tensor:
    """‖θ‖₁ over the given parameters."""
    return sum(p.abs().sum() for p in parameters)


def retain_term(kind: str, task: Any, model: nn.Module, batch: Any, ref: nn.Module | None) -> torch.Tensor:
    """The retain loss of a forget/retain objective: "nll" -> NLL(B_r); "kl" -> KL(ref‖θ) on B_r; "none" -> 0."""
    if kind == "nll":
        return nll(task, model, batch)
    if kind == "kl":
        return kl_to_reference(task, model, ref, batch)
    if kind == "none":
        return torch.zeros((), device=next(model.parameters()).device)
    raise ValueError(f"retain_loss='{kind}': must be one of none, nll, kl")
