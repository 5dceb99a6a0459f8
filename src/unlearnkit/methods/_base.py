"""The method contract.

A method is a registered `@dataclass` whose fields are its hyperparameters, with one verb:

    unlearn(model, data, task, accelerator=None) -> model

`unlearn` may update `model` in place (large models are not copied) and returns the unlearned model; keep a copy if
you need the original. Diagnostics are stored in attributes ending in `_` (e.g. `losses_`), never in fields.

Gradient methods subclass `GradientMethod` (the shared optimisation hyperparameters plus an `unlearn` that runs THE
loop) and define only `loss`. One-shot methods (SSD, JiT, influence, ...) implement `unlearn` themselves. There is
no inheritance between methods.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from .._registry import METHODS
from ..config import param, validate
from ._loop import LoopParams, record, run_loop

TASK_KINDS = ("classifier", "causal_lm")


def register_method(name: str, *, paper: str, tasks: Sequence[str] = TASK_KINDS, kind: str | None = None):
    """Register a method class under `name`. Capability tags (used by `unlearnkit list methods`, the conformance
    suite and the pipelines) are derived from the class and its default instance: `kind` (gradient | one_shot; a
    subclass of GradientMethod is "gradient" unless `kind` says otherwise), `tasks`, `uses` (which data sets it
    reads), `needs_retain`, `needs_reference` (`uses` and `needs_reference` may be properties of the fields)."""

    def deco(cls):
        probe = cls()  # capabilities may be properties of the hyperparameters (e.g. a KL retain term needs a ref)
        uses = tuple(getattr(probe, "uses", ("forget",)))
        tags = {
            "paper": paper,
            "tasks": tuple(tasks),
            "kind": kind or ("gradient" if issubclass(cls, GradientMethod) else "one_shot"),
            "uses": uses,
            "needs_retain": "retain" in uses,
            "needs_reference": bool(getattr(probe, "needs_reference", False)),
        }
        cls.capabilities = tags
        return METHODS.register(name, **tags)(cls)

    return deco


def variant(cls: type, name: str, doc: str, **defaults: Any) -> type:
    """The same method with other defaults, to register under its own name (npo_kl = npo with retain_loss="kl").
    A variant adds no behaviour: it is a named preset of the class's hyperparameters."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(defaults) - set(known))
    if unknown:
        raise TypeError(f"variant {name}: {cls.__name__} has no field(s) {unknown}")
    hints = typing.get_type_hints(cls)  # resolved types: the string annotations may name imports of another module
    namespace: dict[str, Any] = {"__doc__": doc, "__module__": cls.__module__, "__qualname__": name,
                                 "__annotations__": {k: hints[k] for k in defaults}}
    for key, value in defaults.items():
        namespace[key] = dataclasses.field(default=value, metadata=known[key].metadata)
    return dataclass(type(name, (cls,), namespace))


def check_data(method: Any, data: Any) -> None:
    """Fail early, before any training, when a data set the method reads is missing or empty."""
    for which in getattr(method, "uses", ("forget",)):
        ds = getattr(data, which, None)
        if ds is None or len(ds) == 0:
            raise ValueError(f"method '{method.registry_name}' needs a non-empty {which} set (data.{which} is "
                             f"{'missing' if ds is None else 'empty'})")


@dataclass
class GradientMethod(LoopParams):
    """Shared `unlearn` of gradient methods: validate, then run the loop on `self.loss`."""

    uses: ClassVar[tuple[str, ...]] = ("forget",)
    pairing: ClassVar[str] = "forget"  # which data set defines an epoch (see _loop.py)
    needs_reference: ClassVar[bool] = False

    def loss(self, task: Any, model: nn.Module, forget: Any, retain: Any,
             frozen: Mapping[str, nn.Module]) -> torch.Tensor:
        raise NotImplementedError

    def frozen_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """Frozen copies the loss needs (reference / teacher), built from the model before unlearning. The default
        gives {"ref": a copy of the original} exactly when `needs_reference` is true, so no method builds a
        reference it does not use."""
        return {"ref": copy.deepcopy(model)} if self.needs_reference else {}

    def check(self, data: Any) -> None:
        """Fail early, before any work: the hyperparameters are valid and the data sets the method reads are there.
        A method with further requirements (DPO's alternate answers, PDU's ε) extends it."""
        validate(self, where=f"method.{self.registry_name}")
        check_data(self, data)

    def unlearn(self, model: nn.Module, data: Any, task: Any, accelerator: Any = None,
                after_step: Any = None) -> nn.Module:
        """Run the loop on `self.loss`; `after_step(model, step)` is called after every optimiser step (curves)."""
        self.check(data)
        result = run_loop(
            model, partial(self.loss, task), self,
            forget=data.forget if "forget" in self.uses else None,
            retain=data.retain if "retain" in self.uses else None,
            pairing=self.pairing, frozen=self.frozen_models(model), accelerator=accelerator,
            desc=self.registry_name, after_step=after_step,
        )
        return record(self, result)


@dataclass
class ForgetRetainObjective(GradientMethod):
    """L = γ·L_forget(B_f) + α·L_retain(B_r), with OpenUnlearning's loop defaults (specs/llm.md §1): the shared form
    of GradDiff, NPO, SimNPO and the LLM methods built like them. A subclass defines only `forget_loss`.

    retain_loss: "none" (the forget set alone), "nll" (NLL on B_r) or "kl" (KL(ref‖θ) on B_r, which builds the
    frozen reference). The retain term is skipped (and the retain set not read) when the method does not use it."""

    pairing: ClassVar[str] = "forget"
    gamma: float = param(1.0, ge=0, help="weight of the forget loss")
    alpha: float = param(1.0, ge=0, help="weight of the retain loss (not neggrad_plus's mixing alpha)")
    retain_loss: Literal["none", "nll", "kl"] = param("none", help="retain loss: none, NLL(B_r) or KL(ref‖θ) on B_r")
    kl_reduction: Literal["sequence", "token"] = param(
        "sequence", help="how KL(ref‖θ) terms average: sequence = summed over the answer tokens / batch size (Markov "
                         "benchmark); token = mean over labelled positions (OpenUnlearning's KL, specs/llm.md §6 P2)")
    lr: float = param(1e-5, gt=0, help="learning rate")
    epochs: int = param(10, ge=0, help="passes over the forget set (the retain set is cycled beside it)")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adamw", help="optimiser")
    weight_decay: float = param(0.01, ge=0, help="weight decay")
    batch_size: int = param(32, gt=0, help="forget / retain batch size")

    @property
    def uses(self) -> tuple[str, ...]:
        return ("forget",) if self.retain_loss == "none" else ("forget", "retain")

    @property
    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"

    def forget_loss(self, task: Any, model: nn.Module, forget: Any, frozen: Mapping[str, nn.Module]) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, task: Any, model: nn.Module, forget: Any, retain: Any,
             frozen: Mapping[str, nn.Module]) -> torch.Tensor:
        from . import losses

        total = self.gamma * self.forget_loss(task, model, forget, frozen)
        if "retain" not in self.uses:
            return total
        return total + self.alpha * losses.retain_term(self.retain_loss, task, model, retain, frozen.get("ref"),
                                                       self.kl_reduction)
