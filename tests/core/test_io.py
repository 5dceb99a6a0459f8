"""Tests of unlearnkit._io (atomic writes, JSONL, hashing) and unlearnkit._env (environment capture)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import warnings

import pytest

from unlearnkit import _env
from unlearnkit._io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    canonical_json,
    content_hash,
    read_jsonl,
    sha256_file,
)

# ---------------------------------------------------------------------------- atomic writes


def test_atomic_write_bytes_creates_parents_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b" / "blob.bin"
    out = atomic_write_bytes(target, b"\x00\x01payload")
    assert out == target
    assert target.read_bytes() == b"\x00\x01payload"
    assert sorted(p.name for p in target.parent.iterdir()) == ["blob.bin"]


def test_atomic_write_replaces_existing_content(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old content that is longer")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_atomic_write_failure_keeps_old_content_and_removes_temp(tmp_path):
    target = tmp_path / "keep.txt"
    atomic_write_text(target, "precious")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, 12345)  # type: ignore[arg-type]  # not bytes: fails while writing
    assert target.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_atomic_write_uses_normal_permissions(tmp_path):
    if os.name != "posix":
        pytest.skip("POSIX permissions only")
    target = atomic_write_text(tmp_path / "perm.txt", "x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_write_text_is_utf8_and_untranslated(tmp_path):
    target = atomic_write_text(tmp_path / "t.txt", "ünïcode\nline2\r\n")
    assert target.read_bytes() == "ünïcode\nline2\r\n".encode()


def test_atomic_write_json_is_sorted_indented_newline_terminated(tmp_path):
    target = atomic_write_json(tmp_path / "m.json", {"b": 1, "a": {"d": tmp_path, "c": [1, 2]}})
    text = target.read_text()
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"b"')
    assert text.index('"c"') < text.index('"d"')
    assert '\n  "a"' in text  # indent=2
    assert json.loads(text)["a"]["d"] == str(tmp_path)  # default=str
    compact = atomic_write_json(tmp_path / "c.json", {"a": 1}, indent=None).read_text()
    assert compact == '{"a": 1}\n'


# ---------------------------------------------------------------------------- JSONL


def test_append_and_read_jsonl_round_trip(tmp_path):
    path = tmp_path / "runs" / "log.jsonl"
    append_jsonl(path, {"b": 2, "a": 1})
    append_jsonl(path, {"p": tmp_path})
    lines = path.read_text().splitlines()
    assert lines[0] == '{"a": 1, "b": 2}'  # sorted keys, one line
    assert read_jsonl(path) == [{"a": 1, "b": 2}, {"p": str(tmp_path)}]


def test_append_jsonl_keeps_embedded_newlines_on_one_line(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"text": "line1\nline2"})
    append_jsonl(path, {"text": "x"})
    assert len(path.read_bytes().splitlines()) == 2
    assert read_jsonl(path) == [{"text": "line1\nline2"}, {"text": "x"}]


def test_read_jsonl_missing_file_is_empty(tmp_path):
    assert read_jsonl(tmp_path / "nope.jsonl") == []


def test_read_jsonl_skips_blank_lines_silently(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_append_after_torn_line_keeps_new_row_and_read_warns(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 1})
    with open(path, "ab") as fh:  # a crash in the middle of a write
        fh.write(b'{"step": 2, "loss": 0.1')
    append_jsonl(path, {"step": 3})
    with pytest.warns(UserWarning) as record:
        rows = read_jsonl(path)
    assert rows == [{"step": 1}, {"step": 3}]
    messages = [str(w.message) for w in record]
    assert len(messages) == 1
    assert str(path) in messages[0]
    assert ":2:" in messages[0]  # the torn line is line 2


def test_read_jsonl_warns_on_truncated_utf8_and_non_objects(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a": 1}\n[1, 2]\n{"t": "\xc3\n')
    with pytest.warns(UserWarning) as record:
        rows = read_jsonl(path)
    assert rows == [{"a": 1}]
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert ":2:" in messages[0] and ":3:" in messages[1]


# ---------------------------------------------------------------------------- hashing


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = os.urandom(10_000)
    path = tmp_path / "d.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk=7) == expected


def test_canonical_json_is_key_order_independent_and_compact():
    a = {"b": [1, {"y": 2, "x": 1}], "a": "s"}
    b = {"a": "s", "b": [1, {"x": 1, "y": 2}]}
    assert canonical_json(a) == canonical_json(b) == '{"a":"s","b":[1,{"x":1,"y":2}]}'


def test_content_hash_is_sha256_of_canonical_json():
    obj = {"z": 1, "a": [1, 2]}
    assert content_hash(obj) == hashlib.sha256(canonical_json(obj).encode()).hexdigest()
    assert content_hash(obj) == content_hash({"a": [1, 2], "z": 1})
    assert content_hash(obj) != content_hash({"z": 2, "a": [1, 2]})


# ---------------------------------------------------------------------------- environment capture


def test_package_versions_has_python_platform_and_installed_packages():
    _env.package_versions.cache_clear()
    versions = _env.package_versions()
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert versions["platform"]
    import torch

    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "definitely-not-a-package" not in versions
    versions["python"] = "mutated"
    assert _env.package_versions()["python"] != "mutated"  # callers get a copy


def test_git_sha_in_a_repository_and_outside(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert _env.git_sha(outside) is None
    assert _env.git_sha(tmp_path / "does-not-exist") is None
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    try:
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True, capture_output=True)
        assert _env.git_sha(repo) is None  # no commits yet
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not available")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    sha = _env.git_sha(repo)
    assert sha == head
    assert re.fullmatch(r"[0-9a-f]{40}", sha)


def test_hardware_reports_cpu_and_cuda():
    import torch

    info = _env.hardware()
    assert info["cpu_count"] == os.cpu_count()
    assert info["cuda_available"] is torch.cuda.is_available()
    if torch.cuda.is_available():
        assert info["cuda_device_count"] == torch.cuda.device_count()
        assert info["cuda_device_name"] == torch.cuda.get_device_name(0)
    else:
        assert "cuda_device_count" not in info


def test_io_and_env_import_only_stdlib():
    code = (
        "import sys; import unlearnkit._io, unlearnkit._env; "
        "heavy = [m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    src = os.path.dirname(os.path.dirname(os.path.abspath(_env.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_atomic_write_dir_replaces_whole_and_survives_a_crash(tmp_path):
    from unlearnkit._io import atomic_write_dir

    target = tmp_path / "ckpt"

    def write(files):
        def run(tmp):
            for name, text in files.items():
                (tmp / name).write_text(text)
        return run

    atomic_write_dir(target, write({"a.txt": "1", "b.txt": "1"}))
    atomic_write_dir(target, write({"a.txt": "2"}))
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_text() == "2"

    def crash(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write_dir(target, crash)
    assert (target / "a.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary directory left
