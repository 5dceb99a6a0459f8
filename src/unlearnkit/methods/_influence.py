"""Per-example gradients and influence weights, shared by influence-based methods (IMU, Fan et al. 2025,
arXiv 2508.01620; specs/markov_imu.md §3).

For the examples z_i of a data set and a parameter subset θ_h:

    g_i = ∇_{θ_h} ℓ(z_i)                       ℓ = task.per_example_loss (CE; mean token NLL of a sequence)
    F⁻¹ = 1 / (mean_i g_i² + λ)                diagonal empirical Fisher, damped
    ḡ = mean_i g_i,   I_i = −(g_i ⊙ F⁻¹)·ḡ     influence of up-weighting z_i on the mean loss

Three ways to get g_i, all returning {name: [N, *shape]}:
- `per_example_grads`: torch.func (functional_call + vmap(grad(...))) over the examples of each batch;
- `head_grads_closed_form`: when θ_h is the weight (+ bias) of the Linear layer that produces the logits,
  g_i = mean over scored positions of [(p_t − e_{y_t}) h_tᵀ, (p_t − e_{y_t})] from ONE batched forward pass;
- `per_example_grads_loop`: one autograd backward per example (the reference for tests and benchmarks).
All run the model in evaluation mode; the parameters outside θ_h are constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Dataset, default_collate

from ..tasks._hooks import eval_mode


class NotTheLogits(ValueError):
    """The layer given to `head_grads_closed_form` does not produce the logits the task scores."""


def _listing(named: Mapping[str, Any], limit: int = 20) -> str:
    more = f", ... ({len(named)} in all)" if len(named) > limit else ""
    return ", ".join(list(named)[:limit]) + more


def select_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names (as in `model.named_parameters()`) matching any fnmatch pattern. No pattern -> the weight and bias of
    the last `nn.Linear` in `model.modules()` order (the output layer: `head`, `lm_head`, `output_layer`)."""
    named = dict(model.named_parameters())
    if patterns:
        chosen = [n for n in named if any(fnmatch(n, p) for p in patterns)]
        if not chosen:
            raise ValueError(f"no parameter matches {list(patterns)}; parameters include: {_listing(named)}")
        return chosen
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear output layer; name the parameters with patterns "
                         f"(parameters include: {_listing(named)})")
    ids = {id(p) for p in linears[-1].parameters(recurse=False)}
    return [n for n, p in named.items() if id(p) in ids]  # canonical names, also when the weight is tied


def linear_head(model: nn.Module, names: Sequence[str]) -> str | None:
    """The dotted name of the nn.Linear whose own parameters are exactly `names` and are used by no other module
    (so the closed form is the whole gradient), else None."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        own = [(f"{prefix}.{k}" if prefix else k, p) for k, p in module.named_parameters(recurse=False)]
        if sorted(n for n, _ in own) == sorted(names) and all(uses[id(p)] == 1 for _, p in own):
            return prefix
    return None


# ---------------------------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------------------------
def map_tensors(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """`fn` on every tensor of a tuple/list/dict batch."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def iter_batches(dataset: Dataset, batch_size: int, device: torch.device) -> Iterator[Any]:
    """The data set in order, in batches on `device`, collated by its own `collate` method when it has one."""
    collate = getattr(dataset, "collate", None)
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        yield map_tensors(batch, lambda t: t.to(device))


class Functional:
    """Calls `model` with some of its parameters replaced (the task adapters only ever call the model)."""

    def __init__(self, model: nn.Module, tensors: dict[str, Tensor]) -> None:
        self.model, self.tensors = model, tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self.tensors, args, kwargs)


def check_parameters(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    missing = [n for n in names if n not in named]
    if missing or not names:
        raise ValueError(f"unknown parameter(s) {missing or list(names)}; parameters include: {_listing(named)}")
    return {n: named[n] for n in names}


# ---------------------------------------------------------------------------------------------------------------
# per-example gradients
# ---------------------------------------------------------------------------------------------------------------
def per_example_grads(model: nn.Module, task: Any, dataset: Dataset, names: list[str], *,
                      batch_size: int = 256) -> dict[str, Tensor]:
    """{name: [N, *shape]}: ∇ task.per_example_loss of each example w.r.t. the named parameters, with
    vmap(grad(...)) over the examples of each batch (each example is run as a batch of one)."""
    params = {n: p.detach() for n, p in check_parameters(model, names).items()}

    def loss_one(selected: dict[str, Tensor], example: Any) -> Tensor:
        batch = map_tensors(example, lambda t: t.unsqueeze(0))  # one example -> a batch of 1
        return task.per_example_loss(Functional(model, selected), batch).sum()

    per_batch = vmap(grad(loss_one), in_dims=(None, 0))
    device = next(iter(params.values())).device
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    # no_grad: no autograd graph for the constant parameters; torch.func.grad ignores the outer no_grad.
    with eval_mode(model), torch.no_grad():
        for batch in iter_batches(dataset, batch_size, device):
            for n, g in per_batch(params, batch).items():  # [B, *shape]
                out[n].append(g)
    return {n: torch.cat(gs) for n, gs in out.items()}


def per_example_grads_loop(model: nn.Module, task: Any, dataset: Dataset, names: list[str]) -> dict[str, Tensor]:
    """The naive reference: one forward and one autograd backward per example."""
    params = check_parameters(model, names)
    device = next(iter(params.values())).device
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    with eval_mode(model):
        for i in range(len(dataset)):
            batch = map_tensors(default_collate([dataset[i]]), lambda t: t.to(device))
            loss = task.per_example_loss(model, batch).sum()
            for n, g in zip(names, torch.autograd.grad(loss, list(params.values())), strict=True):
                out[n].append(g)
    return {n: torch.stack(gs) for n, gs in out.items()}


def head_grads_closed_form(model: nn.Module, task: Any, dataset: Dataset, head: str, *,
                           batch_size: int = 256) -> dict[str, Tensor]:
    """{name: [N, *shape]} for the weight (+ bias) of the nn.Linear `head` that produces the logits, from its input h
    (captured by a forward hook) and the softmax p of one batched forward pass per batch:
    classifier g_i = [(p_i − e_{y_i}) h_iᵀ, p_i − e_{y_i}]; causal LM g_i = (1/T_i)·Σ_{t scored} [(p_t − e_{y_t}) h_tᵀ,
    p_t − e_{y_t}], position t predicting label t+1 (the adapter's shift). Raises NotTheLogits when the head's
    output is not the task's logits."""
    module = model.get_submodule(head)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"'{head}' is a {type(module).__name__}, not an nn.Linear")
    prefix = f"{head}." if head else ""
    captured: dict[str, Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        captured["h"], captured["out"] = inputs[0], output

    out: dict[str, list[Tensor]] = {f"{prefix}weight": [], f"{prefix}bias": []}
    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model), torch.no_grad():
            for batch in iter_batches(dataset, batch_size, module.weight.device):
                logits = task.logits(model, batch)
                if captured["out"].shape != logits.shape or not torch.allclose(captured["out"].to(logits), logits):
                    raise NotTheLogits(f"the output of '{head}' is not the logits of {type(model).__name__}")
                delta, h = _output_error(task, logits, captured["h"], batch)  # [B, S, C], [B, S, D]
                out[f"{prefix}weight"].append(torch.einsum("bsc,bsd->bcd", delta, h.to(delta)).to(module.weight))
                out[f"{prefix}bias"].append(delta.sum(1).to(module.weight))
    finally:
        handle.remove()
    if module.bias is None:
        del out[f"{prefix}bias"]
    return {n: torch.cat(gs) for n, gs in out.items()}


def _output_error(task: Any, logits: Tensor, h: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
    """(∂ℓ_i/∂logits at each scored position, already divided by the example's number of scored positions
    [B, S, C]; the head inputs at those positions [B, S, D]). S = 1 for a classifier."""
    if task.name == "classifier":
        logits, targets, h = logits.unsqueeze(1), task.labels(batch).unsqueeze(1), h.unsqueeze(1)
        mask = torch.ones_like(targets, dtype=torch.bool)
    elif task.name == "causal_lm":
        logits, targets, mask = task.shifted(logits, batch)  # [B, T−1, V], [B, T−1], [B, T−1]
        h = h[:, :-1]  # h_t predicts token t+1
    else:
        raise ValueError(f"no closed-form head gradient for task kind '{task.name}'; use grad_method='vmap'")
    p = torch.softmax(logits.float(), dim=-1)
    delta = (p - F.one_hot(targets, p.shape[-1]).to(p)) * mask.unsqueeze(-1)
    return delta / mask.sum(-1).clamp(min=1)[:, None, None], h


# ---------------------------------------------------------------------------------------------------------------
# influence weights
# ---------------------------------------------------------------------------------------------------------------
def influence_weights(grads: dict[str, Tensor], *, lam: float = 0.01, top_data: float = 1.0,
                      clip_quantile: float = 0.93) -> tuple[Tensor, Tensor, Tensor]:
    """IMU steps 3-5 (specs/markov_imu.md §3) on the flattened per-example gradients G [N, P]:
    F⁻¹ = 1/(mean_i G_i² + λ); ḡ = mean_i G_i; I_i = −(G_i ⊙ F⁻¹)·ḡ. Keep the examples with I_i < 0, of those the
    ceil(top_data·count) with the largest |I_i|; w_i = sqrt(|I_i|) clipped above at the clip_quantile-quantile of the
    kept weights. Returns (kept indices [K] ascending, their weights [K], influences I [N])."""
    flat = [g.reshape(g.shape[0], -1) for g in grads.values()]
    G = torch.cat(flat, dim=1)  # [N, P]
    G = G.to(torch.promote_types(G.dtype, torch.float32))
    f_inv = 1.0 / (G.pow(2).mean(0) + lam)  # [P]
    g_bar = G.mean(0)  # [P] (a new tensor: no example's gradient is overwritten)
    influences = -(G * f_inv) @ g_bar  # [N]
    negative = torch.nonzero(influences < 0).squeeze(1)
    if negative.numel() == 0:
        raise ValueError(f"IMU: no forget example has negative influence (all {len(influences)} influences are >= 0, "
                         "i.e. the mean gradient vanishes): there is nothing to weight; check that the model is the "
                         "trained original and the forget set is the one it saw")
    k = math.ceil(round(top_data * negative.numel(), 9))  # round: 0.3·10 is 3, not 3.0000000000000004 -> 4
    order = torch.argsort(influences[negative].abs(), descending=True, stable=True)
    kept = torch.sort(negative[order[:k]]).values
    weights = influences[kept].abs().sqrt()
    weights = weights.clamp(max=torch.quantile(weights, clip_quantile))  # linear interpolation
    return kept, weights, influences
