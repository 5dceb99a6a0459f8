"""Per-example gradients and influence weights, shared by influence-based methods (IMU, Fan et al. 2025,
arXiv 2508.01620; specs/markov_imu.md §3).

For the examples z_i of a data set and a parameter subset θ_h:

    g_i = ∇_{θ_h} ℓ(z_i)                       ℓ = task.per_example_loss (CE; mean token NLL of a sequence)
    F⁻¹ = 1 / (mean_i g_i² + λ)                diagonal empirical Fisher, damped
    ḡ = mean_i g_i,   I_i = −(g_i ⊙ F⁻¹)·ḡ     influence of up-weighting z_i on the mean loss

Four ways to get g_i, all returning {name: [N, *shape]}:
- `per_example_grads`: torch.func (functional_call + vmap(grad(...))) over the examples of each batch;
- `head_grads_closed_form`: when θ_h is the weight (+ bias) of the Linear layer that produces the logits,
  g_i = mean over scored positions of [(p_t − e_{y_t}) h_tᵀ, (p_t − e_{y_t})] from ONE batched forward pass;
- `linear_grads_by_hooks`: when every parameter of θ_h is the weight or bias of nn.Linear layers (any layers: the
  LLM version's o_proj / down_proj), from ONE batched forward and ONE backward of Σ_i ℓ_i: each layer's input x
  [B, *, I] and output gradient δ [B, *, O] give g_i(W) = Σ_t δ_{i,t} x_{i,t}ᵀ, g_i(b) = Σ_t δ_{i,t}, summed over
  the layer's calls. Exact when the examples of a batch do not interact (evaluation mode: no batch statistics);
  needs no vmap, which cannot trace transformers' data-dependent mask creation;
- `per_example_grads_loop`: one autograd backward per example (the reference for tests and benchmarks).
All run the model in evaluation mode; the parameters outside θ_h are constants. The `iter_*` functions give the same
gradients one batch at a time, the `*_of_batch` ones for one given batch (IMU's per-batch influences).

Two ways to get I from the g_i, followed by ONE selection step (`select_by_influence`: keep I_i < 0, weight sqrt|I_i|):
- `stacked_influences`: from G [N, P], all g_i at once (N·P floats; what `influence_weights` uses);
- `streamed_influences`: two passes over batches of g_i, memory O(P + batch·P): pass 1 sums g_i and g_i², pass 2
  recomputes each batch's g_i and takes I_i. Equal to the stacked I up to float rounding (another summation order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Dataset, default_collate

from ..tasks._hooks import eval_mode


class NotTheLogits(ValueError):
    """The layer given to `head_grads_closed_form` does not produce the logits the task scores."""


class NotCaptured(ValueError):
    """The layer hooks of `linear_grads_by_hooks` did not see the whole gradient (a weight also used outside its
    layer's forward, a layer output changed in place, a layer that does not keep the batch dimension)."""


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
def iter_per_example_grads(model: nn.Module, task: Any, dataset: Dataset, names: list[str], *,
                           batch_size: int = 256) -> Iterator[dict[str, Tensor]]:
    """{name: [B, *shape]} for each batch of `dataset` in order: ∇ task.per_example_loss of each example w.r.t. the
    named parameters, with vmap(grad(...)) over the examples of the batch (each example is run as a batch of one).
    Nothing is held between batches; the model is in evaluation mode only while a batch is computed. Unknown names
    raise here, not at the first batch."""
    params = {n: p.detach() for n, p in check_parameters(model, names).items()}
    return _vmap_batches(model, _vmapped_grad(model, task), params, dataset, batch_size)


def _vmapped_grad(model: nn.Module, task: Any) -> Callable[..., dict[str, Tensor]]:
    def loss_one(selected: dict[str, Tensor], example: Any) -> Tensor:
        batch = map_tensors(example, lambda t: t.unsqueeze(0))  # one example -> a batch of 1
        return task.per_example_loss(Functional(model, selected), batch).sum()

    return vmap(grad(loss_one), in_dims=(None, 0))


def per_example_grads_of_batch(model: nn.Module, task: Any, batch: Any, names: list[str]) -> dict[str, Tensor]:
    """{name: [B, *shape]} for one batch (already on the model's device), as `iter_per_example_grads` computes it."""
    params = {n: p.detach() for n, p in check_parameters(model, names).items()}
    with eval_mode(model), torch.no_grad():
        return _vmapped_grad(model, task)(params, batch)


def _vmap_batches(model: nn.Module, per_batch: Callable[..., dict[str, Tensor]], params: dict[str, Tensor],
                  dataset: Dataset, batch_size: int) -> Iterator[dict[str, Tensor]]:
    device = next(iter(params.values())).device
    for batch in iter_batches(dataset, batch_size, device):
        # no_grad: no autograd graph for the constant parameters; torch.func.grad ignores the outer no_grad.
        with eval_mode(model), torch.no_grad():
            grads = per_batch(params, batch)
        yield grads


def concat_grads(batches: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """{name: [N, *shape]} from per-batch {name: [B, *shape]}."""
    out: dict[str, list[Tensor]] = {}
    for grads in batches:
        for n, g in grads.items():
            out.setdefault(n, []).append(g)
    return {n: torch.cat(gs) for n, gs in out.items()}


def per_example_grads(model: nn.Module, task: Any, dataset: Dataset, names: list[str], *,
                      batch_size: int = 256) -> dict[str, Tensor]:
    """{name: [N, *shape]}: `iter_per_example_grads` over the whole data set."""
    return concat_grads(iter_per_example_grads(model, task, dataset, names, batch_size=batch_size))


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


def iter_head_grads_closed_form(model: nn.Module, task: Any, dataset: Dataset, head: str, *,
                                batch_size: int = 256) -> Iterator[dict[str, Tensor]]:
    """{name: [B, *shape]} for each batch of `dataset` in order, for the weight (+ bias) of the nn.Linear `head` that
    produces the logits, from its input h (captured by a forward hook) and the softmax p of one batched forward pass:
    classifier g_i = [(p_i − e_{y_i}) h_iᵀ, p_i − e_{y_i}]; causal LM g_i = (1/T_i)·Σ_{t scored} [(p_t − e_{y_t}) h_tᵀ,
    p_t − e_{y_t}], position t predicting label t+1 (the adapter's shift). Raises NotTheLogits when the
    head's output is not the task's logits (at a batch); a `head` that is not an nn.Linear raises here. The hook and
    evaluation mode last only while a batch is computed."""
    module = model.get_submodule(head)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"'{head}' is a {type(module).__name__}, not an nn.Linear")
    return _closed_form_batches(model, module, task, dataset, head, batch_size)


def _closed_form_batches(model: nn.Module, module: nn.Linear, task: Any, dataset: Dataset, head: str,
                         batch_size: int) -> Iterator[dict[str, Tensor]]:
    for batch in iter_batches(dataset, batch_size, module.weight.device):
        yield _prefixed(_closed_form_batch(model, module, task, batch, head), head)


def _prefixed(grads: dict[str, Tensor], head: str) -> dict[str, Tensor]:
    prefix = f"{head}." if head else ""
    return {f"{prefix}{k}": g for k, g in grads.items()}


def head_grads_closed_form_of_batch(model: nn.Module, task: Any, batch: Any, head: str) -> dict[str, Tensor]:
    """{name: [B, *shape]} for one batch (on the model's device), as `iter_head_grads_closed_form` computes it."""
    module = model.get_submodule(head)
    if not isinstance(module, nn.Linear):
        raise ValueError(f"'{head}' is a {type(module).__name__}, not an nn.Linear")
    return _prefixed(_closed_form_batch(model, module, task, batch, head), head)


def _closed_form_batch(model: nn.Module, module: nn.Linear, task: Any, batch: Any, head: str) -> dict[str, Tensor]:
    captured: dict[str, Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        captured["h"], captured["out"] = inputs[0], output

    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model), torch.no_grad():
            logits = task.logits(model, batch)
            if captured["out"].shape != logits.shape or not torch.allclose(captured["out"].to(logits), logits):
                raise NotTheLogits(f"the output of '{head}' is not the logits of {type(model).__name__}")
            delta, h = _output_error(task, logits, captured["h"], batch)  # [B, S, C], [B, S, D]
            del logits, captured["out"]
            grads = {"weight": torch.einsum("bsc,bsd->bcd", delta, h.to(delta)).to(module.weight)}
            if module.bias is not None:
                grads["bias"] = delta.sum(1).to(module.weight)
    finally:
        handle.remove()
    return grads


def head_grads_closed_form(model: nn.Module, task: Any, dataset: Dataset, head: str, *,
                           batch_size: int = 256) -> dict[str, Tensor]:
    """{name: [N, *shape]}: `iter_head_grads_closed_form` over the whole data set."""
    return concat_grads(iter_head_grads_closed_form(model, task, dataset, head, batch_size=batch_size))


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
    # δ = (p − e_y)·mask / T in place on p: no one-hot [B, S, C] (int64) and no further [B, S, C] temporaries;
    # the same numbers as (p − one_hot(y))·mask / T (p + (−1) is p − 1 exactly)
    delta = torch.softmax(logits.float(), dim=-1)
    delta.scatter_add_(-1, targets.unsqueeze(-1), delta.new_full((*targets.shape, 1), -1.0))
    delta.mul_(mask.unsqueeze(-1))
    return delta.div_(mask.sum(-1).clamp(min=1)[:, None, None]), h


def linear_owners(model: nn.Module, names: Sequence[str]) -> dict[str, list[tuple[nn.Linear, str]]] | None:
    """{name: [(layer, "weight" | "bias"), ...]}: the nn.Linear layers holding each named parameter (several when
    Linear layers share it), or None when one of them is held by another kind of module (an embedding tied to the
    output layer, a norm) or not as its weight / bias: then only vmap gives its per-example gradient."""
    owners, _ = _linear_owners(model, names)
    return owners


def _linear_owners(model: nn.Module, names: Sequence[str]) -> tuple[dict[str, list[tuple[nn.Linear, str]]] | None,
                                                                      str]:
    wanted = {id(p): n for n, p in check_parameters(model, names).items()}
    owners: dict[str, list[tuple[nn.Linear, str]]] = {n: [] for n in names}
    for prefix, module in model.named_modules():  # each module once, also when it is registered under two names
        for key, p in module.named_parameters(recurse=False):
            name = wanted.get(id(p))
            if name is None:
                continue
            if not isinstance(module, nn.Linear) or key not in ("weight", "bias"):
                return None, (f"'{name}' is the '{key}' of {prefix or 'the model'} ({type(module).__name__}), not the "
                              "weight or bias of an nn.Linear")
            owners[name].append((module, key))
    return owners, ""


def iter_linear_grads_by_hooks(model: nn.Module, task: Any, dataset: Dataset, names: list[str], *,
                               batch_size: int = 256, check: bool = True) -> Iterator[dict[str, Tensor]]:
    """{name: [B, *shape]} for each batch of `dataset` in order, for parameters that are all weights / biases of
    nn.Linear layers, from one batched forward and one backward per batch (no vmap; see
    `linear_grads_by_hooks_of_batch`). check: verify on the first batch that Σ_i g_i is the gradient of Σ_i ℓ_i
    (raises NotCaptured when the hooks missed a use of a weight). A parameter held by another kind of module raises
    here, not at the first batch."""
    owners, why = _linear_owners(model, names)
    if owners is None:
        raise ValueError(f"per-example gradients by layer hooks need nn.Linear weights / biases: {why}; use vmap")
    return _hook_batches(model, task, dataset, names, owners, batch_size, check)


def _hook_batches(model: nn.Module, task: Any, dataset: Dataset, names: list[str],
                  owners: dict[str, list[tuple[nn.Linear, str]]], batch_size: int,
                  check: bool) -> Iterator[dict[str, Tensor]]:
    device = dict(model.named_parameters())[names[0]].device
    for i, batch in enumerate(iter_batches(dataset, batch_size, device)):
        yield _hooks_batch(model, task, batch, names, owners, check=check and i == 0)


def linear_grads_by_hooks_of_batch(model: nn.Module, task: Any, batch: Any, names: list[str], *,
                                   check: bool = False) -> dict[str, Tensor]:
    """{name: [B, *shape]} for one batch (on the model's device) when every named parameter is the weight or bias of
    nn.Linear layers. One forward of the batch in evaluation mode, with the named parameters replaced by detached
    leaves that require grad and every other parameter by a detached constant (so no graph below the first selected
    layer, and nothing touches the model's .grad); forward hooks keep each selected layer's input x [B, *, I] and
    output y [B, *, O] at every call; ONE backward of Σ_i ℓ_i (task.per_example_loss) gives δ = ∂Σℓ/∂y, and
    g_i(W) = Σ_calls Σ_t δ_{i,t} x_{i,t}ᵀ, g_i(b) = Σ_calls Σ_t δ_{i,t}. Exact (not an approximation) because ℓ_i
    depends on example i only (evaluation mode: no batch statistics, no dropout): ∂Σℓ/∂y_i = ∂ℓ_i/∂y_i. Positions
    without a loss (prompt, padding) get δ = 0 from the backward itself. Each layer's input and output must hold
    the examples on dim 0 (else NotCaptured; a [T, B, ...] layout is not supported). A layer called several times
    per forward (weight sharing) gets the sum over its calls, which is its whole gradient. check: also take ∇Σℓ
    w.r.t. the leaves and raise NotCaptured unless Σ_i g_i matches it (a weight also used outside its layer's
    forward, a layer output changed in place)."""
    owners, why = _linear_owners(model, names)
    if owners is None:
        raise ValueError(f"per-example gradients by layer hooks need nn.Linear weights / biases: {why}; use vmap")
    return _hooks_batch(model, task, batch, names, owners, check=check)


def _hooks_batch(model: nn.Module, task: Any, batch: Any, names: list[str],
                 owners: dict[str, list[tuple[nn.Linear, str]]], *, check: bool) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    leaves = {n: named[n].detach().requires_grad_() for n in names}
    tensors = {n: p.detach() for n, p in named.items()} | leaves
    layers = {id(m): m for pairs in owners.values() for m, _ in pairs}
    needed: dict[int, set[str]] = {}
    for pairs in owners.values():
        for m, key in pairs:
            needed.setdefault(id(m), set()).add(key)
    calls: dict[int, list[tuple[Tensor, Tensor]]] = {k: [] for k in layers}

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        x = args[0] if args else kwargs.get("input")
        calls[id(module)].append((x, output))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in layers.values()]
    try:
        with eval_mode(model), torch.enable_grad():
            total = task.per_example_loss(Functional(model, tensors), batch).sum()
    finally:
        for h in handles:
            h.remove()
    size = task.batch_size(batch)
    flat = [(k, x, y) for k, seen in calls.items() for x, y in seen]
    for k, x, y in flat:
        if not (isinstance(x, Tensor) and isinstance(y, Tensor) and x.dim() >= 2 and x.shape[0] == y.shape[0] == size):
            raise NotCaptured(f"{type(layers[k]).__name__} layer: input / output without the batch dimension {size} "
                              f"(got {getattr(x, 'shape', type(x))} -> {getattr(y, 'shape', type(y))})")
    outputs = [y for _, _, y in flat if y.requires_grad]
    wrt = outputs + (list(leaves.values()) if check else [])
    found = torch.autograd.grad(total, wrt, allow_unused=True) if wrt else ()
    deltas = iter(found[:len(outputs)])
    per_layer: dict[int, dict[str, Tensor]] = {}
    for k, x, y in flat:
        delta = next(deltas) if y.requires_grad else None
        if delta is None:  # this output does not reach the loss
            continue
        dtype = torch.promote_types(torch.promote_types(delta.dtype, x.dtype), torch.float32)
        d = delta.reshape(size, -1, delta.shape[-1]).to(dtype)  # [B, T, O]
        acc = per_layer.setdefault(k, {})
        if "weight" in needed[k]:
            w = torch.einsum("bto,bti->boi", d, x.detach().reshape(size, -1, x.shape[-1]).to(dtype))
            acc["weight"] = acc["weight"] + w if "weight" in acc else w
        if "bias" in needed[k]:
            acc["bias"] = acc["bias"] + d.sum(1) if "bias" in acc else d.sum(1)
    del flat, outputs
    grads: dict[str, Tensor] = {}
    for n in names:
        p = named[n]
        g = None
        for m, key in owners[n]:
            part = per_layer.get(id(m), {}).get(key)
            if part is not None:
                g = part if g is None else g + part
        grads[n] = (p.new_zeros((size, *p.shape)) if g is None else g.reshape(size, *p.shape)).to(p.dtype)
    if check:
        _check_captured(grads, dict(zip(names, found[len(found) - len(names):], strict=True)), leaves)
    return grads


def _check_captured(grads: Mapping[str, Tensor], full: Mapping[str, Tensor | None],
                    leaves: Mapping[str, Tensor]) -> None:
    """Raise NotCaptured unless Σ_i g_i equals the autograd gradient of Σ_i ℓ_i for every name (up to the float
    rounding of the gradients' precision: a relative 1e-3 in float32 / float64, 3e-2 when any of them is 16-bit)."""
    for n, g in grads.items():
        ref = full[n]
        ref = torch.zeros_like(leaves[n]) if ref is None else ref
        low = any(t.element_size() <= 2 for t in (g, ref, leaves[n]))
        tol = 3e-2 if low else 1e-3
        mine = g.sum(0, dtype=torch.float32 if low else None).to(ref.dtype if not low else torch.float32)
        ref = ref.to(mine.dtype)
        err, scale = (mine - ref).norm().item(), max(ref.norm().item(), mine.norm().item())
        if not err <= tol * scale + 1e-12:
            raise NotCaptured(f"'{n}': the layer hooks give Σ_i g_i off the autograd gradient by {err:.3g} "
                              f"(norm {scale:.3g}): the weight is also used outside its nn.Linear's forward, or a "
                              "layer output is changed in place; use vmap")


def linear_grads_by_hooks(model: nn.Module, task: Any, dataset: Dataset, names: list[str], *,
                          batch_size: int = 256) -> dict[str, Tensor]:
    """{name: [N, *shape]}: `iter_linear_grads_by_hooks` over the whole data set."""
    return concat_grads(iter_linear_grads_by_hooks(model, task, dataset, names, batch_size=batch_size))


# ---------------------------------------------------------------------------------------------------------------
# influence weights
# ---------------------------------------------------------------------------------------------------------------
def influence_weights(grads: dict[str, Tensor], *, lam: float = 0.01, top_data: float = 1.0,
                      clip_quantile: float = 0.93) -> tuple[Tensor, Tensor, Tensor]:
    """IMU steps 3-5 (specs/markov_imu.md §3) on the per-example gradients {name: [N, *shape]}: `stacked_influences`
    then `select_by_influence`. Returns (kept indices [K] ascending, their weights [K], influences I [N])."""
    influences = stacked_influences(grads, lam=lam)
    kept, weights = select_by_influence(influences, top_data=top_data, clip_quantile=clip_quantile)
    return kept, weights, influences


def stacked_influences(grads: Mapping[str, Tensor], *, lam: float = 0.01) -> Tensor:
    """I [N] from the flattened per-example gradients G [N, P] (float32 or wider):
    F⁻¹ = 1/(mean_i G_i² + λ); ḡ = mean_i G_i; I_i = −(G_i ⊙ F⁻¹)·ḡ. Holds G and one [N, P] temporary (plus `grads`
    when the caller keeps it)."""
    G = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)  # [N, P], a new tensor
    del grads  # the caller's reference only, if it still has one
    G = G.to(torch.promote_types(G.dtype, torch.float32))
    f_inv = 1.0 / (G.pow(2).mean(0) + lam)  # [P]
    g_bar = G.mean(0)  # [P] (a new tensor: no example's gradient is overwritten)
    return -(G.mul_(f_inv) @ g_bar)  # [N]; in place on G (ours), the same numbers as (G * f_inv)


def streamed_influences(batches: Callable[[], Iterable[Mapping[str, Tensor]]], *, lam: float = 0.01) -> Tensor:
    """The I [N] of `stacked_influences` without ever holding more than one batch of gradients: `batches()` must
    yield the same per-batch {name: [B, *shape]} each time it is called (e.g. `iter_head_grads_closed_form`).
    Pass 1 accumulates Σ_i g_i and Σ_i g_i² ([P] each); then u = F⁻¹ ⊙ ḡ in place; pass 2 recomputes each batch's
    g_i and takes I_i = −g_i·u. Memory: 2 [P] accumulators + one batch of gradients (the previous batch is released
    before the next is computed).

    Accumulators are float32 (float64 when the gradients are float64), the dtype `stacked_influences` computes its
    means in: a sum of N terms in float32 is rounded no worse than the stacked mean, and float64 would double the
    two [P] buffers (an 8B model's output layer: 525M floats, 4.2 GB more). The result differs from the stacked one
    by float rounding only (summation order; (g ⊙ F⁻¹)·ḡ vs g·(F⁻¹ ⊙ ḡ))."""
    sums: dict[str, Tensor] = {}
    squares: dict[str, Tensor] = {}
    n = 0
    for grads in batches():
        n += _accumulate(grads, sums, squares)
        del grads  # else the loop variable keeps this batch alive while the next one is computed
    if n == 0:
        raise ValueError("streamed_influences: no gradients (empty data set)")
    u = sums  # u = F⁻¹ ⊙ ḡ = (Σg/N) / (Σg²/N + λ), in place: the accumulators are not needed any more
    for name, s in u.items():
        s.div_(n).div_(squares.pop(name).div_(n).add_(lam))
    out: list[Tensor] = []
    for grads in batches():
        out.append(-_dot(grads, u))
        del grads
    influences = torch.cat(out)
    if len(influences) != n:
        raise ValueError(f"streamed_influences: the second pass gave {len(influences)} gradients, the first {n}; "
                         "`batches()` must give the same examples each time")
    return influences


def _accumulate(grads: Mapping[str, Tensor], sums: dict[str, Tensor], squares: dict[str, Tensor]) -> int:
    """sums += Σ_b g_b, squares += Σ_b g_b² per name, rows one at a time (no [B, P] temporary); returns B."""
    count = None
    for name, g in grads.items():
        flat = g.reshape(g.shape[0], -1)
        if count is not None and flat.shape[0] != count:
            raise ValueError(f"'{name}' has gradients of {flat.shape[0]} examples, another name {count}")
        count = flat.shape[0]
        if name not in sums:
            dtype = torch.promote_types(flat.dtype, torch.float32)
            sums[name] = flat.new_zeros(flat.shape[1], dtype=dtype)
            squares[name] = flat.new_zeros(flat.shape[1], dtype=dtype)
        acc = squares[name]
        sums[name] += flat.sum(0, dtype=acc.dtype)
        for row in flat:
            acc.addcmul_(row, row)
    if count is None:
        raise ValueError("no gradients in a batch")
    return count


def _dot(grads: Mapping[str, Tensor], u: Mapping[str, Tensor]) -> Tensor:
    """[B]: Σ over names of flat g_b · u."""
    total = None
    for name, g in grads.items():
        term = g.reshape(g.shape[0], -1).to(u[name].dtype) @ u[name]
        total = term if total is None else total + term
    assert total is not None
    return total


def select_by_influence(influences: Tensor, *, top_data: float = 1.0,
                        clip_quantile: float = 0.93) -> tuple[Tensor, Tensor]:
    """IMU step 5 from the influences I [N]: keep the examples with I_i < 0, of those the ceil(top_data·count) with
    the largest |I_i|; w_i = sqrt(|I_i|) clipped above at the clip_quantile-quantile of the kept weights.
    Returns (kept indices [K] ascending, their weights [K])."""
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
    return kept, weights
