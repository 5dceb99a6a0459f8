"""Data sets, splits and the `UnlearnData` bundle that methods receive."""

from .arrays import ArrayData, UnlearnData
from .splits import SCENARIOS, Split, make_split, resolve_forget_size

__all__ = ["SCENARIOS", "ArrayData", "Split", "UnlearnData", "make_split", "resolve_forget_size"]


def _register_builtins() -> None:
    from . import digits, markov  # noqa: F401


_register_builtins()
