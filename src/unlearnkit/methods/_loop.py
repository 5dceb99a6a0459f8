"""THE gradient loop. Every gradient method, original training and retraining run through `run_loop`.

Device placement, mixed precision and multi-process launch (DDP, FSDP, DeepSpeed) are `accelerate launch` choices:
nothing here branches on them.

One "epoch" is a pass over the *driver* data set; the other one is cycled beside it (reshuffled on each pass):
- pairing="forget": the driver is the forget set (gradient ascent, NPO, ...);
- pairing="retain": the driver is the retain set, each retain batch paired with the next forget batch (NegGrad+);
- pairing="zip": stop at the shorter of the two (the Markov-chain seed's zip of two loaders).
`max_steps`, when set, replaces `epochs` as the length of the run.

Two optional hooks let a method go beyond one loss on fixed batches without another loop: `on_epoch(e)` runs before
each pass over the driver (a per-epoch loss weight, labels redrawn each epoch), and a caller-owned `optimizer` carries
its state (momentum) across several runs (SCRUB's alternating max and min passes).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import param

log = logging.getLogger("unlearnkit")

LossFn = Callable[[nn.Module, Any, Any, Mapping[str, nn.Module]], torch.Tensor]
"""loss_fn(model, forget_batch, retain_batch, frozen_models) -> scalar loss. A batch is None when unused."""


@dataclass
class LoopParams:
    """Optimisation hyperparameters shared by every gradient method and by (re)training."""

    lr: float = param(0.01, gt=0, help="learning rate")
    epochs: int = param(1, ge=0, help="passes over the driver data set (see pairing)")
    max_steps: int | None = param(None, gt=0, help="if set, the run length in optimiser steps (replaces epochs)")
    batch_size: int = param(64, gt=0, help="examples per forget / retain batch")
    optimizer: Literal["sgd", "adam", "adamw"] = param("sgd", help="optimiser")
    momentum: float = param(0.9, ge=0, lt=1, help="SGD momentum")
    weight_decay: float = param(5e-4, ge=0, help="weight decay")
    schedule: Literal["constant", "cosine", "linear"] = param("constant", help="learning-rate schedule over the run")
    grad_clip: float | None = param(None, gt=0, help="clip the global gradient norm to this value")
    seed: int = param(0, help="seed of the data order and any randomness of the method")


@dataclass
class LoopResult:
    model: nn.Module
    losses: list[float] = field(default_factory=list)  # one per optimiser step
    steps: int = 0
    seconds: float = 0.0
    diverged: bool = False  # stopped because the loss became non-finite (weights of the last finite step kept)


def record(method: Any, result: LoopResult) -> nn.Module:
    """Store a run's diagnostics on the method (losses_, steps_, seconds_, diverged_) and return its model."""
    method.losses_, method.steps_ = result.losses, result.steps
    method.seconds_, method.diverged_ = result.seconds, result.diverged
    return result.model


def default_accelerator():
    """The process-wide Accelerator (created on first use; honours `accelerate launch` settings)."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        _ACCELERATOR = Accelerator()
    return _ACCELERATOR


_ACCELERATOR = None


def release(acc: Any) -> None:
    """`accelerator.free_memory()` without its `gc.collect()`: drop the references `prepare()` kept, so the next run
    starts clean. The collection cost about 0.2 s per call, inside every method's timed unlearning (SCRUB makes two
    loop runs per epoch); the objects are freed as usual when the caller drops them. A DeepSpeed engine still gets
    the full teardown."""
    if getattr(acc, "deepspeed_engine_wrapped", None) is not None:
        acc.free_memory()
        return
    acc._schedulers, acc._optimizers, acc._models, acc._dataloaders = [], [], [], []  # as free_memory() does
    acc.step = 0


def make_optimizer(params: LoopParams, parameters) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay)
    cls = torch.optim.Adam if params.optimizer == "adam" else torch.optim.AdamW
    return cls(parameters, lr=params.lr, weight_decay=params.weight_decay)


def _schedule(kind: str, total: int) -> Callable[[int], float]:
    if kind == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    if kind == "linear":
        return lambda step: max(0.0, 1 - step / max(total, 1))
    return lambda step: 1.0


def _loader(dataset: Dataset, batch_size: int, seed: int, collate_fn=None) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate_fn)


def _cycle(loader) -> Iterator[Any]:
    while True:
        yield from loader


def _batches(driver, other, pairing: str, epochs: int, max_steps: int | None,
             on_epoch: Callable[[int], None] | None = None) -> Iterator[tuple[Any, Any]]:
    """(driver batch, other batch or None) pairs for the whole run; `on_epoch(e)` before pass e over the driver."""
    others = _cycle(other) if other is not None else itertools.repeat(None)
    passes = itertools.count() if max_steps else range(epochs)
    steps = 0
    for epoch in passes:
        if on_epoch is not None:
            on_epoch(epoch)
        source = zip(driver, other, strict=False) if pairing == "zip" else zip(driver, others, strict=False)
        for pair in source:
            yield pair
            steps += 1
            if max_steps and steps >= max_steps:
                return


def _non_finite(loss: torch.Tensor, acc: Any) -> bool:
    """Whether the loss is NaN/inf on ANY process (all processes must stop together, or the others would wait at
    the next all-reduce for ever)."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if acc.num_processes > 1:
        bad = acc.reduce(bad, reduction="sum")
    return bool(bad.item() > 0)


def run_loop(model: nn.Module, loss_fn: LossFn, params: LoopParams, *, forget: Dataset | None = None,
             retain: Dataset | None = None, pairing: Literal["forget", "retain", "zip"] = "forget",
             frozen: Mapping[str, nn.Module] | None = None, trainable: Callable[[str], bool] | None = None,
             before_step: Callable[[nn.Module], None] | None = None,
             after_step: Callable[[nn.Module, int], None] | None = None,
             on_epoch: Callable[[int], None] | None = None, optimizer: torch.optim.Optimizer | None = None,
             train_mode: bool = True, collate_fn=None, accelerator=None, desc: str = "unlearn",
             progress: bool | None = None) -> LoopResult:
    """Optimise `model` in place with `loss_fn` and return it (unwrapped) with the per-step losses.

    frozen:      reference/teacher models; prepared in evaluation mode, no gradients, passed to `loss_fn`.
    trainable:   predicate on parameter names; the others are frozen for the run (e.g. IMU's head-only update).
    before_step: called after backward and clipping, before the optimiser step (e.g. SalUn's gradient mask).
    after_step:  called as after_step(model, steps_done) after every optimiser step (e.g. evaluation curves); the
                 model's train/eval mode is restored afterwards.
    on_epoch:    called as on_epoch(e) before the first batch of pass e (0-based) over the driver data set.
    optimizer:   a caller-owned optimiser over `model`'s parameters, used instead of a fresh one built from
                 `params`, so its state (momentum) carries over between runs; `params.schedule` spans this run only.
    """
    if forget is None and retain is None:
        raise ValueError("run_loop needs a forget or a retain data set")
    if pairing == "zip" and (forget is None or retain is None):
        raise ValueError("pairing='zip' needs both a forget and a retain data set")
    acc = accelerator or default_accelerator()
    driver_is_forget = pairing == "forget" and forget is not None or retain is None
    sets = (forget, retain) if driver_is_forget else (retain, forget)
    loaders = [None if s is None else _loader(s, params.batch_size, params.seed + i, collate_fn)
               for i, s in enumerate(sets)]

    names = dict(model.named_parameters())
    chosen = [n for n in names if trainable is None or trainable(n)]
    if not chosen:
        raise ValueError("no trainable parameter selected")
    saved_flags = {n: p.requires_grad for n, p in names.items()}
    for n, p in names.items():
        p.requires_grad_(n in chosen and saved_flags[n])
    raw_optimizer = optimizer if optimizer is not None else make_optimizer(
        params, [names[n] for n in chosen if names[n].requires_grad])
    # The scheduler (below) stays unprepared: accelerate's wrapper steps it once per process, which would make
    # the schedule depend on the world size.
    model, optimizer = acc.prepare(model, raw_optimizer)
    loaders = [None if dl is None else acc.prepare_data_loader(dl) for dl in loaders]
    # after preparation: in a multi-process run each process iterates over its own shard
    per_epoch = len(loaders[0]) if pairing != "zip" else min(len(loaders[0]), len(loaders[1]))
    total = params.max_steps or params.epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(raw_optimizer, _schedule(params.schedule, total))
    refs = {}
    for key, ref in (frozen or {}).items():
        ref = acc.prepare_model(ref.requires_grad_(False), evaluation_mode=True)
        refs[key] = ref.eval()

    model.train(train_mode)
    losses: list[torch.Tensor] = []
    diverged = False
    show = acc.is_local_main_process if progress is None else progress and acc.is_local_main_process
    from tqdm.auto import tqdm

    # disable=None: tqdm shows the bar on a terminal only, so logs and CI output stay clean.
    bar = tqdm(total=total, desc=desc, disable=None if show else True, leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for step, (first, second) in enumerate(_batches(loaders[0], loaders[1], pairing, params.epochs,
                                                        params.max_steps, on_epoch)):
            f_batch, r_batch = (first, second) if driver_is_forget else (second, first)
            loss = loss_fn(model, f_batch, r_batch, refs)
            if _non_finite(loss, acc):  # e.g. unbounded gradient ascent: stop before the step spoils weights
                warnings.warn(f"{desc}: the loss became non-finite ({loss.item()}) at step {step}; stopping with the "
                              "weights of the last finite step", RuntimeWarning, stacklevel=2)
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            if params.grad_clip:
                acc.clip_grad_norm_(model.parameters(), params.grad_clip)
            if before_step is not None:
                before_step(acc.unwrap_model(model))
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
            if after_step is not None:
                after_step(acc.unwrap_model(model), step + 1)
                model.train(train_mode)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1].item():.4f}")
                if acc.trackers:
                    acc.log({f"{desc}/loss": losses[-1].item()}, step=step)
    finally:
        bar.close()
        for n, p in names.items():
            p.requires_grad_(saved_flags[n])
    seconds = time.perf_counter() - start
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    if values:
        log.debug("%s: %d steps, loss %.4f -> %.4f, %.2fs", desc, len(values), values[0], values[-1], seconds)
    model = acc.unwrap_model(model)
    release(acc)
    return LoopResult(model.train(False), values, len(values), seconds, diverged)
