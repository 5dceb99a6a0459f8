"""Markov-chain metrics (specs/markov_imu.md §4; the synthetic setting of SimNPO, arXiv 2410.07163).

For the test sequences of each chain (retain, forget1, forget2; "forget" = forget1 ∪ forget2), per scored token
(the prediction of x_t from x_<t, t >= 1), averaged over all scored tokens of the split:
- loss_S       = mean −log p_θ(x_t | x_<t)                                 (nats)
- kl_true_S    = mean KL( P_c[x_{t−1}, ·] ‖ p_θ(· | x_<t) ), c = the sequence's own chain; on retain this is the
                 retain distance (lower = better), on forget1/forget2 the forget quality (higher = more forgotten;
                 the retrained model's value is the target)
- kl_retrain_S = mean KL( p_retrain(· | x_<t) ‖ p_θ(· | x_<t) ); 0 = indistinguishable from retraining
All are per-token averages, so the evaluation batch size changes none of them. Everything that does not depend on the
model is prepared once (`prepare_sequence_eval`); an evaluation is then one batched forward pass per chain
(`collect_sequence_outputs`) serving every metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .._registry import METRICS

CHAIN_SPLITS = ("retain", "forget1", "forget2")
SPLITS = ("retain", "forget", "forget1", "forget2")


@dataclass
class SequenceOutputs:
    """Per split: log p_θ [N, T, S], true next-state distributions [N, T, S], targets [N, T], scored mask [N, T]."""

    logp: dict[str, torch.Tensor]
    true: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    values: dict[str, float] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


def _pad_cat(parts: list[torch.Tensor], value: float | int | bool) -> torch.Tensor:
    """Concatenate along dim 0, padding dim 1 to the longest part (chains may have different lengths)."""
    width = max(p.shape[1] for p in parts)
    padded = [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1]), value=value)
              if p.shape[1] < width else p for p in parts]
    return torch.cat(padded)


@dataclass
class SequenceEvalData:
    """What evaluation needs that does not depend on the model, prepared once per data set: per chain, the whole
    test batch (collated), the targets, the scored mask and the true next-state distributions."""

    batches: dict[str, dict[str, torch.Tensor]]
    true: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]


def prepare_sequence_eval(data: Any) -> SequenceEvalData:
    """Collate the test sequences of every chain of a `MarkovData` once, with their targets and true rows."""
    from torch.utils.data import default_collate

    from ..tasks import get_task

    task = get_task("causal_lm")
    matrices = torch.as_tensor(data.matrices, dtype=torch.float32)  # [3, S, S]
    batches, true, targets, mask = {}, {}, {}, {}
    for chain in CHAIN_SPLITS:
        ds = data.dataset("test", [chain])
        batch = default_collate([ds[i] for i in range(len(ds))])
        _, targets[chain], mask[chain] = task.shifted(batch["input_ids"][..., None].float(), batch)
        true[chain] = matrices[batch["chain"][:, None], batch["input_ids"][:, :-1]]  # [N, T, S]: rows P_c[x_{t-1}]
        batches[chain] = batch
    for part, pad in ((true, 0.0), (targets, 0), (mask, False)):
        part["forget"] = _pad_cat([part["forget1"], part["forget2"]], pad)
    return SequenceEvalData(batches, true, targets, mask)


@torch.no_grad()
def collect_sequence_outputs(model: torch.nn.Module, prepared: SequenceEvalData, *,
                             batch_size: int = 1024) -> SequenceOutputs:
    """Run `model` once over the test sequences of every chain (chunks of `batch_size`) -> per-split log-probs."""
    from ..tasks import get_task
    from ..tasks._hooks import eval_mode

    task = get_task("causal_lm")
    device = next(model.parameters()).device
    logp: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        for chain, batch in prepared.batches.items():
            n = len(batch["input_ids"])
            logp[chain] = torch.cat([
                task.distribution(model, {k: v[i:i + batch_size].to(device) for k, v in batch.items()})[0].cpu()
                for i in range(0, n, batch_size)])  # [N, T, S]
    logp["forget"] = _pad_cat([logp["forget1"], logp["forget2"]], 0.0)
    return SequenceOutputs(logp, prepared.true, prepared.targets, prepared.mask)


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum() / mask.sum())


def _kl(p_log_or_prob: torch.Tensor, logq: torch.Tensor, *, is_log: bool) -> torch.Tensor:
    """KL(p ‖ q) over the last dim, with 0·log 0 = 0."""
    p = p_log_or_prob.exp() if is_log else p_log_or_prob
    logp = p_log_or_prob if is_log else torch.log(p.clamp_min(1e-30))
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


@METRICS.register("markov_loss", task="causal_lm", needs_reference=False)
def loss(ev: SequenceOutputs, ref: SequenceOutputs | None = None) -> dict[str, float]:
    """loss_S = mean token −log p_θ(x_t | x_<t) on the test sequences of split S (nats)."""
    return {f"loss_{s}": _token_mean(-ev.logp[s].gather(-1, ev.targets[s].unsqueeze(-1)).squeeze(-1), ev.mask[s])
            for s in SPLITS}


@METRICS.register("markov_kl_true", task="causal_lm", needs_reference=False)
def kl_true(ev: SequenceOutputs, ref: SequenceOutputs | None = None) -> dict[str, float]:
    """kl_true_S = mean token KL(P_c[x_{t−1}] ‖ p_θ(· | x_<t)): retain distance (retain, lower = better) and forget
    quality (forget1/forget2, target = the retrained model's value)."""
    return {f"kl_true_{s}": _token_mean(_kl(ev.true[s], ev.logp[s], is_log=False), ev.mask[s]) for s in SPLITS}


@METRICS.register("markov_kl_retrain", task="causal_lm", needs_reference=True)
def kl_retrain(ev: SequenceOutputs, ref: SequenceOutputs) -> dict[str, float]:
    """kl_retrain_S = mean token KL(p_retrain ‖ p_θ); 0 = indistinguishable from the retrained model."""
    return {f"kl_retrain_{s}": _token_mean(_kl(ref.logp[s], ev.logp[s], is_log=True), ev.mask[s]) for s in SPLITS}


MARKOV_METRICS = ("markov_loss", "markov_kl_true", "markov_kl_retrain")
