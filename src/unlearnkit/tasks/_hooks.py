"""Helpers for running a model, shared by both task kinds, the metrics and the methods: capture a named
submodule's output during one forward pass; evaluation mode for a block."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


def capture_output(model: nn.Module, layer: str, run: Callable[[], Any]) -> torch.Tensor:
    """Run `run()` (a forward pass of `model`) and return the output of submodule `layer` (a dotted name as in
    `model.named_modules()`; "" is the model itself). Tuple outputs yield their first element."""
    try:
        module = model.get_submodule(layer)
    except AttributeError as err:
        names = [n for n, _ in model.named_modules() if n][:20]
        raise ValueError(f"no layer '{layer}' in {type(model).__name__}; layers include: {', '.join(names)}") from err
    captured: list[torch.Tensor] = []

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)

    handle = module.register_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return captured[-1]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in evaluation mode inside the block; its previous train/eval mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
