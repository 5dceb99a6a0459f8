"""Training on "D_f with new labels ∪ D_r", shared by `salun`, `random_label` and `amnesiac`, and the tagged union
that `bad_teacher` also reads.

    TaggedUnion(D_f, D_r): item i -> (x, y', is_forget)    y' = the forget item's new label, else its own label
    relabel(y, C, "uniform"): uniform over all C classes (may equal y)    SalUn / random-label: redrawn every epoch
    relabel(y, C, "other"):   uniform over the C − 1 classes ≠ y          Amnesiac (SSD/JiT code): drawn once

One epoch is one pass over the shuffled union; the loss is the batch-mean CE on (x, y'). The draws come from a
generator seeded with the method's `seed`, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ._loop import LoopParams, LoopResult, run_loop

RelabelMode = Literal["uniform", "other"]


class TaggedUnion(Dataset):
    """D_f ∪ D_r with an is-forget flag: (x, y, is_forget) for tuple items, {..., "is_forget": flag} for dict items.
    `forget_labels` [|D_f|], when set, replaces the labels of the forget items (tuple items only)."""

    def __init__(self, forget: Dataset, retain: Dataset | None, forget_labels: torch.Tensor | None = None) -> None:
        self.forget, self.retain, self.forget_labels = forget, retain, forget_labels

    def __len__(self) -> int:
        return len(self.forget) + (len(self.retain) if self.retain is not None else 0)

    def __getitem__(self, i: int) -> Any:
        is_forget = i < len(self.forget)
        item = self.forget[i] if is_forget else self.retain[i - len(self.forget)]
        if isinstance(item, Mapping):
            return {**item, "is_forget": int(is_forget)}
        x, y = item[0], item[1]
        if is_forget and self.forget_labels is not None:
            y = self.forget_labels[i]
        return x, y, int(is_forget)


def is_forget(batch: Any) -> torch.Tensor:
    """The [B] is-forget flags of a TaggedUnion batch."""
    return batch["is_forget"] if isinstance(batch, Mapping) else batch[2]


def relabel(labels: torch.Tensor, num_classes: int, mode: RelabelMode, generator: torch.Generator) -> torch.Tensor:
    """New labels [N] for true labels [N]: "uniform" over all classes, or "other": uniform over the other classes."""
    if mode == "uniform":
        return torch.randint(0, num_classes, labels.shape, generator=generator)
    if mode == "other":
        if num_classes < 2:
            raise ValueError(f"relabelling to another class needs at least 2 classes, got num_classes={num_classes}")
        shift = torch.randint(1, num_classes, labels.shape, generator=generator)  # 1..C-1: never the true label
        return (labels.cpu() + shift) % num_classes
    raise ValueError(f"relabel mode='{mode}': must be uniform or other")


def labels_of(task: Any, dataset: Dataset) -> torch.Tensor:
    """Every label of `dataset` in order, [N]."""
    return torch.cat([task.labels(b).reshape(-1) for b in DataLoader(dataset, batch_size=1024)]).long().cpu()


def num_classes_of(model: nn.Module, task: Any, data: Any) -> int:
    """data.num_classes, else the width of the model's logits on one forget example."""
    if data.num_classes:
        return int(data.num_classes)
    batch = next(iter(DataLoader(data.forget, batch_size=1)))
    device = next(model.parameters()).device
    with torch.no_grad():
        return int(task.logits(model, [t.to(device) for t in batch]).shape[-1])


def train_relabeled(model: nn.Module, data: Any, task: Any, params: LoopParams, *, mode: RelabelMode,
                    before_step: Callable[[nn.Module], None] | None = None, accelerator: Any = None,
                    after_step: Any = None, desc: str = "relabel") -> LoopResult:
    """Minimise CE on the shuffled D_f(relabelled) ∪ D_r with THE loop. "uniform" labels are redrawn before every
    epoch, "other" labels are drawn once."""
    true_labels = labels_of(task, data.forget)
    num_classes = num_classes_of(model, task, data)
    generator = torch.Generator().manual_seed(params.seed)
    union = TaggedUnion(data.forget, data.retain, relabel(true_labels, num_classes, mode, generator))

    def redraw(epoch: int) -> None:
        if epoch > 0:  # epoch 0 uses the labels drawn above
            union.forget_labels = relabel(true_labels, num_classes, mode, generator)

    return run_loop(model, lambda m, batch, _retain, _frozen: task.loss(m, batch), params, forget=union,
                    before_step=before_step, on_epoch=redraw if mode == "uniform" else None,
                    accelerator=accelerator, after_step=after_step, desc=desc)
