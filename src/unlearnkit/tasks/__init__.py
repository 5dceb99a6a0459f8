"""Task adapters: how a model is run. Every method and metric asks a task, never the model, for
per-example losses, log-probs, logits and hidden states, so one implementation serves both kinds."""

from .._registry import TASKS
from .causal_lm import CausalLMTask
from .classifier import ClassifierTask


def get_task(name: str):
    """The adapter instance registered as `name` ("classifier" or "causal_lm")."""
    return TASKS.get(name).obj()


__all__ = ["CausalLMTask", "ClassifierTask", "get_task"]
