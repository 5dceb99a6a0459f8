"""TOFU / MUSE text metrics as pure functions on per-example numbers and token arrays (no model, no torch).

Pure numpy at import time; scipy is imported inside the functions that need it, and the Porter stemmer (from
``nltk``, a dependency of ``rouge_score``) only when ``stemmer=True`` is asked for.

Inputs are the per-example quantities an evaluation loop produces:

* ``avg_loss`` = S_θ(x, y)/|A|, the mean token NLL over the labelled positions A of one (question, answer) pair
  (llm.md §1); for list-valued answers one ``avg_loss`` per option.
* token arrays ``pred_ids`` (teacher-forced argmax, already shifted so that ``pred_ids[t]`` predicts
  ``label_ids[t]``), ``label_ids`` and a mask of the labelled positions.

Contents (llm.md §3.2 primitives, §3.3 TOFU metrics, §4 EM/ES rows, §6 P14):

* :func:`prob_from_avg_loss` — geometric-mean token probability ``exp(−avg_loss)``.
* :func:`truth_ratio` / :func:`truth_ratio_score` — raw per-example truth ratios and the three named aggregators
  (:data:`TRUTH_RATIO_AGGREGATORS`).
* :func:`prob_normalised` — ``*_Q_A_Prob_normalised`` (sum over the answer options).
* :func:`forget_quality` — KS-test p-value of unlearned vs retain-model truth ratios.
* :func:`model_utility` — harmonic mean of the nine sub-metrics (:data:`MODEL_UTILITY_KEYS`).
* :func:`rouge_l_recall` / :func:`rouge_l_f1` — ROUGE-L with the ``rouge_score`` tokenisation rules.
* :func:`exact_memorization` / :func:`extraction_strength` — teacher-forced token-match metrics.

Sources: TOFU, Maini et al. 2024, arXiv 2401.06121; OpenUnlearning (locuslab/open-unlearning @ d3d7cf9);
MUSE, Shi et al. 2024, arXiv 2407.06460; ROUGE, Lin 2004; the ``rouge_score`` package (google-research).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "IGNORE_INDEX",
    "MODEL_UTILITY_KEYS",
    "TRUTH_RATIO_AGGREGATORS",
    "exact_memorization",
    "extraction_strength",
    "forget_quality",
    "model_utility",
    "prob_from_avg_loss",
    "prob_normalised",
    "rouge_l_f1",
    "rouge_l_recall",
    "rouge_tokenize",
    "truth_ratio",
    "truth_ratio_score",
]

#: Label value of unlabelled (prompt / padding) positions; used when no explicit mask is given.
IGNORE_INDEX: int = -100

#: Truth-ratio aggregators accepted by :func:`truth_ratio_score` (llm.md §3.3).
TRUTH_RATIO_AGGREGATORS: tuple[str, ...] = ("closer_to_1_better", "true_better", "prob_mean")

#: The nine sub-metrics whose harmonic mean is TOFU model utility (llm.md §3.3), in the reference order.
MODEL_UTILITY_KEYS: tuple[str, ...] = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)

_PROB_NORM_EPS = 1e-10  # the reference's additive constant in the Prob_normalised denominator


# --------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------
def _as_1d_float(x: ArrayLike, name: str, *, allow_empty: bool = False, allow_inf: bool = False) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N]; got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric; got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    bad = np.isnan(a) if allow_inf else ~np.isfinite(a)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must be {'non-NaN' if allow_inf else 'finite'}; got {a[i]} at index {i}")
    return a


def _mean_perturbed_loss(avg_loss_perturbed: ArrayLike | Sequence[ArrayLike], n: int) -> np.ndarray:
    """Per-example mean of the perturbed-option losses, shape ``[n]``; accepts ``[N, K]`` or a ragged list."""
    return np.array([lp.mean() for lp in _perturbed_rows(avg_loss_perturbed, n)], dtype=np.float64)


def _perturbed_rows(avg_loss_perturbed: ArrayLike | Sequence[ArrayLike], n: int) -> list[np.ndarray]:
    name = "avg_loss_perturbed"
    if isinstance(avg_loss_perturbed, np.ndarray):
        if avg_loss_perturbed.ndim != 2:
            raise ValueError(
                f"{name} must be 2-D [N, K] or a list of N 1-D arrays; got shape {avg_loss_perturbed.shape}"
            )
        rows: Sequence[Any] = list(avg_loss_perturbed)
    else:
        rows = list(avg_loss_perturbed)  # type: ignore[arg-type]
    if len(rows) != n:
        raise ValueError(f"{name} has {len(rows)} rows but avg_loss_correct has {n} entries")
    return [_as_1d_float(r, f"{name}[{i}]") for i, r in enumerate(rows)]


# --------------------------------------------------------------------------------------------------
# probabilities and the truth ratio (llm.md §3.2, §3.3)
# --------------------------------------------------------------------------------------------------
def prob_from_avg_loss(avg_loss: ArrayLike) -> np.ndarray | float:
    """Geometric-mean token probability ``prob = exp(−avg_loss)`` (llm.md §3.2), element-wise.

    ``avg_loss`` is the mean token NLL over the labelled positions (≥ 0 for a real NLL, but not enforced).
    Returns a float for scalar input, else an array of the input's shape. Higher = the model finds the answer
    more likely; TOFU's ``*_Q_A_Prob`` is the mean of this over a split. NaN input raises ``ValueError``.
    """
    a = np.asarray(avg_loss, dtype=np.float64)
    if np.isnan(a).any():
        raise ValueError(f"avg_loss must not be NaN; got NaN at index {np.argwhere(np.isnan(a))[0].tolist()}")
    p = np.exp(-a)
    return float(p) if p.ndim == 0 else p


def truth_ratio(avg_loss_correct: ArrayLike, avg_loss_perturbed: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
    """Raw per-example truth ratios ``R_i``, shape ``[N]`` (llm.md §3.3).

    ``R_i = exp(−mean_j avg_loss(pert_ij)) / exp(−avg_loss(correct_i)) = exp(avg_loss(correct_i) − mean_j
    avg_loss(pert_ij))``, computed in log space (the "wrong" probability is the geometric mean of the normalised
    option probabilities, llm.md §3.2). ``avg_loss_perturbed`` is ``[N, K]`` or a list of N 1-D arrays (options
    may differ in number). R < 1: the model prefers the correct (paraphrased) answer; R > 1: it prefers the
    perturbed ones. The raw values feed :func:`forget_quality`; summarise them with :func:`truth_ratio_score`.
    Extremely large loss gaps overflow to ``inf`` / underflow to 0, which every aggregator handles.
    """
    lc = _as_1d_float(avg_loss_correct, "avg_loss_correct")
    lw = _mean_perturbed_loss(avg_loss_perturbed, lc.shape[0])
    with np.errstate(over="ignore"):
        return np.exp(lc - lw)


def truth_ratio_score(truth_ratios: ArrayLike, aggregator: str) -> float:
    """Aggregate raw truth ratios ``R`` (from :func:`truth_ratio`) with an explicitly named aggregator.

    * ``"closer_to_1_better"`` (forget split): ``mean_i min(R_i, 1/R_i)`` ∈ [0, 1]; higher = the model cannot
      tell correct from perturbed answers (the retain model's value is the target).
    * ``"true_better"`` (retain / real_authors / world_facts): ``mean_i max(0, 1 − R_i)`` ∈ [0, 1]; higher = better.
    * ``"prob_mean"`` (OpenUnlearning's "extent of knowledge"): ``mean_i p_c/(p_c + p_w)`` with
      ``p_c = exp(−avg_loss(correct))`` and ``p_w = exp(−mean_j avg_loss(pert_j))``. Since ``R = p_w/p_c`` this
      equals ``mean_i 1/(1 + R_i)`` exactly, so R carries all the information needed; higher = better.

    Unknown ``aggregator`` raises ``ValueError`` listing the allowed ones; negative or NaN ratios raise.
    Source: llm.md §3.3; TOFU, Maini et al. 2024.
    """
    if aggregator not in TRUTH_RATIO_AGGREGATORS:
        allowed = ", ".join(TRUTH_RATIO_AGGREGATORS)
        raise ValueError(f"unknown truth-ratio aggregator {aggregator!r}; allowed: {allowed}")
    r = _as_1d_float(truth_ratios, "truth_ratios", allow_inf=True)
    if (r < 0).any():
        i = int(np.argmax(r < 0))
        raise ValueError(f"truth_ratios must be ≥ 0; got {r[i]} at index {i}")
    with np.errstate(divide="ignore"):
        if aggregator == "closer_to_1_better":
            vals = np.minimum(r, 1.0 / r)  # R = 0 -> min(0, inf) = 0; R = inf -> 0
        elif aggregator == "true_better":
            vals = np.maximum(0.0, 1.0 - r)
        else:  # prob_mean
            vals = 1.0 / (1.0 + r)
    return float(vals.mean())


def prob_normalised(avg_loss_correct: ArrayLike, avg_loss_perturbed: ArrayLike | Sequence[ArrayLike]) -> float:
    """TOFU ``*_Q_A_Prob_normalised``: ``mean_i p_c/(p_c + Σ_j p_pert_ij + 1e-10)`` (llm.md §3.3).

    ``p = exp(−avg_loss)`` per answer option; the denominator is a **sum** over the perturbed options (not the
    geometric mean used by the truth ratio), plus the reference's constant 1e-10. ``avg_loss_perturbed`` is
    ``[N, K]`` or a list of N 1-D arrays. Range [0, 1); higher = the model prefers the correct answer.
    Used for real_authors and world_facts in :func:`model_utility`.
    """
    lc = _as_1d_float(avg_loss_correct, "avg_loss_correct")
    rows = _perturbed_rows(avg_loss_perturbed, lc.shape[0])
    pc = np.exp(-lc)
    pw = np.array([np.exp(-lp).sum() for lp in rows], dtype=np.float64)
    return float(np.mean(pc / (pc + pw + _PROB_NORM_EPS)))


def forget_quality(r_unlearned: ArrayLike, r_retain: ArrayLike) -> float:
    """TOFU forget quality: ``scipy.stats.ks_2samp(r_unlearned, r_retain).pvalue`` (llm.md §3.3).

    Both arguments are **raw** per-example truth ratios (:func:`truth_ratio`) on the same forget split, of the
    unlearned model and of the retain (never-trained-on-forget) model. Higher = closer to the retain model;
    the retain model against its own reference gives exactly 1.0. P-values depend on sample size, so compare
    them only within a split. NaN values raise ``ValueError``.
    """
    from scipy.stats import ks_2samp

    a = _as_1d_float(r_unlearned, "r_unlearned", allow_inf=True)
    b = _as_1d_float(r_retain, "r_retain", allow_inf=True)
    return float(ks_2samp(a, b).pvalue)


def model_utility(values: Mapping[str, float]) -> float:
    """TOFU model utility: ``scipy.stats.hmean`` of the nine sub-metrics in :data:`MODEL_UTILITY_KEYS`.

    ``values`` must hold exactly those keys (missing or extra keys raise ``ValueError`` naming them); each value
    must be finite and ≥ 0 (else ``ValueError`` naming the key). Any zero gives 0.0. Higher = better.
    Source: llm.md §3.3; TOFU, Maini et al. 2024.
    """
    from scipy.stats import hmean

    keys = set(values)
    missing = [k for k in MODEL_UTILITY_KEYS if k not in keys]
    extra = sorted(k for k in keys if k not in MODEL_UTILITY_KEYS)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise ValueError(f"model_utility needs exactly the keys {list(MODEL_UTILITY_KEYS)}; " + "; ".join(parts))
    xs = []
    for k in MODEL_UTILITY_KEYS:
        v = float(values[k])
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"model_utility value {k!r} must be finite and ≥ 0; got {v}")
        xs.append(v)
    if min(xs) == 0.0:
        return 0.0
    return float(hmean(xs))


# --------------------------------------------------------------------------------------------------
# ROUGE-L (rouge_score tokenisation)
# --------------------------------------------------------------------------------------------------
_NON_ALNUM_RE = re.compile(r"[^a-z0-9]+")
_VALID_TOKEN_RE = re.compile(r"^[a-z0-9]+$")


@lru_cache(maxsize=1)
def _porter_stemmer() -> Any:
    try:
        from nltk.stem import porter
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ROUGE-L with stemmer=True needs the Porter stemmer from nltk (installed with rouge_score); "
            "install it with: pip install 'unlearnkit[llm]'"
        ) from e
    return porter.PorterStemmer()


def rouge_tokenize(text: str, stemmer: bool = False) -> list[str]:
    """Tokenise like ``rouge_score``'s default tokenizer.

    Lowercase; replace every run of characters outside ``[a-z0-9]`` with a space; split on whitespace; with
    ``stemmer=True`` Porter-stem (nltk, as ``rouge_score`` does) tokens longer than 3 characters; drop empty
    tokens. ``stemmer=True`` without nltk raises ``ImportError`` naming ``pip install 'unlearnkit[llm]'``.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str; got {type(text).__name__}")
    tokens = _NON_ALNUM_RE.sub(" ", text.lower()).split()
    if stemmer:
        st = _porter_stemmer()
        tokens = [st.stem(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _VALID_TOKEN_RE.match(t)]


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, O(len(a)·len(b)) time, two rows of memory."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else (prev[j] if prev[j] >= cur[j - 1] else cur[j - 1])
        prev = cur
    return prev[-1]


def _rouge_l(prediction: str, reference: str, stemmer: bool) -> tuple[float, float, float]:
    pred = rouge_tokenize(prediction, stemmer)
    ref = rouge_tokenize(reference, stemmer)
    if not pred or not ref:
        return 0.0, 0.0, 0.0
    lcs = _lcs_length(pred, ref)
    p, r = lcs / len(pred), lcs / len(ref)
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def rouge_l_recall(prediction: str, reference: str, stemmer: bool = False) -> float:
    """ROUGE-L recall = LCS(pred, ref) / len(ref tokens), tokens from :func:`rouge_tokenize`.

    Empty reference (or prediction) -> 0.0. In [0, 1]; higher = more of the reference reproduced. TOFU's
    ``*_Q_A_ROUGE`` uses recall with ``stemmer=True`` (llm.md §3.2). Matches ``rouge_score``'s ``rougeL``.
    """
    return _rouge_l(prediction, reference, stemmer)[1]


def rouge_l_f1(prediction: str, reference: str, stemmer: bool = False) -> float:
    """ROUGE-L F1 = 2PR/(P + R), P = LCS/len(pred tokens), R = LCS/len(ref tokens) (0.0 if either is empty).

    MUSE's knowmem / verbmem ROUGE (llm.md §4). Matches ``rouge_score``'s ``rougeL`` fmeasure.
    """
    return _rouge_l(prediction, reference, stemmer)[2]


# --------------------------------------------------------------------------------------------------
# exact memorization / extraction strength (llm.md §4, §6 P14)
# --------------------------------------------------------------------------------------------------
def _token_rows(pred_ids: ArrayLike, label_ids: ArrayLike, mask: ArrayLike | None) -> tuple[list[np.ndarray], bool]:
    """Per-example boolean match vectors over the labelled positions (in order), and whether input was batched."""
    p = np.asarray(pred_ids)
    y = np.asarray(label_ids)
    if p.shape != y.shape:
        raise ValueError(f"pred_ids shape {p.shape} != label_ids shape {y.shape}")
    if p.ndim not in (1, 2):
        raise ValueError(f"pred_ids / label_ids must be 1-D [T] or 2-D [B, T]; got shape {p.shape}")
    if mask is None:
        m = y != IGNORE_INDEX
    else:
        m = np.asarray(mask)
        if m.shape != y.shape:
            raise ValueError(f"mask shape {m.shape} != label_ids shape {y.shape}")
        if m.dtype != bool:
            if not np.isin(m, (0, 1)).all():
                raise ValueError("mask must be boolean (or 0/1)")
            m = m.astype(bool)
    batched = p.ndim == 2
    if not batched:
        p, y, m = p[None], y[None], m[None]
    rows = []
    for i in range(p.shape[0]):
        sel = m[i]
        if not sel.any():
            where = f" (row {i})" if batched else ""
            raise ValueError(f"no labelled positions{where}: n_A = 0")
        rows.append(p[i][sel] == y[i][sel])
    return rows, batched


def exact_memorization(pred_ids: ArrayLike, label_ids: ArrayLike, mask: ArrayLike | None = None) -> float | np.ndarray:
    """Exact memorization EM = (1/n_A) Σ_{t∈A} 1[pred_t = y_t] (llm.md §4).

    ``pred_ids[t]`` is the teacher-forced argmax that predicts ``label_ids[t]`` (already shifted); A is the set
    of positions where ``mask`` is true (default: ``label_ids != -100``). 1-D ``[T]`` inputs give a float,
    2-D ``[B, T]`` inputs a float64 array ``[B]``. n_A = 0 raises ``ValueError``. In [0, 1]; for unlearning,
    closer to the retain model is better.
    """
    rows, batched = _token_rows(pred_ids, label_ids, mask)
    vals = np.array([r.mean() for r in rows], dtype=np.float64)
    return vals if batched else float(vals[0])


def extraction_strength(pred_ids: ArrayLike, label_ids: ArrayLike, mask: ArrayLike | None = None) -> float | np.ndarray:
    """Extraction strength ES = 1 − k*/n_A (llm.md §4; Carlini et al.-style suffix extraction).

    Positions are counted within the labelled positions A, in order (0 … n_A − 1); k* is the smallest k such
    that the teacher-forced argmax equals y on every labelled position ≥ k. If even the last labelled position
    mismatches, no suffix matches: k* = n_A and ES = 0 (the reference reports 1/n_A here, llm.md §6 P14).
    A fully matching answer gives ES = 1. Shapes and masking as in :func:`exact_memorization`; n_A = 0 raises.
    """
    rows, batched = _token_rows(pred_ids, label_ids, mask)
    out = np.empty(len(rows), dtype=np.float64)
    for i, r in enumerate(rows):
        n = r.shape[0]
        miss = np.flatnonzero(~r)
        k_star = int(miss[-1]) + 1 if miss.size else 0
        out[i] = 1.0 - k_star / n
    return out if batched else float(out[0])
