"""The synthetic Markov-chain benchmark data (specs/markov_imu.md §1): matrices, sampling, splits, datasets, files."""

import math

import numpy as np
import pytest
import torch

from unlearnkit._registry import DATASETS
from unlearnkit.config import ConfigError, build
from unlearnkit.data.markov import (
    CHAINS,
    MarkovData,
    MarkovParams,
    chain_matrices,
    generate,
    load,
    load_or_generate,
    save,
)

SMALL = dict(num_retain_sequences=40, num_forget_sequences1=21, num_forget_sequences2=11,
             seq_length_retain=6, seq_length_forget1=5, seq_length_forget2=4)


def small(**overrides) -> MarkovParams:
    return build(MarkovParams, {**SMALL, **overrides})


# ---------------------------------------------------------------------------------------------- parameters


def test_defaults_are_the_seed_command():
    p = MarkovParams()
    assert (p.state_size, p.leakage, p.test_size, p.seed) == (10, 0.2, 0.2, 42)
    assert p.lengths() == (20, 20, 20) and p.counts() == (10000, 5000, 5000)


@pytest.mark.parametrize("values, message", [
    ({"state_size": 2}, "state_size = 2: must be >= 3"),
    ({"leakage": 1.0}, "leakage = 1.0: must be < 1"),
    ({"leakage": -0.1}, "leakage = -0.1: must be >= 0"),
    ({"test_size": 0}, "test_size = 0: must be > 0"),
    ({"test_size": 1.0}, "test_size = 1.0: must be < 1"),
    ({"seq_length_forget2": 1}, "seq_length_forget2 = 1: must be >= 2"),
    ({"num_retain_sequences": 1}, "retain: 1 sequences with test_size = 0.2 leave an empty train or test split"),
    ({"state_sise": 9}, "unknown key 'state_sise'.*did you mean 'state_size'"),
])
def test_invalid_params_are_rejected_with_clear_messages(values, message):
    with pytest.raises(ConfigError, match=message):
        build(MarkovParams, values)


# ---------------------------------------------------------------------------------------------- matrices


def test_chain_matrices_match_the_hand_computed_values():
    P, init = chain_matrices(10, 0.2)
    assert P.shape == (3, 10, 10) and init.shape == (3, 10) and P.dtype == init.dtype == np.float64
    np.testing.assert_allclose(P.sum(-1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(init.sum(-1), 1.0, rtol=0, atol=1e-12)
    inside, leak = 0.8 / 3, 0.2 / 7  # (1-ε)/|B|, ε/(S-|B|); a block row sums to 0.8 + 7 * 0.2/7 = 1 already
    for c, block in enumerate(([0, 1, 2], [3, 4, 5], [6, 7, 8])):
        outside = [s for s in range(10) if s not in block]
        for s in block:
            np.testing.assert_allclose(P[c, s, block], inside)
            np.testing.assert_allclose(P[c, s, outside], leak)
        np.testing.assert_allclose(P[c, outside, :], 0.1)  # rows outside the block: uniform after normalising
        np.testing.assert_allclose(init[c, block], inside)
        np.testing.assert_allclose(init[c, outside], leak)
    assert P[0, 0, 1] == pytest.approx(0.8 / 3) and P[1, 3, 4] == pytest.approx(0.8 / 3)
    np.testing.assert_allclose(P[:, 9, :], 0.1)  # state 9 belongs to no block


def test_chain_matrices_without_leakage_stay_in_the_block():
    P, init = chain_matrices(6, 0.0)  # blocks {0,1}, {2,3}, {4,5}
    data = generate(small(state_size=6, leakage=0.0))
    assert data.train["forget1"].min() >= 2 and data.train["forget1"].max() <= 3
    np.testing.assert_allclose(P[1, 2], [0, 0, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(P[1, 0], 1 / 6)  # outside-block rows are all zero before normalising: uniform
    assert np.isfinite(P).all()
    np.testing.assert_allclose(init[2], [0, 0, 0, 0, 0.5, 0.5])


# ---------------------------------------------------------------------------------------------- sampling


def test_generate_shapes_counts_and_token_range():
    p = small()
    data = generate(p)
    for name, n, length in zip(CHAINS, p.counts(), p.lengths(), strict=True):
        n_test = math.ceil(0.2 * n)  # sklearn rounds the test share up
        assert data.test[name].shape == (n_test, length) and data.train[name].shape == (n - n_test, length)
        assert data.train[name].dtype == data.test[name].dtype == np.int64
        both = np.concatenate([data.train[name], data.test[name]])
        assert both.min() >= 0 and both.max() < p.state_size
    assert [len(data.test[c]) for c in CHAINS] == [8, 5, 3]
    assert len(data.hash) == 24 and int(data.hash, 16) >= 0


def test_generate_is_deterministic_in_the_seed():
    a, b, c = generate(small()), generate(small()), generate(small(seed=7))
    assert a.hash == b.hash
    for name in CHAINS:
        np.testing.assert_array_equal(a.train[name], b.train[name])
        np.testing.assert_array_equal(a.test[name], b.test[name])
    assert c.hash != a.hash and not np.array_equal(c.train["retain"], a.train["retain"])


def test_empirical_transitions_and_initial_states_match_the_chains():
    p = build(MarkovParams, {"num_retain_sequences": 20000, "num_forget_sequences1": 20000,
                             "num_forget_sequences2": 20000})
    data = generate(p)
    for c, name in enumerate(CHAINS):
        seqs = np.concatenate([data.train[name], data.test[name]])  # [20000, 20]
        counts = np.zeros((10, 10))
        np.add.at(counts, (seqs[:, :-1].ravel(), seqs[:, 1:].ravel()), 1)
        assert counts.sum(1).min() >= 2000  # every row is estimated from enough transitions
        assert np.abs(counts / counts.sum(1, keepdims=True) - data.matrices[c]).max() < 0.02
        first = np.bincount(seqs[:, 0], minlength=10) / len(seqs)
        assert np.abs(first - data.initial[c]).max() < 0.02


# ---------------------------------------------------------------------------------------------- datasets


def test_dataset_labels_padding_and_chain_index():
    data = generate(small())
    ds = data.dataset("train", ["forget2", "retain"])  # lengths 4 and 6: padded to 6
    n2, nr = len(data.train["forget2"]), len(data.train["retain"])
    assert len(ds) == n2 + nr
    item = ds[0]
    assert set(item) == {"input_ids", "attention_mask", "labels", "chain"}
    np.testing.assert_array_equal(item["input_ids"][:4].numpy(), data.train["forget2"][0])
    assert item["input_ids"][4:].tolist() == [0, 0] and item["attention_mask"].tolist() == [1, 1, 1, 1, 0, 0]
    assert item["labels"].tolist() == [-100, *data.train["forget2"][0][1:].tolist(), -100, -100]
    assert item["chain"].item() == CHAINS.index("forget2") and item["chain"].shape == ()
    last = ds[n2 + nr - 1]
    np.testing.assert_array_equal(last["input_ids"].numpy(), data.train["retain"][-1])
    assert last["attention_mask"].tolist() == [1] * 6 and last["labels"][0] == -100
    assert last["labels"][1:].tolist() == data.train["retain"][-1][1:].tolist()
    assert last["chain"].item() == 0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (5, 6)
    assert batch["input_ids"].dtype == torch.int64 and batch["chain"].tolist() == [2] * 5


def test_dataset_of_one_chain_is_unpadded():
    data = generate(small())
    ds = data.dataset("test", ["forget1"])
    assert len(ds) == 5 and ds[0]["input_ids"].shape == (5,) and ds[0]["attention_mask"].all()


@pytest.mark.parametrize("split, chains, message", [
    ("valid", ["retain"], "unknown split 'valid'"),
    ("train", ["forget3"], "unknown chain 'forget3'"),
    ("train", [], "non-empty list"),
    ("train", "retain", "non-empty list"),
])
def test_dataset_rejects_unknown_names(split, chains, message):
    with pytest.raises(ValueError, match=message):
        generate(small()).dataset(split, chains)


# ---------------------------------------------------------------------------------------------- files


def _assert_same(a: MarkovData, b: MarkovData) -> None:
    assert a.params == b.params and a.hash == b.hash
    np.testing.assert_array_equal(a.matrices, b.matrices)
    np.testing.assert_array_equal(a.initial, b.initial)
    for name in CHAINS:
        np.testing.assert_array_equal(a.train[name], b.train[name])
        np.testing.assert_array_equal(a.test[name], b.test[name])


def test_save_load_round_trip(tmp_path):
    data = generate(small())
    path = save(data, tmp_path / "sub" / "m.npz")
    assert path.is_file() and not [f for f in path.parent.iterdir() if f.name != "m.npz"]  # no temp file left
    _assert_same(load(path), data)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only: readable without pickle
        assert str(z["hash"]) == data.hash


def test_flipped_byte_is_reported_as_corrupt(tmp_path):
    path = save(generate(small()), tmp_path / "m.npz")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"markov data file .*m\.npz is corrupt"):
        load(path)


def test_changed_array_with_valid_zip_fails_the_content_hash(tmp_path):
    data = generate(small())
    data.train["retain"][0, 0] = (data.train["retain"][0, 0] + 1) % 10  # stored hash now describes other data
    path = save(data, tmp_path / "m.npz")
    with pytest.raises(ValueError, match="is corrupt \\(content hash"):
        load(path)


def test_load_or_generate_caches_and_regenerates_a_corrupt_file(tmp_path):
    p = small()
    first, loaded = load_or_generate(p, tmp_path)
    assert not loaded
    files = list((tmp_path / "data").glob("markov-*.npz"))
    assert len(files) == 1 and len(files[0].stem) == len("markov-") + 16
    second, loaded = load_or_generate(p, tmp_path)
    assert loaded
    _assert_same(first, second)
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="corrupt.*regenerating"):
        third, loaded = load_or_generate(p, tmp_path)
    assert not loaded
    _assert_same(first, third)
    assert load_or_generate(p, tmp_path)[1]
    assert load_or_generate(small(seed=1), tmp_path)[1] is False  # other parameters: another file


def test_registered_dataset_uses_the_cache_root(home):
    entry = DATASETS.get("markov")
    assert entry.tags["task"] == "causal_lm"
    data = entry.obj(**SMALL, state_size=9)
    assert isinstance(data, MarkovData) and data.params.state_size == 9
    assert len(list((home / "data").glob("markov-*.npz"))) == 1
    with pytest.raises(ConfigError, match="dataset.markov.leakage = 2"):
        entry.obj(leakage=2)
