"""Fisher helpers shared by the one-shot methods (influence, fisher): flat gradients, the expected (model-label)
Fisher diagonal, and a memory-safe inverse of the damped empirical Fisher.

Notation: θ = the selected parameters, flattened in `names` order (P entries); g_i = ∇_θ ℓ(z_i) (P).

- `gradient_sum`:  Σ_i ∇_θ ℓ(z_i) over a data set, from batch-sum losses (no per-example gradients).
- `flat_per_example_grads`: G [N, P], the rows g_iᵀ (vmap(grad) of `_influence.per_example_grads`).
- `expected_fisher_diagonal`: F = (1/N)·Σ_x Σ_y p_θ(y|x)·(∇_θ log p_θ(y|x))²  (Golatkar et al. 2020), per example
  ONE forward and a vmapped vector-Jacobian product over the C classes (`jacrev`), vmapped over the examples.
- `damped_fisher_solve`: F̂⁻¹v for F̂ = λI + (1/N)·GᵀG by the Woodbury identity
  F̂⁻¹v = (1/λ)·(v − Gᵀ(NλI + GGᵀ)⁻¹Gv), with GGᵀ [N, N] and Gv built from panels of rows that fit a memory budget,
  so it never holds G when N·P is large.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap
from torch.utils.data import Dataset

from ..tasks._hooks import eval_mode
from ._influence import Functional, check_parameters, iter_batches, map_tensors, per_example_grads

RowFn = Callable[[int, int], Tensor]
"""rows(a, b) -> G[a:b] [b − a, P]: per-example gradient rows, recomputed on every call."""


def trainable_names(model: nn.Module) -> list[str]:
    """The names of the parameters that require gradients, in `named_parameters()` order."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError(f"{type(model).__name__} has no parameter that requires gradients")
    return names


def flatten(tensors: dict[str, Tensor], names: Sequence[str], lead: int = 0) -> Tensor:
    """Concatenate tensors flattened after their first `lead` dims: {n: [*L, *shape]} -> [*L, P]."""
    return torch.cat([tensors[n].flatten(lead) for n in names], dim=lead)


def unflatten(vector: Tensor, model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    """The inverse of `flatten` for one vector [P]: {name: tensor shaped like the parameter}."""
    named, out, start = dict(model.named_parameters()), {}, 0
    for n in names:
        size = named[n].numel()
        out[n] = vector[start:start + size].view_as(named[n])
        start += size
    return out


def gradient_sum(model: nn.Module, task: Any, dataset: Dataset, names: list[str], *, batch_size: int = 256) -> Tensor:
    """Σ_i ∇_θ ℓ(z_i) [P] over every example of `dataset` (sum of batch-sum losses), in evaluation mode."""
    params = list(check_parameters(model, names).values())
    total = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    with eval_mode(model):
        for batch in iter_batches(dataset, batch_size, params[0].device):
            grads = torch.autograd.grad(task.per_example_loss(model, batch).sum(), params)
            total += torch.cat([g.flatten() for g in grads])
    return total


def flat_per_example_grads(model: nn.Module, task: Any, dataset: Dataset, names: list[str], *,
                           batch_size: int = 64) -> Tensor:
    """G [N, P]: g_iᵀ for every example of `dataset`, written batch by batch into one tensor (peak memory
    N·P + batch_size·P, not 2·N·P)."""
    params = check_parameters(model, names)
    p0 = next(iter(params.values()))
    out = torch.empty(len(dataset), sum(p.numel() for p in params.values()), dtype=p0.dtype, device=p0.device)
    for a in range(0, len(dataset), batch_size):
        b = min(a + batch_size, len(dataset))
        part = torch.utils.data.Subset(dataset, range(a, b))
        out[a:b] = flatten(per_example_grads(model, task, part, names, batch_size=batch_size), names, lead=1)
    return out


def expected_fisher_diagonal(model: nn.Module, task: Any, dataset: Dataset, names: list[str], *,
                             batch_size: int = 32) -> dict[str, Tensor]:
    """{name: F [*shape]}, F = (1/N)·Σ_x Σ_y p_θ(y|x)·(∂ log p_θ(y|x)/∂θ)², the exact expectation over all C labels
    (classifier task: `task.logits` -> [B, C]). Memory ≈ batch_size·C·P floats."""
    params = {n: p.detach() for n, p in check_parameters(model, names).items()}

    def log_probs(selected: dict[str, Tensor], example: Any) -> tuple[Tensor, Tensor]:  # x -> (log p(·|x) [C], p)
        batch = map_tensors(example, lambda t: t.unsqueeze(0))
        logits = task.logits(Functional(model, selected), batch)[0]
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        return logp, logp.exp()

    # one forward per example, then C vector-Jacobian products: ({n: [C, *shape]}, p [C]); vmapped over examples
    batched = vmap(jacrev(log_probs, has_aux=True), in_dims=(None, 0))
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    with eval_mode(model), torch.no_grad():
        for batch in iter_batches(dataset, batch_size, next(iter(params.values())).device):
            jac, prob = batched(params, batch)  # {n: [B, C, *shape]}, [B, C]
            for n, j in jac.items():
                weight = prob.reshape(*prob.shape, *([1] * (j.dim() - 2))).to(j)
                fisher[n] += (weight * j.pow(2)).sum((0, 1))
            count += prob.shape[0]
    return {n: f / max(count, 1) for n, f in fisher.items()}


def damped_fisher_solve(rows: RowFn, n: int, v: Tensor, damping: float, *, chunk: int,
                        panel: int) -> tuple[Tensor, dict[str, Any]]:
    """(F̂⁻¹v [P], info) for F̂ = λI + (1/n)·GᵀG, G = rows(0, n) [n, P], by Woodbury:
    F̂⁻¹v = (1/λ)·(v − Gᵀw), w = (nλI + GGᵀ)⁻¹Gv. GGᵀ and Gv are built panel by panel: a panel of up to `panel`
    rows is held while the later rows stream past it in chunks of `chunk` (recomputed), then Gᵀw streams once
    more. Memory O(n² + (panel + chunk)·P); gradient rows computed ≈ n·(2 + (n − panel)/(2·panel)). When
    panel >= n, G is computed once and held (the fast path). The n×n system is solved in float64.
    info: "held" (G was held in memory), "rows_computed", "fisher_trace" = tr((1/n)·GᵀG) = mean_j ‖g_j‖² (the
    damping-free Fisher's trace; its non-zero eigenvalues average fisher_trace / min(n, P), a scale for λ)."""
    if damping <= 0 or n < 1:
        raise ValueError(f"damped_fisher_solve: need damping > 0 and n >= 1, got damping={damping}, n={n}")
    panel, chunk = max(panel, 1), max(chunk, 1)
    gram = torch.zeros(n, n, dtype=torch.float64, device=v.device)  # GGᵀ
    gv = torch.zeros(n, dtype=torch.float64, device=v.device)  # Gv
    held, computed = None, 0

    def counted(a: int, b: int) -> Tensor:
        nonlocal computed
        computed += b - a
        return rows(a, b)

    for a in range(0, n, panel):
        b = min(a + panel, n)
        block = counted(a, b)  # [b − a, P]
        gram[a:b, a:b] = (block @ block.T).double()
        gv[a:b] = (block @ v.to(block)).double()
        for c in range(b, n, chunk):
            d = min(c + chunk, n)
            cross = (block @ counted(c, d).T).double()  # [b − a, d − c]
            gram[a:b, c:d], gram[c:d, a:b] = cross, cross.T
        held = block if (a, b) == (0, n) else None
    system = gram + n * damping * torch.eye(n, dtype=torch.float64, device=v.device)  # SPD
    w = torch.cholesky_solve(gv[:, None], torch.linalg.cholesky(system))[:, 0]  # [n]
    if held is not None:
        gtw = held.T @ w.to(held)
    else:
        gtw = torch.zeros_like(v)
        for c in range(0, n, chunk):
            d = min(c + chunk, n)
            gtw += counted(c, d).T @ w[c:d].to(v)
    info = {"held": held is not None, "rows_computed": computed, "fisher_trace": float(gram.trace()) / n}
    return (v - gtw.to(v)) / damping, info
