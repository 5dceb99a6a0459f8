"""IMU `imu`: influence-guided machine unlearning without retain data (Fan et al. 2025, arXiv 2508.01620;
specs/markov_imu.md §3, the Markov version of the seed's `unlearn_IMU.py`).

Once, on the ORIGINAL model, over the whole forget set D_f (see `_influence.py`):
    g_i = ∇_{θ_h} NLL(z_i)                      θ_h = the selected parameters (default: the output layer)
    I_i = −(g_i ⊙ F⁻¹)·ḡ,  F⁻¹ = 1/(mean g² + λ),  ḡ = mean g
    keep I_i < 0 (the top_data fraction by |I_i|);  w_i = min(sqrt(|I_i|), q_clip(w))
Then, θ_h only (everything else frozen), for each batch B of kept examples:
    L = −Σ_{i∈B} w_i·NLL(z_i) / Σ_{i∈B} w_i + α·‖θ_h‖₁
Unlike the seed: the influences come from the trained model (not a fresh one), no example's gradient is
overwritten by the mean, there is one backward per step, and the L1 term carries gradient.
Memory: the g_i are stacked into G [N, P] when that takes at most STACK_LIMIT_BYTES (256 MiB), else streamed in two
passes over the forget set (memory O(P + batch·P), one more forward pass; equal up to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import param, validate
from . import losses
from ._base import GradientMethod, check_data, register_method
from ._influence import (
    NotTheLogits,
    check_parameters,
    concat_grads,
    iter_head_grads_closed_form,
    iter_per_example_grads,
    linear_head,
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
    """Influence-weighted gradient ascent on the forget set only; influences from the original model, computed once."""

    uses = ("forget",)
    pairing = "forget"
    alpha: float = param(1e-4, ge=0, help="weight of the L1 term α·‖θ_h‖₁ (seed default 1e-4; its script passes 0.002)")
    lam: float = param(0.01, gt=0, help="Fisher damping λ")
    top_data: float = param(1.0, gt=0, le=1, help="fraction of the negative-influence examples kept")
    clip_quantile: float = param(0.93, gt=0, le=1, help="weights are clipped above at this quantile")
    params: list[str] = param([], help="fnmatch patterns of the parameters updated and used for influence; "
                                       "empty = the output layer")
    grad_method: Literal["auto", "closed_form", "vmap"] = param(
        "auto", help="per-example gradients: closed form when params is exactly one Linear head, else vmap")
    influence_memory: Literal["auto", "stack", "stream"] = param(
        "auto", help="influences from all per-example gradients at once (stack: N·P floats) or in two passes over "
                     "the forget set (stream: O(P + batch·P)); auto streams when N·P floats exceed 256 MiB")
    influence_batch_size: int = param(256, gt=0, help="examples per per-example-gradient batch (streamed: at most "
                                                      "256 MiB of gradients per batch)")
    lr: float = param(5e-4, gt=0, help="learning rate (seed: AdamW 5e-4)")
    epochs: int = param(1, ge=0, help="passes over the kept forget examples")
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

    def with_grads(self, model: nn.Module, task: Any, dataset: Dataset, names: list[str], batch_size: int,
                   use: Callable[[Callable[[], Iterator[dict[str, Tensor]]]], T]) -> T:
        """use(batches): `batches()` yields g_i of `dataset` w.r.t. `names`, {name: [B, *shape]} per batch (closed
        form when `names` is one Linear head producing the logits, else vmap; see grad_method); sets
        `grad_method_` to the way used."""
        head = linear_head(model, names)
        if self.grad_method == "closed_form" and head is None:
            raise ValueError(f"grad_method='closed_form' needs params to be exactly the weight (+ bias) of one "
                             f"unshared nn.Linear; got {names}")
        if self.grad_method != "vmap" and head is not None:
            try:
                result = use(lambda: iter_head_grads_closed_form(model, task, dataset, head, batch_size=batch_size))
                self.grad_method_ = "closed_form"
                return result
            except NotTheLogits:
                if self.grad_method == "closed_form":
                    raise
        result = use(lambda: iter_per_example_grads(model, task, dataset, names, batch_size=batch_size))
        self.grad_method_ = "vmap"
        return result

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

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)
        names = select_parameters(model, self.params)
        influences = self.influences(model, task, data.forget, names)  # on the original model, before any step
        kept, weights = select_by_influence(influences, top_data=self.top_data, clip_quantile=self.clip_quantile)
        self.params_, self.kept_ = names, kept.cpu()
        self.weights_, self.influences_ = weights.cpu(), influences.cpu()
        named = dict(model.named_parameters())
        selected = [named[n] for n in names]  # the same objects after accelerate wraps the model
        alpha = self.alpha

        def loss(m: nn.Module, forget: Any, _retain: Any, _frozen: Any) -> Tensor:
            nll = task.per_example_loss(m, forget)  # [B]
            w = _weights_of(forget).to(nll)  # [B]
            return losses.weighted_ascent(nll, w) + alpha * losses.l1(selected)

        result = run_loop(model, loss, self, forget=_Weighted(data.forget, self.kept_, self.weights_),
                          trainable=lambda n: n in names, accelerator=accelerator, desc=self.registry_name,
                          after_step=after_step)
        return record(self, result)
