"""The synthetic Markov-chain unlearning benchmark: three chains over one state space (specs/markov_imu.md §1).

Source: the synthetic setting of SimNPO (Fan et al., arXiv 2410.07163, OPTML-Group/Unlearn-Simple `synthetic/`),
reused by IMU (Fan et al., arXiv 2508.01620, goodluckisallyouneed/IMU `synthetic/`); `MarkovParams` mirrors the
seed's `generate_data.py` flags. The S states split into blocks of b = S // 3: retain {0..b-1}, forget1 {b..2b-1},
forget2 {2b..3b-1}. Chain c stays in its block with probability 1-ε (uniform inside it) and leaks with total
probability ε (uniform outside it); its sequences are x_0 ~ init_c, x_t ~ P_c[x_{t-1}]. Each chain's sequences are
split into train/test with the seed's `train_test_split` call.

The data set keeps the true matrices (the evaluation needs them) and is cached as an `.npz` (no pickle) named by a
hash of its parameters, with a content hash of every array that `load` verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._io import atomic_write_bytes, content_hash
from .._registry import DATASETS
from ..config import build, param

CHAINS = ("retain", "forget1", "forget2")
SPLITS = ("train", "test")
IGNORE = -100  # label of positions without a loss (tasks/causal_lm.py)


@dataclass(frozen=True)
class MarkovParams:
    """The seed's `generate_data.py` flags (same names; defaults of the seed's documented command, spec §5)."""

    state_size: int = param(10, ge=3, help="number of states S; blocks of S // 3 states per chain")
    leakage: float = param(0.2, ge=0, lt=1, help="probability ε of leaving the chain's block at each step")
    seq_length_retain: int = param(20, ge=2, help="tokens per retain sequence")
    seq_length_forget1: int = param(20, ge=2, help="tokens per forget1 sequence")
    seq_length_forget2: int = param(20, ge=2, help="tokens per forget2 sequence")
    num_retain_sequences: int = param(10000, ge=1, help="retain sequences (train + test)")
    num_forget_sequences1: int = param(5000, ge=1, help="forget1 sequences (train + test)")
    num_forget_sequences2: int = param(5000, ge=1, help="forget2 sequences (train + test)")
    test_size: float = param(0.2, gt=0, lt=1, help="fraction of each chain's sequences held out for testing")
    seed: int = param(42, help="seed of the sampling and of the train/test split")

    def __post_init__(self) -> None:
        for chain, n in zip(CHAINS, self.counts(), strict=True):
            n_test = int(np.ceil(self.test_size * n))  # sklearn's rounding for a float test_size
            if n_test < 1 or n - n_test < 1:
                raise ValueError(f"{chain}: {n} sequences with test_size = {self.test_size} leave an empty "
                                 f"train or test split ({n - n_test} train, {n_test} test); use more sequences")

    def lengths(self) -> tuple[int, int, int]:
        """Sequence length per chain, in CHAINS order."""
        return self.seq_length_retain, self.seq_length_forget1, self.seq_length_forget2

    def counts(self) -> tuple[int, int, int]:
        """Number of sequences per chain, in CHAINS order."""
        return self.num_retain_sequences, self.num_forget_sequences1, self.num_forget_sequences2


def chain_matrices(state_size: int, leakage: float) -> tuple[np.ndarray, np.ndarray]:
    """(P [3, S, S], init [3, S]), float64, chains in CHAINS order, every row normalised to sum 1 (spec §1).

    Before normalisation P_c[s, t] = (1-ε)/|B_c| for s, t in B_c and ε/(S-|B_c|) for every other entry; init_c is
    (1-ε)/|B_c| on B_c and ε/(S-|B_c|) elsewhere. Rows of states outside B_c are therefore uniform (also at
    ε = 0, where they are all zero before normalising: their limit as ε -> 0).
    """
    s, b = state_size, state_size // 3
    if b < 1:
        raise ValueError(f"state_size = {state_size}: must be >= 3 (three blocks of state_size // 3 states)")
    matrices = np.full((3, s, s), leakage / (s - b))
    initial = np.full((3, s), leakage / (s - b))
    for c in range(3):
        block = slice(c * b, (c + 1) * b)
        matrices[c, block, block] = (1.0 - leakage) / b
        initial[c, block] = (1.0 - leakage) / b
    rows = matrices.sum(-1, keepdims=True)  # [3, S, 1]; 0 only for rows outside the block when ε = 0
    matrices = np.where(rows > 0, matrices / np.where(rows > 0, rows, 1.0), 1.0 / s)
    return matrices, initial / initial.sum(-1, keepdims=True)


@dataclass
class MarkovData:
    """Sequences of the three chains, split into train/test, with the true chain parameters."""

    params: MarkovParams
    matrices: np.ndarray  # [3, S, S] float64: P_c[s, t] = p(x_t = t | x_{t-1} = s) of chain c
    initial: np.ndarray  # [3, S] float64: initial-state distribution of chain c
    train: dict[str, np.ndarray]  # chain -> int64 [N_c_train, L_c]
    test: dict[str, np.ndarray]  # chain -> int64 [N_c_test, L_c]
    hash: str  # 24 hex chars: content hash of params + all arrays

    def dataset(self, split: str, chains: Sequence[str]) -> Dataset:
        """The rows of `chains` (in that order) of `split` as a causal-LM dataset of dicts of tensors.

        Each item: input_ids [L] int64 (the full sequence x_0..x_{L_c-1}, then padding token 0), attention_mask [L]
        (1 on the sequence, 0 on padding), labels [L] (= input_ids, but −100 at position 0, which no position
        predicts, and on padding), chain [] int64 (index into CHAINS). L = the longest of the requested chains.
        """
        from ..testing.toy import DictDataset

        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if isinstance(chains, str) or not chains:
            raise ValueError(f"chains must be a non-empty list of chain names from {CHAINS}, got {chains!r}")
        unknown = [c for c in chains if c not in CHAINS]
        if unknown:
            raise ValueError(f"unknown chain {unknown[0]!r}; valid chains: {', '.join(CHAINS)}")
        arrays = [getattr(self, split)[c] for c in chains]
        length = max(a.shape[1] for a in arrays)
        ids = torch.zeros(sum(len(a) for a in arrays), length, dtype=torch.int64)  # [N, L]
        mask = torch.zeros_like(ids)
        chain = torch.empty(len(ids), dtype=torch.int64)  # [N]
        row = 0
        for name, a in zip(chains, arrays, strict=True):
            ids[row:row + len(a), :a.shape[1]] = torch.from_numpy(a)
            mask[row:row + len(a), :a.shape[1]] = 1
            chain[row:row + len(a)] = CHAINS.index(name)
            row += len(a)
        labels = ids.masked_fill(mask == 0, IGNORE)
        labels[:, 0] = IGNORE
        return DictDataset(input_ids=ids, attention_mask=mask, labels=labels, chain=chain)


def _data_hash(params: MarkovParams, matrices: np.ndarray, initial: np.ndarray, train: dict[str, np.ndarray],
               test: dict[str, np.ndarray]) -> str:
    """24 hex chars identifying the parameters and the exact bytes, dtypes and shapes of every array."""
    def digest(a: np.ndarray) -> list[Any]:
        return [a.dtype.str, list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]

    arrays = {"matrices": matrices, "initial": initial,
              **{f"train_{c}": train[c] for c in CHAINS}, **{f"test_{c}": test[c] for c in CHAINS}}
    return content_hash({"params": asdict(params), **{k: digest(v) for k, v in arrays.items()}})[:24]


def _sample(rng: np.random.Generator, matrix: np.ndarray, initial: np.ndarray, n: int, length: int) -> np.ndarray:
    """n sequences [n, length] int64 of one chain, by inverse CDF with one uniform draw per sequence per step."""
    u = rng.random((n, length))  # [n, L]
    cdf, cdf0 = np.cumsum(matrix, axis=1), np.cumsum(initial)
    cdf[:, -1] = cdf0[-1] = 1.0  # no rounding gap above the last state
    x = np.empty((n, length), dtype=np.int64)
    x[:, 0] = (cdf0[None, :] <= u[:, :1]).sum(1)  # first state whose CDF exceeds u
    for t in range(1, length):
        x[:, t] = (cdf[x[:, t - 1]] <= u[:, t:t + 1]).sum(1)
    return x


def generate(params: MarkovParams) -> MarkovData:
    """Sample the three chains with `np.random.default_rng(params.seed)` and split each into train/test."""
    from sklearn.model_selection import train_test_split

    matrices, initial = chain_matrices(params.state_size, params.leakage)
    rng = np.random.default_rng(params.seed)
    train, test = {}, {}
    for c, (name, n, length) in enumerate(zip(CHAINS, params.counts(), params.lengths(), strict=True)):
        sequences = _sample(rng, matrices[c], initial[c], n, length)
        train_idx, test_idx = train_test_split(np.arange(n), test_size=params.test_size, random_state=params.seed)
        train[name], test[name] = sequences[train_idx], sequences[test_idx]
    return MarkovData(params, matrices, initial, train, test, _data_hash(params, matrices, initial, train, test))


def save(data: MarkovData, path: str | os.PathLike[str]) -> Path:
    """Write `data` to `path` as an uncompressed .npz (params as a JSON string), atomically. Returns the path."""
    buffer = io.BytesIO()
    np.savez(buffer, params=np.array(json.dumps(asdict(data.params), sort_keys=True)), hash=np.array(data.hash),
             matrices=data.matrices, initial=data.initial,
             **{f"train_{c}": data.train[c] for c in CHAINS}, **{f"test_{c}": data.test[c] for c in CHAINS})
    return atomic_write_bytes(path, buffer.getvalue())


def load(path: str | os.PathLike[str]) -> MarkovData:
    """Read a file written by `save` and verify its content hash; ValueError("... is corrupt (...)") if it fails.

    A missing file raises FileNotFoundError (it is absent, not corrupt).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"markov data file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            params = build(MarkovParams, json.loads(str(z["params"])), where="params")
            train = {c: z[f"train_{c}"] for c in CHAINS}
            test = {c: z[f"test_{c}"] for c in CHAINS}
            data = MarkovData(params, z["matrices"], z["initial"], train, test, str(z["hash"]))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"markov data file {path} is corrupt ({type(exc).__name__}: {exc})") from None
    actual = _data_hash(data.params, data.matrices, data.initial, data.train, data.test)
    if actual != data.hash:
        raise ValueError(f"markov data file {path} is corrupt (content hash {actual} != stored {data.hash})")
    return data


def load_or_generate(params: MarkovParams, root: Path | None = None) -> tuple[MarkovData, bool]:
    """(data, loaded_from_cache): read `<root>/data/markov-<params key>.npz` (root: `cache_root()`), or generate
    and save it. A corrupt file gives a warning and is regenerated."""
    from ..cache import cache_root

    key = content_hash(asdict(params))[:16]
    path = Path(root if root is not None else cache_root()) / "data" / f"markov-{key}.npz"
    if path.exists():
        try:
            data = load(path)
            if data.params != params:
                raise ValueError(f"markov data file {path} is corrupt (it holds other parameters: {data.params})")
            return data, True
        except ValueError as exc:
            warnings.warn(f"{exc}; regenerating", stacklevel=2)
    data = generate(params)
    save(data, path)
    return data, False


@DATASETS.register("markov", task="causal_lm")
def markov(**overrides: Any) -> MarkovData:
    """Three Markov chains (retain, forget1, forget2) over one state space: the SimNPO/IMU synthetic benchmark."""
    return load_or_generate(build(MarkovParams, overrides, where="dataset.markov"))[0]
