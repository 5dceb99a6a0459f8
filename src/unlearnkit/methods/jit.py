"""JiT `jit`: zero-shot unlearning by Lipschitz smoothing around the forget points (Foster et al., arXiv 2402.01401,
TMLR 2025, jwf40/Information-Theoretic-Unlearning; specs/vision.md §3). Forget inputs only: no retain data, no labels.

    ℓ(x) = (1/N) Σ_j ‖f(x) − f(x + ξ_j)‖₂ / ‖ξ_j‖₂,   ξ_j ~ N(0, σ²I)    f = logits, ‖ξ‖ over the flattened input
    for each mini-batch X ⊂ D_f, `epochs` passes:
        zero_grad;  L = mean_{x∈X} ℓ(x);  L.backward();  SGD(lr=η) step      (no momentum, no weight decay)

f(x + ξ) is detached: the gradient flows through f(x) only. The N·|X| noisy inputs of a batch go through the model
as ONE forward pass [N·B, ...] (`jit_loss`; `jit_loss_loop` is the per-draw formulation, N passes, same value).
The model is in eval mode (dropout and BatchNorm would treat f(x) and f(x+ξ) differently; BN models get a warning,
the paper names BN as a problem). Noise is added in the model's input (normalised) space, with a seeded generator.
`clamp` (default None) clips x+ξ to per-channel (low, high) bounds of the valid input range (§8 V11); the
denominator is then ‖clamp(x+ξ) − x‖.

faithful=True reproduces the reference code (§8 V10, for comparing with published numbers): per-batch SUM over
samples, gradients never zeroed (step k applies Σ_{i≤k} g_i), train mode, x+ξ clamped to the whole batch's min/max
with the denominator from the clamped difference, and the per-draw loop (N passes, as the reference runs BN).

One process: the forget set is small and the update deterministic, so `accelerator` is not used (every process of a
multi-process run computes the same update).

σ / η of the paper, VGG (= vgg11 without BN) | ViT-B/16, with N = 25 and the forget batch:
    full-class CIFAR-100  0.5 / 3e-4  | 0.8 / 1.5   batch 128      (the defaults here)
    sub-class CIFAR-20    0.01 / 3e-4 | 1.5 / 0.5   batch 64
    random CIFAR-10       0.01 / 3e-4 | 0.5 / 0.1   batch 128
Reference notebook toy: SimpleCNN, N=100, σ=0.8, η=2e-5, batch 64. ViT with η=1.5 is brittle (JiT issue #1).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, default_collate

from ..config import param, validate
from ._base import check_data, register_method

Logits = Callable[[Tensor], Tensor]  # inputs [M, ...] -> logits [M, C]


def perturb(x: Tensor, noise: Tensor, bounds: tuple[Tensor, Tensor] | None = None,
            faithful: bool = False) -> tuple[Tensor, Tensor]:
    """(x + ξ, optionally clamped; the perturbation actually applied). x [B, ...], noise [..., B, ...]."""
    if faithful:  # the reference: clamp to the whole batch's min / max
        noisy = (x + noise).clamp(x.min(), x.max())
        return noisy, noisy - x
    if bounds is None:
        return x + noise, noise
    noisy = torch.maximum(torch.minimum(x + noise, bounds[1]), bounds[0])
    return noisy, noisy - x


def _ratio(out: Tensor, noisy_out: Tensor, delta: Tensor, input_dims: int) -> Tensor:
    """‖f(x) − f(x+ξ)‖₂ / ‖ξ‖₂ per draw and example; delta [..., B, *input], norm over the last input_dims dims."""
    num = torch.linalg.vector_norm(out - noisy_out, dim=-1)
    den = torch.linalg.vector_norm(delta.flatten(start_dim=delta.dim() - input_dims), dim=-1)
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)  # den = 0 only where x+ξ = x, i.e. num = 0


def jit_loss(f: Logits, x: Tensor, noise: Tensor, *, bounds: tuple[Tensor, Tensor] | None = None,
             faithful: bool = False) -> Tensor:
    """L over the batch x [B, ...] with the noise draws noise [N, B, ...]: one forward pass of the N·B noisy
    inputs. Mean of ℓ(x) over the batch (faithful: sum)."""
    n, b = noise.shape[:2]
    out = f(x)  # [B, C]
    noisy, delta = perturb(x, noise, bounds, faithful)  # [N, B, ...]
    with torch.no_grad():
        noisy_out = f(noisy.flatten(0, 1)).view(n, b, -1)  # [N, B, C]
    per_x = _ratio(out, noisy_out, delta, x.dim() - 1).mean(0)  # ℓ(x) [B]
    return per_x.sum() if faithful else per_x.mean()


def jit_loss_loop(f: Logits, x: Tensor, noise: Tensor, *, bounds: tuple[Tensor, Tensor] | None = None,
                  faithful: bool = False) -> Tensor:
    """The same L as `jit_loss`, one forward pass per noise draw (the reference's formulation)."""
    out = f(x)  # [B, C]
    ratios = []
    for draw in noise:  # [B, ...]
        noisy, delta = perturb(x, draw, bounds, faithful)
        with torch.no_grad():
            noisy_out = f(noisy)  # [B, C]
        ratios.append(_ratio(out, noisy_out, delta, x.dim() - 1))
    per_x = torch.stack(ratios).mean(0)  # [B]
    return per_x.sum() if faithful else per_x.mean()


def clamp_bounds(clamp: list[tuple[float, float]] | None, input_shape: tuple[int, ...],
                 where: str = "method.jit") -> tuple[Tensor, Tensor] | None:
    """Per-channel (low, high) bounds broadcastable to an input [..., C, *rest] (C = input_shape[0]); 1 pair = all
    channels. Raises ValueError naming the bad value."""
    if clamp is None:
        return None
    channels = input_shape[0] if input_shape else 1
    if len(clamp) not in (1, channels):
        raise ValueError(f"{where}.clamp has {len(clamp)} (low, high) pairs; the inputs have shape "
                         f"{tuple(input_shape)}: give 1 pair or {channels} (one per channel)")
    for low, high in clamp:
        if not low < high:
            raise ValueError(f"{where}.clamp pair ({low}, {high}): low must be < high")
    low, high = torch.tensor(clamp, dtype=torch.float32).T  # [1 or C] each
    rest = [1] * max(len(input_shape) - 1, 0)
    return low.view(-1, *rest), high.view(-1, *rest)


@register_method("jit", paper="Foster et al., arXiv 2402.01401 (JiT: zero-shot Lipschitz unlearning)",
                 tasks=("classifier",))
@dataclass
class JiT:
    """Zero-shot unlearning: make the model Lipschitz-smooth around each forget input (inputs only, no labels)."""

    uses: ClassVar[tuple[str, ...]] = ("forget",)
    # One step at η=3e-4 on 12 toy points moves nothing measurable: the conformance toy takes a CIFAR-size step.
    toy_overrides: ClassVar[dict[str, Any]] = {"lr": 1e-2, "epochs": 3}
    sigma: float = param(0.5, gt=0, help="σ: std of the input noise ξ (model input space)")
    lr: float = param(3e-4, gt=0, help="η: SGD learning rate (no momentum, no weight decay)")
    n_noise: int = param(25, ge=1, help="N: noise draws per forget input")
    batch_size: int = param(128, gt=0, help="forget batch size")
    epochs: int = param(1, ge=1, help="passes over the forget set")
    clamp: list[tuple[float, float]] | None = param(
        None, help="clip x+ξ to per-channel [low, high] of the valid input range: one pair or one per channel")
    faithful: bool = param(False, help="reproduce the reference code: sum, no zero_grad, train mode, batch clamp")
    seed: int = param(0, help="seed of the noise")

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None) -> nn.Module:
        where = f"method.{self.registry_name}"
        validate(self, where=where)
        check_data(self, data)
        if self.faithful and self.clamp is not None:
            raise ValueError(f"{where}: faithful=True clamps to the batch's min/max; clamp={self.clamp} must be None")
        shape = tuple(task.inputs(default_collate([data.forget[0]])).shape[1:])
        bounds = clamp_bounds(self.clamp, shape, where)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            warnings.warn(f"{where}: the model has BatchNorm layers, which the JiT paper names as a problem for "
                          "Lipschitz smoothing; results may be poor", UserWarning, stacklevel=2)
        start = time.perf_counter()
        self.losses_ = run_jit(self, model, task, data.forget, bounds,
                               jit_loss_loop if self.faithful else jit_loss)
        self.steps_, self.seconds_ = len(self.losses_), time.perf_counter() - start
        return model.eval()


def run_jit(method: JiT, model: nn.Module, task: Any, forget: Any, bounds: tuple[Tensor, Tensor] | None = None,
            loss: Callable[..., Tensor] = jit_loss) -> list[float]:
    """The JiT update of `model` in place with `method`'s hyperparameters and the loss formulation `loss`
    (jit_loss or jit_loss_loop); returns the loss of every step. Forget batches in data-set order."""
    device = next(model.parameters()).device
    bounds = None if bounds is None else (bounds[0].to(device), bounds[1].to(device))
    gen = torch.Generator(device=device).manual_seed(method.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train(method.faithful)
    model.zero_grad(set_to_none=True)  # faithful: zeroed once, then accumulated (the reference)
    losses: list[float] = []
    for _ in range(method.epochs):
        for batch in DataLoader(forget, batch_size=method.batch_size, shuffle=False):
            x = task.inputs(batch).to(device)  # [B, ...]
            noise = method.sigma * torch.randn((method.n_noise, *x.shape), generator=gen, device=device).to(x)
            if not method.faithful:
                model.zero_grad(set_to_none=True)
            value = loss(lambda inputs: task.logits(model, (inputs,)), x, noise, bounds=bounds,
                         faithful=method.faithful)
            if not math.isfinite(value.item()):  # e.g. η too large: keep the weights of the last finite step
                warnings.warn(f"jit: the loss became non-finite at step {len(losses)}; stopping", RuntimeWarning,
                              stacklevel=3)
                return losses
            value.backward()
            with torch.no_grad():  # plain SGD θ ← θ − η·g (torch.optim's first use imports torch._dynamo, ~1.5 s)
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-method.lr)
            losses.append(value.item())
    model.zero_grad(set_to_none=True)
    return losses
