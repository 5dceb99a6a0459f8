"""Parameter importances and synaptic dampening, shared by `ssd` and `lfssd` (specs/vision.md §4; SSD: Foster et al.,
AAAI-24, arXiv 2308.07707; LFSSD: arXiv 2402.19308).

For a data set S, the per-example loss ℓ (cross-entropy, or ‖f(x)‖₂² when label-free) and s(g) = g² (SSD) or |g|
(LFSSD), with the model in evaluation mode:

    kind="sample":  I_S = (1/|S|) Σ_{z∈S} s(∇ℓ(z))               per-example gradients: vmap(grad) over each batch, or
                    for an all-Linear model (MLP) the closed form Σ_i s(δ_i h_iᵀ) = s(δ)ᵀ s(h), δ = ∂ℓ_i/∂out_i
    kind="batch":   I_S = (1/#B) Σ_{B⊂S} s(∇ mean_{z∈B} ℓ(z))    the reference: s of mini-batch gradients

`importance_sums` returns the numerator and the count, so multi-process runs (each process takes every world-th
batch) sum both across processes (`reduce_mean`) and obtain the same statistic as one process (exactly so for
"sample"). Dampening (`dampen`): select i with I_f[i] > α·I_D[i]; θ_i ← θ_i·min(λ·I_D[i]/I_f[i], 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import grad, vmap
from torch.utils.data import Dataset

from ..tasks._hooks import eval_mode
from ._influence import Functional, iter_batches, map_tensors

Kind = Literal["sample", "batch"]
Loss = Callable[[Any, Any], Tensor]  # (model, batch) -> per-example loss [B]


def example_loss(task: Any, label_free: bool) -> Loss:
    """ℓ per example [B]: the task's cross-entropy, or ‖f(x)‖₂² (LFSSD: no labels used)."""
    if label_free:
        return lambda model, batch: task.logits(model, batch).float().pow(2).flatten(1).sum(1)
    return task.per_example_loss


@dataclass
class Sums:
    """The numerator of an importance over one process's share of a data set."""

    sums: dict[str, Tensor]  # {name: Σ s(g)}, float32, shaped like the parameter
    count: int  # examples ("sample") or batches ("batch") summed
    method: str  # "linear" (closed form), "vmap" (per-example gradients) or "batch"


Step = Callable[[Any, dict[str, Tensor]], int]  # (batch, sums) -> examples or batches added to sums


def importance_sums(model: nn.Module, task: Any, dataset: Dataset, *, kind: Kind, label_free: bool,
                    batch_size: int, rank: int = 0, world: int = 1) -> Sums:
    """Σ s(g) over this process's batches of `dataset` (every world-th, from `rank`). label_free: ℓ = ‖f(x)‖₂² and
    s = |·|, else ℓ = CE and s = (·)². Parameters without requires_grad are skipped. kind="sample" uses the closed
    form of Linear layers when every trainable parameter belongs to an nn.Linear applied once to [B, in] rows (an
    MLP), else vmap(grad(...)); both give Σ_i s(∇ℓ_i) (the closed form assumes, as eval mode gives, that row i of
    every layer depends on example i only)."""
    loss = example_loss(task, label_free)
    stat: Callable[[Tensor], Tensor] = torch.abs if label_free else torch.square
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    run = partial(_accumulate, model, dataset, named, batch_size=batch_size, rank=rank, world=world)
    if kind == "batch":
        return run(_batch_step(model, loss, named, stat), "batch")
    owners = _linear_owners(model, named)
    if owners is not None:
        try:
            return run(_linear_step(model, loss, owners, named, stat), "linear")
        except _NotClosedForm:
            pass
    return run(_vmap_step(model, loss, named, stat), "vmap")


def _accumulate(model: nn.Module, dataset: Dataset, named: dict[str, nn.Parameter], step: Step, method: str, *,
                batch_size: int, rank: int, world: int) -> Sums:
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named.items()}
    count = 0
    with eval_mode(model):
        for k, batch in enumerate(iter_batches(dataset, batch_size, next(iter(named.values())).device)):
            if k % world == rank:
                count += step(batch, sums)
    return Sums(sums, count, method)


def _batch_step(model: nn.Module, loss: Loss, named: dict[str, nn.Parameter], stat: Callable) -> Step:
    def step(batch: Any, sums: dict[str, Tensor]) -> int:  # s(∇ mean_B ℓ)
        grads = torch.autograd.grad(loss(model, batch).mean(), list(named.values()), allow_unused=True)
        for n, g in zip(named, grads, strict=True):
            if g is not None:
                sums[n] += stat(g.float())
        return 1

    return step


def _vmap_step(model: nn.Module, loss: Loss, named: dict[str, nn.Parameter], stat: Callable) -> Step:
    params = {n: p.detach() for n, p in named.items()}

    def loss_one(selected: dict[str, Tensor], example: Any) -> Tensor:
        return loss(Functional(model, selected), map_tensors(example, lambda t: t.unsqueeze(0))).sum()

    per_batch = vmap(grad(loss_one), in_dims=(None, 0))

    def step(batch: Any, sums: dict[str, Tensor]) -> int:  # Σ_i s(∇ℓ_i)
        with torch.no_grad():
            grads = per_batch(params, batch)  # {name: [B, *shape]}
        for n, g in grads.items():
            sums[n] += stat(g.float()).sum(0)
        return next(iter(grads.values())).shape[0]

    return step


class _NotClosedForm(Exception):
    """A Linear layer ran on other than one [B, in] row per example: use vmap."""


def _linear_owners(model: nn.Module, named: dict[str, nn.Parameter]) -> dict[str, nn.Linear] | None:
    """{module name: nn.Linear} when every trainable parameter is the weight or bias of exactly one nn.Linear."""
    owners, seen = {}, set()
    for prefix, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own and not isinstance(module, nn.Linear) or any(id(p) in seen for p in own):
            return None
        seen.update(id(p) for p in own)
        if own:
            owners[prefix] = module
    return owners if seen == {id(p) for p in named.values()} else None


def _linear_step(model: nn.Module, loss: Loss, owners: dict[str, nn.Linear], named: dict[str, nn.Parameter],
                 stat: Callable) -> Step:
    name_of = {id(p): n for n, p in named.items()}

    def step(batch: Any, sums: dict[str, Tensor]) -> int:  # per-example g = δ_i h_iᵀ: Σ_i s(δ_i h_iᵀ) = s(δ)ᵀ s(h)
        rows: dict[str, tuple[Tensor, Tensor]] = {}

        def capture(prefix: str, _module: nn.Module, args: tuple, out: Tensor) -> None:
            if prefix in rows or args[0].dim() != 2:
                raise _NotClosedForm(prefix)
            rows[prefix] = (args[0], out)  # h [B, in], output [B, out]

        handles = [m.register_forward_hook(partial(capture, prefix)) for prefix, m in owners.items()]
        try:
            losses = loss(model, batch)  # [B]
        finally:
            for handle in handles:
                handle.remove()
        if any(h.shape[0] != losses.shape[0] for h, _ in rows.values()):
            raise _NotClosedForm("rows are not examples")
        deltas = torch.autograd.grad(losses.sum(), [out for _, out in rows.values()], allow_unused=True)
        for (prefix, (h, _)), delta in zip(rows.items(), deltas, strict=True):
            if delta is None:
                continue
            module, d, h = owners[prefix], stat(delta.float()), stat(h.float())  # [B, out], [B, in]
            if id(module.weight) in name_of:
                sums[name_of[id(module.weight)]] += d.T @ h  # [out, in]
            if module.bias is not None and id(module.bias) in name_of:
                sums[name_of[id(module.bias)]] += d.sum(0)
        return losses.shape[0]

    return step


def reduce_mean(sums: Mapping[str, Tensor], count: int, accelerator: Any = None) -> dict[str, Tensor]:
    """Σ over processes of the sums / Σ over processes of the counts: one all-reduce, none on one process."""
    if accelerator is not None and accelerator.num_processes > 1:
        ref = next(iter(sums.values()))
        flat = torch.cat([s.flatten() for s in sums.values()] + [ref.new_tensor([float(count)])])
        flat = accelerator.reduce(flat, reduction="sum")
        count = round(flat[-1].item())
        parts = flat[:-1].split([s.numel() for s in sums.values()])
        sums = {n: part.view_as(s) for (n, s), part in zip(sums.items(), parts, strict=True)}
    if count == 0:
        raise ValueError("importance over an empty data set")
    return {n: s / count for n, s in sums.items()}


@torch.no_grad()
def dampen(model: nn.Module, imp_d: Mapping[str, Tensor], imp_f: Mapping[str, Tensor], *, alpha: float,
           lam: float) -> tuple[int, int]:
    """In place: θ_i ← θ_i·min(λ·I_D[i]/I_f[i], 1) where I_f[i] > α·I_D[i] (the others are untouched, and no
    weight grows). Returns (number selected, number of parameters considered)."""
    selected = total = 0
    for n, p in model.named_parameters():
        if n not in imp_f:
            continue
        d, f = imp_d[n].to(p.device), imp_f[n].to(p.device)
        chosen = f > alpha * d  # f > 0 where chosen
        factor = torch.where(chosen, (lam * d / f.where(chosen, 1.0)).clamp(max=1.0), 1.0)
        p.mul_(factor.to(p.dtype))
        selected += int(chosen.sum())
        total += p.numel()
    return selected, total
