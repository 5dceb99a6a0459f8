import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
from sklearn.metrics import accuracy_score, log_loss

from unlearnkit.metrics.classifier import (
    accuracy,
    avg_gap,
    cross_entropy,
    disagreement,
    log_softmax,
    prediction_entropy,
    softmax,
    tow,
    tow_mia,
    true_class_prob,
)


@pytest.fixture
def data():
    rng = np.random.default_rng(123)
    n, c = 200, 7
    logits = rng.normal(scale=3.0, size=(n, c))
    labels = rng.integers(0, c, size=n)
    return logits, labels


def naive_softmax(z):
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- softmax family
def test_log_softmax_and_softmax_match_scipy(data):
    z, _ = data
    np.testing.assert_allclose(log_softmax(z), scipy.special.log_softmax(z, axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(softmax(z), naive_softmax(z), rtol=1e-12)
    np.testing.assert_allclose(softmax(z).sum(axis=1), 1.0)


def test_softmax_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4]])
    p = softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-15)
    lp = log_softmax(z)
    np.testing.assert_allclose(lp[0], [0.0, -1e4, -2e4])


# ---------------------------------------------------------------- accuracy / CE / true-class probability
def test_accuracy_matches_sklearn(data):
    z, y = data
    assert accuracy(z, y) == pytest.approx(100.0 * accuracy_score(y, z.argmax(axis=1)))


def test_accuracy_hand_case():
    z = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.0, 1.0]])
    y = np.array([0, 1, 1, 0])
    assert accuracy(z, y) == 50.0


def test_cross_entropy_matches_log_loss_and_closed_form(data):
    z, y = data
    c = z.shape[1]
    expected_closed = -np.mean(np.log(naive_softmax(z)[np.arange(len(y)), y]))
    assert cross_entropy(z, y) == pytest.approx(expected_closed, rel=1e-12)
    assert cross_entropy(z, y) == pytest.approx(log_loss(y, naive_softmax(z), labels=range(c)), rel=1e-9)


def test_cross_entropy_huge_logits_finite():
    z = np.array([[1e4, 0.0, 0.0], [0.0, 1e4, -1e4]])
    y = np.array([1, 1])
    ce = cross_entropy(z, y)
    assert math.isfinite(ce)
    # sample 0: −log p_1 = 1e4 + log(1 + e^{−1e4} + 1) ≈ 1e4; sample 1: ≈ 0
    assert ce == pytest.approx(1e4 / 2, rel=1e-12)


def test_true_class_prob_closed_form(data):
    z, y = data
    expected = np.mean(np.exp(z[np.arange(len(y)), y]) / np.exp(z).sum(axis=1))
    assert true_class_prob(z, y) == pytest.approx(expected, rel=1e-12)


def test_true_class_prob_several_forget_classes_hand_case():
    # two forget classes (0 and 2) in a 3-class model; each sample uses its own class' probability
    p = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]])
    y = np.array([0, 2, 2])
    assert true_class_prob(np.log(p), y) == pytest.approx((0.5 + 0.8 + 0.2) / 3)
    # binary model
    assert true_class_prob(np.log([[0.9, 0.1]]), [1]) == pytest.approx(0.1)


def test_empty_inputs_give_nan():
    z = np.zeros((0, 4))
    y = np.zeros(0, dtype=int)
    assert math.isnan(accuracy(z, y))
    assert math.isnan(cross_entropy(z, y))
    assert math.isnan(true_class_prob(z, y))
    assert math.isnan(accuracy([], []))
    assert prediction_entropy(z).shape == (0,)
    assert math.isnan(disagreement(z, z))


@pytest.mark.parametrize(
    "logits, labels, match",
    [
        (np.zeros(5), np.zeros(5, dtype=int), r"2-D.*\(5,\)"),
        (np.zeros((2, 3, 4)), np.zeros(2, dtype=int), r"2-D.*\(2, 3, 4\)"),
        (np.zeros((5, 3)), np.zeros((5, 1), dtype=int), r"1-D.*\(5, 1\)"),
        (np.zeros((5, 3)), np.zeros(4, dtype=int), "length 4 but there are 5 examples"),
        (np.zeros((3, 3)), np.array([0, 3, 1]), r"\[0, 3\).*value 3"),
        (np.zeros((3, 3)), np.array([0, -1, 1]), "value -1"),
        (np.zeros((2, 3)), np.array([0.5, 1.0]), "integers"),
    ],
)
def test_validation_errors(logits, labels, match):
    for fn in (accuracy, cross_entropy, true_class_prob):
        with pytest.raises(ValueError, match=match):
            fn(logits, labels)


def test_integral_float_labels_accepted():
    z = np.array([[2.0, 1.0], [0.0, 3.0]])
    assert accuracy(z, np.array([0.0, 1.0])) == 100.0


# ---------------------------------------------------------------- entropy
def test_prediction_entropy_matches_scipy(data):
    z, _ = data
    expected = scipy.stats.entropy(naive_softmax(z), axis=1)
    np.testing.assert_allclose(prediction_entropy(z), expected, rtol=1e-10, atol=1e-12)


def test_prediction_entropy_edge_cases():
    z = np.array([[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0], [0.0, 0.0, -np.inf, -np.inf]])
    h = prediction_entropy(z)
    np.testing.assert_allclose(h, [math.log(4), 0.0, math.log(2)], atol=1e-12)


# ---------------------------------------------------------------- ToW / ToW-MIA / Avg. Gap / disagreement
def test_tow_identity_is_one():
    acc = {"forget": 12.3, "retain": 99.1, "test": 94.5}
    assert tow(acc, acc) == 1.0
    assert tow_mia(0.37, 0.37, acc, acc) == 1.0


def test_tow_hand_case():
    acc_u = {"forget": 90.0, "retain": 95.0, "test": 85.0}
    acc_r = {"forget": 80.0, "retain": 97.0, "test": 86.0}
    assert tow(acc_u, acc_r) == pytest.approx(0.9 * 0.98 * 0.99)
    assert tow(acc_u, acc_r, keys=("retain",)) == pytest.approx(0.98)
    # worst case: forget accuracy 100 vs 0 gives 0
    assert tow({"forget": 100, "retain": 90, "test": 90}, {"forget": 0, "retain": 90, "test": 90}) == 0.0


def test_tow_mia_hand_case():
    acc_u = {"forget": 90.0, "retain": 95.0, "test": 85.0}
    acc_r = {"forget": 10.0, "retain": 97.0, "test": 86.0}
    # forget accuracy is not used by ToW-MIA
    assert tow_mia(0.3, 0.5, acc_u, acc_r) == pytest.approx(0.8 * 0.98 * 0.99)
    with pytest.raises(ValueError, match="mia_u"):
        tow_mia(30.0, 0.5, acc_u, acc_r)
    assert math.isnan(tow_mia(float("nan"), 0.5, acc_u, acc_r))


def test_tow_missing_key():
    with pytest.raises(KeyError, match="test"):
        tow({"forget": 1, "retain": 2}, {"forget": 1, "retain": 2, "test": 3})


def test_avg_gap_hand_case_and_missing_key():
    u = {"ua": 10.0, "ra": 95.0, "ta": 90.0, "mia": 20.0}
    r = {"ua": 12.0, "ra": 99.0, "ta": 91.0, "mia": 14.0}
    assert avg_gap(u, r) == pytest.approx((2 + 4 + 1 + 6) / 4)
    assert avg_gap(u, u) == 0.0
    assert avg_gap(u, r, keys=("ua", "ra")) == pytest.approx(3.0)
    r_missing = {k: v for k, v in r.items() if k != "mia"}
    with pytest.raises(KeyError, match="mia"):
        avg_gap(u, r_missing)


def test_disagreement():
    zu = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    zr = np.array([[5.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 9.0]])
    assert disagreement(zu, zr) == pytest.approx(0.5)
    assert disagreement(zu, zu) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        disagreement(zu, zr[:3])
