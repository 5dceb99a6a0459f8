"""Forget / retain / test splits: index sets with the seed and a content hash that keys every cache.

Scenarios (specs/vision.md §1):
- `random`: a uniformly random subset of the training set, given as a count (>= 1) or a fraction (0 < f < 1);
- `class`: every training example of one or more whole classes;
- `subclass`: every training example of one or more FINE classes of a data set with coarse labels (CIFAR-20: a
  superclass model forgets one CIFAR-100 class, keeping the other sub-classes of its superclass).
The retain set is the rest of the training set; the test set is the data set's whole test split. `test_forget`
indexes the test examples of the forgotten (sub-)classes: the SSD/JiT "Df" accuracy is measured on them, the
retained-class "Dr" accuracy on the rest of the test set (empty for `random`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._io import content_hash

SCENARIOS = ("random", "class", "subclass")


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
    forget_subclasses: tuple[int, ...] = ()
    test_forget: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        digest = content_hash({
            "scenario": self.scenario, "seed": self.seed, "data": self.data_hash,
            "forget_classes": list(self.forget_classes),
            **({"forget_subclasses": list(self.forget_subclasses)} if self.forget_subclasses else {}),
            "forget": content_hash(self.forget.tolist()), "retain": content_hash(self.retain.tolist()),
            "test": content_hash(self.test.tolist()),
        })
        object.__setattr__(self, "hash", digest[:24])

    def describe(self) -> dict:
        return {"scenario": self.scenario, "seed": self.seed, "hash": self.hash, "data_hash": self.data_hash,
                "n_forget": len(self.forget), "n_retain": len(self.retain), "n_test": len(self.test),
                "forget_classes": list(self.forget_classes), "forget_subclasses": list(self.forget_subclasses),
                "n_test_forget": len(self.test_forget)}


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


def _check_classes(wanted: Sequence[int], labels: np.ndarray, what: str, key: str) -> tuple[int, ...]:
    chosen = tuple(sorted({int(c) for c in wanted}))
    present = set(np.unique(labels).tolist())
    if not chosen:
        raise ValueError(f"scenario={what} needs {key}, e.g. {key}=[0]")
    missing = [c for c in chosen if c not in present]
    if missing:
        raise ValueError(f"{key}={list(chosen)}: {'class' if what == 'class' else 'fine class'}(es) {missing} not in "
                         f"the training labels {sorted(present)}")
    if len(chosen) == len(present):
        raise ValueError(f"{key}={list(chosen)} covers every class: nothing would be retained")
    return chosen


def make_split(train_labels: np.ndarray, test_labels: np.ndarray, *, scenario: str, seed: int, data_hash: str,
               forget_size: float = 0.1, forget_classes: Sequence[int] = (), forget_subclasses: Sequence[int] = (),
               train_fine: np.ndarray | None = None, test_fine: np.ndarray | None = None) -> Split:
    """Draw the forget set of `scenario` over a training set with labels `train_labels` (seeded, deterministic).
    `train_fine` / `test_fine` are the fine labels of a data set with coarse labels (needed by `subclass`)."""
    labels, test = np.asarray(train_labels), np.asarray(test_labels)
    n_train = len(labels)
    idx = np.arange(n_train)
    classes: tuple[int, ...] = ()
    subclasses: tuple[int, ...] = ()
    test_forget = np.zeros(0, dtype=np.int64)
    if scenario == "random":
        count = resolve_forget_size(forget_size, n_train)
        forget = np.sort(np.random.default_rng(seed).choice(n_train, size=count, replace=False))
    elif scenario == "class":
        classes = _check_classes(forget_classes, labels, "class", "forget_classes")
        forget = idx[np.isin(labels, classes)]
        test_forget = np.flatnonzero(np.isin(test, classes))
    elif scenario == "subclass":
        if train_fine is None or test_fine is None:
            raise ValueError("scenario=subclass needs a data set with fine labels (e.g. cifar20, digits_coarse); "
                             "this one has only one level of labels")
        fine = np.asarray(train_fine)
        subclasses = _check_classes(forget_subclasses, fine, "subclass", "forget_subclasses")
        forget = idx[np.isin(fine, subclasses)]
        test_forget = np.flatnonzero(np.isin(np.asarray(test_fine), subclasses))
    else:
        raise ValueError(f"scenario='{scenario}': must be one of {', '.join(SCENARIOS)}")
    retain = np.setdiff1d(idx, forget)
    return Split(scenario, seed, data_hash, forget.astype(np.int64), retain.astype(np.int64),
                 np.arange(len(test), dtype=np.int64), classes, subclasses, test_forget.astype(np.int64))
