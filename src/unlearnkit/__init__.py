"""unlearnkit: machine unlearning methods, retrain-referenced evaluation and reproducible benchmarks in one API.

    import unlearnkit as uk
    method = uk.create_method("neggrad_plus", alpha=0.99)
    model = method.unlearn(model, uk.UnlearnData(forget=..., retain=...), uk.get_task("classifier"))
    uk.run("digits", ["scenario=class", "seeds=[0,1,2]"])

Everything heavy (torch, scikit-learn, accelerate) is imported on first use, so `import unlearnkit` is instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_method": ("unlearnkit.methods", "create_method"),
    "run": ("unlearnkit.pipelines", "run"),
    "load_run_config": ("unlearnkit.pipelines", "load_run_config"),
    "get_task": ("unlearnkit.tasks", "get_task"),
    "build_model": ("unlearnkit.models", "build_model"),
    "UnlearnData": ("unlearnkit.data", "UnlearnData"),
    "make_split": ("unlearnkit.data", "make_split"),
    "run_loop": ("unlearnkit.methods._loop", "run_loop"),
    "LoopParams": ("unlearnkit.methods._loop", "LoopParams"),
    "GradientMethod": ("unlearnkit.methods._base", "GradientMethod"),
    "register_method": ("unlearnkit.methods._base", "register_method"),
    "evaluate": ("unlearnkit.metrics.evaluate", "evaluate"),
    "collect_outputs": ("unlearnkit.metrics.evaluate", "collect_outputs"),
    "ModelCache": ("unlearnkit.cache", "ModelCache"),
    "build_report": ("unlearnkit.report", "build_report"),
    "check_method": ("unlearnkit.testing", "check_method"),
    "ConfigError": ("unlearnkit.config", "ConfigError"),
}


def list_methods(pattern: str = "*", **tags: Any) -> list[str]:
    """Registered method names matching a wildcard and tags, e.g. list_methods(task="causal_lm")."""
    from ._registry import METHODS

    if "task" in tags:
        tags["tasks"] = tags.pop("task")
    return METHODS.list(pattern, **tags)


def list_metrics(pattern: str = "*") -> list[str]:
    from ._registry import METRICS

    return METRICS.list(pattern)


def list_benchmarks(pattern: str = "*") -> list[str]:
    from ._registry import BENCHMARKS

    return BENCHMARKS.list(pattern)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'unlearnkit' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["__version__", "list_benchmarks", "list_methods", "list_metrics", *_LAZY]
