"""Membership-inference attacks (MIAs) for classifiers, on raw logits.

Pure numpy at import time; sklearn / scipy are imported inside the functions that need them.

Two *population* attacks (one attack model for all examples; evaluation.md §6 — they overestimate privacy, so
always report them as population MIAs and next to the retrained model's value):

* :func:`mia_svc` — SVC "MIA-efficacy" of SalUn / ℓ1-sparse / RUM's ToW-MIA (vision.md §6).
  Higher = more forgotten.
* :func:`mia_entropy_lr` — entropy logistic-regression MIA of Bad Teacher / SSD / JiT (vision.md §6).
  Lower = more forgotten.

and two threshold-free summaries of any per-example attack score oriented so that higher = member
(evaluation.md §7): :func:`roc_auc` and :func:`tpr_at_fpr`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from unlearnkit.metrics.classifier import _as_labels, _as_logits, log_softmax, prediction_entropy

__all__ = ["MIA_VARIANTS", "mia_entropy_lr", "mia_features", "mia_svc", "roc_auc", "tpr_at_fpr"]

#: Feature variants accepted by :func:`mia_features` / :func:`mia_svc`.
MIA_VARIANTS: tuple[str, ...] = ("confidence", "entropy", "m_entropy", "prob")

_EPS = 1e-30  # clamp used inside logs by the reference implementation (SalUn / Unlearn-Sparse SVC_MIA.py)


def mia_features(logits: ArrayLike, labels: ArrayLike | None, variant: str = "confidence") -> np.ndarray:
    """Per-example MIA features from logits, shape ``[N, d]`` (float64). ``p = softmax(z)``.

    * ``"confidence"`` (default, d=1): ``p_y``, the probability of the true label.
    * ``"entropy"`` (d=1): ``H(p) = −Σ_k p_k log p_k`` (``0 log 0 = 0``).
    * ``"m_entropy"`` (d=1): modified entropy of Song & Mittal (USENIX Security 2021),
      ``Mentr = −(1 − p_y) log p_y − Σ_{k≠y} p_k log(1 − p_k)``, with each log argument clamped to ``≥ 1e-30``
      as in the SalUn / Unlearn-Sparse reference (``log max(p_y, 1e-30)``, ``log max(1 − p_k, 1e-30)``).
    * ``"prob"`` (d=C): the full softmax vector.

    Orientation: for ``confidence`` higher = more member-like; for ``entropy``/``m_entropy`` lower = more
    member-like. ``labels`` may be ``None`` for the label-free variants (``entropy``, ``prob``).
    Unknown ``variant`` raises ``ValueError`` listing the allowed ones. Source: vision.md §6.
    """
    if variant not in MIA_VARIANTS:
        raise ValueError(f"unknown MIA variant {variant!r}; allowed: {', '.join(MIA_VARIANTS)}")
    z = _as_logits(logits)
    n = z.shape[0]
    if labels is None:
        if variant in ("confidence", "m_entropy"):
            raise ValueError(f"MIA variant {variant!r} needs labels")
        y = None
    else:
        y = _as_labels(labels, n, z.shape[1])
    if variant == "entropy":
        return prediction_entropy(z).reshape(n, 1)
    lp = log_softmax(z)
    p = np.exp(lp)
    if variant == "prob":
        return p
    assert y is not None
    rows = np.arange(n)
    if variant == "confidence":
        return p[rows, y].reshape(n, 1)
    # m_entropy
    log_p = np.maximum(lp, np.log(_EPS))  # log max(p, 1e-30)
    with np.errstate(divide="ignore"):
        log_1mp = np.maximum(np.log1p(-p), np.log(_EPS))  # log max(1 − p, 1e-30)
    terms = p * log_1mp  # k ≠ y terms: p_k log(1 − p_k)
    terms[rows, y] = (1.0 - p[rows, y]) * log_p[rows, y]  # y term: (1 − p_y) log p_y
    return (-terms.sum(axis=1)).reshape(n, 1)


def _check_same_classes(*arrays: tuple[str, np.ndarray]) -> None:
    cs = {name: a.shape[1] for name, a in arrays if a.shape[0] > 0}
    if len(set(cs.values())) > 1:
        raise ValueError(f"logits must have the same number of classes; got {cs}")


def _attack_logits(
    name: str, member_logits: ArrayLike, nonmember_logits: ArrayLike, target_logits: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (member, non-member, target) logits of a population attack: 2-D, non-empty shadow sets, one
    class count."""
    zm, zn, zt = (
        _as_logits(member_logits, "member_logits"),
        _as_logits(nonmember_logits, "nonmember_logits"),
        _as_logits(target_logits, "target_logits"),
    )
    if zm.shape[0] == 0 or zn.shape[0] == 0:
        raise ValueError(f"{name} needs non-empty member and non-member sets; got {zm.shape[0]} members, "
                         f"{zn.shape[0]} non-members")
    _check_same_classes(("member_logits", zm), ("nonmember_logits", zn), ("target_logits", zt))
    return zm, zn, zt


def mia_svc(
    member_logits: ArrayLike,
    member_labels: ArrayLike | None,
    nonmember_logits: ArrayLike,
    nonmember_labels: ArrayLike | None,
    target_logits: ArrayLike,
    target_labels: ArrayLike | None,
    *,
    variant: str = "confidence",
    seed: int = 0,
) -> float:
    """SVC MIA-efficacy (SalUn / ℓ1-sparse / RUM ToW-MIA), a population MIA; vision.md §6.

    Shadow members (label 1) are ``member_*`` — the caller passes the first ``|D_t|`` retain examples — and
    shadow non-members (label 0) are ``nonmember_*`` — the test set ``D_t``. Features come from
    :func:`mia_features` (``variant``, default ``"confidence"`` = ``p(y|x)``). The shadow data are
    concatenated (members first), shuffled with ``np.random.default_rng(seed).permutation`` and fitted with
    ``sklearn.svm.SVC(C=3, gamma="auto", kernel="rbf")``. The score is

        MIA = 1 − mean_{x ∈ target} predict(x)

    i.e. the fraction of target (forget) examples predicted **non-member**, in ``[0, 1]``.
    Higher = more forgotten; the target value is the retrained model's (report the gap, not the raw value).
    Empty target returns ``nan``; empty shadow sets raise ``ValueError``.
    """
    from sklearn.svm import SVC

    zm, zn, zt = _attack_logits("mia_svc", member_logits, nonmember_logits, target_logits)
    xm = mia_features(zm, member_labels, variant)
    xn = mia_features(zn, nonmember_labels, variant)
    xt = mia_features(zt, target_labels, variant)
    if xt.shape[0] == 0:
        return float("nan")
    x = np.concatenate([xm, xn], axis=0)
    y = np.concatenate([np.ones(len(xm), dtype=np.int64), np.zeros(len(xn), dtype=np.int64)])
    perm = np.random.default_rng(seed).permutation(len(x))
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x[perm], y[perm])
    return float(1.0 - np.mean(clf.predict(xt)))


def mia_entropy_lr(
    member_logits: ArrayLike,
    nonmember_logits: ArrayLike,
    target_logits: ArrayLike,
    *,
    heldout: bool = False,
    seed: int = 0,
) -> float:
    """Entropy logistic-regression MIA (Bad Teacher / SSD / JiT), a population MIA; vision.md §6.

    Feature: ``H(softmax(z))`` (one-dimensional). Attack model:
    ``sklearn.linear_model.LogisticRegression(class_weight="balanced", solver="lbfgs")`` fitted on members
    (label 1 = all of ``D_r``) vs non-members (label 0 = all of ``D_t``, forget-class test images included).
    Score:

        MIA = mean_{x ∈ target} predict(x)

    i.e. the fraction of target (forget) examples predicted **member**, in ``[0, 1]``. Lower = more forgotten;
    the target value is the retrained model's.

    ``heldout=False`` (default) reproduces the published in-sample protocol. ``heldout=True`` fits instead on
    a random half (``ceil(n/2)``, drawn with ``np.random.default_rng(seed)``, members first, kept in original
    order) of each of the members and non-members; only the fit data change, the score is still on ``target``.
    Empty target returns ``nan``; empty member/non-member sets raise ``ValueError``.
    """
    from sklearn.linear_model import LogisticRegression

    zm, zn, zt = _attack_logits("mia_entropy_lr", member_logits, nonmember_logits, target_logits)
    hm, hn, ht = prediction_entropy(zm), prediction_entropy(zn), prediction_entropy(zt)
    if ht.shape[0] == 0:
        return float("nan")
    if heldout:
        rng = np.random.default_rng(seed)
        hm = hm[np.sort(rng.permutation(len(hm))[: len(hm) - len(hm) // 2])]
        hn = hn[np.sort(rng.permutation(len(hn))[: len(hn) - len(hn) // 2])]
    x = np.concatenate([hm, hn]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(hm), dtype=np.int64), np.zeros(len(hn), dtype=np.int64)])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs")
    clf.fit(x, y)
    return float(np.mean(clf.predict(ht.reshape(-1, 1))))


def _as_scores(scores: ArrayLike, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(s).any():
        raise ValueError(f"{name} contains NaN (at index {int(np.argmax(np.isnan(s)))})")
    return s


def roc_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """Area under the ROC curve with higher score = member, via the Mann–Whitney U statistic:

        AUC = P(s_member > s_nonmember) + ½ P(s_member = s_nonmember)
            = (R_m − n_m (n_m + 1) / 2) / (n_m n_n),
        R_m = sum of the members' mid-ranks in the pooled sample.

    In ``[0, 1]``; 0.5 = chance, higher = members more distinguishable (worse privacy / less forgetting).
    Equals ``sklearn.metrics.roc_auc_score`` with members labelled 1. evaluation.md §7. Empty or NaN input
    raises ``ValueError``.
    """
    from scipy.stats import rankdata

    m = _as_scores(member_scores, "member_scores")
    n = _as_scores(nonmember_scores, "nonmember_scores")
    ranks = rankdata(np.concatenate([m, n]), method="average")
    n_m, n_n = len(m), len(n)
    u = ranks[:n_m].sum() - n_m * (n_m + 1) / 2.0
    return float(u / (n_m * n_n))


def tpr_at_fpr(member_scores: ArrayLike, nonmember_scores: ArrayLike, fpr: float) -> float | None:
    """True-positive rate at a false-positive rate ``fpr``, score oriented higher = member (evaluation.md §7).

    Threshold ``t`` = the smallest value such that the fraction of non-members with score ``≥ t`` is
    ``≤ fpr``; ``TPR = mean_{members} [s ≥ t]``. Exact empirical quantiles, no interpolation. Concretely, with
    ``k`` the largest count with ``k / n_nonmembers ≤ fpr`` and ``v`` the ``(k+1)``-th largest non-member
    score, TPR is the fraction of members scoring strictly above ``v`` (the smallest admissible threshold lies
    just above ``v``); this equals the best TPR of any threshold whose FPR is ``≤ fpr``. When no finite
    non-member threshold is admissible (``k = 0``), this is the fraction of members strictly above the max
    non-member score.

    Returns ``None`` ("n/a") when there are fewer than ``1/fpr`` non-members. Higher = stronger attack (less
    forgetting / privacy). ``fpr`` must lie in ``(0, 1]``.
    """
    if not 0.0 < float(fpr) <= 1.0:
        raise ValueError(f"fpr must lie in (0, 1]; got {fpr}")
    m = _as_scores(member_scores, "member_scores")
    n = _as_scores(nonmember_scores, "nonmember_scores")
    n_n = len(n)
    if n_n < 1.0 / fpr:
        return None
    counts = np.arange(n_n + 1)
    k = int(counts[counts / n_n <= fpr].max())  # same comparison as a brute-force sweep (count / n ≤ fpr)
    if k >= n_n:
        return 1.0
    v = np.sort(n)[::-1][k]  # (k+1)-th largest non-member score
    return float(np.mean(m > v))
