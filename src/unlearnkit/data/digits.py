"""The embedded `digits` data set: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes; UCI
optdigits test set), shipped inside scikit-learn, so it needs no download.

Pixels 0..16 are scaled to [0, 1] and kept as images [N, 1, 8, 8]. A fixed stratified split (seed 0, 25 % test)
defines train (1347) and test (450); it is part of the data set, not of an experiment, and goes into the data hash.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .._io import content_hash
from .._registry import DATASETS
from .arrays import ArrayData


@DATASETS.register("digits", task="classifier", num_classes=10, input_shape=(1, 8, 8))
@lru_cache(maxsize=1)
def digits() -> ArrayData:
    """scikit-learn handwritten digits (Alpaydin & Kaynak 1998), 8x8 grey images, 10 classes, no download."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=y)
    digest = content_hash({"x": content_hash(x.round(6).tolist()), "y": y.tolist(),
                           "train": train_idx.tolist(), "test": test_idx.tolist()})[:24]
    return ArrayData("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10, digest)


@DATASETS.register("digits_coarse", task="classifier", num_classes=5, input_shape=(1, 8, 8), fine_labels=True)
@lru_cache(maxsize=1)
def digits_coarse() -> ArrayData:
    """The `digits` images with five coarse classes {0,1}, {2,3}, {4,5}, {6,7}, {8,9} (coarse = digit // 2) and the
    digit kept as the fine label: the CPU-sized stand-in for CIFAR-20's superclasses in sub-class forgetting."""
    base = digits()
    names = tuple(f"{2 * k}-{2 * k + 1}" for k in range(5))
    return ArrayData("digits_coarse", base.x_train, base.y_train // 2, base.x_test, base.y_test // 2, 5,
                     content_hash({"base": base.hash, "coarse": "digit // 2"})[:24], fine_train=base.y_train,
                     fine_test=base.y_test, fine_names=tuple(str(d) for d in range(10)), class_names=names)
