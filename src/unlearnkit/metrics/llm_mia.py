"""Membership-inference attacks (MIAs) for causal language models, per sample (llm.md §5).

Members are the forget set (TOFU ``forgetXX_perturbed``, MUSE ``privleak/forget``), non-members the holdout set.
Every attack returns a per-sample score ``s`` oriented **higher = less member-like** (llm.md §5):

============================  =====================================================================================
``mia_loss``                  :func:`loss_score` — avg_loss = −mean_t log p(y_t) (Yeom et al. 2018, CSF)
``mia_zlib``                  :func:`zlib_score` — avg_loss / len(zlib.compress(utf-8 answer)) (Carlini et al. 2021,
                              arXiv 2012.07805)
``mia_reference``             :func:`reference_score` — avg_loss_θ − avg_loss_ref (Carlini et al. 2021)
``mia_min_k``                 :func:`min_k_score` — −mean of the ⌊k·n⌋ (≥ 1) smallest token log-probs (Shi et al.
                              2023, arXiv 2310.16789)
``mia_min_k_plus_plus``       :func:`min_k_plus_plus_score` — −mean of the ⌊k·n⌋ (≥ 1) smallest
                              z_t = (log p(y_t) − μ_t)/σ_t (Zhang et al. 2024, arXiv 2404.02936); μ_t, σ_t² from
                              :func:`token_distribution_stats`
``mia_gradnorm``              :func:`gradnorm_score` — mean over parameter tensors of ‖∇ avg_loss‖_p, batch 1
============================  =====================================================================================

Summaries: :func:`attack_auc` (``roc_auc_score(labels, s)`` with forget = 0, holdout = 1; the target is the retain
model's AUC, not 0.5), :func:`privleak` (MUSE, Shi et al. 2024, arXiv 2407.06460) and :func:`rel_diff`.

Token-level inputs are per-token log-probs of the answer tokens, either a ``[B, T]`` array with a ``[B, T]`` mask
(True / 1 = scored answer token, e.g. the mask of ``CausalLMTask.token_logprobs``) or a list of 1-D arrays (one per
example, optionally with a matching list of masks). Torch tensors (bf16 included, llm.md §6 P11) are accepted and
cast to float64. An example with no scored token raises ``ValueError``.

Pure numpy at import time; torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from unlearnkit.metrics.mia import roc_auc

__all__ = [
    "ATTACKS",
    "attack_auc",
    "gradnorm_score",
    "loss_score",
    "min_k_plus_plus_score",
    "min_k_score",
    "privleak",
    "reference_score",
    "rel_diff",
    "token_distribution_stats",
    "zlib_score",
]

IGNORE = -100
SIGMA2_MIN = 1e-6  # clamp of σ_t² in MinK++ (llm.md §5)

TokenInput = Any  # np.ndarray [B, T] | torch.Tensor [B, T] | Sequence of 1-D arrays / tensors


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """numpy copy of an array-like or torch tensor (detached, on CPU; bf16 goes through float32)."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # bf16 / fp16 cannot go to numpy directly
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _rows(token_logprobs: TokenInput, mask: TokenInput | None, name: str = "token_logprobs") -> list[np.ndarray]:
    """Per-example 1-D float64 arrays of the scored tokens' log-probs."""
    if isinstance(token_logprobs, (list, tuple)):
        rows = [_np(r) for r in token_logprobs]
        if mask is not None:
            if not isinstance(mask, (list, tuple)) or len(mask) != len(rows):
                raise ValueError(f"with a list of {name}, mask must be a list of the same length ({len(rows)})")
            masks = [_np(m, np.float64) != 0 for m in mask]
        else:
            masks = [np.ones(r.shape, dtype=bool) for r in rows]
    else:
        arr = _np(token_logprobs)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be [B, T] or a list of 1-D arrays; got shape {arr.shape}")
        m = np.ones(arr.shape, dtype=bool) if mask is None else _np(mask, np.float64) != 0
        if m.shape != arr.shape:
            raise ValueError(f"mask shape {m.shape} != {name} shape {arr.shape}")
        rows, masks = list(arr), list(m)
    out = []
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        if r.ndim != 1 or m.shape != r.shape:
            raise ValueError(f"{name}[{i}] must be 1-D with a mask of the same shape; got {r.shape}, mask {m.shape}")
        sel = r[m]
        if sel.size == 0:
            raise ValueError(f"{name}[{i}] has no scored (masked-in) token")
        if np.isnan(sel).any():
            raise ValueError(f"{name}[{i}] contains NaN")
        out.append(sel)
    return out


def _n_lowest(n: int, k: float) -> int:
    """⌊k·n⌋, at least 1."""
    return max(1, int(math.floor(k * n)))


def _check_k(k: float) -> float:
    k = float(k)
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must lie in (0, 1]; got {k}")
    return k


def _vec(x: ArrayLike, name: str) -> np.ndarray:
    v = _np(x)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {v.shape}")
    return v


# ---------------------------------------------------------------- token-level attacks
def loss_score(token_logprobs: TokenInput, mask: TokenInput | None = None) -> np.ndarray:
    """LOSS attack (Yeom et al. 2018): avg_loss = −mean_{t∈A} log p(y_t) per example, shape [B]."""
    return np.array([-r.mean() for r in _rows(token_logprobs, mask)], dtype=np.float64)


def zlib_score(avg_loss: ArrayLike, texts: Sequence[str]) -> np.ndarray:
    """ZLib attack (Carlini et al. 2021): avg_loss / len(zlib.compress(text.encode("utf-8"))), text = the decoded
    answer; shape [B]."""
    loss = _vec(avg_loss, "avg_loss")
    if isinstance(texts, str) or len(texts) != len(loss):
        raise ValueError(f"texts must be a sequence of {len(loss)} strings (one per avg_loss)")
    sizes = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
    return loss / sizes


def reference_score(avg_loss_model: ArrayLike, avg_loss_ref: ArrayLike) -> np.ndarray:
    """Reference attack (Carlini et al. 2021): avg_loss_θ − avg_loss_ref, ref = the retain / retrain model."""
    a, b = _vec(avg_loss_model, "avg_loss_model"), _vec(avg_loss_ref, "avg_loss_ref")
    if a.shape != b.shape:
        raise ValueError(f"avg_loss_model {a.shape} and avg_loss_ref {b.shape} differ in shape")
    return a - b


def min_k_score(token_logprobs: TokenInput, mask: TokenInput | None = None, k: float = 0.4) -> np.ndarray:
    """Min-K% Prob (Shi et al. 2023): −mean of the ⌊k·n⌋ (at least 1) smallest log p(y_t) of each example, n = its
    number of scored tokens. k = 0.4 as in the OpenUnlearning configs."""
    k = _check_k(k)
    return np.array([-np.sort(r)[: _n_lowest(r.size, k)].mean() for r in _rows(token_logprobs, mask)])


def token_distribution_stats(
    log_probs: Any, targets: Any, mask: Any | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log p(y_t), μ_t, σ_t²), each [B, T] float64, from full-vocabulary log-probs ``log_probs`` [B, T, V] (e.g.
    ``CausalLMTask.distribution``) and target ids ``targets`` [B, T]:

        μ_t = Σ_v p_v log p_v,   σ_t² = max(Σ_v p_v (log p_v)² − μ_t², 1e-6)

    (terms with p_v = 0 count as 0). ``mask`` defaults to ``targets != −100``; unscored positions get
    log p = 0, μ = 0, σ² = 1. A torch ``log_probs`` is reduced in torch (float32) before leaving the device.
    """
    if hasattr(log_probs, "detach"):
        import torch

        lp = log_probs.detach().float()
        tgt = torch.as_tensor(targets, device=lp.device).long()
        m = (tgt != IGNORE) if mask is None else torch.as_tensor(mask, device=lp.device).bool()
        if lp.ndim != 3 or tgt.shape != lp.shape[:2] or m.shape != tgt.shape:
            raise ValueError(f"need log_probs [B, T, V], targets and mask [B, T]; got {tuple(lp.shape)}, "
                             f"{tuple(tgt.shape)}, {tuple(m.shape)}")
        p = lp.exp()
        pl = torch.where(p > 0, p * lp, torch.zeros_like(lp))
        mu = pl.sum(-1)
        ex2 = torch.where(p > 0, pl * lp, torch.zeros_like(lp)).sum(-1)
        sigma2 = (ex2 - mu * mu).clamp(min=SIGMA2_MIN)
        logp_y = lp.gather(-1, tgt.masked_fill(~m, 0).unsqueeze(-1)).squeeze(-1)
        logp_y, mu, sigma2, m = (_np(x) for x in (logp_y, mu, sigma2, m))
        m = m != 0
    else:
        lp = _np(log_probs)
        tgt = _np(targets, np.int64)
        m = (tgt != IGNORE) if mask is None else _np(mask) != 0
        if lp.ndim != 3 or tgt.shape != lp.shape[:2] or m.shape != tgt.shape:
            raise ValueError(f"need log_probs [B, T, V], targets and mask [B, T]; got {lp.shape}, {tgt.shape}, "
                             f"{m.shape}")
        p = np.exp(lp)
        with np.errstate(invalid="ignore"):
            pl = np.where(p > 0, p * lp, 0.0)
            mu = pl.sum(-1)
            ex2 = np.where(p > 0, pl * lp, 0.0).sum(-1)
        sigma2 = np.maximum(ex2 - mu * mu, SIGMA2_MIN)
        logp_y = np.take_along_axis(lp, np.where(m, tgt, 0)[..., None], axis=-1)[..., 0]
    return np.where(m, logp_y, 0.0), np.where(m, mu, 0.0), np.where(m, sigma2, 1.0)


def min_k_plus_plus_score(
    token_logprobs: TokenInput, mu: TokenInput, sigma2: TokenInput, mask: TokenInput | None = None, k: float = 0.4
) -> np.ndarray:
    """Min-K%++ (Zhang et al. 2024): z_t = (log p(y_t) − μ_t)/σ_t with σ_t = sqrt(max(σ_t², 1e-6)); s = −mean of the
    ⌊k·n⌋ (at least 1) smallest z_t of each example. ``mu`` / ``sigma2`` have the layout of ``token_logprobs`` (see
    :func:`token_distribution_stats`)."""
    k = _check_k(k)
    lp, m_, s2 = _rows(token_logprobs, mask), _rows(mu, mask, "mu"), _rows(sigma2, mask, "sigma2")
    if not len(lp) == len(m_) == len(s2):
        raise ValueError(f"token_logprobs, mu and sigma2 differ in batch size: {len(lp)}, {len(m_)}, {len(s2)}")
    out = []
    for i, (a, b, c) in enumerate(zip(lp, m_, s2, strict=True)):
        if not a.shape == b.shape == c.shape:
            raise ValueError(f"example {i}: token_logprobs, mu and sigma2 differ in length")
        z = (a - b) / np.sqrt(np.maximum(c, SIGMA2_MIN))
        out.append(-np.sort(z)[: _n_lowest(z.size, k)].mean())
    return np.array(out, dtype=np.float64)


# ---------------------------------------------------------------- gradient attack
def gradnorm_score(model: Any, task: Any, dataset: Iterable[Any], p: float = 2) -> np.ndarray:
    """GradNorm attack: for each example (batch of 1), loss = −mean_{t∈A} log p(y_t) (``task.per_example_loss``),
    gradient w.r.t. every parameter that requires grad; s = mean over those parameter tensors (that receive a
    gradient) of ‖∇‖_p, p ∈ {1, 2, inf}. Shape [N].

    Runs the model in eval mode with grads enabled (no dropout noise; llm.md §5 — the reference uses train mode)
    and restores every submodule's mode afterwards. Gradients come from ``torch.autograd.grad``: no optimiser step,
    and the parameters' ``.grad`` are left exactly as they were (nothing accumulates into them). ``dataset`` is a
    map-style dataset of dict rows (collated with batch size 1) or any iterable of such rows.
    """
    import torch
    from torch.utils.data import DataLoader

    if p not in (1, 2, math.inf) or isinstance(p, bool):
        raise ValueError(f"p must be 1, 2 or inf; got {p!r}")
    params = [q for q in model.parameters() if q.requires_grad]
    if not params:
        raise ValueError("gradnorm_score: no model parameter requires grad")
    device = params[0].device
    modes = [(mod, mod.training) for mod in model.modules()]
    scores: list[float] = []
    try:
        model.eval()
        with torch.enable_grad():
            for i, batch in enumerate(DataLoader(dataset, batch_size=1, shuffle=False)):
                batch = {key: v.to(device) if hasattr(v, "to") else v for key, v in batch.items()}
                labels = batch.get("labels")
                if labels is not None and not bool((labels[:, 1:] != IGNORE).any()):
                    raise ValueError(f"gradnorm_score: example {i} has no labelled answer token")
                loss = task.per_example_loss(model, batch).sum()
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                norms = [torch.linalg.vector_norm(g.detach().float(), ord=p) for g in grads if g is not None]
                if not norms:
                    raise ValueError("gradnorm_score: the loss does not depend on any trainable parameter")
                scores.append(float(torch.stack(norms).mean()))
    finally:
        for mod, mode in modes:
            mod.training = mode
    return np.array(scores, dtype=np.float64)


# ---------------------------------------------------------------- summaries
def attack_auc(forget_scores: ArrayLike, holdout_scores: ArrayLike) -> float:
    """``roc_auc_score(labels, s)`` with labels forget = 0, holdout = 1 and s oriented higher = less member-like
    (llm.md §5). → 1: the forget set still looks memorised; 0.5: indistinguishable; compare with the retain model's
    AUC. Computed by :func:`unlearnkit.metrics.mia.roc_auc` with the holdout in the positive (first) slot."""
    return roc_auc(_np(holdout_scores), _np(forget_scores))


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE PrivLeak: ((1 − AUC_u) − (1 − AUC_ret)) / (1 − AUC_ret) × 100 (AUCs from :func:`attack_auc`).
    ≈ 0 good; large negative = under-unlearning; positive = over-unlearning."""
    au, ar = float(auc_unlearned), float(auc_retain)
    for name, v in (("auc_unlearned", au), ("auc_retain", ar)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; got {v}")
    if ar == 1.0:
        raise ValueError("privleak is undefined for auc_retain = 1 (1 − AUC_ret = 0)")
    return ((1.0 - au) - (1.0 - ar)) / (1.0 - ar) * 100.0


def rel_diff(score: float, ref: float) -> float:
    """Relative difference (score − ref)/ref × 100, no flip (llm.md §5)."""
    if float(ref) == 0.0:
        raise ValueError("rel_diff is undefined for ref = 0")
    return (float(score) - float(ref)) / float(ref) * 100.0


#: Score functions by their suggested registry key (llm.md §5), for later registration.
ATTACKS: dict[str, Callable[..., np.ndarray]] = {
    "mia_loss": loss_score,
    "mia_zlib": zlib_score,
    "mia_reference": reference_score,
    "mia_min_k": min_k_score,
    "mia_min_k_plus_plus": min_k_plus_plus_score,
    "mia_gradnorm": gradnorm_score,
}
