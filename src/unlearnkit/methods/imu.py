"""IMU `imu`: influence-guided machine unlearning without retain data (Fan et al. 2025, arXiv 2508.01620;
specs/markov_imu.md §3).

Markov version (influence_scope="dataset", the default; the seed's `unlearn_IMU.py`): once, on the ORIGINAL model,
over the whole forget set D_f (see `_influence.py`):
    g_i = ∇_{θ_h} NLL(z_i)                      θ_h = the selected parameters (default: the output layer)
    I_i = −(g_i ⊙ F⁻¹)·ḡ,  F⁻¹ = 1/(mean g² + λ),  ḡ = mean g
    keep I_i < 0 (the top_data fraction by |I_i|);  w_i = min(sqrt(|I_i|), q_clip(w))
Then, θ_h only (everything else frozen), for each batch B of kept examples:
    L = −Σ_{i∈B} w_i·NLL(z_i) / Σ_{i∈B} w_i + α·‖θ_h‖₁
LLM version (the seed's `IMU.py` for TOFU): influence_scope="batch" computes the same g_i, F⁻¹, ḡ, I_i and w_i at
every step on the CURRENT model over the current forget batch only (examples not kept weigh 0; a batch with no
I_i < 0 adds no ascent gradient, only the L1 term), and `params` names late decoder layers' attention output and MLP
down projections (the TOFU presets list them per architecture; the class default stays the output layer).
Per-example gradients (grad_method): the closed form for an output-layer θ_h, layer hooks (one batched forward +
backward; exact, no vmap, which cannot trace transformers models) when θ_h is nn.Linear weights / biases, else vmap.
Unlike the seed: the influences come from the trained model (not a fresh one), no example's gradient is
overwritten by the mean, there is one backward per step, and the L1 term carries gradient.
Memory (dataset scope): the g_i are stacked into G [N, P] when that takes at most STACK_LIMIT_BYTES (256 MiB), else
streamed in two passes over the forget set (memory O(P + batch·P), one more forward pass; equal up to float
rounding). Batch scope holds one batch of g_i (B·P) and two [P] sums.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import param, validate
from . import losses
from ._base import GradientMethod, check_data, register_method
from ._influence import (
    NotCaptured,
    NotTheLogits,
    check_parameters,
    concat_grads,
    head_grads_closed_form_of_batch,
    iter_head_grads_closed_form,
    iter_linear_grads_by_hooks,
    iter_per_example_grads,
    linear_grads_by_hooks_of_batch,
    linear_head,
    linear_owners,
    per_example_grads_of_batch,
    select_by_influence,
    select_parameters,
    stacked_influences,
    streamed_influences,
)
from ._loop import record, run_loop

T = TypeVar("T")
# influence_memory="auto" stacks the per-example gradients G [N, P] up to this size and streams them above it; the
# streamed path also takes at most this many bytes of gradients per batch (fewer examples than
# influence_batch_size when P is large: one example of an 8B model's output layer is 2 GB, so batches of one).
# 256 MiB: far above every toy / Markov setting (the seed's Markov forget set is 39 MiB, so those runs keep the
# stacked path and its exact numbers), far below a GPU's or a host's memory.
STACK_LIMIT_BYTES = 256 * 2**20


class _Weighted(Dataset):
    """The kept examples of `base`, each with its weight: (x, y, w) for tuple items, {..., "weight": w} for dicts.
    The task adapters ignore the extra element / key."""

    def __init__(self, base: Dataset, kept: Tensor, weights: Tensor) -> None:
        self.base, self.kept, self.weights = base, kept.tolist(), weights

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, j: int) -> Any:
        item, w = self.base[self.kept[j]], self.weights[j]
        return {**item, "weight": w} if isinstance(item, Mapping) else (*item, w)


def _weights_of(batch: Any) -> Tensor:
    return batch["weight"] if isinstance(batch, Mapping) else batch[-1]


@register_method("imu", paper="Fan et al. 2025, arXiv 2508.01620 (IMU: influence-guided machine unlearning)")
@dataclass
class IMU(GradientMethod):
    """Influence-weighted gradient ascent on the forget set only; influences from the original model computed once
    (influence_scope="dataset"), or from the current model on each forget batch (influence_scope="batch")."""

    uses = ("forget",)
    pairing = "forget"
    alpha: float = param(1e-4, ge=0, help="weight of the L1 term α·‖θ_h‖₁ (seed default 1e-4; its script passes 0.002)")
    lam: float = param(0.01, gt=0, help="Fisher damping λ")
    top_data: float = param(1.0, gt=0, le=1, help="fraction of the negative-influence examples kept")
    clip_quantile: float = param(0.93, gt=0, le=1, help="weights are clipped above at this quantile")
    params: list[str] = param([], help="fnmatch patterns of the parameters updated and used for influence; "
                                       "empty = the output layer")
    influence_scope: Literal["dataset", "batch"] = param(
        "dataset", help="dataset: influences once, on the original model, over the whole forget set (Markov "
                        "version); batch: at every step, on the current model, over the current forget batch (LLM "
                        "version; examples not kept weigh 0, a batch with none kept adds only the L1 term)")
    grad_method: Literal["auto", "closed_form", "hooks", "vmap"] = param(
        "auto", help="per-example gradients: closed form when params is exactly one Linear head, else layer hooks "
                     "when params are all nn.Linear weights / biases, else vmap")
    influence_memory: Literal["auto", "stack", "stream"] = param(
        "auto", help="influences from all per-example gradients at once (stack: N·P floats) or in two passes over "
                     "the forget set (stream: O(P + batch·P)); auto streams when N·P floats exceed 256 MiB "
                     "(dataset scope)")
    influence_batch_size: int = param(256, gt=0, help="examples per per-example-gradient batch (streamed: at most "
                                                      "256 MiB of gradients per batch; dataset scope)")
    lr: float = param(5e-4, gt=0, help="learning rate (seed: AdamW 5e-4)")
    epochs: int = param(1, ge=0, help="passes over the kept forget examples (batch scope: over the forget set)")
    batch_size: int = param(4, gt=0, help="forget batch size (seed: 4)")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adamw", help="optimiser (seed: transformers AdamW)")
    weight_decay: float = param(0.0, ge=0, help="weight decay (seed: transformers AdamW default 0)")

    def memory_plan(self, model: nn.Module, dataset: Dataset, names: list[str]) -> tuple[str, int]:
        """("stack" | "stream", gradient batch size) for the influences of `dataset` w.r.t. `names`."""
        params = check_parameters(model, names).values()
        row_bytes = sum(p.numel() for p in params) * max(4, max(p.element_size() for p in params))
        mode = self.influence_memory
        if mode == "auto":
            mode = "stream" if len(dataset) * row_bytes > STACK_LIMIT_BYTES else "stack"
        if mode == "stack":
            return mode, self.influence_batch_size
        return mode, max(1, min(self.influence_batch_size, STACK_LIMIT_BYTES // row_bytes))

    def grad_methods(self, model: nn.Module, names: list[str]) -> list[str]:
        """The per-example-gradient back-ends to try, in order (auto: the next one when a back-end finds at its
        first batch that it does not apply: NotTheLogits, NotCaptured)."""
        head = linear_head(model, names)
        if self.grad_method == "closed_form" and head is None:
            raise ValueError(f"grad_method='closed_form' needs params to be exactly the weight (+ bias) of one "
                             f"unshared nn.Linear; got {names}")
        linear = linear_owners(model, names) is not None
        if self.grad_method == "hooks" and not linear:
            raise ValueError(f"grad_method='hooks' needs every parameter to be the weight or bias of an nn.Linear "
                             f"(and of nothing else); got {names}")
        if self.grad_method != "auto":
            return [self.grad_method]
        return [*(["closed_form"] if head is not None else []), *(["hooks"] if linear else []), "vmap"]

    def _with_fallback(self, how: list[str], run: Callable[[str], T]) -> T:
        for i, name in enumerate(how):
            try:
                result = run(name)
            except (NotTheLogits, NotCaptured):
                if i == len(how) - 1:
                    raise
                continue
            self.grad_method_ = name
            return result
        raise AssertionError("no gradient back-end")  # grad_methods never returns an empty list

    def with_grads(self, model: nn.Module, task: Any, dataset: Dataset, names: list[str], batch_size: int,
                   use: Callable[[Callable[[], Iterator[dict[str, Tensor]]]], T]) -> T:
        """use(batches): `batches()` yields g_i of `dataset` w.r.t. `names`, {name: [B, *shape]} per batch (see
        grad_method); sets `grad_method_` to the way used."""
        def batches(how: str) -> Iterator[dict[str, Tensor]]:
            if how == "closed_form":
                head = linear_head(model, names)
                assert head is not None
                return iter_head_grads_closed_form(model, task, dataset, head, batch_size=batch_size)
            if how == "hooks":
                return iter_linear_grads_by_hooks(model, task, dataset, names, batch_size=batch_size)
            return iter_per_example_grads(model, task, dataset, names, batch_size=batch_size)

        return self._with_fallback(self.grad_methods(model, names), lambda how: use(lambda: batches(how)))

    def grads_of_batch(self, model: nn.Module, task: Any, batch: Any, names: list[str]) -> dict[str, Tensor]:
        """g_i of one batch (on the model's device) w.r.t. `names`, {name: [B, *shape]}; the first call chooses the
        back-end (sets `grad_method_`), later calls reuse it."""
        def of_batch(how: str, check: bool) -> dict[str, Tensor]:
            if how == "closed_form":
                head = linear_head(model, names)
                assert head is not None
                return head_grads_closed_form_of_batch(model, task, batch, head)
            if how == "hooks":
                return linear_grads_by_hooks_of_batch(model, task, batch, names, check=check)
            return per_example_grads_of_batch(model, task, batch, names)

        if getattr(self, "grad_method_", None) is None:
            return self._with_fallback(self.grad_methods(model, names), lambda how: of_batch(how, True))
        return of_batch(self.grad_method_, False)

    def per_example_grads(self, model: nn.Module, task: Any, dataset: Dataset, names: list[str]) -> dict[str, Tensor]:
        """g_i for every example of `dataset` w.r.t. `names`, {name: [N, *shape]}; sets `grad_method_`."""
        return self.with_grads(model, task, dataset, names, self.influence_batch_size,
                               lambda batches: concat_grads(batches()))

    def influences(self, model: nn.Module, task: Any, dataset: Dataset, names: list[str]) -> Tensor:
        """I [N] of `dataset` w.r.t. `names` (stacked or streamed, see `memory_plan`); sets `grad_method_`,
        `influence_memory_` and `influence_batch_size_`."""
        mode, batch_size = self.memory_plan(model, dataset, names)
        self.influence_memory_, self.influence_batch_size_ = mode, batch_size
        if mode == "stack":
            return self.with_grads(model, task, dataset, names, batch_size,
                                   lambda batches: stacked_influences(concat_grads(batches()), lam=self.lam))
        return self.with_grads(model, task, dataset, names, batch_size,
                               lambda batches: streamed_influences(batches, lam=self.lam))

    def batch_weights(self, model: nn.Module, task: Any, batch: Any, names: list[str]) -> Tensor:
        """[B] IMU weights of one forget batch on the model as it is now (influence_scope="batch"): g_i, F⁻¹, ḡ and
        I_i over this batch only, then the shared selection (keep I_i < 0, top_data, sqrt, clip); examples not
        kept weigh 0 (all of them when no I_i < 0). Its own autograd pass, outside any training graph."""
        one = [self.grads_of_batch(model, task, batch, names)]
        influences = streamed_influences(lambda: one, lam=self.lam)  # one batch: O(P) besides its gradients
        one.clear()
        weights = torch.zeros_like(influences)
        if bool((influences < 0).any()):
            kept, kept_weights = select_by_influence(influences, top_data=self.top_data,
                                                     clip_quantile=self.clip_quantile)
            weights[kept] = kept_weights
        return weights

    def check(self, data: Any) -> None:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        if self.influence_scope == "batch" and self.lora_r > 0:
            raise ValueError(f"method.{self.registry_name}: influence_scope='batch' takes per-example gradients of "
                             "the named base weights at every step, which LoRA wraps; use lora_r=0 or "
                             "influence_scope='dataset'")

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        self.check(data)
        names = select_parameters(model, self.params)
        self.params_, self.grad_method_ = names, None
        named = dict(model.named_parameters())
        selected = [named[n] for n in names]  # the same objects after accelerate wraps the model
        if self.influence_scope == "batch":
            return self._unlearn_per_batch(model, data, task, names, selected, accelerator, after_step)
        alpha = self.alpha
        influences = self.influences(model, task, data.forget, names)  # on the original model, before any step
        kept, weights = select_by_influence(influences, top_data=self.top_data, clip_quantile=self.clip_quantile)
        self.kept_, self.weights_, self.influences_ = kept.cpu(), weights.cpu(), influences.cpu()
        self.kept_per_step_ = None  # batch-scope diagnostic

        def loss(m: nn.Module, forget: Any, _retain: Any, _frozen: Any) -> Tensor:
            nll = task.per_example_loss(m, forget)  # [B]
            w = _weights_of(forget).to(nll)  # [B]
            return losses.weighted_ascent(nll, w) + alpha * losses.l1(selected)

        result = run_loop(model, loss, self, forget=_Weighted(data.forget, self.kept_, self.weights_),
                          trainable=lambda n: n in names, accelerator=accelerator, desc=self.registry_name,
                          after_step=after_step)
        return record(self, result)

    def _unlearn_per_batch(self, model: nn.Module, data: Any, task: Any, names: list[str], selected: list[Tensor],
                           accelerator: Any, after_step: Any) -> nn.Module:
        """influence_scope="batch": every forget batch is weighted by `batch_weights` on the current model (the
        unwrapped `model`: the same parameters as the prepared one, without its wrappers' hooks), then the weighted
        ascent + L1 on the prepared model. `kept_per_step_`: the number of kept examples of each forget batch (one
        per optimiser step when grad_accum is 1). Each process needs the whole model (one device, DDP): parameters
        sharded by DeepSpeed ZeRO-3 / FSDP are refused at the first step."""
        self.kept_ = self.weights_ = self.influences_ = None  # dataset-scope diagnostics
        self.kept_per_step_: list[int] = []
        alpha = self.alpha

        def loss(m: nn.Module, forget: Any, _retain: Any, _frozen: Any) -> Tensor:
            if not self.kept_per_step_ and any(hasattr(p, "ds_id") or p.untyped_storage().size() == 0
                                               for p in selected):
                raise ValueError(f"method.{self.registry_name}: influence_scope='batch' needs the whole θ_h on every "
                                 "process, but the parameters are sharded (DeepSpeed ZeRO-3 / FSDP); run it on one "
                                 "device or with DDP, or use influence_scope='dataset'")
            w = self.batch_weights(model, task, forget, names)  # [B], before (and apart from) the training graph
            self.kept_per_step_.append(int((w > 0).sum()))
            nll = task.per_example_loss(m, forget)  # [B]; also when nothing is kept, so every process runs forward
            w = w.to(nll)
            # an example not kept contributes exactly 0, even when its NLL is not finite
            ascent = losses.weighted_ascent(nll.masked_fill(w == 0, 0.0), w)
            return ascent + alpha * losses.l1(selected)

        result = run_loop(model, loss, self, forget=data.forget, trainable=lambda n: n in names,
                          accelerator=accelerator, desc=self.registry_name, after_step=after_step)
        return record(self, result)
