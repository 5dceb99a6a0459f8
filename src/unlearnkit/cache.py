"""Content-addressed cache of trained models.

Layout: ``<root>/models/<key>/`` holds ``model.safetensors`` and ``meta.json``; ``<root>`` is
:func:`cache_root` (``$UNLEARNKIT_HOME`` or ``~/.cache/unlearnkit``). Keys are normally
``spec_key(spec)``, a hash of the canonical JSON of whatever determines the model (architecture, data,
seed, training recipe).

Guarantees:

* An entry is written into a private ``.tmp-<key>-<pid>-<random>`` directory and published with a single
  directory rename, so a crash never leaves a half-written entry under ``<key>``; leftover ``.tmp-*``
  directories are never read and are removed by :meth:`ModelCache.clean_tmp` / :meth:`ModelCache.clear`.
* ``meta.json`` records the SHA-256 of the weights. :meth:`ModelCache.load` checks it, and the tensor
  names and shapes against the target model, *before* touching the model; a truncated, tampered or
  incompatible entry is reported in a one-line warning, removed, and treated as absent (so
  :meth:`ModelCache.get_or_build` rebuilds it).
* When two processes build the same key, the first rename wins; the loser discards its copy and
  :meth:`ModelCache.get_or_build` loads the winner's weights so that every process uses identical weights.

Besides models, an entry may hold a named dict of tensors (``tensors.safetensors``: e.g. the SSD importances of a
model on its training set) with the same guarantees: :meth:`ModelCache.get_or_build_tensors`. ``meta.json``'s
``weights_sha256`` is the hash of the entry's one data file in both kinds.

``torch`` and ``safetensors`` are imported only inside the methods that need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unlearnkit._env import package_versions
from unlearnkit._io import atomic_write_json, content_hash, fsync_path, sha256_file

if TYPE_CHECKING:
    import torch

__all__ = [
    "META_FILE",
    "TENSORS_FILE",
    "WEIGHTS_FILE",
    "CacheCorruptionWarning",
    "CacheEntry",
    "ModelCache",
    "cache_root",
    "spec_key",
]

WEIGHTS_FILE = "model.safetensors"
TENSORS_FILE = "tensors.safetensors"  # the file of a tensor-dict entry (e.g. SSD importances)
META_FILE = "meta.json"
_TMP_PREFIX = ".tmp-"
# A .tmp-* directory of another, still running process is left alone unless it is older than this.
_STALE_AFTER_S = 6 * 3600.0
# Names of the .tmp-* directories this process is writing right now (never cleaned by this process).
_IN_FLIGHT: set[str] = set()
_MAX_REASON_CHARS = 300


class CacheCorruptionWarning(UserWarning):
    """Warned when a cache entry is found corrupt (and removed)."""


def cache_root() -> Path:
    """``$UNLEARNKIT_HOME`` if set and non-empty, else ``~/.cache/unlearnkit``."""
    home = os.environ.get("UNLEARNKIT_HOME", "")
    if home:
        return Path(home).expanduser()
    return Path.home() / ".cache" / "unlearnkit"


def spec_key(spec: Mapping[str, Any]) -> str:
    """Cache key of a model specification: the first 24 hex digits of its canonical-JSON SHA-256."""
    return content_hash(spec)[:24]


@dataclass
class CacheEntry:
    """One published cache entry."""

    key: str
    path: Path  # the entry directory
    meta: dict[str, Any]  # parsed meta.json

    @property
    def size_bytes(self) -> int:
        """Total size of the files in the entry directory (0 if it is gone)."""
        total = 0
        for f in self.path.rglob("*"):
            try:
                if f.is_file():
                    total += f.stat().st_size
            except OSError:
                pass
        return total


class _CorruptEntry(Exception):
    """Internal: an entry failed verification; ``args[0]`` is the reason."""


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    if len(line) > _MAX_REASON_CHARS:
        line = line[: _MAX_REASON_CHARS - 3] + "..."
    return line


def _check_key(key: str) -> None:
    if (
        not isinstance(key, str)
        or not key
        or key.startswith(".")
        or any(c in key for c in ("/", "\\", "\0"))
        or (os.altsep is not None and os.altsep in key)
    ):
        raise ValueError(
            f"invalid cache key {key!r}: must be a non-empty name without '/' not starting with '.'"
        )


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _read_meta(entry_dir: Path) -> dict[str, Any]:
    """Parse ``meta.json`` of an entry; raise _CorruptEntry if it is missing or not a JSON object."""
    meta_path = entry_dir / META_FILE
    try:
        text = meta_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _CorruptEntry(f"{META_FILE} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _CorruptEntry(f"{META_FILE} is unreadable: {type(exc).__name__}: {exc}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _CorruptEntry(f"{META_FILE} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise _CorruptEntry(f"{META_FILE} is not a JSON object")
    if not isinstance(meta.get("weights_sha256"), str):
        raise _CorruptEntry(f"{META_FILE} has no weights_sha256")
    return meta


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name != "posix":
        # os.kill(pid, 0) would terminate the process on Windows; rely on the age rule there.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists but belongs to someone else
        return True
    return True


def _cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every tensor on the CPU.

    CPU tensors are used as they are (no copy). Tensors on another device are copied once per distinct
    view, so tied weights (several names for the same tensor) stay tied in the copy and safetensors can
    store them once.
    """
    state = model.state_dict()
    copies: dict[tuple[Any, ...], torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.device.type == "cpu":
            out[name] = tensor
            continue
        ident = (str(tensor.device), tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if ident not in copies:
            copies[ident] = tensor.detach().to("cpu")
        out[name] = copies[ident]
    return out


def _save_weights(model: torch.nn.Module, file: Path) -> None:
    """Write the model's state dict to ``file`` with safetensors (tied tensors stored once), then fsync."""
    import torch
    from safetensors.torch import save_model

    state = _cpu_state_dict(model)

    class _StateDictModule(torch.nn.Module):
        # save_model only calls .state_dict(); handing it the CPU view lets it deduplicate shared tensors.
        def __init__(self, sd: dict[str, torch.Tensor]) -> None:
            super().__init__()
            self._sd = sd

        def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return dict(self._sd)

    save_model(_StateDictModule(state), os.fspath(file))
    fsync_path(file)


def _listing(items: list[str], sep: str = ", ", limit: int = 3) -> str:
    return sep.join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _check_compatible(model: torch.nn.Module, file: Path) -> None:
    """Compare tensor names and shapes in ``file`` with ``model`` without modifying it."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(file), framework="pt") as fh:
            file_shapes = {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}  # noqa: SIM118
    except Exception as exc:
        raise _CorruptEntry(f"unreadable {WEIGHTS_FILE}: {type(exc).__name__}: {exc}") from None

    state = model.state_dict()

    def ident(name: str, t: torch.Tensor) -> tuple[Any, ...]:
        # Names with equal identity share one tensor in the model (tied weights). Empty tensors have no
        # storage to compare, so each is its own identity.
        if t.numel() == 0:
            return ("empty", name)
        return (str(t.device), t.data_ptr(), t.dtype, tuple(t.shape), t.stride())

    stored: dict[tuple[Any, ...], list[str]] = {}
    for n in sorted(file_shapes):
        if n in state:
            stored.setdefault(ident(n, state[n]), []).append(n)
    problems: list[str] = []
    unexpected = sorted(n for n in file_shapes if n not in state)
    # A name absent from the file is fine when it is tied to a stored tensor (safetensors keeps one name).
    missing = sorted(n for n, t in state.items() if n not in file_shapes and ident(n, t) not in stored)
    mismatched = [
        f"{n}: cached {file_shapes[n]} vs model {tuple(state[n].shape)}"
        for n in sorted(file_shapes)
        if n in state and tuple(state[n].shape) != file_shapes[n]
    ]
    # Stored separately but tied in the model: load_model(strict=True) would reject it after a partial load.
    untied = ["=".join(names) for names in stored.values() if len(names) > 1]
    if mismatched:
        problems.append("shape mismatch for " + _listing(mismatched, "; "))
    if missing:
        problems.append("missing from cache: " + _listing(missing))
    if unexpected:
        problems.append("not in model: " + _listing(unexpected))
    if untied:
        problems.append("stored separately but tied in the model: " + _listing(untied))
    if problems:
        raise _CorruptEntry("incompatible with the model: " + " | ".join(problems))


class ModelCache:
    """A directory of trained models keyed by content hash; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()
        self.models_dir = self.root / "models"

    def __repr__(self) -> str:
        return f"ModelCache(root={str(self.root)!r})"

    # ------------------------------------------------------------------ paths and bookkeeping

    def path(self, key: str) -> Path:
        """The entry directory of ``key`` (whether or not it exists)."""
        _check_key(key)
        return self.models_dir / key

    def _tmp_dir(self, label: str) -> Path:
        return self.models_dir / f"{_TMP_PREFIX}{label}-{os.getpid()}-{secrets.token_hex(4)}"

    def _warn_corrupt(self, key: str, reason: str) -> None:
        warnings.warn(
            f"cache entry {key} is corrupt ({_one_line(reason)}); removing it and rebuilding",
            CacheCorruptionWarning,
            stacklevel=3,
        )

    def _discard(self, target: Path) -> None:
        """Remove an entry: rename it out of the way first (atomic), then delete it."""
        trash = self._tmp_dir(f"del-{target.name}")
        try:
            os.rename(target, trash)
        except FileNotFoundError:
            return
        except OSError:
            trash = target  # could not rename: delete in place
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                trash.unlink()

    def _is_stale_tmp(self, tmp: Path) -> bool:
        """Whether a ``.tmp-*`` directory is a leftover of a crashed (or finished) writer."""
        parts = tmp.name.rsplit("-", 2)
        try:
            pid = int(parts[1]) if len(parts) == 3 else -1
        except ValueError:
            pid = -1
        if pid == os.getpid():
            return tmp.name not in _IN_FLIGHT
        if pid <= 0:
            return True
        try:
            age = time.time() - tmp.stat().st_mtime
        except OSError:
            return False  # already gone
        return age > _STALE_AFTER_S or not _pid_alive(pid)

    # ------------------------------------------------------------------ load / save

    def load(self, key: str, model: torch.nn.Module) -> dict[str, Any] | None:
        """Load entry ``key`` into ``model`` and return its meta; ``None`` if absent or corrupt.

        The weights' SHA-256 is checked against ``meta.json`` and the stored tensor names and shapes against
        ``model`` before the model is touched; then ``safetensors.torch.load_model(strict=True)`` loads it.
        A corrupt entry (missing or invalid ``meta.json``, missing weights, hash mismatch, incompatible
        shapes or names, load error) gives a one-line :class:`CacheCorruptionWarning`, is removed and
        ``None`` is returned; this method does not raise for a corrupt entry.
        """
        entry_dir = self.path(key)
        if not os.path.lexists(entry_dir):
            return None
        try:
            meta = self._verify_and_load(key, entry_dir, model)
        except _CorruptEntry as exc:
            self._warn_corrupt(key, str(exc.args[0]))
            self._discard(entry_dir)
            return None
        return meta

    def _verified(self, key: str, entry_dir: Path, filename: str) -> tuple[dict[str, Any], Path]:
        """(meta, path of the entry's file ``filename``) once the file's SHA-256 matches ``meta.json``."""
        if not entry_dir.is_dir():
            raise _CorruptEntry("entry is not a directory")
        meta = _read_meta(entry_dir)
        if meta.get("key", key) != key:
            raise _CorruptEntry(f"{META_FILE} belongs to key {meta.get('key')!r}")
        file = entry_dir / filename
        if not file.is_file():
            raise _CorruptEntry(f"{filename} is missing")
        expected = meta["weights_sha256"]
        try:
            actual = sha256_file(file)
        except OSError as exc:
            raise _CorruptEntry(f"{filename} is unreadable: {exc}") from None
        if actual != expected:
            raise _CorruptEntry(f"weights sha256 mismatch: expected {expected[:12]}..., got {actual[:12]}...")
        return meta, file

    def _verify_and_load(self, key: str, entry_dir: Path, model: torch.nn.Module) -> dict[str, Any]:
        meta, weights = self._verified(key, entry_dir, WEIGHTS_FILE)
        _check_compatible(model, weights)
        from safetensors.torch import load_model

        try:
            load_model(model, os.fspath(weights), strict=True)
        except Exception as exc:
            raise _CorruptEntry(f"load failed: {type(exc).__name__}: {exc}") from None
        return meta

    def save(self, key: str, model: torch.nn.Module, meta: Mapping[str, Any]) -> CacheEntry:
        """Store ``model``'s weights and ``meta`` as entry ``key``; return the published entry.

        ``meta.json`` is ``dict(meta)`` plus ``key`` and ``weights_sha256`` (always set here) and ``created``
        (UTC ISO time) and ``versions`` (:func:`package_versions`) unless ``meta`` gives them. If a valid
        entry for ``key`` already exists (another process won the race) ours is discarded and the existing
        entry is returned; an existing entry without a valid ``meta.json`` is replaced.
        """
        entry, _won = self._save(key, model, meta)
        return entry

    def _save(self, key: str, model: torch.nn.Module, meta: Mapping[str, Any]) -> tuple[CacheEntry, bool]:
        return self._save_file(key, WEIGHTS_FILE, lambda file: _save_weights(model, file), meta)

    def _save_file(self, key: str, filename: str, write: Callable[[Path], None],
                   meta: Mapping[str, Any]) -> tuple[CacheEntry, bool]:
        """Publish an entry whose one data file ``filename`` is written by ``write(path)``; (entry, won the race)."""
        final = self.path(key)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp_dir(key)
        _IN_FLIGHT.add(tmp.name)
        try:
            tmp.mkdir()
            weights = tmp / filename
            write(weights)
            full_meta = dict(meta)
            full_meta.setdefault("created", _utc_now())
            full_meta.setdefault("versions", package_versions())
            full_meta["key"] = key
            full_meta["weights_sha256"] = sha256_file(weights)
            atomic_write_json(tmp / META_FILE, full_meta)
            fsync_path(tmp)
            # What load() will return later: the JSON round trip of full_meta.
            written_meta = json.loads((tmp / META_FILE).read_text(encoding="utf-8"))
            existing_meta = self._publish(key, tmp, final)
        finally:
            _IN_FLIGHT.discard(tmp.name)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        if existing_meta is None:
            return CacheEntry(key, final, written_meta), True
        return CacheEntry(key, final, existing_meta), False

    def _publish(self, key: str, tmp: Path, final: Path) -> dict[str, Any] | None:
        """Rename ``tmp`` to ``final`` and return None; if a valid entry is already there, return its meta."""
        for _attempt in range(3):
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.lexists(final):
                    raise
                try:
                    return _read_meta(final)
                except _CorruptEntry as exc:
                    self._warn_corrupt(key, str(exc.args[0]))
                    self._discard(final)
                    continue
            fsync_path(final.parent)
            return None
        raise OSError(f"could not publish cache entry {key} at {final}")

    def get_or_build(
        self,
        key: str,
        model: torch.nn.Module,
        build: Callable[[Any], Mapping[str, Any] | None],
        *,
        spec: Mapping[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any], bool]:
        """Return ``(model, meta, hit)``: load entry ``key`` into ``model``, or build and store it.

        On a miss ``build(model)`` trains ``model`` in place and returns extra metadata (e.g.
        ``{"train_time_s": 1.2}``, or ``None``); the entry is saved with meta ``{"spec": spec, **extra}``.
        If another process published ``key`` meanwhile, its weights are loaded into ``model`` so that all
        users of the key share identical weights; ``hit`` is still False because ``build`` ran.
        """
        meta = self.load(key, model)
        if meta is not None:
            return model, meta, True
        extra = build(model)
        full: dict[str, Any] = {"spec": dict(spec) if spec is not None else None, **dict(extra or {})}
        for _attempt in range(3):
            entry, won = self._save(key, model, full)
            if won:
                return model, entry.meta, False
            loaded = self.load(key, model)
            if loaded is not None:
                return model, loaded, False
        raise OSError(f"could not store cache entry {key}: it kept being replaced or corrupted")

    # ------------------------------------------------------------------ dicts of tensors

    def load_tensors(self, key: str) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        """``(tensors, meta)`` of the tensor entry ``key`` (CPU tensors), or ``(None, None)`` if absent or corrupt.

        As :meth:`load`: the file's SHA-256 is checked against ``meta.json`` first; a corrupt entry gives a one-line
        :class:`CacheCorruptionWarning`, is removed and reads as absent.
        """
        entry_dir = self.path(key)
        if not os.path.lexists(entry_dir):
            return None, None
        try:
            meta, file = self._verified(key, entry_dir, TENSORS_FILE)
            from safetensors.torch import load_file

            try:
                tensors = load_file(os.fspath(file))
            except Exception as exc:
                raise _CorruptEntry(f"load failed: {type(exc).__name__}: {exc}") from None
        except _CorruptEntry as exc:
            self._warn_corrupt(key, str(exc.args[0]))
            self._discard(entry_dir)
            return None, None
        return tensors, meta

    def get_or_build_tensors(
        self,
        key: str,
        build: Callable[[], Mapping[str, torch.Tensor]],
        *,
        spec: Mapping[str, Any] | None = None,
        agree: Callable[[bool], bool] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
        """Return ``(tensors, meta, hit)``: the dict of tensors stored as entry ``key``, or ``build()``'s, stored.

        The entry is ``tensors.safetensors`` (CPU, contiguous copies) plus ``meta.json`` ``{"spec": spec, ...}``
        with the guarantees of model entries (atomic publish, SHA-256 verified on load, corrupt entries rebuilt).
        ``agree(hit) -> hit`` makes every process take the same branch when ``build`` is collective (e.g. "any
        process missed" -> all build); without it each process decides alone. If another process published ``key``
        meanwhile, its tensors are returned, so all users of the key share identical values (``hit`` stays False).
        """
        tensors, meta = self.load_tensors(key)
        hit = tensors is not None
        if agree is not None:
            hit = agree(hit)
        if hit and tensors is not None:
            return tensors, meta or {}, True
        built = {name: t.detach().to("cpu").contiguous() for name, t in build().items()}
        meta, won = self.save_tensors(key, built, {"spec": dict(spec) if spec is not None else None})
        if not won:
            loaded, loaded_meta = self.load_tensors(key)
            if loaded is not None:
                return loaded, loaded_meta or {}, False
        return built, meta, False

    def save_tensors(self, key: str, tensors: Mapping[str, torch.Tensor],
                     meta: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Publish entry ``key`` holding ``tensors`` (CPU, contiguous, no shared storage) with ``meta`` (JSON), with
        the guarantees of every entry (atomic publish, SHA-256 on load); (the stored meta, whether this call won a
        race with another process publishing the same key)."""

        def write(file: Path) -> None:
            from safetensors.torch import save_file

            save_file(dict(tensors), os.fspath(file))
            fsync_path(file)

        entry, won = self._save_file(key, TENSORS_FILE, write, meta)
        return entry.meta, won

    # ------------------------------------------------------------------ listing and removal

    def _entry_dirs(self) -> list[Path]:
        if not self.models_dir.is_dir():
            return []
        return [d for d in self.models_dir.iterdir() if not d.name.startswith(".") and d.is_dir()]

    def entries(self) -> list[CacheEntry]:
        """Entries with a readable ``meta.json``, oldest ``created`` first; ``.tmp-*`` dirs are ignored.

        Only ``meta.json`` is checked here; the weights are verified by :meth:`load`.
        """
        out: list[CacheEntry] = []
        for d in self._entry_dirs():
            try:
                meta = _read_meta(d)
            except _CorruptEntry:
                continue
            out.append(CacheEntry(d.name, d, meta))
        out.sort(key=lambda e: (str(e.meta.get("created", "")), e.key))
        return out

    def remove(self, key_prefix: str) -> list[str]:
        """Remove the entries whose key starts with ``key_prefix`` (>= 4 characters); return their keys."""
        if len(key_prefix) < 4:
            raise ValueError(f"key prefix {key_prefix!r} too short: give at least 4 characters")
        removed = []
        for d in sorted(self._entry_dirs()):
            if d.name.startswith(key_prefix):
                self._discard(d)
                removed.append(d.name)
        return removed

    def clear(self) -> int:
        """Remove all entries and stale ``.tmp-*`` dirs; return the number of entries removed."""
        dirs = self._entry_dirs()
        for d in dirs:
            self._discard(d)
        self.clean_tmp()
        return len(dirs)

    def clean_tmp(self) -> int:
        """Remove ``.tmp-*`` dirs left by crashed writes; return how many were removed.

        A ``.tmp-*`` dir whose writer (the pid in its name) is still running is kept unless it is older than
        6 hours; this process's own in-progress writes are always kept.
        """
        if not self.models_dir.is_dir():
            return 0
        count = 0
        for d in self.models_dir.iterdir():
            if not d.name.startswith(_TMP_PREFIX) or not self._is_stale_tmp(d):
                continue
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
            else:
                try:
                    d.unlink()
                except OSError:
                    continue
            if not os.path.lexists(d):
                count += 1
        return count
