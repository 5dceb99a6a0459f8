"""RUM refinement: split a forget set into subsets by a memorisation score (vision.md §5.4).

* :func:`refine` — ``S -> S_1..S_K`` ordered low → high score (default: equal-count quantile groups).
* :func:`rum_mix_split` — the reference's "mix" forget set: bottom-n, middle-n, top-n of the training set.
* :func:`shuffle_split` — the Shuffle control: K random equal-size subsets.
* :func:`retain_sets` — the retain set of each step: ``D \\ S`` (default) or ``D \\ (S_1 ∪ … ∪ S_k)`` (faithful).

All indices are training-set indices (rows of ``D_train``). Scores are oriented higher = more memorised
(:mod:`unlearnkit.metrics.memorization`). Every function is deterministic; within a returned group the indices
are sorted ascending. One total order is used throughout: ascending score, ties broken by ascending index, so
``refine(low ∪ mid ∪ high, score, 3)`` gives back exactly the three :func:`rum_mix_split` groups.

Source: RUM, Zhao et al. 2024 (arXiv 2406.01257; kairanzhao/RUM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["refine", "retain_sets", "rum_mix_split", "shuffle_split"]


def _first(idx: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    return shown + (f", ... ({idx.size} in all)" if idx.size > limit else "")


def _as_index_array(indices: ArrayLike, name: str, upper: int | None = None) -> np.ndarray:
    """1-D int64, unique, and (if ``upper`` is given) within ``[0, upper)``."""
    a = np.asarray(indices)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of training indices; got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integers; got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must be non-negative training indices; got {int(a.min())}")
    if upper is not None and a.size and a.max() >= upper:
        raise ValueError(f"{name} holds index {int(a.max())}, outside the training set [0, {upper})")
    uniq, counts = np.unique(a, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name} must not repeat an index; repeated: {_first(uniq[counts > 1])}")
    return a


def _as_score(score: ArrayLike) -> np.ndarray:
    s = np.asarray(score)
    if s.ndim != 1:
        raise ValueError(f"score must be 1-D over the training set [N]; got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"score must be numeric; got dtype {s.dtype}")
    return s.astype(np.float64, copy=False)


def _check_k(k: int, n: int) -> int:
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if k > n:
        raise ValueError(f"a refinement with more subsets than forget examples: k={k} > {n} forget example(s)")
    return k


def _ascending(idx: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``idx`` sorted by (score[idx], idx) ascending: the one total order used in this module."""
    return idx[np.lexsort((idx, score[idx]))]


def refine(indices: ArrayLike, score: ArrayLike, k: int = 3) -> list[np.ndarray]:
    """Split a forget set into ``k`` subsets ordered low → high score (vision.md §5.4).

    * ``indices``: the forget set S, unique training indices.
    * ``score``: one value per **training** example (length N = the whole training set, e.g. Feldman–Zhang's
      ``tr_mem`` or a proxy), read at ``score[indices]``; every index must be ``< len(score)``.

    Rule (equal-count quantile groups; tertiles for ``k = 3``): order S by ascending score, ties by ascending
    training index (a stable, input-order-free total order), then cut that order into ``k`` consecutive groups
    with ``np.array_split`` — sizes ``⌈|S|/k⌉`` for the first ``|S| mod k`` groups and ``⌊|S|/k⌋`` after.
    Groups are cut by rank, not by score thresholds: equal scores at a boundary may fall on both sides.
    Returns ``[S_1, …, S_k]`` (S_1 = lowest scores), each sorted ascending by index.

    Errors: ``k < 1``; ``k > |S|``; an index outside ``[0, len(score))`` or repeated; NaN score on S (scores
    outside S may be NaN; ±inf is ordered normally).
    """
    s = _as_score(score)
    idx = _as_index_array(indices, "indices", upper=s.shape[0])
    k = _check_k(k, idx.size)
    nan = np.isnan(s[idx])
    if nan.any():
        raise ValueError(f"score is NaN at forget index(es) {_first(idx[nan])}; refine needs a score for every "
                         "forget example")
    return [np.sort(g) for g in np.array_split(_ascending(idx, s), k)]


def rum_mix_split(
    score: ArrayLike,
    n_per_group: int = 1000,
    mid_target: float | Literal["median", "midrange"] = 0.5,
    *,
    nan_policy: Literal["raise", "omit"] = "raise",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's "mix" forget set from the extremes of the training set (vision.md §5.4).

    With ``n = n_per_group`` and the total order "ascending score, ties by ascending index":

    * ``low``  = the first ``n`` examples (lowest scores),
    * ``high`` = the last ``n`` examples (highest scores),
    * ``mid``  = the ``n`` examples with the smallest ``|score − t|`` (ties by ascending index), where ``t`` is
      ``mid_target``: a number (0.5 for exact memorisation), ``"median"`` (the spec's choice for proxies:
      ``np.median`` of the scores) or ``"midrange"`` (``(min + max)/2``, what the reference code uses for the
      confidence-like proxies).

    Returns ``(low, mid, high)`` index arrays over ``score`` (sorted ascending). The groups are disjoint:
    ``3n > N`` raises, and so does a mid group that would share examples with ``low`` or ``high`` (the score
    has too few values near ``t``; lower ``n``). ``nan_policy="raise"`` (default) rejects NaN scores;
    ``"omit"`` leaves NaN examples out of every group and out of N, the median and the midrange (the reference
    drops non-finite entropy-proxy rows this way).
    """
    s = _as_score(score)
    n = int(n_per_group)
    if n < 1:
        raise ValueError(f"n_per_group must be >= 1; got {n_per_group}")
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit'; got {nan_policy!r}")
    nan = np.isnan(s)
    if nan.any() and nan_policy == "raise":
        raise ValueError(f"score is NaN at index(es) {_first(np.flatnonzero(nan))}; pass nan_policy='omit' "
                         "to leave them out")
    valid = np.flatnonzero(~nan)
    if 3 * n > valid.size:
        raise ValueError(f"3 groups of n_per_group={n} need {3 * n} examples; the score has {valid.size} "
                         f"{'non-NaN ' if nan.any() else ''}values")
    if isinstance(mid_target, str):
        if mid_target == "median":
            t = float(np.median(s[valid]))
        elif mid_target == "midrange":
            t = float((s[valid].min() + s[valid].max()) / 2.0)
        else:
            raise ValueError(f"mid_target must be a number, 'median' or 'midrange'; got {mid_target!r}")
    else:
        t = float(mid_target)
        if np.isnan(t):
            raise ValueError("mid_target must not be NaN")
    order = _ascending(valid, s)
    low, high = order[:n], order[-n:]
    with np.errstate(invalid="ignore"):
        dist = np.abs(s[valid] - t)
    mid = valid[np.lexsort((valid, dist))][:n]
    overlap = np.intersect1d(mid, np.concatenate([low, high]))
    if overlap.size:
        raise ValueError(
            f"the {n} examples closest to mid_target={t:.6g} overlap the bottom-{n}/top-{n} groups at "
            f"{overlap.size} index(es) ({_first(overlap)}); use a smaller n_per_group"
        )
    return np.sort(low), np.sort(mid), np.sort(high)


def shuffle_split(indices: ArrayLike, k: int = 3, seed: int = 0) -> list[np.ndarray]:
    """The Shuffle control (vision.md §5.4): ``k`` random disjoint subsets of S of equal size (±1).

    Permutes S (taken in ascending index order, so the input order does not matter) with
    ``np.random.default_rng(seed).permutation`` and cuts it with ``np.array_split`` (the first ``|S| mod k``
    subsets get one more example). Each subset is sorted ascending. Errors as :func:`refine` (``k < 1``,
    ``k > |S|``, repeated or negative indices).
    """
    idx = np.sort(_as_index_array(indices, "indices"))
    k = _check_k(k, idx.size)
    perm = np.random.default_rng(seed).permutation(idx)
    return [np.sort(g) for g in np.array_split(perm, k)]


def retain_sets(train_size: int, subsets: Sequence[ArrayLike], cumulative: bool = False) -> list[np.ndarray]:
    """Retain set ``R_k`` for each step of the RUM plan, in the order of ``subsets`` (vision.md §5.4).

    * default: ``R_k = D \\ (S_1 ∪ … ∪ S_K)`` for every k — all forget subsets are excluded at every step.
    * ``cumulative=True`` (faithful mode, ``cumulative_retain``): ``R_k = D \\ (S_1 ∪ … ∪ S_k)``, so the subsets
      not yet processed are still trained on as retain data.

    ``D = {0, …, train_size − 1}``. Subsets must be disjoint index arrays inside ``D``. Returns sorted int64
    arrays.
    """
    n = int(train_size)
    if n < 1:
        raise ValueError(f"train_size must be >= 1; got {train_size}")
    subs = [_as_index_array(s, f"subsets[{i}]", upper=n) for i, s in enumerate(subsets)]
    if not subs:
        raise ValueError("subsets must hold at least one forget subset")
    owner = np.full(n, -1, dtype=np.int64)
    for i, s in enumerate(subs):
        taken = s[owner[s] >= 0]
        if taken.size:
            j = int(owner[taken[0]])
            raise ValueError(f"subsets must be disjoint; index {int(taken[0])} is in subsets[{j}] and subsets[{i}]")
        owner[s] = i
    if not cumulative:
        rest = np.flatnonzero(owner < 0)
        return [rest.copy() for _ in subs]
    return [np.flatnonzero((owner < 0) | (owner > i)) for i in range(len(subs))]
