"""Benchmarks: a preset (YAML) + `key=value` overrides -> a validated config -> the registered pipeline.

Presets ship inside the package (`unlearnkit/configs/*.yaml`) so they work from any install; a path to your own
YAML file works the same way. The preset's `benchmark` key names the registered pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._registry import BENCHMARKS
from ..config import ConfigError, build, deep_merge, load_yaml, parse_overrides

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def list_presets() -> list[str]:
    """Names of the shipped presets (`unlearnkit run NAME`)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(preset: str) -> Path:
    """A shipped preset name, or a path to a YAML file."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file '{preset}' not found")
        return path
    shipped = PRESET_DIR / f"{preset}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown preset '{preset}'; available: {', '.join(list_presets())} "
                          "(or give a path to a .yaml file)")
    return shipped


def load_run_config(preset: str = "digits", overrides: Sequence[str] = ()) -> tuple[Any, Any]:
    """(registry entry of the pipeline, validated config) for `preset` with `key=value` overrides applied."""
    base = load_yaml(resolve_preset(preset))
    name = parse_overrides([o for o in overrides if o.startswith("benchmark=")]).get("benchmark", base.get("benchmark"))
    rewrite = BENCHMARKS.get(name).tags.get("rewrite_overrides") if name in BENCHMARKS else None
    if rewrite is not None:  # a benchmark's own override dialect (TOFU: method=npo method.beta=0.1)
        overrides = rewrite(list(overrides))
    values = deep_merge(base, parse_overrides(list(overrides)))
    name = values.get("benchmark")
    if not name:
        raise ConfigError(f"preset '{preset}' has no 'benchmark' key; available: {', '.join(BENCHMARKS.list())}")
    if name not in BENCHMARKS:
        raise ConfigError(f"benchmark='{name}' is not registered; available: {', '.join(BENCHMARKS.list())}")
    entry = BENCHMARKS.get(name)
    return entry, build(entry.tags["config"], values)


def run(preset: str = "digits", overrides: Sequence[str] = (), **kwargs: Any) -> Any:
    """Validate, then run a benchmark: `run("digits", ["scenario=class", "seeds=[0,1,2]"])`."""
    entry, cfg = load_run_config(preset, overrides)
    return entry.obj(cfg, **kwargs)


def _register_builtins() -> None:
    from . import classification, markov, mimu, rum, tofu  # noqa: F401


_register_builtins()

__all__ = ["PRESET_DIR", "list_presets", "load_run_config", "resolve_preset", "run"]
