"""Capture of the software and hardware environment, recorded next to every artifact.

Only the standard library is imported at module level; ``torch`` is imported lazily by :func:`hardware`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from typing import Any

__all__ = ["git_sha", "hardware", "package_versions"]

# Distribution names whose versions matter for reproducing a result.
_PACKAGES = (
    "unlearnkit",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "accelerate",
    "safetensors",
    "transformers",
)

_SHA_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


@functools.lru_cache(maxsize=1)
def _package_versions_cached() -> tuple[tuple[str, str], ...]:
    versions: dict[str, str] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            # unlearnkit run from a source tree (PYTHONPATH=src) has no distribution metadata; use the
            # package's own __version__ if it is already imported. Other missing packages are skipped.
            module = sys.modules.get(name)
            version = getattr(module, "__version__", None) if module is not None else None
            if isinstance(version, str):
                versions[name] = version
    return tuple(versions.items())


def package_versions() -> dict[str, str]:
    """Versions of Python, the platform and the installed key packages (missing packages are skipped).

    Keys: ``python``, ``platform`` and the distribution names of unlearnkit, torch, numpy, scipy,
    scikit-learn, accelerate, safetensors and transformers. Computed once per process (lru_cache); each call
    returns a fresh dict, so callers may modify it. ``package_versions.cache_clear()`` forgets the cache.
    """
    return dict(_package_versions_cached())


package_versions.cache_clear = _package_versions_cached.cache_clear  # type: ignore[attr-defined]


def git_sha(path: str | os.PathLike[str] = ".") -> str | None:
    """The commit hash of ``HEAD`` of the git work tree containing ``path``; ``None`` on any failure.

    Failures include: git not installed, ``path`` not in a repository, a repository without commits,
    or git taking longer than 5 seconds.
    """
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.fspath(path),
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    sha = proc.stdout.strip()
    if proc.returncode != 0 or not _SHA_RE.match(sha):
        return None
    return sha


def hardware() -> dict[str, Any]:
    """CPU count and, when torch is importable, CUDA availability and device names.

    Keys: ``cpu_count``; with torch also ``cuda_available`` and, if CUDA is available, ``cuda_device_count``,
    ``cuda_device_name`` (device 0) and ``cuda_devices`` (all names).
    """
    info: dict[str, Any] = {"cpu_count": os.cpu_count()}
    try:
        import torch
    except Exception:  # torch missing or broken: report what we have
        return info
    try:
        available = bool(torch.cuda.is_available())
        info["cuda_available"] = available
        if available:
            count = torch.cuda.device_count()
            names = [torch.cuda.get_device_name(i) for i in range(count)]
            info["cuda_device_count"] = count
            info["cuda_device_name"] = names[0] if names else None
            info["cuda_devices"] = names
    except Exception:  # a broken driver must not break artifact writing
        pass
    return info
