"""Unlearning methods. Each file holds one registered method; `create_method(name, **hyperparameters)`."""

from __future__ import annotations

from typing import Any

from .._registry import METHODS


def create_method(name: str, /, **hyperparameters: Any) -> Any:
    """The registered method `name` with validated hyperparameters."""
    return METHODS.create(name, **hyperparameters)


def _register_builtins() -> None:
    from . import finetune, grad_ascent, neggrad_plus, retrain  # noqa: F401


_register_builtins()

__all__ = ["create_method"]
