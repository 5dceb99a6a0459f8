"""MIMU's masks (shared/specs/mimu.md §6–§7), shared by `mimu`, `random_mask` and `sft_randomize`: the checks every
entry point runs first (`_resolve`), the per-class forget mask, the pure class mask, the random mask and applying a
mask to the masked layer. Masks are flat over the N = m·n weights of W [m, n] (index i·n + j, row-major, as the
GCN's logits), 1 = keep, 0 = zero; `apply_mask` reshapes them to W.

    M_c      = 1[z̄_c among its top-K]                 P_c = σ((z̄_c − z̄_c,(K)) / τ)           (z̄ = class logits [C, N])
    s        = M_f − mean_{c≠f} M_c ∈ [−1, 1]         s_soft = P_f − mean_{c≠f} P_c
    "rank":            zero the top-κ weights by (s, s_soft), descending (ties: the lower flat index first)
    "set_difference":  zero exactly M_f ∧ ¬(∨_{c≠f} M_c)   (κ unused; the reference kept this set instead, §10 M3)
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._mimu_capture import check_mimu_head
from ._mimu_graph import hard_topk_mask, relaxed_topk

Strategy = Literal["rank", "set_difference"]
STRATEGIES = ("rank", "set_difference")


@dataclass(frozen=True)
class Target:
    """What `_resolve` checked: the masked layer (None without a model), its N weights, C classes, and the budgets
    and forget class as counts and an index (None where not asked for)."""

    layer: str | None
    num_weights: int
    num_classes: int
    top_k: int | None = None
    kappa: int | None = None
    forget_class: int | None = None


def resolve_count(value: Any, total: int, name: str, *, minimum: int) -> int:
    """An int count, or a float fraction of `total` rounded to the nearest count, checked against [minimum, total]
    (top_k: [1, N]; kappa: [0, N])."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} must be an int (a count) or a float in [0, 1] (a fraction of N = {total})")
    if isinstance(value, numbers.Integral):
        count = int(value)
    elif not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r}: a float is a fraction of the N = {total} weights and must be in [0, 1]; "
                         "pass an int for a count")
    else:
        count = round(value * total)
    if not minimum <= count <= total:
        allowed = "(0, N]" if minimum == 1 else "[0, N]"
        raise ValueError(f"{name}={value!r} gives {count} weights, outside {allowed} = [{minimum}, {total}] for a "
                         f"masked layer of N = {total} weights")
    return count


def _resolve(model: nn.Module | None = None, *, num_weights: int | None = None, num_classes: int | None = None,
             masked_layer: str | None = None, top_k: Any = None, kappa: Any = None, forget_class: Any = None,
             data_classes: int | None = None) -> Target:
    """Every check of MIMU's inputs, before any work (each entry point calls it first):
    - the model fits the head contract (`check_mimu_head`: a bias-free Linear W [m, n] feeding a bias-free head;
      a 1x1 W, whose rook graph has no edge, is rejected there), and `masked_layer`, when given, is that layer;
    - without a model, `num_weights` N and `num_classes` C describe the class logits [C, N];
    - top_k (int or fraction of N) in [1, N]; kappa (int or fraction) in [0, N];
    - forget_class an int in [0, C); data_classes (data.num_classes), when given, equals C."""
    layer = None
    if model is not None:
        layer, head = check_mimu_head(model)
        if masked_layer is not None and masked_layer != layer:
            raise ValueError(f"masked_layer={masked_layer!r} is not the masked layer of {type(model).__name__}: MIMU "
                             f"masks the bias-free Linear that feeds the head '{head}', here '{layer}'")
        num_weights = model.get_submodule(layer).weight.numel()
        num_classes = model.get_submodule(head).out_features
    if num_weights is None or num_classes is None:
        raise ValueError("_resolve needs a model or both num_weights and num_classes")
    if num_weights < 2:
        raise ValueError(f"a masked layer of {num_weights} weight(s) has no rook neighbours (m + n − 2 = 0): MIMU "
                         "needs at least 2 weights")
    if data_classes is not None and data_classes != num_classes:
        raise ValueError(f"data.num_classes = {data_classes} but the model's head gives {num_classes} logits")
    if forget_class is not None:
        if isinstance(forget_class, bool) or not isinstance(forget_class, numbers.Integral):
            raise ValueError(f"forget_class={forget_class!r} must be an int class index in 0..{num_classes - 1}")
        if not 0 <= forget_class < num_classes:
            raise ValueError(f"forget_class={forget_class} does not exist: the model has {num_classes} classes, "
                             f"0..{num_classes - 1}")
        if num_classes < 2:
            raise ValueError(f"MIMU needs at least 2 classes (the forget class and others); got {num_classes}")
        forget_class = int(forget_class)
    return Target(
        layer, num_weights, num_classes,
        top_k=None if top_k is None else resolve_count(top_k, num_weights, "top_k", minimum=1),
        kappa=None if kappa is None else resolve_count(kappa, num_weights, "kappa", minimum=0),
        forget_class=forget_class)


def _rank_descending(primary: Tensor, secondary: Tensor) -> Tensor:
    """Flat indices ordered by (primary, secondary), both descending; full ties keep the lower index first."""
    by_secondary = torch.sort(secondary, descending=True, stable=True).indices
    return by_secondary[torch.sort(primary[by_secondary], descending=True, stable=True).indices]


def forget_mask(class_logits: Tensor, forget_class: int, *, top_k: int | float, kappa: int | float | None = None,
                temperature: float = 0.1, strategy: Strategy = "rank",
                cap_to_forget_specific: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """The keep mask [N] (float 0/1) of §6.3–§6.5 from the class logits z̄ [C, N] (`class_logits`), and an info
    dict: num_forget_specific = #{s > 0}, kappa (resolved), kappa_used (the number zeroed), top_k (resolved),
    strategy, num_weights.

    strategy="rank": zero the top-κ weights ranked by (s, s_soft) descending (module docstring). A κ above
    num_forget_specific warns (the extra weights are not forget-specific; they are ranked by s_soft alone) unless
    cap_to_forget_specific=True, which zeroes only the num_forget_specific weights with s > 0.
    strategy="set_difference": zero exactly M_f ∧ ¬(∨_{c≠f} M_c); kappa is ignored and kappa_used = its size."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    if class_logits.dim() != 2:
        raise ValueError(f"class_logits must be [C, N]; got shape {tuple(class_logits.shape)}")
    if strategy == "rank" and kappa is None:
        raise ValueError("strategy='rank' needs kappa (an int count or a fraction of N)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    num_classes, size = class_logits.shape
    t = _resolve(num_weights=size, num_classes=num_classes, top_k=top_k, forget_class=forget_class,
                 kappa=kappa if strategy == "rank" else None)
    z = class_logits.detach()
    hard = hard_topk_mask(z, t.top_k)                                          # M [C, N]
    others = torch.arange(num_classes, device=z.device) != t.forget_class
    score = hard[t.forget_class] - hard[others].mean(0)                         # s [N]
    num_specific = int((score > 0).sum())
    if strategy == "set_difference":
        zero = hard[t.forget_class].bool() & ~hard[others].bool().any(0)
    else:
        soft = relaxed_topk(z, t.top_k, temperature=temperature)              # P [C, N]
        soft_score = soft[t.forget_class] - soft[others].mean(0)               # s_soft [N]
        count = min(t.kappa, num_specific) if cap_to_forget_specific else t.kappa
        if count > num_specific:
            warnings.warn(f"kappa = {t.kappa} exceeds the {num_specific} forget-specific weights (s > 0) at top_k = "
                          f"{t.top_k}: the other {count - num_specific} zeroed weights are ranked by s_soft alone "
                          "(set cap_to_forget_specific=True to zero only the forget-specific ones)", stacklevel=2)
        zero = torch.zeros(size, dtype=torch.bool, device=z.device)
        zero[_rank_descending(score, soft_score)[:count]] = True
    keep = (~zero).to(z.dtype)
    info = {"num_forget_specific": num_specific, "kappa": t.kappa, "kappa_used": int(zero.sum()),
            "top_k": t.top_k, "strategy": strategy, "num_weights": size}
    return keep, info


def pure_class_mask(class_logits: Tensor, forget_class: int, top_k: int | float) -> Tensor:
    """The mask-efficacy keep mask of §6.6: M_f [N], 1 on the forget class's top-K weights only (0/1 float)."""
    if class_logits.dim() != 2:
        raise ValueError(f"class_logits must be [C, N]; got shape {tuple(class_logits.shape)}")
    t = _resolve(num_weights=class_logits.shape[1], num_classes=class_logits.shape[0], top_k=top_k,
                 forget_class=forget_class)
    return hard_topk_mask(class_logits[t.forget_class].detach(), t.top_k)


def random_keep_mask(num_weights: int, kappa: int, seed: int) -> Tensor:
    """A keep mask [N] with exactly κ zeros at positions drawn uniformly without replacement (torch.Generator
    seeded with `seed`, on the CPU: the same positions on every device)."""
    zero = torch.randperm(num_weights, generator=torch.Generator().manual_seed(seed))[:kappa]
    return torch.ones(num_weights).index_fill_(0, zero, 0.0)


@torch.no_grad()
def apply_mask(model: nn.Module, layer: str, keep_mask: Tensor) -> nn.Module:
    """W ← W ⊙ keep_mask in place on `layer`'s weight W [m, n] (keep_mask: 0/1, [N] flat row-major or [m, n]);
    returns the model. Nothing else changes."""
    weight = model.get_submodule(layer).weight
    if keep_mask.numel() != weight.numel():
        raise ValueError(f"keep_mask has {keep_mask.numel()} entries; '{layer}' has {weight.numel()} weights "
                         f"{tuple(weight.shape)}")
    keep = keep_mask.detach().reshape(weight.shape).to(device=weight.device, dtype=weight.dtype)
    if not ((keep == 0) | (keep == 1)).all():
        raise ValueError("keep_mask must hold only 0 (zero the weight) and 1 (keep it)")
    weight.mul_(keep)
    return model
