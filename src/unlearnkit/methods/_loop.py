"""THE gradient loop. Every gradient method, original training and retraining run through `run_loop`.

Device placement, mixed precision and multi-process launch (DDP, FSDP, DeepSpeed) are `accelerate launch` choices
(configs/accelerate/*.yaml): nothing here branches on them, except to tell DeepSpeed its micro-batch size and where
an accumulation ends.

One "epoch" is a pass over the *driver* data set; the other one is cycled beside it (reshuffled on each pass):
- pairing="forget": the driver is the forget set (gradient ascent, NPO, ...);
- pairing="retain": the driver is the retain set, each retain batch paired with the next forget batch (NegGrad+);
- pairing="zip": stop at the shorter of the two (the Markov-chain seed's zip of two loaders).
`max_steps`, when set, replaces `epochs` as the length of the run.

Two optional hooks let a method go beyond one loss on fixed batches without another loop: `on_epoch(e)` runs before
each pass over the driver (a per-epoch loss weight, labels redrawn each epoch), and a caller-owned `optimizer` carries
its state (momentum) across several runs (SCRUB's alternating max and min passes).

Scale options (LoopParams; all off by default, and then the loop is exactly the plain one):
- `grad_accum` k: one optimiser step per k batches, on the mean of their losses (each divided by the number of
  batches in its group). An accumulation never spans two passes over the driver: the last group of a pass may be
  shorter (its gradient is then the mean over its own batches). `max_steps`, the schedule, `after_step` and the
  recorded losses (the mean over the group) count OPTIMISER steps. In a multi-process run the non-final batches of
  a group run under `accelerator.no_sync`, so DDP all-reduces once per step.
- `warmup_epochs` w: the learning rate rises linearly from 0 over ⌊w·batches_per_epoch/k⌋ optimiser steps, then
  follows `schedule` over the remaining ones (Hugging Face's warmup: lr·s/W at step s < W; "linear" decays to 0).
  batches_per_epoch is counted on the PREPARED loader, i.e. per process: with N driver examples that is
  ⌊w·N/(batch·k·world_size)⌋ (specs/llm.md §1) when batch·world_size divides N, and it uses the real world size
  (`accelerator.num_processes`), never a device count (P9).
- `lora_r` > 0: the model is wrapped in LoRA adapters (models/llm.apply_lora) on the `lora_targets` modules, only
  the adapters train, and the adapters are merged back (`merge_lora`), so the caller gets the original architecture
  and parameter names. The frozen reference models are never wrapped. With a `trainable` predicate, an adapter
  trains when the predicate accepts the name of the BASE weight it modifies (e.g. `layers.0.qkv.weight`); no
  non-adapter parameter trains. The adapters are initialised from `seed`.
- `gradient_checkpointing`: activation checkpointing for the run on models that support it (transformers), turned
  off again afterwards if it was off; a no-op on other models.
The run's set-up (world size, per-device batch, accumulation, DeepSpeed or not, ...; P18) is `LoopResult.setup`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import math
import os
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
    warmup_epochs: float = param(0.0, ge=0, help="linear learning-rate warmup over this many epochs of optimiser "
                                                 "steps, then `schedule` over the rest")
    grad_accum: int = param(1, gt=0, help="gradient accumulation: one optimiser step per this many batches")
    lora_r: int = param(0, ge=0, help="LoRA rank (0 = off): train low-rank adapters, merged back at the end")
    lora_alpha: float = param(16.0, gt=0, help="LoRA scaling alpha (the update is scaled by alpha / r)")
    lora_dropout: float = param(0.0, ge=0, lt=1, help="dropout on the LoRA adapter input")
    lora_targets: list[str] = param(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                    help="module names (or name suffixes) that get LoRA adapters")
    gradient_checkpointing: bool = param(False, help="activation checkpointing for the run (models that support "
                                                     "it; a no-op otherwise)")


@dataclass
class LoopResult:
    model: nn.Module
    losses: list[float] = field(default_factory=list)  # one per optimiser step
    steps: int = 0
    seconds: float = 0.0
    diverged: bool = False  # stopped because the loss became non-finite (weights of the last finite step kept)
    # world_size, per_device_batch, grad_accum, effective_batch, deepspeed, distributed_type, mixed_precision,
    # lora_r, gradient_checkpointing, warmup_steps, total_steps: results depend on these (specs/llm.md §6 P18)
    setup: dict[str, Any] = field(default_factory=dict)


def record(method: Any, result: LoopResult) -> nn.Module:
    """Store a run's diagnostics on the method (losses_, steps_, seconds_, diverged_, setup_) and return its
    model."""
    method.losses_, method.steps_ = result.losses, result.steps
    method.seconds_, method.diverged_ = result.seconds, result.diverged
    method.setup_ = result.setup
    return result.model


def default_accelerator():
    """The process-wide Accelerator (created on first use; honours `accelerate launch` settings). A multi-process
    launch on a machine without an accelerator device (`accelerate launch --multi_gpu --num_processes 2` or torchrun
    on CPU) runs as multi-CPU DDP over gloo, as ACCELERATE_USE_CPU=true would ask, instead of N independent copies
    of the whole run."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        _ACCELERATOR = Accelerator(cpu=True) if _launched_without_device() else Accelerator()
    return _ACCELERATOR


def _launched_without_device() -> bool:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    probe = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    return not (probe.is_available() if probe is not None else torch.cuda.is_available())


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


def _schedule(kind: str, total: int, warmup: int = 0) -> Callable[[int], float]:
    """The learning-rate factor at optimiser step s (0-based) of a `total`-step run: s/warmup during the warmup
    (Hugging Face's get_*_schedule_with_warmup), then `kind` over the remaining total − warmup steps."""
    if warmup > 0:
        decay = _schedule(kind, total - warmup)
        return lambda step: step / warmup if step < warmup else decay(step - warmup)
    if kind == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    if kind == "linear":
        return lambda step: max(0.0, 1 - step / max(total, 1))
    return lambda step: 1.0


def _loader(dataset: Dataset, batch_size: int, seed: int, collate_fn=None) -> DataLoader:
    """A shuffled loader; the collate is `collate_fn`, else the data set's own `collate` method (e.g. one that trims
    padding), else PyTorch's default."""
    collate_fn = collate_fn or getattr(dataset, "collate", None)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen, collate_fn=collate_fn)


def _cycle(loader) -> Iterator[Any]:
    while True:
        yield from loader


def _batches(driver, other, pairing: str, epochs: int, max_steps: int | None,
             on_epoch: Callable[[int], None] | None = None, accum: int = 1) -> Iterator[list[tuple[Any, Any]]]:
    """The run's (driver batch, other batch or None) pairs in groups of `accum`, one group per optimiser step (the
    last group of a pass may be shorter); `on_epoch(e)` before pass e over the driver; `max_steps` counts groups."""
    others = _cycle(other) if other is not None else itertools.repeat(None)
    passes = itertools.count() if max_steps else range(epochs)
    steps = 0
    for epoch in passes:
        if on_epoch is not None:
            on_epoch(epoch)
        source = zip(driver, other, strict=False) if pairing == "zip" else zip(driver, others, strict=False)
        while group := list(itertools.islice(source, accum)):
            yield group
            steps += 1
            if max_steps and steps >= max_steps:
                return


def _deepspeed_batch(acc: Any, batch_size: int) -> None:
    """DeepSpeed wants its micro-batch size at `prepare`, which accelerate reads from a data loader passed with the
    model; the loop prepares its loaders on their own, so it states the size (for every run: runs may differ)."""
    config = acc.state.deepspeed_plugin.deepspeed_config
    accum = config.get("gradient_accumulation_steps", "auto")
    accum = acc.gradient_accumulation_steps if accum == "auto" else int(accum)
    config["train_micro_batch_size_per_gpu"] = batch_size
    config["train_batch_size"] = batch_size * accum * acc.num_processes


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
             after_step: Callable[[nn.Module, int], bool | None] | None = None,
             on_epoch: Callable[[int], None] | None = None, optimizer: torch.optim.Optimizer | None = None,
             train_mode: bool = True, collate_fn=None, accelerator=None, desc: str = "unlearn",
             progress: bool | None = None) -> LoopResult:
    """Optimise `model` in place with `loss_fn` and return it (unwrapped) with the per-step losses.

    frozen:      reference/teacher models; prepared in evaluation mode, no gradients, passed to `loss_fn`; never
                 LoRA-wrapped.
    trainable:   predicate on parameter names; the others are frozen for the run (e.g. IMU's head-only update). With
                 LoRA it is asked about the base weight each adapter modifies (see the module docstring).
    before_step: called after backward and clipping, before the optimiser step (e.g. SalUn's gradient mask); with
                 grad_accum > 1, once per step, after the group's backward passes. With LoRA the hooks and
                 `loss_fn` see the wrapped model (adapter parameter names).
    after_step:  called as after_step(model, steps_done) after every optimiser step (e.g. evaluation curves); the
                 model's train/eval mode is restored afterwards. Returning True stops the run after this step (early
                 stopping); in a multi-process run every process must return the same value (decide on gathered
                 metrics).
    on_epoch:    called as on_epoch(e) before the first batch of pass e (0-based) over the driver data set.
    optimizer:   a caller-owned optimiser over `model`'s parameters, used instead of a fresh one built from
                 `params`, so its state (momentum) carries over between runs; `params.schedule` spans this run only.
    """
    if forget is None and retain is None:
        raise ValueError("run_loop needs a forget or a retain data set")
    if pairing == "zip" and (forget is None or retain is None):
        raise ValueError("pairing='zip' needs both a forget and a retain data set")
    lora = params.lora_r > 0
    if lora:
        _require_lora(params.lora_r)
        if optimizer is not None:
            raise ValueError(f"lora_r={params.lora_r}: a caller-owned optimizer cannot train the LoRA adapters, which "
                             "each run creates and merges; pass optimizer=None or set lora_r=0")
    acc = accelerator or default_accelerator()
    driver_is_forget = pairing == "forget" and forget is not None or retain is None
    sets = (forget, retain) if driver_is_forget else (retain, forget)
    loaders = [None if s is None else _loader(s, params.batch_size, params.seed + i, collate_fn)
               for i, s in enumerate(sets)]

    base = model
    names = dict(model.named_parameters())  # the caller's parameters: LoRA wraps the modules, keeps these objects
    saved_flags = {n: p.requires_grad for n, p in names.items()}
    checkpointing_off = _enable_checkpointing(model) if params.gradient_checkpointing else None
    peft_model = None
    try:
        if lora:
            peft_model = model = _apply_lora(model, params)  # a ValueError here when a target matches nothing
            chosen = _adapters(model, names, trainable)
            run_names = dict(model.named_parameters())
        else:
            chosen = [n for n in names if trainable is None or trainable(n)]
            run_names = names
        if not chosen:
            raise ValueError("no trainable parameter selected" + (
                f" (with LoRA, `trainable` is asked about the weights the adapters modify: none of "
                f"{sorted(_adapters(model, names, None))[:6]} ...)" if lora else ""))
        for n, p in run_names.items():
            p.requires_grad_(n in chosen and (lora or saved_flags[n]))
        raw_optimizer = optimizer if optimizer is not None else make_optimizer(
            params, [run_names[n] for n in chosen if run_names[n].requires_grad])
        kind = getattr(acc.distributed_type, "value", str(acc.distributed_type))
        deepspeed = kind == "DEEPSPEED"
        if deepspeed:
            _deepspeed_batch(acc, params.batch_size)
        # The scheduler (below) stays unprepared: accelerate's wrapper steps it once per process, which would make
        # the schedule depend on the world size.
        model, optimizer = acc.prepare(model, raw_optimizer)
        loaders = [None if dl is None else acc.prepare_data_loader(dl) for dl in loaders]
        # after preparation: in a multi-process run each process iterates over its own shard
        per_epoch = len(loaders[0]) if pairing != "zip" else min(len(loaders[0]), len(loaders[1]))
        accum = params.grad_accum
        total = params.max_steps or params.epochs * math.ceil(per_epoch / accum)
        warmup = math.floor(params.warmup_epochs * per_epoch / accum)
        scheduler = torch.optim.lr_scheduler.LambdaLR(raw_optimizer, _schedule(params.schedule, total, warmup))
        refs = {}
        for key, ref in (frozen or {}).items():
            ref = acc.prepare_model(ref.requires_grad_(False), evaluation_mode=True)
            refs[key] = ref.eval()
        setup = {"world_size": acc.num_processes, "per_device_batch": params.batch_size, "grad_accum": accum,
                 "effective_batch": params.batch_size * accum * acc.num_processes, "deepspeed": deepspeed,
                 "distributed_type": kind, "mixed_precision": str(acc.mixed_precision), "lora_r": params.lora_r,
                 "gradient_checkpointing": _checkpointing_is_on(base),
                 "warmup_steps": warmup, "total_steps": total}
        # The loop owns accumulation: undo the division accelerate's backward (or a DeepSpeed engine) applies for
        # its own gradient_accumulation_steps.
        acc_scale = getattr(acc, "gradient_accumulation_steps", 1)

        model.train(train_mode)
        losses: list[torch.Tensor] = []
        diverged = False
        show = acc.is_local_main_process if progress is None else progress and acc.is_local_main_process
        from tqdm.auto import tqdm

        # disable=None: tqdm shows the bar on a terminal only, so logs and CI output stay clean.
        bar = tqdm(total=total, desc=desc, disable=None if show else True, leave=False, dynamic_ncols=True)
        start = time.perf_counter()
        try:
            for step, group in enumerate(_batches(loaders[0], loaders[1], pairing, params.epochs, params.max_steps,
                                                  on_epoch, accum)):
                micro: list[torch.Tensor] = []
                for first, second in group:
                    f_batch, r_batch = (first, second) if driver_is_forget else (second, first)
                    last = len(micro) == len(group) - 1
                    if deepspeed:  # DeepSpeed defers its step to the batch accelerate marks as the boundary
                        acc.gradient_state._set_sync_gradients(last)
                    # DDP: no all-reduce before the last batch of the group
                    with contextlib.nullcontext() if last or acc.num_processes == 1 else acc.no_sync(model):
                        loss = loss_fn(model, f_batch, r_batch, refs)
                        if _non_finite(loss, acc):  # e.g. unbounded gradient ascent: stop before the step spoils
                            warnings.warn(f"{desc}: the loss became non-finite ({loss.item()}) at step {step}; "
                                          "stopping with the weights of the last finite step", RuntimeWarning,
                                          stacklevel=2)
                            diverged = True
                            break
                        if not micro:
                            optimizer.zero_grad(set_to_none=True)
                        acc.backward(loss if len(group) == acc_scale else loss * acc_scale / len(group))
                    micro.append(loss.detach())
                if diverged:
                    break
                if params.grad_clip:
                    acc.clip_grad_norm_(model.parameters(), params.grad_clip)
                if before_step is not None:
                    before_step(acc.unwrap_model(model))
                optimizer.step()
                scheduler.step()
                losses.append(micro[0] if len(micro) == 1 else torch.stack(micro).mean())
                stop = False
                if after_step is not None:
                    stop = bool(after_step(acc.unwrap_model(model), step + 1))
                    model.train(train_mode)
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{losses[-1].item():.4f}")
                    if acc.trackers:
                        acc.log({f"{desc}/loss": losses[-1].item()}, step=step)
                if stop:  # early stopping asked for by after_step (e.g. retain utility fell below a floor)
                    break
        finally:
            bar.close()
            if deepspeed:
                acc.gradient_state._set_sync_gradients(True)
        seconds = time.perf_counter() - start
        model = acc.unwrap_model(model)
        if peft_model is not None:
            model, peft_model = _merge_lora(model), None
    finally:
        for n, p in names.items():
            p.requires_grad_(saved_flags[n])
        if peft_model is not None:  # an error before the merge: take the adapters out of the caller's model
            _merge_lora(peft_model)
        if checkpointing_off is not None:
            checkpointing_off()
    values = torch.stack(losses).float().cpu().tolist() if losses else []
    if values:
        log.debug("%s: %d steps, loss %.4f -> %.4f, %.2fs", desc, len(values), values[0], values[-1], seconds)
    release(acc)
    return LoopResult(model.train(False), values, len(values), seconds, diverged, setup)


# ---------------------------------------------------------------------------------------------------------------
# LoRA and activation checkpointing (models/llm.py; transformers and peft are imported only when asked for)
# ---------------------------------------------------------------------------------------------------------------
def _require_lora(r: int) -> None:
    """Fail before any work when LoRA is asked for without its packages."""
    missing = [m for m in ("peft", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"lora_r={r} needs the {' and '.join(missing)} package(s): pip install unlearnkit[llm] "
                          "(or set lora_r=0)")


def _apply_lora(model: nn.Module, params: LoopParams) -> nn.Module:
    """`model` wrapped in LoRA adapters, initialised from `params.seed` (same seed, same run)."""
    from ..models.llm import apply_lora

    with torch.random.fork_rng(devices=[]):  # peft initialises the adapters on the CPU, then moves them
        torch.manual_seed(params.seed)
        return apply_lora(model, r=params.lora_r, alpha=params.lora_alpha, dropout=params.lora_dropout,
                          targets=list(params.lora_targets))


def _merge_lora(model: nn.Module) -> nn.Module:
    from ..models.llm import merge_lora

    return merge_lora(model)


def _adapters(wrapped: nn.Module, base_names: Mapping[str, Any], trainable: Callable[[str], bool] | None) -> list[str]:
    """The adapter parameters of a LoRA-wrapped model (the ones peft leaves trainable) to train: all of them, or
    those whose base weight (its name in the unwrapped model, e.g. `layers.0.qkv.weight`) `trainable` accepts."""
    chosen = []
    for name, p in wrapped.named_parameters():
        if not p.requires_grad:
            continue
        base = _base_weight(name, base_names)
        if trainable is None or base is not None and trainable(base):
            chosen.append(name)
    return chosen


def _base_weight(adapter: str, base_names: Mapping[str, Any]) -> str | None:
    """`base_model.model.layers.0.qkv.lora_A.default.weight` -> `layers.0.qkv.weight` (a name of `base_names`)."""
    parts = adapter.split(".lora_")[0].split(".")
    for i in range(len(parts)):
        for candidate in (".".join(parts[i:]) + ".weight", ".".join(parts[i:])):
            if candidate in base_names:
                return candidate
    return None


def _checkpointing_is_on(model: nn.Module) -> bool:
    """Whether a transformers model has activation checkpointing on (the attribute's name since transformers 5,
    then the older one); False for other models."""
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), attr):
            return bool(getattr(model, attr))
    return False


def _enable_checkpointing(model: nn.Module) -> Callable[[], None] | None:
    """Turn activation checkpointing on for one run; returns what turns it off again, or None when there is nothing
    to undo (already on: left on; a model without support: a no-op)."""
    if _checkpointing_is_on(model):
        return None
    if not getattr(model, "supports_gradient_checkpointing", False):
        log.warning("gradient_checkpointing=True: %s does not support activation checkpointing; running without it",
                    type(model).__name__)
        return None
    from ..models.llm import enable_gradient_checkpointing

    had_hook = bool(getattr(model, "_require_grads_hooks", None)) or hasattr(model, "_require_grads_hook")
    if not enable_gradient_checkpointing(model):
        return None

    def off() -> None:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
        if not had_hook and callable(getattr(model, "disable_input_require_grads", None)):
            model.disable_input_require_grads()

    return off
