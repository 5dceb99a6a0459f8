import numpy as np
import pytest

from unlearnkit.data.refine import refine, retain_sets, rum_mix_split, shuffle_split


# --------------------------------------------------------------------------------------------------
# refine
# --------------------------------------------------------------------------------------------------
def test_refine_tertiles_hand_example():
    score = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])  # over the whole training set
    forget = np.array([0, 2, 4, 6, 8, 1])  # scores 0.9 0.5 0.7 0.8 0.6 0.1
    low, mid, high = refine(forget, score, k=3)
    assert low.tolist() == [1, 2]  # 0.1, 0.5
    assert mid.tolist() == [4, 8]  # 0.6, 0.7
    assert high.tolist() == [0, 6]  # 0.8, 0.9
    # the result does not depend on the order the forget set is given in
    assert [g.tolist() for g in refine(forget[::-1], score)] == [[1, 2], [4, 8], [0, 6]]


def test_refine_uneven_sizes_and_ties():
    score = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 1.0])
    groups = refine(np.arange(7), score, k=3)
    assert [len(g) for g in groups] == [3, 2, 2]  # np.array_split: the first |S| mod k groups are larger
    # order: 4 (0.0), then the 1.0 ties by index 0,1,2,3,6, then 5 (2.0)
    assert [g.tolist() for g in groups] == [[0, 1, 4], [2, 3], [5, 6]]
    one = refine([3, 1], score, k=1)
    assert len(one) == 1 and one[0].tolist() == [1, 3]
    # k = |S|: singletons ordered by score
    assert [g.tolist() for g in refine([5, 4, 0], score, k=3)] == [[4], [0], [5]]


def test_refine_matches_quantile_groups_on_random_scores():
    rng = np.random.default_rng(0)
    score = rng.normal(size=500)
    forget = rng.choice(500, size=90, replace=False)
    groups = refine(forget, score, k=3)
    assert [len(g) for g in groups] == [30, 30, 30]
    assert np.array_equal(np.sort(np.concatenate(groups)), np.sort(forget))
    assert score[groups[0]].max() < score[groups[1]].min()
    assert score[groups[1]].max() < score[groups[2]].min()
    q1, q2 = np.quantile(score[forget], [1 / 3, 2 / 3])
    assert score[groups[0]].max() <= q1 <= score[groups[1]].min()
    assert score[groups[1]].max() <= q2 <= score[groups[2]].min()


def test_refine_errors():
    score = np.arange(10.0)
    with pytest.raises(ValueError, match="k must be >= 1; got 0"):
        refine([1, 2], score, k=0)
    with pytest.raises(ValueError, match=r"more subsets than forget examples: k=4 > 3 forget"):
        refine([1, 2, 3], score, k=4)
    with pytest.raises(ValueError, match="outside the training set"):
        refine([1, 10], score)
    with pytest.raises(ValueError, match="repeat"):
        refine([1, 1, 2], score)
    nan_score = score.copy()
    nan_score[[2, 7]] = np.nan
    with pytest.raises(ValueError, match=r"NaN at forget index\(es\) 2"):
        refine([1, 2, 3], nan_score)
    assert len(refine([1, 3, 4], nan_score)) == 3  # NaN outside the forget set is fine
    with pytest.raises(ValueError, match="integers"):
        refine([1.0, 2.0], score)


# --------------------------------------------------------------------------------------------------
# rum_mix_split
# --------------------------------------------------------------------------------------------------
def test_rum_mix_split_exact_mem_hand_example():
    score = np.array([0.0, 0.95, 0.48, 0.1, 0.53, 0.99, 0.05, 0.5, 0.8, 0.3, 0.6, 0.02])
    low, mid, high = rum_mix_split(score, n_per_group=3)
    assert low.tolist() == [0, 6, 11]  # 0.0, 0.05, 0.02
    assert high.tolist() == [1, 5, 8]  # 0.95, 0.99, 0.8
    assert mid.tolist() == [2, 4, 7]  # closest to 0.5: 0.5, 0.48, 0.53
    # median target: median of the 12 scores is (0.48 + 0.5)/2 = 0.49 -> 0.48, 0.5, 0.53 as well
    assert rum_mix_split(score, 3, "median")[1].tolist() == [2, 4, 7]
    # midrange: (0 + 0.99)/2 = 0.495
    assert rum_mix_split(score, 2, "midrange")[1].tolist() == [2, 7]
    assert rum_mix_split(score, 2, mid_target=0.3)[1].tolist() == [2, 9]  # 0.3, then 0.48 (0.18 < |0.1 − 0.3|)


def test_rum_mix_split_brute_force_and_refine_round_trip():
    rng = np.random.default_rng(1)
    score = rng.random(300)
    low, mid, high = rum_mix_split(score, n_per_group=40, mid_target="median")
    order = np.argsort(score, kind="stable")
    assert set(low) == set(order[:40]) and set(high) == set(order[-40:])
    dist = np.abs(score - np.median(score))
    assert set(mid) == set(np.argsort(dist, kind="stable")[:40])
    assert not (set(low) & set(mid) or set(mid) & set(high) or set(low) & set(high))
    # refine of the mix set gives the three groups back, low -> high
    again = refine(np.concatenate([high, low, mid]), score, k=3)
    assert [g.tolist() for g in again] == [low.tolist(), mid.tolist(), high.tolist()]
    # deterministic
    assert all(np.array_equal(a, b) for a, b in zip(rum_mix_split(score, 40, "median"), (low, mid, high),
                                                     strict=True))


def test_rum_mix_split_ties_follow_one_total_order():
    score = np.array([1.0, 0.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.5, 1.0, 0.5])
    low, mid, high = rum_mix_split(score, n_per_group=2)
    assert low.tolist() == [1, 3]  # lowest ties: lower index first
    assert high.tolist() == [6, 8]  # highest ties: the last ones in (score, index) order
    assert mid.tolist() == [4, 7]
    groups = refine(np.concatenate([low, mid, high]), score, k=3)
    assert [g.tolist() for g in groups] == [low.tolist(), mid.tolist(), high.tolist()]


def test_rum_mix_split_errors_and_nan_policy():
    with pytest.raises(ValueError, match=r"need 9 examples; the score has 8"):
        rum_mix_split(np.arange(8.0), n_per_group=3)
    # everything sits at 0 or 1: the 2 closest to 0.5 are also among the extremes
    with pytest.raises(ValueError, match=r"overlap the bottom-2/top-2 groups"):
        rum_mix_split(np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), n_per_group=2)
    with pytest.raises(ValueError, match="mid_target must be a number, 'median' or 'midrange'"):
        rum_mix_split(np.arange(9.0), 3, mid_target="mean")
    with pytest.raises(ValueError, match="n_per_group"):
        rum_mix_split(np.arange(9.0), 0)
    s = np.array([0.0625, np.nan, 0.5, 0.9375, 0.125, 0.75, np.nan, 0.875, 0.25])
    with pytest.raises(ValueError, match=r"NaN at index\(es\) 1, 6"):
        rum_mix_split(s, 2)
    low, mid, high = rum_mix_split(s, 2, "median", nan_policy="omit")  # median of 7 values = 0.5
    assert low.tolist() == [0, 4] and high.tolist() == [3, 7]
    assert mid.tolist() == [2, 5]  # 0.5, then the exact tie 0.75 vs 0.25 (both 0.25 away) goes to the lower index
    with pytest.raises(ValueError, match="non-NaN values"):
        rum_mix_split(s, 3, nan_policy="omit")


# --------------------------------------------------------------------------------------------------
# shuffle_split, retain_sets
# --------------------------------------------------------------------------------------------------
def test_shuffle_split():
    forget = np.arange(100, 131)  # 31 examples
    parts = shuffle_split(forget, 3, seed=0)
    assert sorted(len(p) for p in parts) == [10, 10, 11]
    assert np.array_equal(np.sort(np.concatenate(parts)), forget)
    assert all(np.array_equal(a, b) for a, b in zip(parts, shuffle_split(forget[::-1], 3, seed=0), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, shuffle_split(forget, 3, seed=1), strict=True))
    # random, not score-ordered: contiguous thirds are unlikely
    assert not np.array_equal(parts[0], forget[:11])
    with pytest.raises(ValueError, match="k=5 > 4 forget"):
        shuffle_split([1, 2, 3, 4], 5)


def test_retain_sets_default_and_cumulative():
    subsets = [np.array([0, 3]), np.array([5]), np.array([7, 8])]
    default = retain_sets(10, subsets)
    assert len(default) == 3
    assert all(r.tolist() == [1, 2, 4, 6, 9] for r in default)
    cum = retain_sets(10, subsets, cumulative=True)
    assert cum[0].tolist() == [1, 2, 4, 5, 6, 7, 8, 9]
    assert cum[1].tolist() == [1, 2, 4, 6, 7, 8, 9]
    assert cum[2].tolist() == default[2].tolist()
    # with refine: each cumulative retain set is D minus the subsets processed so far
    rng = np.random.default_rng(0)
    score = rng.random(50)
    forget = rng.choice(50, 12, replace=False)
    parts = refine(forget, score)
    for k, r in enumerate(retain_sets(50, parts, cumulative=True)):
        done = np.concatenate(parts[: k + 1])
        assert set(r) == set(range(50)) - set(done)
    assert set(retain_sets(50, parts)[0]) == set(range(50)) - set(forget)


def test_retain_sets_errors():
    with pytest.raises(ValueError, match=r"index 3 is in subsets\[0\] and subsets\[1\]"):
        retain_sets(10, [[0, 3], [3, 4]])
    with pytest.raises(ValueError, match=r"subsets\[1\] holds index 10, outside the training set \[0, 10\)"):
        retain_sets(10, [[0], [10]])
    with pytest.raises(ValueError, match="at least one"):
        retain_sets(10, [])
    with pytest.raises(ValueError, match="train_size"):
        retain_sets(0, [[0]])
