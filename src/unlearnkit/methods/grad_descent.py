"""Gradient descent on the retain set `grad_descent`: L = NLL_θ(B_r) (specs/markov_imu.md §3).

The same loss and defaults as `finetune` (Warnecke et al. 2023 / Golatkar et al. 2020); the name exists because the
Markov-chain seed calls it so. One epoch is one pass over the retain set.
"""

from __future__ import annotations

from ._base import register_method, variant
from .finetune import Finetune

GradDescent = register_method("grad_descent", paper="Markov-chain seed (specs/markov_imu.md §3); = finetune")(variant(
    Finetune, "GradDescent", "Gradient descent on the retain set only (the Markov seed's name for finetune)."))
