"""`causal_lm` task: tokens -> next-token log-probs, loss on answer tokens only.

A batch is a mapping with `input_ids` [B, T], optional `attention_mask` [B, T] and `labels` [B, T] that follow the
Hugging Face convention: labels are aligned with input_ids (the shift happens here) and −100 marks tokens without a
loss (prompt, padding). Works with any model whose forward takes `input_ids` (and `attention_mask`) and returns
logits [B, T, V] or an object with `.logits` (transformers models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._registry import TASKS
from ._hooks import capture_output

IGNORE = -100


@TASKS.register("causal_lm")
class CausalLMTask:
    """Decoder language models trained with next-token cross-entropy on the labelled (answer) tokens."""

    name = "causal_lm"

    def inputs(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return batch["input_ids"]

    def labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return batch["labels"]

    def with_labels(self, batch: Mapping[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**batch, "labels": labels}

    def batch_size(self, batch: Mapping[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0])

    def _forward(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Any:
        kwargs = {"input_ids": batch["input_ids"]}
        if batch.get("attention_mask") is not None:
            kwargs["attention_mask"] = batch["attention_mask"]
        return model(**kwargs)

    def logits(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Unshifted logits [B, T, V]."""
        out = self._forward(model, batch)
        return out.logits if hasattr(out, "logits") else out

    def shifted(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]):
        """(logits [B, T−1, V], targets [B, T−1], mask [B, T−1]): position t predicts token t+1."""
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE
        return logits[:, :-1], targets.masked_fill(~mask, 0), mask

    def token_logprobs(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        """(log p(target token) [B, T−1], mask [B, T−1]) for the labelled tokens."""
        logits, targets, mask = self.shifted(self.logits(model, batch), batch)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return logp * mask, mask

    def distribution(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(· | prefix) [B, T−1, V], mask [B, T−1]): the next-token distribution at every position, and which
        positions are labelled (scored)."""
        logits, _, mask = self.shifted(self.logits(model, batch), batch)
        return torch.log_softmax(logits.float(), dim=-1), mask

    def per_example_logprob(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log π(y | x) = Σ_t log p(y_t | y_<t, x) over labelled tokens, shape [B]."""
        logp, _ = self.token_logprobs(model, batch)
        return logp.sum(-1)

    def per_example_loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean token NLL of each sequence over its labelled tokens, shape [B] (0 for a sequence without labels)."""
        logp, mask = self.token_logprobs(model, batch)
        return -logp.sum(-1) / mask.sum(-1).clamp(min=1)

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean token cross-entropy over all labelled tokens of the batch (the usual LM loss)."""
        logits, targets, mask = self.shifted(self.logits(model, batch), batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               reduction="none")[mask.reshape(-1)].mean()

    def hidden_states(self, model: nn.Module, batch: Mapping[str, torch.Tensor], layer: str) -> torch.Tensor:
        """Output [B, T, d] of submodule `layer` (e.g. "model.layers.3" of a Llama) for this batch."""
        return capture_output(model, layer, lambda: self._forward(model, batch))
