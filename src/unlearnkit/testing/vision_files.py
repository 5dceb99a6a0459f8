"""Writers of tiny random image data sets in the exact on-disk formats the real ones are published in, so the
loaders in `unlearnkit.data.vision` can be tested (and tried) without downloading anything:

    written = write_cifar10(tmp_path, n_train=10, n_test=4, seed=0)
    data = unlearnkit.data.vision.cifar10(root=tmp_path, download=False)
    assert (data.x_train == written.x_train).all()

Formats (see the loaders' docstring): CIFAR python pickles with bytes keys (protocol 2), MNIST idx files (magic
2051 images / 2049 labels, big-endian, optionally gzipped), SVHN MATLAB files (X uint8 [32, 32, 3, N], y [N, 1] with
10 for the digit 0). Each writer returns the arrays as the loader should give them back.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.vision import (
    CIFAR10_DIR,
    CIFAR10_NAMES,
    CIFAR100_COARSE_NAMES,
    CIFAR100_DIR,
    CIFAR100_FINE_NAMES,
    CIFAR100_FINE_TO_COARSE,
    MNIST_FILES,
    SVHN_FILES,
)

__all__ = ["WrittenData", "write_cifar10", "write_cifar100", "write_mnist", "write_svhn"]


@dataclass(frozen=True)
class WrittenData:
    """What a writer put on disk, in the loader's conventions: x uint8 [N, C, H, W], y int64 [N] (CIFAR-100: fine
    labels in y, coarse in coarse_*; SVHN: digits 0..9 although the file stores 10 for 0)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    files: tuple[Path, ...]
    coarse_train: np.ndarray | None = None
    coarse_test: np.ndarray | None = None


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """Every class appears once before any repeats (where n allows), in random order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _dump(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)
    return path


def write_cifar10(root: str | os.PathLike[str], n_train: int = 10, n_test: int = 5, seed: int = 0) -> WrittenData:
    """`<root>/cifar-10-batches-py/`: data_batch_1..5 (the train images split in order), test_batch, batches.meta."""
    rng = np.random.default_rng(seed)
    x_train, x_test = _images(rng, n_train, (3, 32, 32)), _images(rng, n_test, (3, 32, 32))
    y_train, y_test = _labels(rng, n_train, 10), _labels(rng, n_test, 10)
    folder = Path(root) / CIFAR10_DIR
    files = []
    parts = np.array_split(np.arange(n_train), 5)
    for i, part in enumerate(parts, start=1):
        batch = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": [int(v) for v in y_train[part]],
            b"data": x_train[part].reshape(len(part), 3072),  # rows: 1024 R, 1024 G, 1024 B
            b"filenames": [f"img_{j}.png".encode() for j in part],
        }
        files.append(_dump(folder / f"data_batch_{i}", batch))
    test = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in y_test],
        b"data": x_test.reshape(n_test, 3072),
        b"filenames": [f"test_{j}.png".encode() for j in range(n_test)],
    }
    files.append(_dump(folder / "test_batch", test))
    meta = {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}
    files.append(_dump(folder / "batches.meta", meta))
    return WrittenData(x_train, y_train, x_test, y_test, tuple(files))


def write_cifar100(root: str | os.PathLike[str], n_train: int = 10, n_test: int = 5, seed: int = 0) -> WrittenData:
    """`<root>/cifar-100-python/`: train, test (fine_labels, coarse_labels from the standard table), meta."""
    rng = np.random.default_rng(seed)
    table = np.asarray(CIFAR100_FINE_TO_COARSE, dtype=np.int64)
    x_train, x_test = _images(rng, n_train, (3, 32, 32)), _images(rng, n_test, (3, 32, 32))
    y_train, y_test = _labels(rng, n_train, 100), _labels(rng, n_test, 100)
    folder = Path(root) / CIFAR100_DIR
    files = []
    for part, x, fine in (("train", x_train, y_train), ("test", x_test, y_test)):
        batch = {
            b"filenames": [f"{part}_{j}.png".encode() for j in range(len(x))],
            b"batch_label": f"{'training' if part == 'train' else 'testing'} batch 1 of 1".encode(),
            b"fine_labels": [int(v) for v in fine],
            b"coarse_labels": [int(v) for v in table[fine]],
            b"data": x.reshape(len(x), 3072),
        }
        files.append(_dump(folder / part, batch))
    meta = {
        b"fine_label_names": [n.encode() for n in CIFAR100_FINE_NAMES],
        b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES],
    }
    files.append(_dump(folder / "meta", meta))
    return WrittenData(x_train, y_train, x_test, y_test, tuple(files), table[y_train], table[y_test])


def _idx_bytes(array: np.ndarray) -> bytes:
    """uint8 array -> idx: magic 0x0000 08 <ndim> (2051 for 3 dims, 2049 for 1), the dims as big-endian int32, data."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(
    root: str | os.PathLike[str],
    n_train: int = 10,
    n_test: int = 5,
    seed: int = 0,
    name: str = "MNIST",
    gz: bool = False,
) -> WrittenData:
    """`<root>/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`; name "MNIST" or "FashionMNIST"."""
    if name not in ("MNIST", "FashionMNIST"):
        raise ValueError(f"name={name!r}: must be 'MNIST' or 'FashionMNIST'")
    rng = np.random.default_rng(seed)
    x_train, x_test = _images(rng, n_train, (28, 28)), _images(rng, n_test, (28, 28))
    y_train, y_test = _labels(rng, n_train, 10), _labels(rng, n_test, 10)
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    files = []
    for fname, array in zip(MNIST_FILES, (x_train, y_train, x_test, y_test), strict=True):
        data = _idx_bytes(array.astype(np.uint8))
        path = raw / (fname + ".gz" if gz else fname)
        path.write_bytes(gzip.compress(data) if gz else data)
        files.append(path)
    return WrittenData(x_train[:, None], y_train, x_test[:, None], y_test, tuple(files))


def write_svhn(root: str | os.PathLike[str], n_train: int = 10, n_test: int = 5, seed: int = 0) -> WrittenData:
    """`<root>/{train,test}_32x32.mat` with X uint8 [32, 32, 3, N] and y uint8 [N, 1] (digit 0 stored as 10)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    x_train, x_test = _images(rng, n_train, (3, 32, 32)), _images(rng, n_test, (3, 32, 32))
    y_train, y_test = _labels(rng, n_train, 10), _labels(rng, n_test, 10)
    Path(root).mkdir(parents=True, exist_ok=True)
    files = []
    for fname, x, y in zip(SVHN_FILES, (x_train, x_test), (y_train, y_test), strict=True):
        stored = np.where(y == 0, 10, y).astype(np.uint8)[:, None]  # [N, 1]
        path = Path(root) / fname
        savemat(str(path), {"X": x.transpose(2, 3, 1, 0), "y": stored})  # [N, C, H, W] -> [H, W, C, N]
        files.append(path)
    return WrittenData(x_train, y_train, x_test, y_test, tuple(files))
