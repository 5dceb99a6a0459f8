"""`classifier` task: inputs -> logits [B, C], cross-entropy. A batch is a pair `(x, y)`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import TASKS
from ._hooks import capture_output


@TASKS.register("classifier")
class ClassifierTask:
    """Image/tabular classifiers: `model(x)` returns logits."""

    name = "classifier"

    def inputs(self, batch: Any) -> torch.Tensor:
        return batch[0]

    def labels(self, batch: Any) -> torch.Tensor:
        return batch[1]

    def with_labels(self, batch: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same inputs with other labels (random-label methods)."""
        return batch[0], labels

    def batch_size(self, batch: Any) -> int:
        return int(batch[0].shape[0])

    def logits(self, model: nn.Module, batch: Any) -> torch.Tensor:
        out = model(batch[0])
        return out.logits if hasattr(out, "logits") else out  # [B, C]

    def per_example_loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """CE_i = −log p(y_i | x_i), shape [B]."""
        return F.cross_entropy(self.logits(model, batch), batch[1], reduction="none")

    def per_example_logprob(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """log p(y_i | x_i), shape [B]."""
        return -self.per_example_loss(model, batch)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Batch-mean cross-entropy."""
        return self.per_example_loss(model, batch).mean()

    def distribution(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(· | x) [B, C], mask [B] of ones): the predictive distribution at every scored position."""
        logp = torch.log_softmax(self.logits(model, batch).float(), dim=-1)
        return logp, torch.ones(logp.shape[0], dtype=torch.bool, device=logp.device)

    def hidden_states(self, model: nn.Module, batch: Any, layer: str) -> torch.Tensor:
        """Output of submodule `layer` for this batch, e.g. the penultimate features."""
        return capture_output(model, layer, lambda: model(batch[0]))
