"""Test helpers for unlearnkit and for third-party methods: tiny real models and data with a memorized forget set,
and `check_method`, the conformance suite every registered method passes."""

from .conformance import Conformance, check_method, forget_loss, toy_instance
from .toy import (
    TinyCausalLM,
    memorized,
    tiny_causal_lm,
    tiny_classification_data,
    tiny_classifier,
    tiny_lm_data,
)

__all__ = ["Conformance", "TinyCausalLM", "check_method", "forget_loss", "memorized", "tiny_causal_lm",
           "tiny_classification_data", "tiny_classifier", "tiny_lm_data", "toy_instance"]
