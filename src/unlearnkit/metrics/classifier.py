"""Classifier metrics on raw logits (pure numpy, no torch).

Conventions
-----------
* ``logits``: float array of shape ``[N, C]``; ``labels``: integer array of shape ``[N]``, values in
  ``[0, C)``.
* Accuracies are percentages in ``[0, 100]``; MIA scores are fractions in ``[0, 1]`` unless stated otherwise.
* Every metric compares an unlearned model ``θ_u`` with a retrained model ``θ_r`` where it makes sense
  (evaluation.md §0, principle 1); the docstrings state which direction is better.

Sources: vision.md §5.5 (ToW, ToW-MIA, disagreement; RUM, Zhao et al. 2024, arXiv 2406.01257) and
evaluation.md §1 (UA/RA/TA/MIA, Avg. Gap; SalUn, Fan et al. 2024 and ℓ1-sparse, Jia et al. 2023).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "accuracy",
    "avg_gap",
    "cross_entropy",
    "disagreement",
    "log_softmax",
    "prediction_entropy",
    "softmax",
    "tow",
    "tow_mia",
    "true_class_prob",
]


# --------------------------------------------------------------------------------------------------
# validation helpers (shared with metrics.mia)
# --------------------------------------------------------------------------------------------------
def _as_logits(logits: ArrayLike, name: str = "logits") -> np.ndarray:
    """Return ``logits`` as a 2-D float64 array; an empty 1-D input is read as shape ``[0, 0]``."""
    z = np.asarray(logits)
    if z.ndim == 1 and z.size == 0:
        z = z.reshape(0, 0)
    if z.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, C]; got shape {z.shape}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer) or z.dtype == bool):
        raise ValueError(f"{name} must be numeric; got dtype {z.dtype}")
    if z.shape[0] > 0 and z.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class column; got shape {z.shape}")
    return z.astype(np.float64, copy=False)


def _as_labels(labels: ArrayLike, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a 1-D int64 array of length ``n`` with values in ``[0, num_classes)``."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N]; got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has length {y.shape[0]} but there are {n} examples")
    if y.size == 0:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{name} must be integers; got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(
            f"{name} must lie in [0, {num_classes}); "
            f"got value {int(y[bad][0])} (at index {int(np.argmax(bad))})"
        )
    return y


def _logits_labels(logits: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    z = _as_logits(logits)
    y = _as_labels(labels, z.shape[0], z.shape[1])
    return z, y


# --------------------------------------------------------------------------------------------------
# softmax family
# --------------------------------------------------------------------------------------------------
def log_softmax(logits: ArrayLike) -> np.ndarray:
    """Row-wise log-softmax, ``log p_k = z_k − max(z) − log Σ_j exp(z_j − max(z))``.

    Numerically stable: the row maximum is subtracted before exponentiating, so logits of order 1e4 give
    finite results. Returns a float64 array of shape ``[N, C]``.
    """
    z = _as_logits(logits)
    if z.size == 0:
        return z.copy()
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: ArrayLike) -> np.ndarray:
    """Row-wise softmax ``p_k = exp(z_k) / Σ_j exp(z_j)`` (computed as ``exp(log_softmax(z))``, stable)."""
    return np.exp(log_softmax(logits))


# --------------------------------------------------------------------------------------------------
# point metrics on one model
# --------------------------------------------------------------------------------------------------
def accuracy(logits: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy in percent: ``100 · mean_i [argmax_k z_ik == y_i]``.

    Higher = more examples classified correctly. On a forget set, UA = 100 − accuracy (evaluation.md §1); the
    target is always the retrained model's value, not 0 or 100. Ties in argmax take the first maximal class
    (numpy convention). Empty input returns ``nan``.
    """
    z, y = _logits_labels(logits, labels)
    if z.shape[0] == 0:
        return float("nan")
    return float(100.0 * np.mean(np.argmax(z, axis=1) == y))


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood ``mean_i −log p(y_i | x_i)`` with ``p = softmax(z)`` (natural log).

    Computed from :func:`log_softmax`, so it stays finite for huge logits (e.g. 1e4). Lower = better fit.
    Equals ``sklearn.metrics.log_loss(labels, softmax(z), labels=range(C))`` up to sklearn's probability
    clipping. Empty input returns ``nan``.
    """
    z, y = _logits_labels(logits, labels)
    if z.shape[0] == 0:
        return float("nan")
    lp = log_softmax(z)
    return float(-np.mean(lp[np.arange(z.shape[0]), y]))


def true_class_prob(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean probability of the true class, ``mean_i softmax(z_i)[y_i]``, in ``[0, 1]``.

    On a forget set made of one or more forget classes this is the "forget-class probability": for each
    sample, the probability the model assigns to its own (forget) class. Works for any number of classes C.
    Higher = the model is more confident in the labelled class; for forgetting, the target is the retrained
    model's value. Empty input returns ``nan``.
    """
    z, y = _logits_labels(logits, labels)
    if z.shape[0] == 0:
        return float("nan")
    lp = log_softmax(z)
    return float(np.mean(np.exp(lp[np.arange(z.shape[0]), y])))


def prediction_entropy(logits: ArrayLike) -> np.ndarray:
    """Per-example Shannon entropy (nats) of the predictive distribution, ``H(p_i) = −Σ_k p_ik log p_ik``.

    Uses ``0 · log 0 = 0``; ``log p`` comes from :func:`log_softmax`, so no clipping is needed. Returns shape
    ``[N]`` with values in ``[0, log C]``. Higher = less confident prediction. Matches
    ``scipy.stats.entropy(p, axis=1)``.
    """
    lp = log_softmax(logits)
    if lp.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * lp, 0.0)
    return -terms.sum(axis=1)


def js_divergence(logits_p: ArrayLike, logits_q: ArrayLike) -> np.ndarray:
    """Per-example Jensen–Shannon divergence (nats) between softmax(logits_p) and softmax(logits_q):
    ``JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m)``, ``m = ½ (p + q)``, in ``[0, log 2]``; shape ``[N]``. Equals
    ``scipy.spatial.distance.jensenshannon(p, q) ** 2``. A true JS divergence, unlike the SSD/JiT reference's
    "JSDiv" (vision.md §6)."""
    zp, zq = _as_logits(logits_p, "logits_p"), _as_logits(logits_q, "logits_q")
    if zp.shape != zq.shape:
        raise ValueError(f"logits_p and logits_q must have the same shape; got {zp.shape} and {zq.shape}")
    lp, lq = log_softmax(zp), log_softmax(zq)
    lm = np.logaddexp(lp, lq) - np.log(2.0)
    p, q = np.exp(lp), np.exp(lq)
    with np.errstate(invalid="ignore"):
        kl_p = np.where(p > 0, p * (lp - lm), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * (lq - lm), 0.0).sum(axis=1)
    return np.clip(0.5 * (kl_p + kl_q), 0.0, np.log(2.0))


def zrf(logits: ArrayLike, incompetent_logits: ArrayLike) -> float:
    """Zero Retrain Forgetting score (Chundawat et al. 2023), ``ZRF = 1 − mean_i JS(f(x_i), T_d(x_i))`` over the
    forget set, with T_d a randomly initialised model of the same architecture. With JS in nats the score lies in
    ``[1 − log 2, 1]``; higher = closer to the random model's outputs (more forgotten). Empty input returns ``nan``."""
    js = js_divergence(logits, incompetent_logits)
    return float("nan") if js.shape[0] == 0 else float(1.0 - js.mean())


# --------------------------------------------------------------------------------------------------
# retrain-referenced aggregate metrics
# --------------------------------------------------------------------------------------------------
def _get(mapping: Mapping[str, float], key: str, what: str) -> float:
    try:
        return float(mapping[key])
    except KeyError:
        raise KeyError(f"{what} is missing key {key!r} (has {sorted(mapping)})") from None


def tow(
    acc_u: Mapping[str, float],
    acc_r: Mapping[str, float],
    keys: Sequence[str] = ("forget", "retain", "test"),
) -> float:
    """Tug-of-War score, ``ToW = Π_k (1 − |acc_u[k] − acc_r[k]| / 100)``.

    The product runs over ``keys`` (default forget, retain, test). Accuracies are in percent. Lies in
    ``[0, 1]``; higher = closer to the retrained model, 1 = identical accuracies on every split.
    Source: RUM (Zhao et al. 2024, arXiv 2406.01257), vision.md §5.5; evaluation.md §1.
    A missing key raises ``KeyError`` naming it.
    """
    out = 1.0
    for k in keys:
        out *= 1.0 - abs(_get(acc_u, k, "acc_u") - _get(acc_r, k, "acc_r")) / 100.0
    return float(out)


def tow_mia(
    mia_u: float,
    mia_r: float,
    acc_u: Mapping[str, float],
    acc_r: Mapping[str, float],
    keys: Sequence[str] = ("retain", "test"),
) -> float:
    """ToW-MIA, ``(1 − |mia_u − mia_r|) · Π_{k ∈ {retain, test}} (1 − |acc_u[k] − acc_r[k]| / 100)``.

    The forget-accuracy factor of :func:`tow` is replaced by the MIA factor. ``mia_u``/``mia_r`` are MIA
    scores on the forget set as fractions in ``[0, 1]`` (e.g. :func:`unlearnkit.metrics.mia.mia_svc`);
    accuracies are in percent. Higher = closer to the retrained model, 1 = identical. Source: RUM (Zhao et al.
    2024), vision.md §5.5. Raises ``ValueError`` if an MIA value lies outside ``[0, 1]`` (a percentage passed
    by mistake); a NaN MIA value gives NaN.
    """
    for name, v in (("mia_u", mia_u), ("mia_r", mia_r)):
        if float(v) < 0.0 or float(v) > 1.0:  # NaN (e.g. an empty forget set) propagates
            raise ValueError(f"{name} must be a fraction in [0, 1]; got {v}")
    out = 1.0 - abs(float(mia_u) - float(mia_r))
    for k in keys:
        out *= 1.0 - abs(_get(acc_u, k, "acc_u") - _get(acc_r, k, "acc_r")) / 100.0
    return float(out)


def avg_gap(
    u: Mapping[str, float],
    r: Mapping[str, float],
    keys: Sequence[str] = ("ua", "ra", "ta", "mia"),
) -> float:
    """Average gap to retrain, ``mean_k |u[k] − r[k]|`` over ``keys`` (default UA, RA, TA, MIA).

    All values in percent, MIA-efficacy included (multiply a [0, 1] MIA score by 100). Lower = closer to the
    retrained model; 0 = identical. Source: SalUn (Fan et al., ICLR 2024) / ℓ1-sparse (Jia et al., NeurIPS
    2023), evaluation.md §1. A missing key raises ``KeyError`` naming it; empty ``keys`` raises
    ``ValueError``.
    """
    if len(keys) == 0:
        raise ValueError("avg_gap needs at least one key")
    gaps = [abs(_get(u, k, "u") - _get(r, k, "r")) for k in keys]
    return float(np.mean(gaps))


def disagreement(logits_u: ArrayLike, logits_r: ArrayLike) -> float:
    """Fraction of examples whose predicted class differs: ``mean_i [argmax z^u_i ≠ argmax z^r_i]`` ∈ [0, 1].

    Lower = the unlearned model predicts like the retrained one. Source: RUM (Zhao et al. 2024), vision.md
    §5.5. Both inputs must have the same shape ``[N, C]``; empty input returns ``nan``.
    """
    zu = _as_logits(logits_u, "logits_u")
    zr = _as_logits(logits_r, "logits_r")
    if zu.shape != zr.shape:
        raise ValueError(f"logits_u and logits_r must have the same shape; got {zu.shape} and {zr.shape}")
    if zu.shape[0] == 0:
        return float("nan")
    return float(np.mean(np.argmax(zu, axis=1) != np.argmax(zr, axis=1)))
