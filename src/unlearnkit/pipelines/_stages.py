"""Stages shared by every benchmark pipeline: run metadata, and cached training / unlearning with timing.

A stage's model is a content-addressed cache entry: `spec` (everything that determines the weights, the package
version included) -> key. A finished stage is never redone; a corrupt entry is rebuilt (see cache.py).
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .._io import atomic_write_json


@dataclass
class RunResult:
    """What a benchmark run returns: its directory, the rows it appended, the report, and which models came from
    the cache ("seed/label" -> bool)."""

    output_dir: Path
    rows: list[dict] = field(default_factory=list)
    report: Path | None = None
    cache_hits: dict[str, bool] = field(default_factory=dict)


@dataclass
class Stage:
    """A model of a run and where it came from: its cache entry (`meta`, `hit`, `key`) and, for an unlearned model,
    the method (None for the original, retrained and retain models)."""

    name: str
    model: Any
    meta: dict
    hit: bool
    key: str
    method: Any = None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def start_run(out_dir: Path, config: Mapping[str, Any], cache: Any, **extra: Any) -> tuple[str, dict[str, str]]:
    """Write <out_dir>/runs/<run_id>.json (resolved config, package versions, git sha, hardware, cache root, and
    `extra`, e.g. split or data hashes) and return (run_id, versions)."""
    from .._env import git_sha, hardware, package_versions

    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    versions = package_versions()
    atomic_write_json(Path(out_dir) / "runs" / f"{run_id}.json", {
        "run_id": run_id, "config": dict(config), "versions": versions, "git_sha": git_sha(),
        "hardware": hardware(), "cache_root": str(cache.root), **extra})
    return run_id, versions


def versioned(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A cache spec with the package version: a new release never trusts models built by older code."""
    return {"unlearnkit": __version__, **spec}


def unlearn_cached(cache: Any, spec: Mapping[str, Any], base: Any, method: Any, data: Any, task: Any, *,
                   enabled: bool = True, after_step: Callable[[Any, int], bool | None] | None = None,
                   extra: Callable[[], Mapping[str, Any]] | None = None) -> tuple[Any, dict, bool, str]:
    """(model, meta, loaded_from_cache, key) of `method` applied to a copy of `base`. The unlearning wall-clock time
    (evaluation inside `after_step` excluded) is meta["unlearn_time_s"]; `extra()` adds JSON metadata after the run
    (e.g. an evaluation curve). With enabled=False nothing is cached."""
    from ..cache import spec_key

    spec = versioned(spec)
    key = spec_key(spec)
    model = copy.deepcopy(base)
    paused = [0.0]

    def timed_after_step(m: Any, step: int) -> bool | None:
        t0 = time.perf_counter()
        stop = after_step(m, step)
        paused[0] += time.perf_counter() - t0
        return stop

    def run(m: Any) -> dict[str, Any]:
        kwargs = {"after_step": timed_after_step} if after_step is not None else {}
        start = time.perf_counter()
        out = method.unlearn(m, data, task, **kwargs)
        seconds = time.perf_counter() - start - paused[0]
        if out is not m:
            m.load_state_dict(out.state_dict())
        return {"unlearn_time_s": seconds, **(extra() if extra else {})}

    if enabled:
        model, meta, hit = cache.get_or_build(key, model, run, spec=spec)
    else:
        model, meta, hit = model, {"spec": spec, **run(model)}, False
    return model.eval(), meta, hit, key
