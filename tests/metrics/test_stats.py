import math

import numpy as np
import pytest
import scipy.stats

from unlearnkit.metrics.stats import Interval, bootstrap_interval, format_interval, t_interval


@pytest.mark.parametrize("n", [2, 3, 5, 30])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_t_interval_matches_scipy(n, confidence):
    rng = np.random.default_rng(n)
    v = rng.normal(loc=0.8, scale=0.05, size=n)
    iv = t_interval(v, confidence)
    low, high = scipy.stats.t.interval(confidence, n - 1, loc=v.mean(), scale=scipy.stats.sem(v))
    assert iv.n == n
    assert iv.mean == pytest.approx(v.mean(), rel=1e-14)
    assert iv.low == pytest.approx(low, rel=1e-12)
    assert iv.high == pytest.approx(high, rel=1e-12)
    assert iv.half_width == pytest.approx((high - low) / 2, rel=1e-12)


def test_t_interval_known_value():
    # n=3, mean 2, s=1: t_{0.975,2} = 4.302652729749464
    iv = t_interval([1.0, 2.0, 3.0])
    assert iv.half_width == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-12)


def test_t_interval_small_n_and_nans():
    one = t_interval([0.7])
    assert one.n == 1 and one.mean == 0.7
    assert math.isnan(one.half_width) and math.isnan(one.low) and math.isnan(one.high)
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.half_width)
    assert t_interval([float("nan")]).n == 0
    with_nan = t_interval([1.0, float("nan"), 2.0, 3.0])
    assert with_nan == t_interval([1.0, 2.0, 3.0])
    assert with_nan.n == 3
    const = t_interval([0.5, 0.5, 0.5])
    assert const.half_width == 0.0 and const.low == const.high == 0.5


def test_bootstrap_deterministic_and_contains_mean():
    rng = np.random.default_rng(0)
    v = rng.exponential(size=200)
    a = bootstrap_interval(v, seed=5)
    b = bootstrap_interval(v, seed=5)
    c = bootstrap_interval(v, seed=6)
    assert a == b
    assert a != c
    assert a.n == 200
    assert a.mean == pytest.approx(v.mean())
    assert a.low < a.mean < a.high
    assert a.half_width == pytest.approx((a.high - a.low) / 2)
    # close to the normal-theory interval for a mean of 200 values
    t = t_interval(v)
    assert a.half_width == pytest.approx(t.half_width, rel=0.2)


def test_bootstrap_matches_direct_percentile_computation():
    v = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.2, 0.9])
    iv = bootstrap_interval(v, n_resamples=500, confidence=0.9, seed=3)
    rng = np.random.default_rng(3)
    means = v[rng.integers(0, len(v), size=(500, len(v)))].mean(axis=1)
    assert iv.low == pytest.approx(np.percentile(means, 5))
    assert iv.high == pytest.approx(np.percentile(means, 95))


def test_bootstrap_large_n_deterministic():
    v = np.random.default_rng(1).normal(size=20_000)  # several chunks of resamples
    a = bootstrap_interval(v, n_resamples=300, seed=0)
    assert a == bootstrap_interval(v, n_resamples=300, seed=0)
    assert a.low < a.mean < a.high


def test_bootstrap_small_n_and_nans():
    assert math.isnan(bootstrap_interval([1.0]).half_width)
    assert bootstrap_interval([1.0, float("nan"), 3.0, 2.0]) == bootstrap_interval([1.0, 3.0, 2.0])


def test_format_interval():
    assert format_interval(Interval(0.91234, 0.01276, 3, 0.89958, 0.9251)) == "0.912 ± 0.013"
    assert format_interval(Interval(0.91234, float("nan"), 1, float("nan"), float("nan"))) == "0.912"
    assert format_interval(Interval(91.234, 1.5, 3, 89.734, 92.734), digits=1) == "91.2 ± 1.5"
    assert format_interval(t_interval([1.0, 2.0, 3.0]), digits=2) == "2.00 ± 2.48"
