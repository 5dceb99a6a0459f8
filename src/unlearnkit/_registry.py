"""One generic registry for methods, models, datasets, metrics, tasks, benchmarks and memorisation scores.

    METHODS = Registry("method", builtins=("unlearnkit.methods",))

    @METHODS.register("grad_ascent", paper="...", tasks=("classifier",))
    @dataclass
    class GradAscent: ...

    METHODS.list("grad_*")        # names matching a shell-style wildcard
    METHODS.create("grad_ascent", lr=1e-3)

Built-in entries are imported lazily: a registry imports its `builtins` modules on first lookup, so
`import unlearnkit` stays fast and heavy dependencies load only when an entry is used.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, is_dataclass
from typing import Any


class RegistryError(KeyError):
    """An unknown or duplicate name. `str()` is the plain one-line message (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Entry:
    name: str
    obj: Any
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def doc(self) -> str:
        """The first line of the object's docstring."""
        return ((self.obj.__doc__ or "").strip().splitlines() or [""])[0]


class Registry:
    """Name -> object, with free-form tags (paper, task kinds, capabilities) per entry."""

    def __init__(self, kind: str, builtins: Iterable[str] = ()) -> None:
        self.kind = kind
        self._builtins = tuple(builtins)
        self._loaded = False
        self._entries: dict[str, Entry] = {}

    def register(self, name: str | None = None, **tags: Any) -> Callable[[Any], Any]:
        """Decorator: register the decorated class or function under `name` (default: its own name)."""

        def deco(obj: Any) -> Any:
            key = name or obj.__name__
            if key in self._entries and self._entries[key].obj is not obj:
                old = self._entries[key].obj
                if f"{old.__module__}.{old.__qualname__}" != f"{obj.__module__}.{obj.__qualname__}":
                    raise RegistryError(f"{self.kind} '{key}' is already registered by {old.__module__}")
            self._entries[key] = Entry(key, obj, dict(tags))
            obj.registry_name = key
            return obj

        return deco

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)

    def get(self, name: str) -> Entry:
        self._load_builtins()
        if name not in self._entries:
            names = sorted(self._entries)
            hint = difflib.get_close_matches(str(name), names, n=1)
            did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'{did_you_mean}; available: {', '.join(names) or 'none'}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def list(self, pattern: str = "*", **tags: Any) -> list[str]:
        """Sorted names matching the wildcard `pattern` whose tags contain every given tag value."""
        self._load_builtins()

        def has(entry: Entry) -> bool:
            for key, want in tags.items():
                have = entry.tags.get(key)
                ok = want in have if isinstance(have, list | tuple | set) else have == want
                if not ok:
                    return False
            return True

        return sorted(n for n, e in self._entries.items() if fnmatch.fnmatchcase(n, pattern) and has(e))

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Instantiate entry `name`. Dataclass entries are built through `config.build`, so every value is
        type-checked and range-checked, and an unknown keyword is an error that lists the valid ones."""
        obj = self.get(name).obj
        if is_dataclass(obj):
            from .config import build

            return build(obj, kwargs, where=f"{self.kind}.{name}")
        return obj(**kwargs)


METHODS = Registry("method", builtins=("unlearnkit.methods",))
METRICS = Registry("metric", builtins=("unlearnkit.metrics.suite", "unlearnkit.metrics.markov",
                                              "unlearnkit.metrics.tofu_eval"))
MODELS = Registry("model", builtins=("unlearnkit.models",))
DATASETS = Registry("dataset", builtins=("unlearnkit.data",))
TASKS = Registry("task", builtins=("unlearnkit.tasks",))
BENCHMARKS = Registry("benchmark", builtins=("unlearnkit.pipelines",))
SCORES = Registry("score", builtins=("unlearnkit.metrics.scores",))
