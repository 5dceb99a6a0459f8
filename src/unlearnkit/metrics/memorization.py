"""Memorisation scores, their cheap proxies and the entanglement score for RUM (vision.md §5.1–5.3).

Pure functions on arrays. numpy at import time; scipy and torch are imported inside the functions that need them.

One sign convention (vision.md §5.1): **every per-example score returned here is oriented higher = more
memorised**. Proxies whose raw quantity is "higher = better learned" (confidence, max-confidence, negative
entropy, binary accuracy) are returned **negated**; each docstring states the raw quantity and the flip.

Contents:

* :func:`subset_masks` / :func:`feldman_zhang` — the subsampled-runs memorisation estimator (§5.1).
* :func:`confidence_proxy`, :func:`max_conf_proxy`, :func:`neg_entropy_proxy`, :func:`binary_acc_proxy` —
  learning-event proxies from per-epoch softmax outputs ``probs [E, N, C]`` (§5.2); the per-epoch quantity of
  each is one function of :data:`PROXY_EPOCH_VALUES`, which the recorder of the original training
  (``scores.record_training``: pre-update, train mode) accumulates without keeping ``[E, N, C]``.
* :func:`holdout_kl_score` — the holdout-retraining proxy: symmetric KL / 2 between two models' softmax outputs.
* :func:`loss_curvature` — input-space loss curvature (CURE-style finite difference of input gradients).
* :func:`rank_correlations` — Spearman ρ of each score against a reference (NaNs dropped pairwise).
* :func:`load_score_file` — a 1-D score array from ``.npy`` / ``.npz`` (e.g. Feldman & Zhang's ``tr_mem``).
* :func:`entanglement_score` / :func:`es_groups` — ES(R, S) with exact set means, and the distance-chunk
  forget groups (§5.3).

Sources: Feldman & Zhang 2020 (arXiv 2008.03703); RUM, Zhao et al. 2024 (arXiv 2406.01257; kairanzhao/RUM);
Moosavi-Dezfooli et al. 2019 (CURE, arXiv 1811.09716) for the curvature estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "PROXY_EPOCH_VALUES",
    "binary_acc_proxy",
    "confidence_proxy",
    "entanglement_score",
    "es_groups",
    "feldman_zhang",
    "holdout_kl_score",
    "load_score_file",
    "loss_curvature",
    "max_conf_proxy",
    "neg_entropy_proxy",
    "proxy_from_sums",
    "rank_correlations",
    "subset_masks",
]

#: Allowed deviation of a probability row's sum from 1 (loose enough for float16/bfloat16 softmax outputs,
#: tight enough to reject logits or log-probabilities passed by mistake).
_PROB_SUM_TOL = 1e-2


# --------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------
def _numeric(a: np.ndarray, name: str) -> None:
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError(f"{name} must be numeric; got dtype {a.dtype}")


def _first(idx: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    return shown + (f", ... ({idx.size} in all)" if idx.size > limit else "")


def _check_prob_rows(p: np.ndarray, name: str, finite_rows: np.ndarray) -> None:
    """Finite rows of ``p [..., C]`` must be probability vectors (entries in [0, 1], sum 1 ± tolerance)."""
    rows = p[finite_rows]
    if rows.size == 0:
        return
    bad = (rows < 0).any(axis=-1) | (rows > 1).any(axis=-1) | (np.abs(rows.sum(axis=-1) - 1.0) > _PROB_SUM_TOL)
    if bad.any():
        where = np.argwhere(finite_rows)[int(np.argmax(bad))]
        row = p[tuple(where)]
        raise ValueError(
            f"{name} must hold softmax probabilities (entries in [0, 1], rows summing to 1 ± {_PROB_SUM_TOL}); "
            f"row {tuple(int(w) for w in where)} has min {row.min():.4g}, max {row.max():.4g}, sum {row.sum():.6g}"
            " (logits or log-probabilities? apply softmax first)"
        )


def _probs_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (probs [E, N, C] float64, labels [N] int64, finite [E, N] bool: the row has no NaN/inf entry)."""
    p = np.asarray(probs)
    if p.ndim != 3:
        raise ValueError(f"probs must be 3-D [epochs E, examples N, classes C]; got shape {p.shape}")
    _numeric(p, "probs")
    e, n, c = p.shape
    if e == 0 or n == 0 or c == 0:
        raise ValueError(f"probs must have at least one epoch, example and class; got shape {p.shape}")
    p = p.astype(np.float64, copy=False)
    finite = np.isfinite(p).all(axis=-1)
    _check_prob_rows(p, "probs", finite)
    from .classifier import _as_labels

    return p, _as_labels(labels, n, c), finite


# --------------------------------------------------------------------------------------------------
# Feldman–Zhang memorisation (§5.1)
# --------------------------------------------------------------------------------------------------
def subset_masks(n: int, k: int, fraction: float = 0.7, seed: int = 0) -> np.ndarray:
    """Membership masks ``[K, N]`` (bool) of ``k`` random training subsets for :func:`feldman_zhang`.

    Each row holds exactly ``m = floor(fraction·n + 0.5)`` ``True`` entries (``fraction·n`` rounded half up),
    drawn without replacement, independently per row, from ``np.random.default_rng(seed)`` (row ``r`` is
    ``rng.permutation(n)[:m]`` after ``r`` earlier draws). Same arguments give the same masks. The reference
    estimate uses 70% subsets (vision.md §5.1). ``m`` must satisfy ``1 ≤ m ≤ n − 1`` so that every example can
    be both in and out of a run.
    """
    n, k = int(n), int(k)
    if n < 2:
        raise ValueError(f"n (training-set size) must be >= 2; got {n}")
    if k < 1:
        raise ValueError(f"k (number of subset runs) must be >= 1; got {k}")
    f = float(fraction)
    if not 0.0 < f < 1.0:
        raise ValueError(f"fraction must lie in (0, 1); got {fraction}")
    m = int(math.floor(f * n + 0.5))
    if not 1 <= m <= n - 1:
        raise ValueError(f"fraction={fraction} of n={n} gives subsets of {m} examples; need 1 <= size <= {n - 1}")
    rng = np.random.default_rng(seed)
    masks = np.zeros((k, n), dtype=bool)
    for r in range(k):
        masks[r, rng.permutation(n)[:m]] = True
    return masks


def feldman_zhang(
    masks: ArrayLike, correct: ArrayLike, *, on_missing: Literal["nan", "raise"] = "nan"
) -> np.ndarray:
    """Feldman–Zhang memorisation estimate per training example, shape ``[N]`` (vision.md §5.1).

    ``mem(i) = P_{f~A(D)}[f(x_i)=y_i] − P_{f~A(D\\i)}[f(x_i)=y_i]``, estimated from ``K`` runs on random subsets::

        mem_i = Σ_k m_ki c_ki / Σ_k m_ki  −  Σ_k (1−m_ki) c_ki / Σ_k (1−m_ki)

    i.e. mean correctness over the runs that trained on ``i`` minus mean correctness over the runs that did not.

    * ``masks [K, N]``: bool (or 0/1), ``masks[k, i]`` = example ``i`` was in run ``k``'s training subset
      (:func:`subset_masks`).
    * ``correct [K, N]``: bool or 0/1, run ``k`` classifies training example ``i`` correctly. Values in
      ``[0, 1]`` are accepted (e.g. ``p(y_i)`` for a soft estimate); the formula is the same.

    Range ``[−1, 1]``; higher = more memorised (no flip). An example in all runs or in none has no estimate:
    ``on_missing="nan"`` (default) gives ``nan`` there, ``on_missing="raise"`` raises ``ValueError`` listing them.
    """
    if on_missing not in ("nan", "raise"):
        raise ValueError(f"on_missing must be 'nan' or 'raise'; got {on_missing!r}")
    m = np.asarray(masks)
    c = np.asarray(correct)
    if m.ndim != 2:
        raise ValueError(f"masks must be 2-D [K runs, N examples]; got shape {m.shape}")
    if c.shape != m.shape:
        raise ValueError(f"correct must have the shape of masks {m.shape}; got {c.shape}")
    _numeric(m, "masks")
    _numeric(c, "correct")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            bad = m[~np.isin(m, (0, 1))].reshape(-1)[0]
            raise ValueError(f"masks must be bool or 0/1; got value {bad}")
        m = m.astype(bool)
    c = c.astype(np.float64)
    bad = ~np.isfinite(c) | (c < 0) | (c > 1)
    if bad.any():
        k, i = np.argwhere(bad)[0]
        raise ValueError(f"correct must be bool or in [0, 1]; got {c[k, i]} at run {k}, example {i}")
    n_in = m.sum(axis=0)
    n_out = m.shape[0] - n_in
    missing = (n_in == 0) | (n_out == 0)
    if missing.any() and on_missing == "raise":
        idx = np.flatnonzero(missing)
        raise ValueError(
            f"{idx.size} example(s) are in all runs or in none, so mem has no estimate: indices {_first(idx)}; "
            "use more runs, or on_missing='nan'"
        )
    s_in = np.where(m, c, 0.0).sum(axis=0)
    s_out = c.sum(axis=0) - s_in
    with np.errstate(invalid="ignore", divide="ignore"):
        mem = s_in / n_in - s_out / n_out
    mem[missing] = np.nan
    return mem


# --------------------------------------------------------------------------------------------------
# learning-event proxies (§5.2), from recorded softmax outputs
# --------------------------------------------------------------------------------------------------
# The per-epoch quantity of each learning-event proxy, "higher = better learned" (before the flip). ONE function per
# proxy, used by the [E, N, C] functions below and by the recorder of the original training (_score_record.py).
# p [..., N, C] float64 softmax rows, y [N] int labels -> [..., N] float64; a non-finite row's value is arbitrary
# (callers drop those rows).
def _confidence_epoch(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return p[..., np.arange(y.shape[0]), y]  # p(y_i | x_i)


def _max_conf_epoch(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return p.max(axis=-1)  # max_k p_k


def _neg_entropy_epoch(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)  # 0·log 0 = 0
    return plogp.sum(axis=-1)  # Σ_k p_k log p_k


def _binary_acc_epoch(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    finite = np.isfinite(p).all(axis=-1)
    return (np.argmax(np.where(finite[..., None], p, 0.0), axis=-1) == y).astype(np.float64)  # 1[argmax = y]


#: name -> per-epoch quantity ``(p [..., N, C], y [N]) -> [..., N]`` of the learning-event proxies (§5.2).
PROXY_EPOCH_VALUES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "confidence": _confidence_epoch,
    "max_conf": _max_conf_epoch,
    "neg_entropy": _neg_entropy_epoch,
    "binary_acc": _binary_acc_epoch,
}


def proxy_from_sums(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """A learning-event proxy from its accumulators: ``−total / count`` per example (the negated mean over the
    ``count`` finite epochs of the per-epoch quantity summed in ``total``), ``nan`` where ``count == 0``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return -np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _event_proxy(name: str, probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    p, y, finite = _probs_labels(probs, labels)
    values = PROXY_EPOCH_VALUES[name](p, y)  # [E, N]
    return proxy_from_sums(np.where(finite, values, 0.0).sum(axis=0), finite.sum(axis=0))


_PROXY_ROWS_DOC = """
    ``probs [E, N, C]``: softmax outputs of the N training examples at each of E epochs (recorded before the
    update, in train mode, vision.md §5.2); ``labels [N]``: integer labels in ``[0, C)``. **Non-finite rows are
    dropped**: an (epoch, example) row with any NaN/inf entry is left out, and each example's value is the mean
    over its finite epochs (``nan`` if it has none). Finite rows must be probability vectors.
"""


def confidence_proxy(probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """C-proxy, shape ``[N]``: ``−mean_e p_e(y_i | x_i)``; higher = more memorised (vision.md §5.2).

    Raw quantity: mean over epochs of the softmax probability of the true label (high = learned early and
    confidently = low memorisation). Returned **negated**, range ``[−1, 0]``.
    """
    return _event_proxy("confidence", probs, labels)


def max_conf_proxy(probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Max-confidence proxy, shape ``[N]``: ``−mean_e max_k p_e(k | x_i)``; higher = more memorised (§5.2).

    Raw quantity: mean over epochs of the largest softmax probability, whatever its class (``labels`` are
    only validated). Returned **negated**, range ``[−1, −1/C]``.
    """
    return _event_proxy("max_conf", probs, labels)


def neg_entropy_proxy(probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Negative-entropy proxy, shape ``[N]``: ``−mean_e Σ_k p_k log p_k`` = mean entropy; higher = more memorised.

    Raw quantity (vision.md §5.2): mean over epochs of the negative entropy ``Σ_k p_k log p_k`` (≤ 0; high =
    confident = low memorisation). Returned **negated**, i.e. the mean prediction entropy in nats, range
    ``[0, log C]``. ``0·log 0`` is taken as 0 (its limit), so a softmax entry that underflowed to exactly 0 is
    kept; the reference computes ``p·log p`` literally and so drops such confidently-learned rows (a bias we do
    not reproduce). Only rows with a non-finite probability are dropped (see below). ``labels`` are only
    validated.
    """
    return _event_proxy("neg_entropy", probs, labels)


def binary_acc_proxy(probs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Binary-accuracy proxy, shape ``[N]``: ``−mean_e 1[argmax_k p_e(k | x_i) = y_i]``; higher = more memorised.

    Raw quantity (vision.md §5.2): the fraction of epochs at which the example is classified correctly
    (``np.argmax``: ties go to the lowest class index). Returned **negated**, range ``[−1, 0]``.
    """
    return _event_proxy("binary_acc", probs, labels)


for _f in (confidence_proxy, max_conf_proxy, neg_entropy_proxy, binary_acc_proxy):
    _f.__doc__ = (_f.__doc__ or "") + _PROXY_ROWS_DOC
del _f


def _as_probs_2d(p: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(p)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D [N, C] with C >= 1; got shape {a.shape}")
    _numeric(a, name)
    a = a.astype(np.float64, copy=False)
    finite = np.isfinite(a).all(axis=-1)
    if not finite.all():
        idx = np.flatnonzero(~finite)
        raise ValueError(f"{name} must be finite; rows {_first(idx)} hold NaN or inf")
    _check_prob_rows(a, name, finite)
    return a


def _rel_entr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Element-wise ``x log(x/y)`` with ``0 log(0/y) = 0`` and ``x log(x/0) = inf`` for ``x > 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = (x > 0) & (y > 0)
        out = np.where(safe, x * (np.log(np.where(safe, x, 1.0)) - np.log(np.where(safe, y, 1.0))), 0.0)
    return np.where((x > 0) & (y <= 0), np.inf, out)


def holdout_kl_score(p_original: ArrayLike, p_finetuned: ArrayLike) -> np.ndarray:
    """Holdout-retraining proxy, shape ``[N]``: ``(KL(p‖q) + KL(q‖p)) / 2`` per example (vision.md §5.2).

    ``p = p_original [N, C]``: the original model's softmax on the training examples; ``q = p_finetuned [N, C]``:
    the softmax of a copy fine-tuned on held-out (test) data. ``KL(p‖q) = Σ_k p_k log(p_k/q_k)`` with
    ``0 log 0 = 0``; a class with mass under one model and exactly 0 under the other gives ``inf``. Higher = the
    prediction moved more when the model saw only held-out data = more memorised (no flip). Range ``[0, ∞]``.
    """
    p = _as_probs_2d(p_original, "p_original")
    q = _as_probs_2d(p_finetuned, "p_finetuned")
    if p.shape != q.shape:
        raise ValueError(f"p_original and p_finetuned must have the same shape; got {p.shape} and {q.shape}")
    return 0.5 * (_rel_entr(p, q).sum(axis=1) + _rel_entr(q, p).sum(axis=1))


# --------------------------------------------------------------------------------------------------
# loss curvature (§5.2)
# --------------------------------------------------------------------------------------------------
def loss_curvature(
    model: torch.nn.Module,
    x: torch.Tensor | ArrayLike,
    y: torch.Tensor | ArrayLike,
    h: float = 0.01,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Input-space loss curvature per example, shape ``[N]`` (vision.md §5.2; CURE, arXiv 1811.09716).

    For each example, with ``L`` its own loss and ``g = ∇_x L(x)``::

        s = sign(g)   (s = 1 everywhere if g = 0 exactly: CURE's +1e-7 limit)
        z = h · s / ‖s‖₂                                           (z is a constant, not differentiated)
        curv = ‖∇_x (L(x + z) − L(x))‖₂ = ‖∇L(x + z) − ∇L(x)‖₂      ≈ ‖H z‖₂ for small h

    Higher = sharper loss around the example = more memorised (no flip); ≥ 0. For a quadratic
    ``L(x) = ½ xᵀAx`` it equals ``‖A z‖₂`` exactly; for a loss linear in ``x`` it is 0. The spec computes it at
    each epoch of the original training; average the per-epoch results yourself.

    * ``x [N, ...]`` floating inputs, ``y [N]`` targets (tensors or arrays; moved to the model's device).
    * ``loss_fn(outputs, y) -> [B]`` per-example losses; default cross-entropy on logits
      (``reduction="none"``).
    * The model runs in **eval mode** (its previous mode is restored afterwards) so that examples in a batch do
      not interact (BatchNorm statistics, dropout) and per-example gradients are exact; parameter ``.grad``
      fields are not touched. ``batch_size`` (default: all at once) only bounds memory.
    """
    import torch
    import torch.nn.functional as F

    h = float(h)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"h must be a finite step > 0; got {h}")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None; got {batch_size}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else None
    xt = torch.as_tensor(x, device=device)
    yt = torch.as_tensor(y, device=device)
    if not xt.is_floating_point():
        raise ValueError(f"x must be floating point (gradients are taken w.r.t. it); got dtype {xt.dtype}")
    if xt.ndim < 1 or xt.shape[0] == 0:
        raise ValueError(f"x must be [N, ...] with N >= 1; got shape {tuple(xt.shape)}")
    if yt.ndim < 1 or yt.shape[0] != xt.shape[0]:
        raise ValueError(f"y must have N={xt.shape[0]} rows like x; got shape {tuple(yt.shape)}")
    def cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target, reduction="none")

    criterion = cross_entropy if loss_fn is None else loss_fn

    def per_example_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = criterion(model(xb), yb)
        if loss.shape != (xb.shape[0],):
            raise ValueError(
                f"loss_fn must return per-example losses of shape [{xb.shape[0]}]; got {tuple(loss.shape)}"
            )
        return loss

    n = xt.shape[0]
    bs = n if batch_size is None else int(batch_size)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.enable_grad():
            for start in range(0, n, bs):
                xb, yb = xt[start : start + bs].detach(), yt[start : start + bs]
                x0 = xb.clone().requires_grad_(True)
                (g0,) = torch.autograd.grad(per_example_loss(x0, yb).sum(), x0)
                s = torch.sign(g0).flatten(1)
                s[~s.bool().any(dim=1)] = 1.0
                z = (h * s / s.norm(dim=1, keepdim=True)).view_as(xb)
                x1 = (xb + z).requires_grad_(True)
                (g1,) = torch.autograd.grad(per_example_loss(x1, yb).sum(), x1)
                out.append((g1 - g0).flatten(1).norm(dim=1).detach().double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------------
# comparing scores, loading published scores
# --------------------------------------------------------------------------------------------------
def rank_correlations(scores: Mapping[str, ArrayLike], reference: ArrayLike) -> dict[str, tuple[float, float]]:
    """Spearman ``(ρ, two-sided p)`` of each named score against ``reference`` (``scipy.stats.spearmanr``).

    Every score must be 1-D with the reference's length. NaNs are dropped **pairwise**: for each score, the
    examples where it or the reference is NaN are left out (inf is kept; it ranks last/first). With fewer than
    3 pairs left the result is ``(nan, nan)``. Since all scores here are oriented higher = more memorised,
    a good proxy has ρ > 0 against exact memorisation.
    """
    from scipy.stats import spearmanr

    ref = np.asarray(reference)
    if ref.ndim != 1:
        raise ValueError(f"reference must be 1-D [N]; got shape {ref.shape}")
    _numeric(ref, "reference")
    ref = ref.astype(np.float64)
    result: dict[str, tuple[float, float]] = {}
    for name, s in scores.items():
        a = np.asarray(s)
        if a.shape != ref.shape:
            raise ValueError(f"score {name!r} has shape {a.shape}; the reference has shape {ref.shape}")
        _numeric(a, f"score {name!r}")
        a = a.astype(np.float64)
        keep = ~np.isnan(a) & ~np.isnan(ref)
        if keep.sum() < 3:
            result[name] = (math.nan, math.nan)
            continue
        res = spearmanr(a[keep], ref[keep])
        result[name] = (float(res.statistic), float(res.pvalue))
    return result


def load_score_file(path: str | Path, key: str | None = None) -> np.ndarray:
    """Read a 1-D per-example score array from ``.npy`` or ``.npz``; returns float64 ``[N]``.

    * ``.npz``: ``key`` names the array (Feldman & Zhang's CIFAR-100 file has ``tr_mem`` — the memorisation
      estimates — next to ``tr_labels`` and others). ``key=None`` works only when the archive holds exactly one
      array; otherwise, or when ``key`` is absent, ``ValueError`` lists the keys.
    * ``.npy``: the array itself; ``key`` must be ``None``.

    The array must be 1-D, numeric and finite; the error lists the indices that are not. Loaded with
    ``allow_pickle=False``. Orientation is the file's: Feldman–Zhang's ``tr_mem`` is already higher = more
    memorised.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"score file {str(p)!r}: unsupported extension {p.suffix!r}; allowed: .npy, .npz")
    if suffix == ".npy":
        if key is not None:
            raise ValueError(f"score file {str(p)!r} is a .npy (one array); key must be None, got {key!r}")
        arr = np.load(p, allow_pickle=False)
        what = str(p)
    else:
        with np.load(p, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            if key is None:
                if len(keys) != 1:
                    raise ValueError(
                        f"score file {str(p)!r} holds {len(keys)} arrays; pass key= one of {keys}"
                    )
                key = keys[0]
            elif key not in keys:
                raise ValueError(f"score file {str(p)!r} has no key {key!r}; keys: {keys}")
            arr = archive[key]
        what = f"{p}[{key!r}]"
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D per-example array; got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be numeric; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{what} must be finite; {int(bad.sum())} value(s) are not, at indices "
                         f"{_first(np.flatnonzero(bad))}")
    return arr


# --------------------------------------------------------------------------------------------------
# entanglement score (§5.3)
# --------------------------------------------------------------------------------------------------
def _as_features(z: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(z)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D [n, d] with n, d >= 1; got shape {a.shape}")
    _numeric(a, name)
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        rows = np.flatnonzero(~np.isfinite(a).all(axis=1))
        raise ValueError(f"{name} must be finite; rows {_first(rows)} hold NaN or inf")
    return a


def entanglement_score(features_r: ArrayLike, features_s: ArrayLike) -> float:
    """Entanglement score ES(R, S) of retain features ``[n_r, d]`` and forget features ``[n_s, d]`` (§5.3).

    With exact set means ``μ_R``, ``μ_S`` and ``μ = (μ_R + μ_S)/2``::

        ES = [ mean_{i∈R} ‖z_i − μ_R‖² + mean_{j∈S} ‖z_j − μ_S‖² ] / [ (‖μ_R − μ‖² + ‖μ_S − μ‖²) / 2 ]

    (the denominator equals ``‖μ_R − μ_S‖² / 4``). Higher = more entangled = harder to unlearn. The reference
    averages per-batch means; we use exact means (vision.md §5.3). ``z`` are the original model's penultimate
    features. Invariant to translating, rotating or scaling all features together. Equal set means give
    ``inf`` (``nan`` if, in addition, both sets are single points).
    """
    zr = _as_features(features_r, "features_r")
    zs = _as_features(features_s, "features_s")
    if zr.shape[1] != zs.shape[1]:
        raise ValueError(f"features_r and features_s must have the same dimension d; got {zr.shape[1]} and "
                         f"{zs.shape[1]}")
    mu_r, mu_s = zr.mean(axis=0), zs.mean(axis=0)
    mu = (mu_r + mu_s) / 2.0
    within = float(((zr - mu_r) ** 2).sum(axis=1).mean() + ((zs - mu_s) ** 2).sum(axis=1).mean())
    between = float((((mu_r - mu) ** 2).sum() + ((mu_s - mu) ** 2).sum()) / 2.0)
    if between == 0.0:
        return math.inf if within > 0 else math.nan
    return within / between


def es_groups(
    features: ArrayLike, n_chunks: int = 15, chunks: Sequence[int] = (3, 12, 14)
) -> tuple[np.ndarray, ...]:
    """ES forget groups: index arrays of the chunks ``chunks`` (0-based) of the distance ordering (§5.3).

    Sort the N examples by ``‖z_i − mean_j z_j‖₂`` ascending (ties: lower index first), then cut the order into
    ``n_chunks`` consecutive chunks of ``size = N // n_chunks``: chunk ``c`` (**0-based**) is
    ``order[c·size : (c+1)·size]``, so chunk 0 is closest to the global mean and chunk ``n_chunks − 1`` the
    farthest; the ``N mod n_chunks`` farthest examples belong to no chunk (the reference's extra partial group).
    Returns one array per entry of ``chunks``, in that order, each in ascending-distance order. Defaults follow
    the reference for CIFAR (45k train: 15 chunks of 3000; low/med/high = chunks 3/12/14, 0-based as in the
    reference's ``group_index``).
    """
    z = _as_features(features, "features")
    n = z.shape[0]
    n_chunks = int(n_chunks)
    if not 1 <= n_chunks <= n:
        raise ValueError(f"n_chunks must lie in [1, N={n}]; got {n_chunks}")
    chunk_ids = [int(c) for c in chunks]
    for c in chunk_ids:
        if not 0 <= c < n_chunks:
            raise ValueError(f"chunk index {c} is out of range; allowed 0..{n_chunks - 1} (0-based)")
    dist = np.linalg.norm(z - z.mean(axis=0), axis=1)
    order = np.lexsort((np.arange(n), dist))
    size = n // n_chunks
    return tuple(order[c * size : (c + 1) * size].copy() for c in chunk_ids)
