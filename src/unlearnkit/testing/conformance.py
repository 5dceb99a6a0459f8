"""`check_method`: the conformance suite every registered method must pass (DESIGN.md; evaluation.md R11).

On a tiny model that has memorized its forget set, for every task kind the method supports:
1. it runs on CPU and returns a model of the same architecture (type, parameter names, shapes, dtypes);
2. it does not mutate its hyperparameters;
3. the same seed gives the same weights (two runs from the same original);
4. every returned weight is finite;
5. the forget loss (mean per-example loss on the forget set) rises.
A class-forgetting method (one that needs `data.forget_classes`) declares `toy_scenario = "class"` and is checked on
the toy whose forget set is a whole class. A method that needs a particular classifier (MIMU's bias-free head)
declares `toy_model = (registered builder, toy sizes)`, e.g. ("mlp_mimu", {"hidden": (32, 16)}), and is checked on
that model trained on the same toy data.
Third-party methods use it the same way: `check_method(MyMethod(...))`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from .._registry import METHODS
from ..config import to_dict
from ..tasks import get_task
from .toy import memorized

TOY_BATCH_SIZE = 16


@dataclass
class Conformance:
    method: str
    task: str
    forget_loss_before: float
    forget_loss_after: float


@torch.no_grad()
def forget_loss(model: torch.nn.Module, data: Any, task: Any) -> float:
    """Mean per-example loss on the whole forget set, in evaluation mode."""
    model.eval()
    batch = next(iter(torch.utils.data.DataLoader(data.forget, batch_size=len(data.forget))))
    return float(task.per_example_loss(model, batch).mean())


def toy_instance(method: Any) -> Any:
    """A registered name or an instance -> an instance sized for the toy data (batch size 16 when it has one,
    plus any `toy_overrides` the method class declares for toy scale)."""
    inst = METHODS.create(method) if isinstance(method, str) else method
    names = {f.name for f in fields(inst)}
    changes = {"batch_size": TOY_BATCH_SIZE} if "batch_size" in names else {}
    changes.update(getattr(type(inst), "toy_overrides", {}))
    return replace(inst, **changes) if changes else inst


def _signature(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


def check_method(method: Any, *, tasks: tuple[str, ...] | None = None) -> list[Conformance]:
    """Run the conformance checks; raise AssertionError naming the first failed check. Returns the measured losses."""
    inst = toy_instance(method)
    name = getattr(inst, "registry_name", type(inst).__name__)
    kinds = tasks or tuple(getattr(inst, "capabilities", {}).get("tasks", ("classifier",)))
    results = []
    for kind in kinds:
        task = get_task(kind)
        original, data = memorized(kind, scenario=getattr(type(inst), "toy_scenario", "random"),
                                   model=getattr(type(inst), "toy_model", None))
        before = forget_loss(original, data, task)
        params, twin = to_dict(inst), copy.deepcopy(inst)
        where = f"{name} on {kind}"
        out = inst.unlearn(copy.deepcopy(original), data, task)
        assert to_dict(inst) == params, f"{where}: unlearn() mutated its hyperparameters"
        assert type(out) is type(original), f"{where}: returned a {type(out).__name__}, not a {type(original).__name__}"
        assert _signature(out) == _signature(original), f"{where}: the architecture changed"
        rerun = twin.unlearn(copy.deepcopy(original), data, task)
        for (k, a), b in zip(out.state_dict().items(), rerun.state_dict().values(), strict=True):
            assert torch.isfinite(a).all(), f"{where}: weight {k} is not finite"
            assert torch.equal(a, b), f"{where}: the same seed gave different weights ({k})"
            assert a.device.type == "cpu", f"{where}: weight {k} left the CPU"
        after = forget_loss(out, data, task)
        assert after > before, f"{where}: the forget loss did not rise ({before:.4f} -> {after:.4f})"
        results.append(Conformance(name, kind, before, after))
    return results
