"""Forget / retain / test splits: index sets with the seed and a content hash that keys every cache.

Scenarios (specs/vision.md §1):
- `random`: a uniformly random subset of the training set, given as a count (>= 1) or a fraction (0 < f < 1);
- `class`: every training example of one or more whole classes.
The retain set is the rest of the training set; the test set is the data set's whole test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._io import content_hash

SCENARIOS = ("random", "class")


@dataclass(frozen=True)
class Split:
    """Indices into the training set (forget, retain) and the test set (test)."""

    scenario: str
    seed: int
    data_hash: str
    forget: np.ndarray
    retain: np.ndarray
    test: np.ndarray
    forget_classes: tuple[int, ...] = ()
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        digest = content_hash({
            "scenario": self.scenario, "seed": self.seed, "data": self.data_hash,
            "forget_classes": list(self.forget_classes),
            "forget": content_hash(self.forget.tolist()), "retain": content_hash(self.retain.tolist()),
            "test": content_hash(self.test.tolist()),
        })
        object.__setattr__(self, "hash", digest[:24])

    def describe(self) -> dict:
        return {"scenario": self.scenario, "seed": self.seed, "hash": self.hash, "data_hash": self.data_hash,
                "n_forget": len(self.forget), "n_retain": len(self.retain), "n_test": len(self.test),
                "forget_classes": list(self.forget_classes)}


def resolve_forget_size(forget_size: float, n_train: int) -> int:
    """A count (an integer >= 1) or a fraction (0 < f < 1) of `n_train` -> a count; errors name the bad value."""
    if forget_size <= 0:
        raise ValueError(f"forget_size={forget_size}: must be a count >= 1 or a fraction in (0, 1)")
    if forget_size < 1:
        count = int(round(forget_size * n_train))
        if count < 1:
            raise ValueError(f"forget_size={forget_size} selects no example of the {n_train} training examples")
        return count
    if forget_size != int(forget_size):
        raise ValueError(f"forget_size={forget_size}: a count must be an integer (or give a fraction in (0, 1))")
    if forget_size >= n_train:
        raise ValueError(f"forget_size={int(forget_size)} is not smaller than the training set "
                         f"({n_train} examples): nothing would be retained")
    return int(forget_size)


def make_split(train_labels: np.ndarray, n_test: int, *, scenario: str, seed: int, data_hash: str,
               forget_size: float = 0.1, forget_classes: Sequence[int] = ()) -> Split:
    """Draw the forget set of `scenario` over a training set with labels `train_labels` (seeded, deterministic)."""
    labels = np.asarray(train_labels)
    n_train = len(labels)
    idx = np.arange(n_train)
    if scenario == "random":
        count = resolve_forget_size(forget_size, n_train)
        forget = np.sort(np.random.default_rng(seed).choice(n_train, size=count, replace=False))
        classes: tuple[int, ...] = ()
    elif scenario == "class":
        classes = tuple(sorted({int(c) for c in forget_classes}))
        present = set(np.unique(labels).tolist())
        if not classes:
            raise ValueError("scenario=class needs forget_classes, e.g. forget_classes=[0]")
        missing = [c for c in classes if c not in present]
        if missing:
            raise ValueError(f"forget_classes={list(classes)}: class(es) {missing} not in the training labels "
                             f"{sorted(present)}")
        if len(classes) == len(present):
            raise ValueError(f"forget_classes={list(classes)} covers every class: nothing would be retained")
        forget = idx[np.isin(labels, classes)]
    else:
        raise ValueError(f"scenario='{scenario}': must be one of {', '.join(SCENARIOS)}")
    retain = np.setdiff1d(idx, forget)
    return Split(scenario, seed, data_hash, forget.astype(np.int64), retain.astype(np.int64),
                 np.arange(n_test, dtype=np.int64), classes)
