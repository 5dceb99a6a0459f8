"""Crash-safe file I/O helpers and content hashing.

Every artifact unlearnkit writes goes through these helpers so that a crash (or a kill -9) never leaves a
half-written file that a later run would trust:

* ``atomic_write_*`` write to a temporary file in the destination directory, ``fsync`` it and then
  ``os.replace`` it over the target, so readers see either the old or the new content, never a mix.
* ``append_jsonl`` appends one complete line per call (single ``write`` + ``fsync``) and repairs a torn last
  line left by an earlier crash before appending; ``read_jsonl`` skips (and warns about) torn lines.
* ``canonical_json`` / ``content_hash`` give stable identities to configuration dictionaries.

Only the standard library is imported here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "append_jsonl",
    "atomic_write_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "canonical_json",
    "content_hash",
    "read_jsonl",
    "sha256_file",
]


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else via os.umask."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: Path) -> None:
    """Persist a file's contents, or a rename inside a directory, by fsyncing it (directories: POSIX only);
    best effort."""
    if path.is_dir() and os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``; parent directories are created. Returns the path.

    The data goes to a temporary file in the same directory, is flushed and fsynced, and is then renamed
    over the target with ``os.replace``. On any error the temporary file is removed and the previous
    content of ``path`` (if any) is left untouched.
    """
    target = Path(path)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates files 0600; give the artifact the permissions a plain open() would.
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_path(parent)
    return target


def atomic_write_dir(path: str | os.PathLike[str], write: Any) -> Path:
    """Atomically replace directory ``path`` with what ``write(tmp_dir)`` puts in a fresh temporary directory beside
    it (e.g. a model's ``save_pretrained``). A crash leaves either the old directory or the new one, never a half
    written one (a leftover ``.name.*.tmp`` directory is never read). Returns the path."""
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_path(f)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8, newlines untranslated) to ``path``. Returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as sorted, indented JSON plus a trailing newline. Returns the path.

    Values JSON cannot represent (paths, numpy scalars, ...) are written with ``str``.
    """
    text = json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n"
    return atomic_write_text(path, text)


def append_jsonl(path: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append ``row`` as one JSON line to ``path`` (created with its parents if needed), then fsync.

    If the file does not end with a newline (its last line was torn by a crash), a newline is written first
    so the new row stays on a line of its own and remains readable. The whole append is a single ``write``
    on a file opened in append mode.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(dict(row), sort_keys=True, default=str) + "\n").encode("utf-8")
    with open(target, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                line = b"\n" + line
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read the JSON objects of a JSONL file; a missing file gives ``[]``.

    Blank lines are skipped silently. A line that is not a valid JSON object (typically the torn last line
    of a crashed writer) is skipped with a warning naming the file and the 1-based line number.
    """
    target = Path(path)
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        return []
    rows: list[dict[str, Any]] = []
    for lineno, chunk in enumerate(raw.split(b"\n"), start=1):
        if not chunk.strip():
            continue
        try:
            obj = json.loads(chunk.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            warnings.warn(
                f"{target}:{lineno}: skipping unreadable JSONL line (torn write?): {type(exc).__name__}",
                stacklevel=2,
            )
            continue
        if not isinstance(obj, dict):
            warnings.warn(
                f"{target}:{lineno}: skipping JSONL line that is not a JSON object ({type(obj).__name__})",
                stacklevel=2,
            )
            continue
        rows.append(obj)
    return rows


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in ``chunk``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys, so equal dictionaries give equal strings regardless of key order."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_hash(obj: Any) -> str:
    """Hex SHA-256 of ``canonical_json(obj)``."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
