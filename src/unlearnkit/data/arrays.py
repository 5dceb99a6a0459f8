"""In-memory classification data (train/test arrays) and the torch views a split needs.

Small data sets (`digits`) hold float32 inputs and their subsets are plain `TensorDataset`s. Image data sets
(`cifar10`, `mnist`, ... in `vision.py`) hold uint8 images [N, C, H, W] plus per-channel `mean`/`std`; their subsets
are `ImageSubset`s, which normalise (and, for original training only, augment) one whole batch at a time, so no
float copy of the data set is ever made (CIFAR as float32 would be 600 MB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .splits import Split


@dataclass(frozen=True)
class ArrayData:
    """A classification data set held as arrays: x [N, ...] (float32, or uint8 images [N, C, H, W]), y [N] int64.

    `mean`/`std` (per-channel tuples) turn uint8 images into model inputs (x/255 − mean)/std (float inputs:
    (x − mean)/std); `None` leaves the values as they are (float) or scales them to [0, 1] (uint8).
    `fine_train`/`fine_test` are the fine labels of a data set whose `y` are coarse classes (CIFAR-20), with their
    names in `fine_names`; `class_names` names the classes of `y`.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    hash: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    fine_train: np.ndarray | None = None
    fine_test: np.ndarray | None = None
    fine_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def has_fine_labels(self) -> bool:
        return self.fine_train is not None and self.fine_test is not None

    def subset(
        self, which: str, indices: Sequence[int] | np.ndarray, augment: bool = False, augment_seed: int = 0
    ) -> Dataset:
        """Items `(x float32 [*input_shape], y int64)` of the train or test examples at `indices`.

        `augment=True` (for ORIGINAL TRAINING only, never for unlearning or evaluation) adds the standard CIFAR/SVHN
        augmentation: a random 32-px crop of the image zero-padded by 4 px, then a random horizontal flip, drawn from
        a torch.Generator seeded with `augment_seed` and advanced on every batch (reproducible for the same seed and
        the same order of calls). It needs images [C, H, W].
        """
        if which not in ("train", "test"):
            raise ValueError(f"which={which!r}: must be 'train' or 'test'")
        x, y = (self.x_train, self.y_train) if which == "train" else (self.x_test, self.y_test)
        indices = np.asarray(indices, dtype=np.int64)
        if x.dtype == np.float32 and self.mean is None and not augment:
            return TensorDataset(torch.from_numpy(x[indices]), torch.from_numpy(y[indices]))
        return ImageSubset(x, y, indices, self.mean, self.std, augment=augment, augment_seed=augment_seed)

    def unlearn_data(self, split: Split) -> UnlearnData:
        return UnlearnData(
            forget=self.subset("train", split.forget),
            retain=self.subset("train", split.retain),
            test=self.subset("test", split.test),
            num_classes=self.num_classes,
            forget_classes=split.forget_classes,
            test_forget=getattr(split, "test_forget", None),
            train_hash=self.hash,
        )


class ImageSubset(Dataset):
    """Lazily normalised (optionally augmented) view of `x[indices]`, `y[indices]`; nothing is copied up front.

    `__getitems__` (what a DataLoader calls with a whole batch of indices) converts, augments and normalises the
    batch as one tensor: x uint8 [B, C, H, W] -> float32 [B, C, H, W].
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        indices: np.ndarray,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        augment: bool = False,
        augment_seed: int = 0,
    ) -> None:
        if augment and x.ndim != 4:
            raise ValueError(f"augment=True needs images [N, C, H, W]; got inputs of shape {tuple(x.shape)}")
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std or neither (mean={mean}, std={std})")
        self.x, self.y, self.indices = x, y, np.asarray(indices, dtype=np.int64)
        self.scale = 1 / 255 if x.dtype == np.uint8 else None
        shape = (-1,) + (1,) * (x.ndim - 2)  # per channel, broadcast over the spatial dimensions
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(shape)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(shape)
        self.augment, self.augment_seed = augment, augment_seed
        self._gen: torch.Generator | None = None
        self._worker: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([i])
        return x[0], y[0]

    def __getitems__(self, ids: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.batch(ids)
        return list(zip(x.unbind(0), y.unbind(0), strict=True))

    def batch(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions `ids` in this subset -> (x float32 [B, *shape], y int64 [B])."""
        rows = self.indices[np.asarray(ids, dtype=np.int64)]
        x = torch.from_numpy(self.x[rows]).float()  # fancy indexing copies just this batch
        if self.scale is not None:
            x = x.mul_(self.scale)
        if self.augment:
            x = random_crop_flip(x, 4, self._generator())
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x, torch.from_numpy(self.y[rows].astype(np.int64, copy=False))

    def _generator(self) -> torch.Generator:
        # Main process: one stream seeded with augment_seed. DataLoader worker: its own stream, mixed from
        # augment_seed and the worker's seed (the loader draws those from its generator every epoch), so workers
        # neither repeat each other nor the previous epoch, and a seeded loader stays reproducible.
        info = torch.utils.data.get_worker_info()
        worker = None if info is None else (info.id, info.seed)
        if self._gen is None or worker != self._worker:
            seed = self.augment_seed if info is None else (self.augment_seed * 1_000_003 + info.seed) % 2**63
            self._gen, self._worker = torch.Generator().manual_seed(seed), worker
        return self._gen

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_gen": None, "_worker": None}  # generators are re-made where they are used


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per image: zero-pad by `pad` px, crop back to [H, W] at a random offset, flip horizontally with p=0.5.
    x [B, C, H, W] (un-normalised, so the padding is black as in torchvision's RandomCrop(padding=4))."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # [B, C, H+2p, W+2p]
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)  # [B, H]
    cols = torch.where(flip[:, None], torch.arange(w - 1, -1, -1), torch.arange(w)) + dx[:, None]  # [B, W]
    return padded[
        torch.arange(b)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


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
