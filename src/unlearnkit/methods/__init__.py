"""Unlearning methods. Each file holds one registered method; `create_method(name, **hyperparameters)`."""

from __future__ import annotations

from typing import Any

from .._registry import METHODS


def create_method(name: str, /, **hyperparameters: Any) -> Any:
    """The registered method `name` with validated hyperparameters."""
    return METHODS.create(name, **hyperparameters)


def _register_builtins() -> None:
    """Import every method module of this package (each registers itself): adding a method is adding a file."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name != "losses":
            importlib.import_module(f"{__name__}.{module.name}")


_register_builtins()

__all__ = ["create_method"]
