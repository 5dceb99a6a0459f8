"""Pure loss atoms. Each takes a task adapter, a model and a batch (or precomputed tensors) and returns a scalar,
so one atom serves classifiers and causal LMs alike. Methods compose these; they never re-derive them.

Notation: NLL = the task's mean loss (batch-mean CE; token-weighted mean NLL for causal LMs); log π(y|x) = the
per-example log-probability (a sequence SUM for causal LMs); avg NLL_i = per-example mean token NLL (= −log p for a
classifier). `ref` is a frozen copy of the original model.
"""

from __future__ import annotations

from collections.abc import Callable
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


def kl_to_reference(task: Any, model: nn.Module, ref: nn.Module, batch: Any, per_token: bool = False) -> torch.Tensor:
    """KL(p_ref ‖ p_θ) at T = 1 (`distill`); the reference runs without gradients.

    per_token=False: summed over the scored positions (answer tokens; one per example for a classifier), divided by
    the batch size (specs/markov_imu.md §3).
    per_token=True: Σ_{t∈A} KL_t / |A|, the mean over the labelled positions A of the batch only (specs/llm.md §1,
    §6 P2: prompt and padding positions never enter the average). Both are the batch mean for a classifier."""
    return distill(task, model, ref, batch, 1.0, per_token=per_token)


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


def distill(task: Any, model: nn.Module, teacher: nn.Module, batch: Any, temperature: float,
            per_token: bool = False) -> torch.Tensor:
    """KL_T(θ, teacher) summed over the scored positions (one per example for a classifier: the batch mean), divided
    by the batch size, or (per_token) by the number of scored positions. The teacher runs without gradients."""
    logp, mask = task.distribution(model, batch)
    with torch.no_grad():
        logp_teacher, _ = task.distribution(teacher, batch)
    total = (kl_distill(logp, logp_teacher, temperature) * mask).sum()
    return total / mask.sum().clamp(min=1) if per_token else total / task.batch_size(batch)


def log_ratio(task: Any, model: nn.Module, ref: nn.Module, batch: Any) -> torch.Tensor:
    """r_i = log π_θ(y_i|x_i) − log π_ref(y_i|x_i) per example, shape [B] (sequence sums for a causal LM). The
    reference runs without gradients."""
    logp = task.per_example_logprob(model, batch)
    with torch.no_grad():
        logp_ref = task.per_example_logprob(ref, batch)
    return logp - logp_ref


def npo(task: Any, model: nn.Module, ref: nn.Module, batch: Any, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024, arXiv 2404.05868): (2/β)·mean_i softplus(β·(log π_θ(y_i|x_i) − log π_ref(y_i|x_i))),
    log π as sequence sums. Equals (2/β)·log 2 at the start; its gradient is gradient ascent weighted by
    2σ(β·log π_θ/π_ref), which vanishes as forgetting proceeds."""
    return (2.0 / beta) * F.softplus(beta * log_ratio(task, model, ref, batch)).mean()


def dpo(task: Any, model: nn.Module, ref: nn.Module, preferred: Any, rejected: Any, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290) with OpenUnlearning's 2/β scale:
        −(2/β)·mean_i log σ(β·[r_i(preferred) − r_i(rejected)]) = (2/β)·mean_i softplus(−β·[r_w − r_l])
    with r the per-example `log_ratio`; example i of `preferred` and `rejected` share a prompt. Equals (2/β)·log 2
    at θ = ref. IdkDPO: preferred = the IDK answer, rejected = the forget answer."""
    margin = log_ratio(task, model, ref, preferred) - log_ratio(task, model, ref, rejected)  # [B]
    return (2.0 / beta) * F.softplus(-beta * margin).mean()


def simnpo(task: Any, model: nn.Module, batch: Any, beta: float, delta: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al. 2024, arXiv 2410.07163): (2/β)·mean_i softplus(−β·(avg NLL_i − δ)), length-normalised and
    reference-free; minimising it raises the forget NLL."""
    return (2.0 / beta) * F.softplus(-beta * (task.per_example_loss(model, batch) - delta)).mean()


def weighted_ascent(per_example_nll: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """−Σ_i w_i·NLL_i / Σ_i w_i: gradient ascent with per-example weights (IMU, arXiv 2508.01620)."""
    return -(weights * per_example_nll).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


def token_weighted_ascent(task: Any, model: nn.Module, batch: Any,
                          weight: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """−Σ_{t∈A} sg(w(p_t))·ℓ_t / |A|: token-level gradient ascent, each token's NLL ℓ_t = −log p_t weighted by a
    stop-gradient function of its probability p_t = exp(−ℓ_t), averaged over the labelled tokens A of the whole batch
    (causal LM). WGA: w(p) = p^β; SatImp: w(p) = p^β1·(1 − p)^β2."""
    logp, mask = task.token_logprobs(model, batch)  # [B, T−1] each; logp is 0 on unlabelled positions
    w = weight(logp.detach().exp()) * mask
    return (w * logp).sum() / mask.sum().clamp(min=1)  # = −mean_A w·ℓ


def undial(task: Any, model: nn.Module, teacher: nn.Module, batch: Any, beta: float) -> torch.Tensor:
    """UNDIAL (Dong et al. 2024, arXiv 2402.10052), causal LM: self-distillation towards the frozen teacher's
    next-token distribution with the true token's logit lowered by β,
        q_t = softmax(z_ref,t − β·onehot(y_t)),   L = mean_{t∈A} [−Σ_v q_t,v·log p_θ(v)_t]
    over the labelled positions A of the batch only. The true token is found with `task.shifted`'s targets, which are 0
    (a valid id) on unlabelled positions, so −100 never indexes the vocabulary (specs/llm.md §6 P3). The teacher's
    log-probabilities stand in for its logits (softmax is shift-invariant)."""
    logits, targets, mask = task.shifted(task.logits(model, batch), batch)  # [B, T−1, V], [B, T−1], [B, T−1]
    with torch.no_grad():
        z_ref, _ = task.distribution(teacher, batch)  # [B, T−1, V]
        z_ref.scatter_add_(-1, targets.unsqueeze(-1), torch.full_like(z_ref[..., :1], -beta))  # z[y_t] −= β
        q = torch.softmax(z_ref, dim=-1)
    ce = -(q * torch.log_softmax(logits.float(), dim=-1)).sum(-1)  # [B, T−1]
    return (ce * mask).sum() / mask.sum().clamp(min=1)


def skip_first_answer_tokens(mask: torch.Tensor, n: int) -> torch.Tensor:
    """The labelled positions of each row of `mask` [B, T] minus its first n (A' of CE-U)."""
    return mask & (mask.cumsum(-1) > n)


def ce_u(task: Any, model: nn.Module, batch: Any, ignore_first_n: int = 1) -> torch.Tensor:
    """CE-U (arXiv 2503.01224), causal LM: cross-entropy towards the model's own (stop-gradient) distribution with the
    true token removed,
        q_t = softmax(sg(z_t) with z_t[y_t] := −∞),   L = mean_{t∈A'} [−Σ_v q_t,v·log softmax(z_t)_v]
    over A' = the labelled positions minus the first `ignore_first_n` answer tokens of each sequence, pooled over
    the batch."""
    logits, targets, mask = task.shifted(task.logits(model, batch), batch)  # [B, T−1, V], [B, T−1], [B, T−1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    with torch.no_grad():
        q = torch.softmax(logp.scatter(-1, targets.unsqueeze(-1), float("-inf")), dim=-1)  # q_t[y_t] = 0
    keep = skip_first_answer_tokens(mask, ignore_first_n)
    ce = -(q * logp).sum(-1)  # [B, T−1]
    return (ce * keep).sum() / keep.sum().clamp(min=1)


def logit_margin(task: Any, model: nn.Module, batch: Any) -> torch.Tensor:
    """PDU's forget loss: mean over the scored positions A of (max_v z_t,v − mean_v z_t,v)², the squared gap between
    the top logit and the mean logit (flattening it flattens the prediction). Log-probabilities serve as logits: the
    gap is shift-invariant. Averaged over labelled positions only (specs/llm.md §6 P4); per example for a
    classifier."""
    logp, mask = task.distribution(model, batch)  # [..., V], [...]
    gap = logp.max(-1).values - logp.mean(-1)
    return (gap.square() * mask).sum() / mask.sum().clamp(min=1)


def embedding_distance(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU's activation loss: mean_i (1/|A_i|)·Σ_{t∈A_i} (1/d)·‖h_i,t − target_i,t‖², with A_i the positions where
    mask [B, T] is true (labels ≠ −100, before the shift) and d the width. hidden [B, T, d]; target broadcasts to it
    (a control vector c·u [d], or the reference's hidden states)."""
    per_token = (hidden.float() - target.float()).square().mean(-1)  # [B, T]
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def l1(parameters: list[torch.Tensor]) -> torch.Tensor:
    """‖θ‖₁ over the given parameters."""
    return sum(p.abs().sum() for p in parameters)


def retain_term(kind: str, task: Any, model: nn.Module, batch: Any, ref: nn.Module | None,
                kl_reduction: str = "sequence") -> torch.Tensor:
    """The retain loss of a forget/retain objective: "nll" -> NLL(B_r); "kl" -> KL(ref‖θ) on B_r (kl_reduction
    "sequence": summed over positions / batch size; "token": mean over labelled positions); "none" -> 0."""
    if kind == "nll":
        return nll(task, model, batch)
    if kind == "kl":
        return kl_to_reference(task, model, ref, batch, per_token=kl_per_token(kl_reduction))
    if kind == "none":
        return torch.zeros((), device=next(model.parameters()).device)
    raise ValueError(f"retain_loss='{kind}': must be one of none, nll, kl")


def kl_per_token(kl_reduction: str) -> bool:
    """kl_reduction "token" -> True, "sequence" -> False (the `per_token` flag of `kl_to_reference`)."""
    if kl_reduction not in ("sequence", "token"):
        raise ValueError(f"kl_reduction='{kl_reduction}': must be sequence or token")
    return kl_reduction == "token"
