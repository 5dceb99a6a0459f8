"""Named model builders. `build_model(name, seed=..., **kwargs)` gives the same weights for the same seed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._registry import MODELS


def build_model(name: str, *, seed: int, **kwargs: Any) -> nn.Module:
    """Build registered model `name` with its initial weights drawn from `seed` (global RNG left untouched)."""
    builder = MODELS.get(name).obj
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(**kwargs)


def _register_builtins() -> None:
    from . import llm, markov, mimu, small, vision  # noqa: F401


_register_builtins()

__all__ = ["build_model"]
