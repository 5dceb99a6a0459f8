r"""Representation misdirection for unlearning `rmu` (Li et al. 2024, "The WMDP benchmark", arXiv 2403.03218;
specs/llm.md §2.6).

    h(x) = output of decoder block ℓ [B, T, d];   u = r/‖r‖₂, r ~ U[0,1)^d drawn from the method seed
    L_f  = mean_i (1/|A_i|)·Σ_{t∈A_i} (1/d)·‖h_θ(x_i)_t − c·u‖²                 # push forget activations to noise
    L_r  = mean_i (1/|A_i|)·Σ_{t∈A_i} (1/d)·‖h_θ(x_i)_t − h_ref(x_i)_t‖²        # EMBED_DIFF on the retain batch
    L    = γ·L_f + α·L_r

A_i = the positions of example i whose label is not −100 (before the shift). The block is found once, before the
loop, and hooked as a module object, so the hook survives wrappers that rename modules (accelerate, peft/LoRA).
The loss never reads the layers above ℓ, so in a single-process run the forward stops at ℓ (`stop_at_layer`); the
parameters the loss cannot reach (found once from its autograd graph) are frozen for the run (`unreached_`), so they
get no optimiser state and DDP needs no find_unused_parameters.
Only the parameters whose names match `trainable` (regexes, re.fullmatch, names as in `model.named_parameters()`)
go to the optimiser; the rest have requires_grad=False for the run (§6 P8). WMDP recipe: steering_coeff=20,
trainable=[r"model\.layers\.(5|6|7)\.mlp\.down_proj\.weight"].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..config import param
from . import losses
from ._base import ForgetRetainObjective, register_method
from ._influence import map_tensors
from ._loop import default_accelerator, record, run_loop


class _Reached(Exception):
    """Raised by the capture hook to end a forward pass at the hooked block."""


def find_block(model: nn.Module, name: str) -> nn.Module:
    """The submodule `name`; else the unique submodule whose name ends with "." + name (a model wrapped by peft or
    accelerate). ValueError listing the blocks when there is none."""
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    suffixed = [m for n, m in modules.items() if n.endswith("." + name)]
    if len(suffixed) == 1:
        return suffixed[0]
    blocks = [f"{n}.{i}" if n else str(i) for n, m in modules.items() if isinstance(m, nn.ModuleList)
              for i in range(len(m))] or [n for n in modules if n][:20]
    raise ValueError(f"layer '{name}' is not a module of {type(model).__name__}"
                     f"{' (it is ambiguous)' if suffixed else ''}; blocks: {', '.join(blocks[:64])}")


def block_output(task: Any, model: nn.Module, block: nn.Module, batch: Any, stop: bool = True) -> torch.Tensor:
    """Output [B, T, d] of `block` (a module of `model`) on `batch`; the forward pass ends there when `stop`."""
    captured: list[torch.Tensor] = []

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)
        if stop:
            raise _Reached

    handle = block.register_forward_hook(hook)
    try:
        task.logits(model, batch)
    except _Reached:
        pass
    finally:
        handle.remove()
    return captured[-1]


def control_vector(d: int, seed: int) -> torch.Tensor:
    """u = r/‖r‖₂ with r ~ U[0,1)^d from a generator seeded with `seed`: the same u for a seed, on any device."""
    r = torch.rand(d, generator=torch.Generator().manual_seed(seed))
    return r / r.norm()


def select_trainable(model: nn.Module, patterns: list[str]) -> set[str]:
    """Names of the parameters matching any regex of `patterns` in full (re.fullmatch); every name when empty."""
    names = [n for n, _ in model.named_parameters()]
    if not patterns:
        return set(names)
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as err:
        raise ValueError(f"trainable: invalid regular expression {err.pattern!r}: {err}") from err
    chosen = {n for n in names if any(c.fullmatch(n) for c in compiled)}
    if not chosen:
        raise ValueError(f"trainable={patterns} matches no parameter (regexes matched in full); parameters include: "
                         f"{', '.join(names[:20])}")
    return chosen


def parameters_reached(loss: torch.Tensor) -> set[int]:
    """ids of the leaf tensors (parameters) that `loss` depends on, read off its autograd graph: no gradient is
    computed, so it costs nothing beyond the forward pass that built `loss`."""
    seen, reached, stack = set(), set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):  # AccumulateGrad: a leaf that would receive a gradient
            reached.add(id(fn.variable))
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return reached


@register_method("rmu", paper="Li et al. 2024, arXiv 2403.03218 (WMDP, RMU)", tasks=("causal_lm",))
@dataclass
class RMU(ForgetRetainObjective):
    """Steer the forget set's activations at one block towards a fixed random direction; keep the retain set's."""

    toy_overrides: ClassVar[dict[str, Any]] = {"layer": "layers.1"}
    layer: str = param("model.layers.7", help="the decoder block whose output is steered (a module name)")
    steering_coeff: float = param(2.0, ge=0, help="c: the norm of the target c·u (TOFU 2, WMDP 20)")
    retain_loss: Literal["embed_diff", "nll", "kl", "none"] = param(
        "embed_diff", help="retain loss: embed_diff (block outputs vs the original's), NLL, KL(ref‖θ) or none")
    trainable: list[str] = param([], help="regexes (re.fullmatch) of the parameter names to update; empty = all")
    stop_at_layer: bool = param(True, help="end each forward pass at the hooked block (same loss, less compute; "
                                           "single-process runs only)")

    @property
    def needs_reference(self) -> bool:
        return self.retain_loss in ("embed_diff", "kl")

    def blocks(self, model: nn.Module, frozen: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        """The hooked block of the model and, for embed_diff, of the reference."""
        found = {"model": find_block(model, self.layer)}
        if self.retain_loss == "embed_diff":
            found["ref"] = find_block(frozen["ref"], self.layer)
        return found

    def loss(self, task, model, forget, retain, frozen, *, blocks: Mapping[str, nn.Module] | None = None,
             stop: bool | None = None):
        """γ·L_f + α·L_retain; `blocks` as found by `blocks()` (looked up by name when None), `stop` overrides
        `stop_at_layer`."""
        blocks = blocks or self.blocks(model, frozen)
        stop = self.stop_at_layer if stop is None else stop
        h = block_output(task, model, blocks["model"], forget, stop)  # [B, T, d]
        target = self.steering_coeff * control_vector(h.shape[-1], self.seed).to(h.device)
        total = self.gamma * losses.embedding_distance(h, target, task.labels(forget) != -100)
        if self.retain_loss == "embed_diff":
            h_r = block_output(task, model, blocks["model"], retain, stop)
            with torch.no_grad():
                h_ref = block_output(task, frozen["ref"], blocks["ref"], retain, stop)
            return total + self.alpha * losses.embedding_distance(h_r, h_ref, task.labels(retain) != -100)
        if "retain" not in self.uses:
            return total
        return total + self.alpha * losses.retain_term(self.retain_loss, task, model, retain, frozen.get("ref"),
                                                       self.kl_reduction)

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        self.check(data)
        chosen = select_trainable(model, self.trainable)
        frozen = self.frozen_models(model)
        blocks = self.blocks(model, frozen)  # module objects, found before any wrapping
        acc = accelerator or default_accelerator()
        # Parameters the loss never reaches (with embed_diff: every layer above ℓ, the final norm, the LM head) are
        # frozen for the run: the same updates, no optimiser state for them, and DDP needs no find_unused_parameters.
        # Found from the autograd graph of the loss on two examples (a forward pass, no backward).
        probe = self.loss(task, model, _on(_first_items(data.forget), model),
                          _on(_first_items(data.retain), model) if "retain" in self.uses else None, frozen,
                          blocks=blocks, stop=False)
        reached = parameters_reached(probe)
        del probe
        self.unreached_ = sorted(n for n, p in model.named_parameters() if n in chosen and id(p) not in reached)
        if not chosen - set(self.unreached_):
            raise ValueError(f"method.rmu.trainable={self.trainable} selects only parameters the loss does not reach "
                             f"(above layer '{self.layer}'): {self.unreached_[:5]}")
        chosen -= set(self.unreached_)
        # Ending a forward inside a DDP / FSDP / DeepSpeed wrapper would skip its post-forward bookkeeping (DDP would
        # then silently skip the gradient all-reduce), so a multi-process run computes the full forward.
        stop = self.stop_at_layer and acc.num_processes == 1

        def loss(m: nn.Module, forget: Any, retain: Any, refs: Any) -> torch.Tensor:
            return self.loss(task, m, forget, retain, refs, blocks=blocks, stop=stop)

        result = run_loop(model, loss, self, forget=data.forget, retain=data.retain if "retain" in self.uses else None,
                          pairing=self.pairing, frozen=frozen, trainable=chosen.__contains__, accelerator=acc,
                          desc=self.registry_name, after_step=after_step)
        return record(self, result)


def _first_items(dataset: Any, n: int = 2) -> Any:
    """The first `n` items of `dataset` as one batch (its own collate when it has one)."""
    from torch.utils.data import default_collate

    items = [dataset[i] for i in range(min(n, len(dataset)))]
    return getattr(dataset, "collate", default_collate)(items)


def _on(batch: Any, model: nn.Module) -> Any:
    device = next(model.parameters()).device
    return map_tensors(batch, lambda t: t.to(device))
