"""Tests of unlearnkit.cache: the content-addressed model cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import pytest
import torch
from torch import nn

from unlearnkit._io import sha256_file
from unlearnkit.cache import (
    META_FILE,
    TENSORS_FILE,
    WEIGHTS_FILE,
    CacheCorruptionWarning,
    CacheEntry,
    ModelCache,
    cache_root,
    spec_key,
)

KEY = "0123456789abcdef01234567"


def make_model(seed: int = 0, hidden: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))


class TiedModel(nn.Module):
    """An embedding whose weight is shared with the output layer, plus one module referenced twice."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight
        self.mix = nn.Linear(4, 4)
        self.mix_again = self.mix  # the same module under two names

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix_again(self.mix(self.emb(idx))))


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def states_differ(a: nn.Module, b: nn.Module) -> bool:
    return any(
        not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def listing(cache: ModelCache) -> list[str]:
    return sorted(p.name for p in cache.models_dir.iterdir()) if cache.models_dir.exists() else []


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def corrupt_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CacheCorruptionWarning)]


# ---------------------------------------------------------------------------- keys and root


def test_spec_key_is_stable_under_key_order_and_distinguishes_specs():
    a = {"model": "mlp", "seed": 0, "train": {"lr": 0.1, "epochs": 3}}
    b = {"train": {"epochs": 3, "lr": 0.1}, "seed": 0, "model": "mlp"}
    assert spec_key(a) == spec_key(b)
    assert len(spec_key(a)) == 24
    assert all(c in "0123456789abcdef" for c in spec_key(a))
    assert spec_key(a) != spec_key({**a, "seed": 1})
    assert spec_key(a) != spec_key({**a, "train": {"lr": 0.1, "epochs": 4}})


def test_cache_root_respects_unlearnkit_home(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNKIT_HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home"
    cache = ModelCache()
    assert cache.root == tmp_path / "home"
    cache.save(KEY, make_model(), {})
    assert (tmp_path / "home" / "models" / KEY / WEIGHTS_FILE).is_file()


def test_cache_root_default_when_env_unset_or_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    monkeypatch.setenv("UNLEARNKIT_HOME", "")
    assert cache_root() == tmp_path / ".cache" / "unlearnkit"
    monkeypatch.delenv("UNLEARNKIT_HOME")
    assert cache_root() == tmp_path / ".cache" / "unlearnkit"
    assert ModelCache("elsewhere").root == Path("elsewhere")


def test_path_rejects_keys_that_escape_the_cache(tmp_path):
    cache = ModelCache(tmp_path)
    assert cache.path(KEY) == tmp_path / "models" / KEY
    for bad in ["", "../x", "a/b", ".tmp-x", ".."]:
        with pytest.raises(ValueError):
            cache.path(bad)


# ---------------------------------------------------------------------------- save / load


def test_round_trip_gives_identical_tensors(tmp_path):
    cache = ModelCache(tmp_path)
    model = make_model(seed=1)
    cache.save(KEY, model, {"note": "hi"})
    fresh = make_model(seed=2)
    assert states_differ(model, fresh)
    meta = cache.load(KEY, fresh)
    assert meta is not None and meta["note"] == "hi"
    assert_same_state(model, fresh)
    x = torch.randn(5, 4)
    assert torch.equal(model(x), fresh(x))


def test_meta_contents(tmp_path):
    cache = ModelCache(tmp_path)
    entry = cache.save(KEY, make_model(), {"spec": {"a": 1}, "train_time_s": 1.5, "path": tmp_path})
    assert isinstance(entry, CacheEntry)
    assert entry.key == KEY and entry.path == tmp_path / "models" / KEY
    meta = entry.meta
    assert meta["key"] == KEY
    assert meta["weights_sha256"] == sha256_file(entry.path / WEIGHTS_FILE)
    assert meta["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert "python" in meta["versions"]
    created = meta["created"]
    assert created.endswith("+00:00")
    assert abs(time.time() - datetime.fromisoformat(created).timestamp()) < 60
    assert meta["spec"] == {"a": 1} and meta["train_time_s"] == 1.5
    assert meta["path"] == str(tmp_path)  # stored as JSON
    on_disk = json.loads((entry.path / META_FILE).read_text())
    assert on_disk == meta
    assert entry.size_bytes == sum(f.stat().st_size for f in entry.path.iterdir())
    assert entry.size_bytes > 0


def test_meta_given_created_and_versions_kept_but_key_and_hash_overwritten(tmp_path):
    cache = ModelCache(tmp_path)
    entry = cache.save(
        KEY,
        make_model(),
        {
            "created": "2001-01-01T00:00:00+00:00",
            "versions": {"x": "1"},
            "key": "bogus",
            "weights_sha256": "0",
        },
    )
    assert entry.meta["created"] == "2001-01-01T00:00:00+00:00"
    assert entry.meta["versions"] == {"x": "1"}
    assert entry.meta["key"] == KEY
    assert entry.meta["weights_sha256"] == sha256_file(entry.path / WEIGHTS_FILE)


def test_load_absent_returns_none_without_warning(tmp_path):
    cache = ModelCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load(KEY, make_model()) is None


def test_tied_weights_round_trip(tmp_path):
    cache = ModelCache(tmp_path)
    model = TiedModel(seed=1)
    cache.save(KEY, model, {})
    fresh = TiedModel(seed=2)
    assert states_differ(model, fresh)
    assert cache.load(KEY, fresh) is not None
    assert_same_state(model, fresh)
    assert fresh.head.weight is fresh.emb.weight
    assert fresh.mix is fresh.mix_again
    idx = torch.tensor([0, 3, 4])
    assert torch.equal(model(idx), fresh(idx))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_save_from_gpu_model_with_tied_weights(tmp_path):
    cache = ModelCache(tmp_path)
    model = TiedModel(seed=1).cuda()
    cache.save(KEY, model, {})
    assert next(model.parameters()).is_cuda  # the model itself was not moved
    fresh = TiedModel(seed=2)
    assert cache.load(KEY, fresh) is not None
    assert_same_state(model.cpu(), fresh)
    gpu_fresh = TiedModel(seed=3).cuda()
    assert cache.load(KEY, gpu_fresh) is not None
    assert gpu_fresh.emb.weight.is_cuda
    assert_same_state(model, gpu_fresh.cpu())


# ---------------------------------------------------------------------------- corruption


def _corrupt_case(tmp_path, damage) -> tuple[ModelCache, nn.Module, nn.Module, list]:
    cache = ModelCache(tmp_path)
    cache.save(KEY, make_model(seed=1), {})
    damage(cache.path(KEY))
    target = make_model(seed=2)
    before = make_model(seed=2)
    with pytest.warns(CacheCorruptionWarning) as record:
        assert cache.load(KEY, target) is None
    assert not cache.path(KEY).exists()
    assert listing(cache) == []  # no trash left behind
    messages = corrupt_warnings(record)
    assert len(messages) == 1
    assert "\n" not in messages[0]
    assert messages[0].startswith(f"cache entry {KEY} is corrupt (")
    assert messages[0].endswith("); removing it and rebuilding")
    return cache, target, before, messages


def test_truncated_weights_detected(tmp_path):
    def truncate(d: Path) -> None:
        f = d / WEIGHTS_FILE
        f.write_bytes(f.read_bytes()[:-20])

    _, target, before, messages = _corrupt_case(tmp_path, truncate)
    assert "sha256 mismatch" in messages[0]
    assert_same_state(target, before)


def test_tampered_byte_same_length_detected(tmp_path):
    def flip_last_byte(d: Path) -> None:
        f = d / WEIGHTS_FILE
        data = bytearray(f.read_bytes())
        data[-1] ^= 0x01  # inside the tensor data: safetensors alone would load it without complaint
        f.write_bytes(bytes(data))

    _, target, before, messages = _corrupt_case(tmp_path, flip_last_byte)
    assert "sha256 mismatch" in messages[0]
    assert_same_state(target, before)


def test_garbage_meta_detected(tmp_path):
    _, _, _, messages = _corrupt_case(tmp_path, lambda d: (d / META_FILE).write_text("{not json"))
    assert "not valid JSON" in messages[0]


def test_meta_without_hash_detected(tmp_path):
    _, _, _, messages = _corrupt_case(tmp_path, lambda d: (d / META_FILE).write_text('{"key": "x"}'))
    assert "weights_sha256" in messages[0]


def test_missing_meta_detected(tmp_path):
    _, _, _, messages = _corrupt_case(tmp_path, lambda d: (d / META_FILE).unlink())
    assert "meta.json is missing" in messages[0]


def test_missing_weights_detected(tmp_path):
    _, _, _, messages = _corrupt_case(tmp_path, lambda d: (d / WEIGHTS_FILE).unlink())
    assert "model.safetensors is missing" in messages[0]


def test_shape_mismatch_detected_and_model_untouched(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save(KEY, make_model(seed=1, hidden=3), {})
    # Hidden width 5: the first layer and 2.weight differ, but 2.bias has the same shape (2,) and would be
    # silently overwritten by a partial load_state_dict.
    target = make_model(seed=2, hidden=5)
    before = make_model(seed=2, hidden=5)
    with pytest.warns(CacheCorruptionWarning) as record:
        assert cache.load(KEY, target) is None
    (message,) = corrupt_warnings(record)
    assert "\n" not in message and "shape mismatch" in message
    assert not cache.path(KEY).exists()
    assert_same_state(target, before)


def test_missing_and_unexpected_names_detected_and_model_untouched(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save(KEY, make_model(seed=1), {})
    torch.manual_seed(2)
    target = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.Linear(2, 2))
    before_state = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.warns(CacheCorruptionWarning, match="missing from cache: 3.bias"):
        assert cache.load(KEY, target) is None
    for k, v in target.state_dict().items():
        assert torch.equal(v, before_state[k])

    cache.save(KEY, make_model(seed=1), {})
    with pytest.warns(CacheCorruptionWarning, match="not in model: 2.bias"):
        assert cache.load(KEY, nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))) is None


def test_entry_for_other_key_detected(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save(KEY, make_model(), {})
    other = "fedcba9876543210fedcba98"
    os.rename(cache.path(KEY), cache.path(other))
    with pytest.warns(CacheCorruptionWarning, match="belongs to key"):
        assert cache.load(other, make_model()) is None


def test_untied_entry_into_tied_model_detected_and_model_untouched(tmp_path):
    cache = ModelCache(tmp_path)
    untied = TiedModel(seed=1)
    untied.head.weight = nn.Parameter(untied.emb.weight.detach().clone() + 1)  # stored as two tensors
    cache.save(KEY, untied, {})
    target = TiedModel(seed=2)
    before = TiedModel(seed=2)
    with pytest.warns(CacheCorruptionWarning, match="tied in the model"):
        assert cache.load(KEY, target) is None
    assert_same_state(target, before)


def test_corruption_warning_is_one_line_even_for_multiline_reasons(tmp_path):
    cache = ModelCache(tmp_path)
    odd = make_model()
    odd.register_buffer("odd\nname", torch.zeros(1))  # a tensor name with a line break
    cache.save(KEY, odd, {})
    with pytest.warns(CacheCorruptionWarning) as record:
        assert cache.load(KEY, make_model()) is None
    (message,) = corrupt_warnings(record)
    assert "\n" not in message
    assert "not in model: odd name" in message


# ---------------------------------------------------------------------------- get_or_build


def test_get_or_build_builds_once_then_hits(tmp_path):
    cache = ModelCache(tmp_path)
    calls: list[int] = []
    spec = {"arch": "mlp", "seed": 7}
    key = spec_key(spec)

    def build(model: nn.Module) -> dict:
        calls.append(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # "training"
        return {"train_time_s": 1.2}

    m1, meta1, hit1 = cache.get_or_build(key, make_model(seed=0), build, spec=spec)
    assert (hit1, len(calls)) == (False, 1)
    assert meta1["spec"] == spec and meta1["train_time_s"] == 1.2 and meta1["key"] == key

    m2, meta2, hit2 = cache.get_or_build(key, make_model(seed=5), build, spec=spec)
    assert (hit2, len(calls)) == (True, 1)
    assert meta2 == meta1
    assert_same_state(m1, m2)
    assert cache.get_or_build(key, make_model(seed=6), build, spec=spec)[2] is True
    assert len(calls) == 1


def test_get_or_build_rebuilds_corrupt_entry(tmp_path):
    cache = ModelCache(tmp_path)
    calls: list[int] = []

    def build(model: nn.Module) -> None:
        calls.append(1)

    cache.get_or_build(KEY, make_model(), build)
    f = cache.path(KEY) / WEIGHTS_FILE
    f.write_bytes(f.read_bytes()[:10])
    with pytest.warns(CacheCorruptionWarning):
        _, meta, hit = cache.get_or_build(KEY, make_model(), build)
    assert hit is False and len(calls) == 2
    assert meta["spec"] is None
    assert cache.load(KEY, make_model()) is not None  # the rebuilt entry is valid


def test_get_or_build_loser_of_race_adopts_winner_weights(tmp_path):
    cache = ModelCache(tmp_path)
    winner = make_model(seed=11)

    def build(model: nn.Module) -> dict:
        # While we "train", another process publishes the same key.
        ModelCache(tmp_path).save(KEY, winner, {"who": "winner"})
        return {"who": "loser"}

    model, meta, hit = cache.get_or_build(KEY, make_model(seed=12), build)
    assert hit is False
    assert meta["who"] == "winner"
    assert_same_state(model, winner)
    assert listing(cache) == [KEY]


def test_save_when_entry_exists_returns_existing(tmp_path):
    cache = ModelCache(tmp_path)
    first = cache.save(KEY, make_model(seed=1), {"n": 1})
    second = cache.save(KEY, make_model(seed=2), {"n": 2})
    assert second.meta == first.meta
    assert second.meta["n"] == 1
    assert listing(cache) == [KEY]  # our temp dir was discarded
    fresh = make_model(seed=3)
    cache.load(KEY, fresh)
    assert_same_state(fresh, make_model(seed=1))


def test_save_replaces_broken_leftover_at_final_path(tmp_path):
    cache = ModelCache(tmp_path)
    broken = cache.path(KEY)
    broken.mkdir(parents=True)
    (broken / WEIGHTS_FILE).write_bytes(b"partial")
    with pytest.warns(CacheCorruptionWarning):
        entry = cache.save(KEY, make_model(seed=1), {"n": 1})
    assert entry.meta["n"] == 1
    assert cache.load(KEY, make_model(seed=2)) is not None
    assert listing(cache) == [KEY]


def test_save_error_removes_temp_dir(tmp_path):
    cache = ModelCache(tmp_path)
    with torch.device("meta"):
        model = make_model()  # meta tensors have no data: saving must fail
    with pytest.raises(Exception):  # noqa: B017 - whichever error torch raises
        cache.save(KEY, model, {})
    assert listing(cache) == []


# ---------------------------------------------------------------------------- listing, removal, crash


def test_entries_sorted_by_created_and_ignore_tmp_and_invalid(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save("bbbb0001", make_model(), {"created": "2024-03-01T00:00:00+00:00"})
    cache.save("aaaa0001", make_model(), {"created": "2024-05-01T00:00:00+00:00"})
    cache.save("cccc0001", make_model(), {"created": "2024-01-01T00:00:00+00:00"})
    (cache.models_dir / "nometa").mkdir()
    (cache.models_dir / f".tmp-dddd0001-{dead_pid()}-abcd").mkdir()
    entries = cache.entries()
    assert [e.key for e in entries] == ["cccc0001", "bbbb0001", "aaaa0001"]
    assert all(e.meta["key"] == e.key and e.size_bytes > 0 for e in entries)
    assert ModelCache(tmp_path / "empty").entries() == []


def test_remove_by_prefix(tmp_path):
    cache = ModelCache(tmp_path)
    for key in ["abcd0001", "abcd0002", "abce0001"]:
        cache.save(key, make_model(), {})
    with pytest.raises(ValueError, match=r"key prefix 'ab' too short: give at least 4 characters"):
        cache.remove("ab")
    assert listing(cache) == ["abcd0001", "abcd0002", "abce0001"]
    assert cache.remove("abcd") == ["abcd0001", "abcd0002"]
    assert [e.key for e in cache.entries()] == ["abce0001"]
    assert listing(cache) == ["abce0001"]
    assert cache.remove("zzzz") == []


def test_clear_removes_entries_and_stale_tmp(tmp_path):
    cache = ModelCache(tmp_path)
    for key in ["abcd0001", "abcd0002"]:
        cache.save(key, make_model(), {})
    (cache.models_dir / f".tmp-abcd0003-{dead_pid()}-ffff").mkdir()
    assert cache.clear() == 2
    assert listing(cache) == []
    assert cache.entries() == []
    assert ModelCache(tmp_path / "never-used").clear() == 0


def test_simulated_crash_leftover_is_never_trusted_and_cleaned(tmp_path):
    cache = ModelCache(tmp_path)
    # A writer that died after writing a full-looking entry into its temp dir but before the rename.
    source = ModelCache(tmp_path / "src").save(KEY, make_model(seed=1), {})
    tmp = cache.models_dir / f".tmp-{KEY}-{dead_pid()}-0a1b2c3d"
    tmp.mkdir(parents=True)
    (tmp / WEIGHTS_FILE).write_bytes((source.path / WEIGHTS_FILE).read_bytes()[:50])
    (tmp / META_FILE).write_text(json.dumps(source.meta))
    assert cache.entries() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.load(KEY, make_model()) is None
    assert cache.clean_tmp() == 1
    assert listing(cache) == []


def test_clean_tmp_keeps_writes_of_live_processes(tmp_path):
    cache = ModelCache(tmp_path)
    cache.models_dir.mkdir(parents=True)
    live_other = cache.models_dir / f".tmp-{KEY}-{os.getppid()}-aaaa"  # parent process: alive
    old_other = cache.models_dir / f".tmp-{KEY}-{os.getppid()}-bbbb"
    mine_not_in_flight = cache.models_dir / f".tmp-{KEY}-{os.getpid()}-cccc"  # no write of ours uses it
    no_pid = cache.models_dir / ".tmp-garbage"
    for d in (live_other, old_other, mine_not_in_flight, no_pid):
        d.mkdir()
    seven_hours_ago = time.time() - 7 * 3600
    os.utime(old_other, (seven_hours_ago, seven_hours_ago))
    assert cache.clean_tmp() == 3
    assert listing(cache) == [live_other.name]
    assert ModelCache(tmp_path / "nothing").clean_tmp() == 0


class CleaningModel(nn.Sequential):
    """Runs clean_tmp while the cache is writing it (save calls state_dict inside its temp dir)."""

    def __init__(self, cache: ModelCache) -> None:
        super().__init__(nn.Linear(4, 3))
        self.cache = cache
        self.seen: list[tuple[list[str], int, list[str]]] = []

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        if self.cache.models_dir.exists():
            before = [p.name for p in self.cache.models_dir.glob(".tmp-*")]
            removed = self.cache.clean_tmp()
            after = [p.name for p in self.cache.models_dir.glob(".tmp-*")]
            self.seen.append((before, removed, after))
        return super().state_dict(*args, **kwargs)


def test_clean_tmp_never_removes_this_process_in_flight_write(tmp_path):
    cache = ModelCache(tmp_path)
    model = CleaningModel(cache)
    entry = cache.save(KEY, model, {})
    before, removed, after = model.seen[0]
    assert len(before) == 1 and before[0].startswith(f".tmp-{KEY}-{os.getpid()}-")
    assert removed == 0 and after == before
    assert entry.path.is_dir() and listing(cache) == [KEY]


def test_import_cache_is_cheap():
    import unlearnkit.cache

    code = (
        "import sys; import unlearnkit.cache; "
        "heavy = [m for m in ('torch', 'safetensors', 'numpy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    src = str(Path(unlearnkit.cache.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------- dicts of tensors
def _tensors() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}


def test_tensor_entry_is_built_once_then_loaded(tmp_path):
    cache, calls = ModelCache(tmp_path), []

    def build():
        calls.append(1)
        return _tensors()

    first, meta, hit = cache.get_or_build_tensors(KEY, build, spec={"what": "importance"})
    second, meta2, hit2 = cache.get_or_build_tensors(KEY, build)
    assert (hit, hit2, len(calls)) == (False, True, 1)
    assert meta["spec"] == meta2["spec"] == {"what": "importance"}
    assert meta2["weights_sha256"] == sha256_file(tmp_path / "models" / KEY / TENSORS_FILE)
    for got in (first, second):
        assert got.keys() == _tensors().keys() and all(torch.equal(got[k], v) for k, v in _tensors().items())
    assert [e.key for e in cache.entries()] == [KEY]


@pytest.mark.parametrize("damage", ["garbage", "truncate", "meta"])
def test_corrupt_tensor_entry_is_detected_and_rebuilt(tmp_path, damage):
    cache = ModelCache(tmp_path)
    cache.get_or_build_tensors(KEY, _tensors)
    file = tmp_path / "models" / KEY / (META_FILE if damage == "meta" else TENSORS_FILE)
    file.write_bytes(b"garbage" if damage != "truncate" else file.read_bytes()[:-8])
    with pytest.warns(CacheCorruptionWarning, match=f"cache entry {KEY} is corrupt"):
        tensors, _meta, hit = cache.get_or_build_tensors(KEY, _tensors)
    assert not hit and torch.equal(tensors["a.weight"], _tensors()["a.weight"])
    assert cache.get_or_build_tensors(KEY, _tensors)[2]  # the rebuilt entry is valid


def test_agree_makes_every_process_take_the_same_branch(tmp_path):
    cache, calls = ModelCache(tmp_path), []
    cache.get_or_build_tensors(KEY, _tensors)

    def build():
        calls.append(1)
        return _tensors()

    # another process missed: this one builds too (a collective build must run everywhere), keeping the entry
    tensors, _meta, hit = cache.get_or_build_tensors(KEY, build, agree=lambda hit: False)
    assert not hit and calls == [1] and torch.equal(tensors["b"], _tensors()["b"])
    assert cache.load_tensors(KEY)[0] is not None and cache.load_tensors("absent0")[0] is None
