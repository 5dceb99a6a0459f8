import math

import numpy as np
import pytest
import scipy.stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

from unlearnkit.metrics.mia import mia_entropy_lr, mia_features, mia_svc, roc_auc, tpr_at_fpr


def naive_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def random_logits(rng, n, c, scale):
    return rng.normal(scale=scale, size=(n, c)), rng.integers(0, c, size=n)


# ---------------------------------------------------------------- features
def test_m_entropy_hand_computation_3_class():
    z = np.log(np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    y = np.array([0, 1])
    got = mia_features(z, y, "m_entropy")
    assert got.shape == (2, 1)
    # label 0: −(1−0.7) log 0.7 − 0.2 log(1−0.2) − 0.1 log(1−0.1)
    e0 = -(0.3 * math.log(0.7)) - 0.2 * math.log(0.8) - 0.1 * math.log(0.9)
    # label 1: −(1−0.2) log 0.2 − 0.7 log(1−0.7) − 0.1 log(1−0.1)
    e1 = -(0.8 * math.log(0.2)) - 0.7 * math.log(0.3) - 0.1 * math.log(0.9)
    np.testing.assert_allclose(got[:, 0], [e0, e1], rtol=1e-12)


def test_m_entropy_saturated_is_finite():
    z = np.array([[1e4, 0.0, 0.0], [1e4, 0.0, 0.0]])
    got = mia_features(z, np.array([0, 1]), "m_entropy")[:, 0]
    assert np.all(np.isfinite(got))
    assert got[0] == pytest.approx(0.0, abs=1e-12)
    # wrong label: p_y clamped at 1e-30 and p_0 = 1 -> −log(1e-30) from the k≠y term and from the y term
    assert got[1] == pytest.approx(-2 * math.log(1e-30), rel=1e-9)


def test_other_features():
    rng = np.random.default_rng(0)
    z, y = random_logits(rng, 50, 5, 2.0)
    p = naive_softmax(z)
    np.testing.assert_allclose(mia_features(z, y, "confidence")[:, 0], p[np.arange(50), y], rtol=1e-12)
    np.testing.assert_allclose(
        mia_features(z, y, "entropy")[:, 0], scipy.stats.entropy(p, axis=1), rtol=1e-10
    )
    np.testing.assert_allclose(mia_features(z, None, "prob"), p, rtol=1e-12)
    assert mia_features(z, y, "prob").shape == (50, 5)
    with pytest.raises(ValueError, match="needs labels"):
        mia_features(z, None, "confidence")


def test_invalid_variant():
    z = np.zeros((3, 2))
    y = np.zeros(3, dtype=int)
    with pytest.raises(ValueError, match="confidence, entropy, m_entropy, prob"):
        mia_features(z, y, "loss")
    with pytest.raises(ValueError, match="allowed"):
        mia_svc(z, y, z, y, z, y, variant="loss")


# ---------------------------------------------------------------- SVC MIA
def direct_svc(features_m, features_n, features_t, seed):
    x = np.concatenate([features_m, features_n])
    lab = np.concatenate([np.ones(len(features_m)), np.zeros(len(features_n))])
    perm = np.random.default_rng(seed).permutation(len(x))
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x[perm], lab[perm])
    return 1.0 - clf.predict(features_t).mean()


@pytest.fixture
def overlapping_sets():
    rng = np.random.default_rng(7)
    c = 4
    zm, ym = random_logits(rng, 150, c, 3.0)
    zn, yn = random_logits(rng, 150, c, 1.5)
    zt, yt = random_logits(rng, 80, c, 2.2)
    return zm, ym, zn, yn, zt, yt


@pytest.mark.parametrize("seed", [0, 3])
def test_mia_svc_equals_direct_sklearn_confidence(overlapping_sets, seed):
    zm, ym, zn, yn, zt, yt = overlapping_sets

    def conf(z, y):
        return naive_softmax(z)[np.arange(len(y)), y].reshape(-1, 1)

    expected = direct_svc(conf(zm, ym), conf(zn, yn), conf(zt, yt), seed)
    got = mia_svc(zm, ym, zn, yn, zt, yt, seed=seed)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 < got < 1.0  # the case is not trivial


def test_mia_svc_equals_direct_sklearn_prob_and_entropy(overlapping_sets):
    zm, ym, zn, yn, zt, yt = overlapping_sets
    pm, pn, pt = naive_softmax(zm), naive_softmax(zn), naive_softmax(zt)
    assert mia_svc(zm, ym, zn, yn, zt, yt, variant="prob") == pytest.approx(
        direct_svc(pm, pn, pt, 0), abs=1e-12
    )

    def ent(p):
        return scipy.stats.entropy(p, axis=1).reshape(-1, 1)

    expected = direct_svc(ent(pm), ent(pn), ent(pt), 0)
    assert mia_svc(zm, ym, zn, yn, zt, yt, variant="entropy") == pytest.approx(expected, abs=1e-12)


def test_mia_svc_separable_case():
    rng = np.random.default_rng(1)
    c, n = 10, 200

    def make(n, conf):
        # true-class logit chosen so that p_y ≈ conf (others ~ equal)
        y = rng.integers(0, c, size=n)
        z = rng.normal(scale=0.05, size=(n, c))
        z[np.arange(n), y] += math.log(conf * (c - 1) / (1 - conf))
        return z, y

    zm, ym = make(n, 0.99)  # members: confident
    zn, yn = make(n, 0.3)  # non-members: not confident
    zt_conf, yt_conf = make(100, 0.98)
    zt_unc, yt_unc = make(100, 0.35)
    assert mia_svc(zm, ym, zn, yn, zt_conf, yt_conf) <= 0.02  # looks like members: not forgotten
    assert mia_svc(zm, ym, zn, yn, zt_unc, yt_unc) >= 0.98  # looks like non-members: forgotten


def test_mia_svc_empty():
    z = np.zeros((4, 3))
    y = np.zeros(4, dtype=int)
    assert math.isnan(mia_svc(z, y, z + 1.0, y, np.zeros((0, 3)), np.zeros(0, dtype=int)))
    with pytest.raises(ValueError, match="non-empty"):
        mia_svc(np.zeros((0, 3)), np.zeros(0, dtype=int), z, y, z, y)


# ---------------------------------------------------------------- entropy-LR MIA
def direct_lr(hm, hn, ht):
    x = np.concatenate([hm, hn]).reshape(-1, 1)
    lab = np.concatenate([np.ones(len(hm)), np.zeros(len(hn))])
    clf = LogisticRegression(class_weight="balanced", solver="lbfgs").fit(x, lab)
    return clf.predict(ht.reshape(-1, 1)).mean()


@pytest.fixture
def lr_sets():
    rng = np.random.default_rng(11)
    zm, _ = random_logits(rng, 301, 5, 3.0)  # members: more confident, lower entropy; odd size
    zn, _ = random_logits(rng, 120, 5, 1.5)
    zt, _ = random_logits(rng, 400, 5, 2.2)
    return zm, zn, zt


def ent(z):
    return scipy.stats.entropy(naive_softmax(z), axis=1)


def test_mia_entropy_lr_equals_direct_sklearn(lr_sets):
    zm, zn, zt = lr_sets
    got = mia_entropy_lr(zm, zn, zt)
    assert got == pytest.approx(direct_lr(ent(zm), ent(zn), ent(zt)), abs=1e-12)
    assert 0.0 < got < 1.0


def test_mia_entropy_lr_heldout(lr_sets):
    zm, zn, zt = lr_sets
    in_sample = mia_entropy_lr(zm, zn, zt)
    results = []
    for seed in range(5):
        got = mia_entropy_lr(zm, zn, zt, heldout=True, seed=seed)
        assert got == mia_entropy_lr(zm, zn, zt, heldout=True, seed=seed)  # deterministic
        rng = np.random.default_rng(seed)
        im = np.sort(rng.permutation(301)[:151])
        i_n = np.sort(rng.permutation(120)[:60])
        assert got == pytest.approx(direct_lr(ent(zm)[im], ent(zn)[i_n], ent(zt)), abs=1e-12)
        results.append(got)
    # fitting on halves moves the decision threshold, so some seed changes the score
    assert any(r != in_sample for r in results)


def test_mia_entropy_lr_heldout_small_sets_use_ceil_half():
    rng = np.random.default_rng(4)
    zm, _ = random_logits(rng, 7, 3, 2.5)
    zn, _ = random_logits(rng, 5, 3, 1.0)
    zt, _ = random_logits(rng, 500, 3, 1.8)
    for seed in range(3):
        r = np.random.default_rng(seed)
        im = np.sort(r.permutation(7)[:4])
        i_n = np.sort(r.permutation(5)[:3])
        expected = direct_lr(ent(zm)[im], ent(zn)[i_n], ent(zt))
        assert mia_entropy_lr(zm, zn, zt, heldout=True, seed=seed) == pytest.approx(expected, abs=1e-12)


def test_mia_entropy_lr_separable():
    rng = np.random.default_rng(2)
    zm = rng.normal(size=(200, 10)) * 0.1
    zm[:, 0] += 12.0  # confident, low entropy
    zn = rng.normal(size=(200, 10)) * 0.1  # near uniform, high entropy
    assert mia_entropy_lr(zm, zn, zm[:50]) == 1.0
    assert mia_entropy_lr(zm, zn, zn[:50]) == 0.0


# ---------------------------------------------------------------- AUC and TPR@FPR
@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 8, size=137).astype(float) + 0.5
    n = rng.integers(0, 6, size=211).astype(float)
    n[:30] = 0.5  # ties across the groups
    expected = roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n])
    assert roc_auc(m, n) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_extremes():
    assert roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="empty"):
        roc_auc([], [1.0])


def brute_force_tpr(m, n, fpr):
    candidates = np.unique(np.r_[m, n, np.inf])
    admissible = [t for t in candidates if np.mean(n >= t) <= fpr]
    t = min(admissible)
    return float(np.mean(m >= t))


@pytest.mark.parametrize("fpr", [0.1, 0.01])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_tpr_at_fpr_matches_brute_force(fpr, seed, ties):
    rng = np.random.default_rng(seed)
    m = rng.normal(loc=1.0, size=300)
    n = rng.normal(size=int(rng.integers(100, 400)))
    if ties:
        m, n = np.round(m, 1), np.round(n, 1)
    got = tpr_at_fpr(m, n, fpr)
    assert got is not None
    assert got == brute_force_tpr(m, n, fpr)


def test_tpr_at_fpr_exact_hand_case():
    n = np.arange(10, dtype=float)  # 0..9
    m = np.array([8.5, 9.0, 9.5, 10.0])
    # fpr 0.1: one non-member (9) may score ≥ t; smallest admissible t lies just above 8 -> members > 8: all 4
    assert tpr_at_fpr(m, n, 0.1) == 1.0
    # fpr 0.2: two allowed; t just above 7
    assert tpr_at_fpr(m, n, 0.2) == 1.0
    n2 = np.r_[np.arange(9, dtype=float), 9.5]
    # the top non-member (9.5) is allowed; threshold just above 8 -> 8.5, 9.0, 9.5, 10.0
    assert tpr_at_fpr(m, n2, 0.1) == 1.0
    n3 = np.r_[np.arange(8, dtype=float), 9.5, 9.5]
    # fpr 0.1 allows one non-member but the top two tie at 9.5 -> only members > 9.5
    assert tpr_at_fpr(m, n3, 0.1) == 0.25


def test_tpr_at_fpr_too_few_nonmembers():
    rng = np.random.default_rng(0)
    m = rng.normal(size=50)
    assert tpr_at_fpr(m, rng.normal(size=99), 0.01) is None
    assert tpr_at_fpr(m, rng.normal(size=100), 0.01) is not None
    assert tpr_at_fpr(m, rng.normal(size=9), 0.1) is None
    assert tpr_at_fpr(m, rng.normal(size=10), 0.1) is not None
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(m, m, 0.0)
