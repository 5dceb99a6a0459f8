"""Confidence intervals for reported metrics (evaluation.md §8).

* :func:`t_interval` — the default report: mean over ≥ 3 seeds with a two-sided t-interval (as RUM does).
* :func:`bootstrap_interval` — percentile bootstrap of the mean over examples (or over models).
* :func:`format_interval` — ``"0.912 ± 0.013"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Interval", "bootstrap_interval", "format_interval", "t_interval"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a symmetric-or-not interval ``[low, high]``.

    ``half_width`` is ``nan`` (and so are ``low``/``high``) when ``n < 2``; ``mean`` is ``nan`` when ``n =
    0``.
    """

    mean: float
    half_width: float
    n: int
    low: float
    high: float


def _clean(values: ArrayLike) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return v[~np.isnan(v)]


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    return c


def _degenerate(v: np.ndarray) -> Interval:
    nan = float("nan")
    mean = float(v.mean()) if v.size else nan
    return Interval(mean=mean, half_width=nan, n=int(v.size), low=nan, high=nan)


def t_interval(values: ArrayLike, confidence: float = 0.95) -> Interval:
    """Two-sided Student-t interval for the mean: ``mean ± t_{(1+c)/2, n−1} · s / √n``.

    ``s`` is the sample standard deviation (``ddof=1``). NaN values are dropped and ``n`` counts the rest;
    ``n = 0`` gives ``mean = nan``; ``n < 2`` gives ``half_width = low = high = nan``. Equals
    ``scipy.stats.t.interval(c, n−1, loc=mean, scale=s/√n)`` (which returns NaN when ``s = 0``; here the
    half-width is then 0). Source: evaluation.md §8 (RUM reports mean ± 95% t-interval over seeds).
    """
    from scipy.stats import t as student_t

    c = _check_confidence(confidence)
    v = _clean(values)
    n = int(v.size)
    if n < 2:
        return _degenerate(v)
    mean = float(v.mean())
    sem = float(v.std(ddof=1)) / math.sqrt(n)
    half = float(student_t.ppf((1.0 + c) / 2.0, n - 1)) * sem
    return Interval(mean=mean, half_width=half, n=n, low=mean - half, high=mean + half)


_BOOT_CHUNK_ELEMS = 4_000_000  # resample indices drawn per chunk (bounds memory for large n)


def bootstrap_interval(
    values: ArrayLike,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval for the mean over examples (or models).

    Draws ``n_resamples`` resamples of size ``n`` with replacement (``np.random.default_rng(seed)``), takes
    each resample's mean, and returns ``low``/``high`` = the ``(1−c)/2`` and ``(1+c)/2`` percentiles of those
    means (``np.percentile``, linear). ``mean`` is the sample mean and ``half_width = (high − low) / 2`` (the
    interval need not be symmetric about the mean). NaN values are dropped; ``n < 2`` gives ``nan``
    half-width/bounds. Deterministic for a given ``seed``. Source: evaluation.md §8 (1000 resamples,
    percentile method).
    """
    c = _check_confidence(confidence)
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1; got {n_resamples}")
    v = _clean(values)
    n = int(v.size)
    if n < 2:
        return _degenerate(v)
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOT_CHUNK_ELEMS // n)
    means = np.empty(int(n_resamples), dtype=np.float64)
    for start in range(0, int(n_resamples), rows):
        stop = min(start + rows, int(n_resamples))
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = v[idx].mean(axis=1)
    low, high = np.percentile(means, [100.0 * (1.0 - c) / 2.0, 100.0 * (1.0 + c) / 2.0])
    return Interval(
        mean=float(v.mean()), half_width=float(high - low) / 2.0, n=n, low=float(low), high=float(high)
    )


def format_interval(iv: Interval, digits: int = 3) -> str:
    """Format as ``"0.912 ± 0.013"``, or ``"0.912"`` when the half-width is ``nan`` (n < 2)."""
    if math.isnan(iv.half_width):
        return f"{iv.mean:.{digits}f}"
    return f"{iv.mean:.{digits}f} ± {iv.half_width:.{digits}f}"
