"""MIMU's hooked target model (shared/specs/mimu.md §2–§3), for the future `mimu` method: the contract a classifier
must fit, and one batched capture of the masked layer's per-sample quantities that `_mimu_graph.node_features`
reads.

Contract (`check_mimu_head`): the last two modules with parameters (in `model.named_modules()` order) are bias-free
nn.Linear layers, the first — the masked layer W [m, n] = [outputs, inputs] — feeding the second, the head
Linear(m -> C) that produces the logits; only parameter-free modules (a ReLU, a Dropout) may sit between them.
The `mlp_mimu` and `resnet18_mimu` builders (models/mimu.py) fit it; so does any classifier built the same way.

Capture (`capture_layer`), for a batch (x [B, ...], y [B]) with L_b = CE(f(x_b), y_b):
    inp  [B, n]     a_b, the masked layer's input;
    out  [B, m]     o_b, its output activation as the head reads it: after the ReLU in the MLP (spec §2, as the
                    reference hooked its Linear+ReLU block), W·a_b itself in the ResNet (nothing between);
    grad [B, m, n]  ∂L_b/∂W = (∂L_b/∂(W a_b))·a_bᵀ, exact per sample.
One forward and one backward of Σ_b L_b in evaluation mode (`_influence.linear_grads_by_hooks_of_batch`; exact
because no example affects another in eval mode, BatchNorm included), with forward hooks on the masked layer and
the head for the activations of that same forward. The model's parameters, .grad, buffers and train/eval mode are
left as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._influence import linear_grads_by_hooks_of_batch

LossFn = Callable[[Tensor, Tensor], Tensor]
"""(logits [B, C], labels [B]) -> per-sample losses [B]."""

LOSSES: dict[str, LossFn] = {"ce": lambda logits, y: F.cross_entropy(logits, y, reduction="none")}

CONTRACT = ("its last two layers with parameters must be bias-free nn.Linear: the masked layer W [m, n], then the "
            "head Linear(m -> C) that gives the logits, as in mlp_mimu and resnet18_mimu")


class Capture(NamedTuple):
    """The masked layer's per-sample quantities for a batch of B samples (W [m, n])."""

    inp: Tensor    # [B, n]     input activation a
    out: Tensor    # [B, m]     output activation o, as the head reads it
    grad: Tensor   # [B, m, n]  ∂L_b/∂W


def _layers_with_parameters(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def _describe(name: str, module: nn.Module) -> str:
    return f"'{name or '(the model itself)'}' ({type(module).__name__})"


def check_mimu_head(model: nn.Module) -> tuple[str, str]:
    """(masked layer name, head name) of a classifier that fits MIMU's contract (module docstring), e.g.
    ("features.fc2", "head") for mlp_mimu. ValueError naming the model class and every violation otherwise."""
    layers = _layers_with_parameters(model)
    cls = type(model).__name__
    if len(layers) < 2:
        raise ValueError(f"{cls} does not fit MIMU's head contract ({CONTRACT}): it has {len(layers)} layer(s) with "
                         "parameters")
    (masked_name, masked), (head_name, head) = layers[-2], layers[-1]
    problems = []
    if not isinstance(head, nn.Linear):
        problems.append(f"its last layer {_describe(head_name, head)} is not an nn.Linear")
    elif head.bias is not None:
        problems.append(f"its last layer {_describe(head_name, head)} has a bias")
    if not isinstance(masked, nn.Linear):
        problems.append(f"found {type(masked).__name__} '{masked_name}' before the head, not an nn.Linear")
    elif masked.bias is not None:
        problems.append(f"the layer before the head {_describe(masked_name, masked)} has a bias")
    if isinstance(masked, nn.Linear) and isinstance(head, nn.Linear):
        if masked.out_features != head.in_features:
            problems.append(f"'{masked_name}' gives {masked.out_features} features but the head '{head_name}' takes "
                            f"{head.in_features}")
        if masked.weight.numel() < 2:
            problems.append(f"'{masked_name}' is a 1x1 layer: MIMU's graph needs at least 2 weights")
    if problems:
        raise ValueError(f"{cls} does not fit MIMU's head contract ({CONTRACT}): " + "; ".join(problems))
    return masked_name, head_name


class _LossTask:
    """The two questions `linear_grads_by_hooks_of_batch` asks of a task, for a batch (x, y); it also keeps the
    logits of the forward so that they can be checked against the head's output."""

    def __init__(self, loss: LossFn) -> None:
        self.loss, self.logits = loss, None

    def batch_size(self, batch: Any) -> int:
        return int(batch[0].shape[0])

    def per_example_loss(self, model: Callable[[Tensor], Any], batch: Any) -> Tensor:
        out = model(batch[0])
        self.logits = out.logits if hasattr(out, "logits") else out   # [B, C]
        return self.loss(self.logits, batch[1])


def _check_batch(model: nn.Module, x: Tensor, y: Tensor, head: nn.Linear) -> None:
    cls = type(model).__name__
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(f"capture_layer needs tensors x [B, ...] and y [B]; got {type(x).__name__} and "
                         f"{type(y).__name__}")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"labels y must be a 1-D integer tensor [B]; got dtype {y.dtype}, shape {tuple(y.shape)}")
    if x.dim() < 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must hold the same B >= 1 samples on dim 0")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= head.out_features:
        raise ValueError(f"labels must be in [0, {head.out_features}) for the {head.out_features} classes of {cls}; "
                         f"got values in [{low}, {high}]")


def capture_layer(model: nn.Module, layer_name: str, x: Tensor, y: Tensor, *, loss: str | LossFn = "ce") -> Capture:
    """The masked layer's input and output activations and exact per-sample weight gradients for the batch (x, y)
    (module docstring), from one batched forward and backward in evaluation mode. `layer_name` must be the masked
    layer of MIMU's contract (`check_mimu_head(model)[0]`); `loss`: "ce" (the spec's L = CE(f(x), y)) or a callable
    (logits [B, C], y [B]) -> per-sample losses [B]. x [B, ...], y [B] (moved to the model's device) ->
    Capture(inp [B, n], out [B, m], grad [B, m, n]) on that device, detached, in the weight's dtype."""
    masked_name, head_name = check_mimu_head(model)
    if layer_name != masked_name:
        raise ValueError(f"layer_name={layer_name!r} is not the masked layer of {type(model).__name__}: MIMU masks the "
                         f"bias-free Linear that feeds the head '{head_name}', here '{masked_name}'")
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(map(repr, LOSSES))} or a callable "
                             "(logits [B, C], y [B]) -> [B]")
        loss = LOSSES[loss]
    masked, head = model.get_submodule(masked_name), model.get_submodule(head_name)
    _check_batch(model, x, y, head)
    device = masked.weight.device
    x, y = x.to(device), y.to(device)
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {"masked": [], "head": []}

    def keep(key: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
            seen[key].append(((args[0] if args else kwargs["input"]).detach(), output.detach()))
        return hook

    task = _LossTask(loss)
    handles = [module.register_forward_hook(keep(key), with_kwargs=True)
               for key, module in (("masked", masked), ("head", head))]
    try:
        grad = linear_grads_by_hooks_of_batch(model, task, (x, y), [f"{masked_name}.weight"], check=True)
    finally:
        for h in handles:
            h.remove()
    batch, (m, n) = y.shape[0], masked.weight.shape
    calls = {k: len(v) for k, v in seen.items()}
    if calls != {"masked": 1, "head": 1}:
        raise ValueError(f"{type(model).__name__}: the masked layer '{masked_name}' and the head '{head_name}' must "
                         f"each run once per forward; they ran {calls['masked']} and {calls['head']} time(s)")
    (inp, _), (out, logits) = seen["masked"][0], seen["head"][0]
    if task.logits is None or logits.shape != task.logits.shape or not torch.equal(logits, task.logits.detach()):
        raise ValueError(f"{type(model).__name__}: the output of its last layer '{head_name}' is not the model's "
                         f"logits, so '{masked_name}' is not the layer before the head ({CONTRACT})")
    if inp.shape != (batch, n) or out.shape != (batch, m):
        raise ValueError(f"{type(model).__name__}: '{masked_name}' must read [B, {n}] and the head [B, {m}] for "
                         f"B = {batch}; got {tuple(inp.shape)} and {tuple(out.shape)}")
    dtype = masked.weight.dtype
    return Capture(inp.to(dtype), out.to(dtype), grad[f"{masked_name}.weight"])
