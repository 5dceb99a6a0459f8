"""Pure loss atoms. Each takes a task adapter, a model and a batch (or precomputed tensors) and returns a scalar,
so one atom serves classifiers and causal LMs alike. Methods compose these; they never re-derive them."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def nll(task: Any, model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean negative log-likelihood: batch-mean cross-entropy (classifier) or mean token NLL (causal LM)."""
    return task.loss(model, batch)


def ascent(task: Any, model: nn.Module, batch: Any) -> torch.Tensor:
    """Gradient ascent on the data: −NLL."""
    return -task.loss(model, batch)


def retain_forget_mix(retain_loss: torch.Tensor, forget_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·L_retain − (1 − α)·L_forget (NegGrad+, Kurmanji et al. 2023)."""
    return alpha * retain_loss - (1 - alpha) * forget_loss
