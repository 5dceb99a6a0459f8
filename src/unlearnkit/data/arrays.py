"""In-memory classification data (train/test arrays) and the torch views a split needs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .splits import Split


@dataclass(frozen=True)
class ArrayData:
    """A classification data set held as arrays: x [N, ...] float32, y [N] int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    hash: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def subset(self, which: str, indices: np.ndarray) -> TensorDataset:
        x, y = (self.x_train, self.y_train) if which == "train" else (self.x_test, self.y_test)
        return TensorDataset(torch.from_numpy(x[indices]), torch.from_numpy(y[indices]))

    def unlearn_data(self, split: Split) -> UnlearnData:
        return UnlearnData(
            forget=self.subset("train", split.forget),
            retain=self.subset("train", split.retain),
            test=self.subset("test", split.test),
            num_classes=self.num_classes,
            forget_classes=split.forget_classes,
        )


@dataclass
class UnlearnData:
    """What a method receives: the forget and retain sets (and test, for evaluation only)."""

    forget: Dataset
    retain: Dataset | None = None
    test: Dataset | None = None
    num_classes: int | None = None
    forget_classes: tuple[int, ...] = ()  # class scenario: the forgotten classes (coarse labels)
    test_forget: np.ndarray | None = None  # indices into `test` of the forgotten (sub-)class(es); None = random
    train_hash: str | None = None  # content hash of the full training set D = forget ∪ retain (keys caches of D)
