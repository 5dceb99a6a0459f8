"""Data sets, splits and the `UnlearnData` bundle that methods receive."""

from .arrays import ArrayData, ImageSubset, UnlearnData
from .splits import SCENARIOS, Split, make_split, resolve_forget_size
from .vision import CIFAR100_FINE_TO_COARSE, class_index, data_root, fine_class_index

__all__ = [
    "CIFAR100_FINE_TO_COARSE",
    "SCENARIOS",
    "ArrayData",
    "ImageSubset",
    "Split",
    "UnlearnData",
    "class_index",
    "data_root",
    "fine_class_index",
    "make_split",
    "resolve_forget_size",
]


def _register_builtins() -> None:
    from . import digits, markov, vision  # noqa: F401


_register_builtins()
