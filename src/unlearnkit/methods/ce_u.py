"""Cross-entropy unlearning `ce_u` ("CE-U: cross entropy unlearning", arXiv 2503.01224; specs/llm.md §2.8).

    A'  = the labelled answer positions minus the first n answer tokens of each sequence
    q_t = softmax(sg(z_t) with z_t[y_t] := −∞)             # the model's own prediction without the true token
    L   = mean_{t∈A'} CE(q_t, softmax(z_t))

Unlike gradient ascent, the target is a proper distribution, so the loss is bounded and its gradient vanishes once
the true token has no mass. No retain term and no reference model by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import param
from . import losses
from ._base import ForgetRetainObjective, register_method


@register_method("ce_u", paper="arXiv 2503.01224 (CE-U: cross entropy unlearning)", tasks=("causal_lm",))
@dataclass
class CEU(ForgetRetainObjective):
    """Cross-entropy towards the model's own prediction with the true token removed."""

    ignore_first_n_answer_tokens: int = param(1, ge=0, help="answer tokens at the start of each sequence left out")

    def forget_loss(self, task, model, forget, frozen):
        return losses.ce_u(task, model, forget, self.ignore_first_n_answer_tokens)
