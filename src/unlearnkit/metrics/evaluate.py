"""Evaluate a model once, score it with many metrics.

`collect_outputs` runs ONE batched forward pass per split (forget / retain / test) and keeps logits and labels as
numpy arrays. Every registered metric then reads those outputs: a metric is `fn(ev, ref=None) -> dict[str, float]`
where `ev` is the `Evaluation` of the model under test and `ref` that of the retrained gold standard. Metrics tagged
`needs_reference=True` run after the per-model ones and may read both models' values (ToW needs the retrained model's
accuracies). Asking for such a metric without a reference is an error, never a silent number (evaluation.md R2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .._registry import METRICS

SPLITS = ("forget", "retain", "test")


@dataclass
class Evaluation:
    """Logits [N, C] and labels [N] per split, and the metric values computed so far."""

    logits: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    forget_classes: tuple[int, ...] = ()
    values: dict[str, float] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # metrics already computed into `values`
    test_forget: np.ndarray | None = None  # indices into the test split of the forgotten (sub-)classes
    incompetent_forget: np.ndarray | None = None  # logits [N_f, C] of a randomly initialised twin on D_f (ZRF)


@torch.no_grad()
def predict(model: nn.Module, dataset: Any, task: Any, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of a whole data set, batched, in evaluation mode (the model's mode is restored)."""
    from ..tasks._hooks import eval_mode

    device = next(model.parameters()).device
    logits, labels = [], []
    with eval_mode(model):
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            batch = [t.to(device) for t in batch]
            logits.append(task.logits(model, batch).float().cpu())
            labels.append(task.labels(batch).cpu())
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def collect_outputs(model: nn.Module, data: Any, task: Any, *, batch_size: int = 512,
                    splits: Sequence[str] = SPLITS, incompetent: nn.Module | None = None) -> Evaluation:
    """Predictions of `model` on each split of `data` (an `UnlearnData`); `incompetent` (a randomly initialised model
    of the same architecture) adds its forget-set logits, which the ZRF metric reads."""
    logits, labels = {}, {}
    for name in splits:
        logits[name], labels[name] = predict(model, getattr(data, name), task, batch_size)
    ev = Evaluation(logits, labels, tuple(getattr(data, "forget_classes", ())),
                    test_forget=getattr(data, "test_forget", None))
    if incompetent is not None:
        ev.incompetent_forget = predict(incompetent, data.forget, task, batch_size)[0]
    return ev


def with_requirements(metrics: Iterable[str]) -> list[str]:
    """The named metrics plus those they read (tag `requires`), each once, requirements first."""
    out: list[str] = []

    def add(name: str) -> None:
        if name not in out:
            for dep in METRICS.get(name).tags.get("requires", ()):  # unknown names fail here, before any work
                add(dep)
            out.append(name)

    for name in metrics:
        add(name)
    return out


def evaluate(ev: Evaluation, metrics: Iterable[str], ref: Evaluation | None = None) -> dict[str, float]:
    """Run the named metrics, and the metrics they require, on `ev` (per-model ones first, then
    retrain-referenced ones; a metric already computed on `ev` is not run again) and return all values."""
    entries = [METRICS.get(n) for n in with_requirements(metrics)]
    for entry in sorted(entries, key=lambda e: bool(e.tags.get("needs_reference"))):
        if entry.name in ev.done:
            continue
        if entry.tags.get("needs_reference") and ref is None:
            raise ValueError(f"metric '{entry.name}' compares with the retrained model: pass ref=")
        ev.values.update(entry.obj(ev, ref))
        ev.done.add(entry.name)
    return dict(ev.values)
