import numpy as np
import pytest

from unlearnkit.data import make_split, resolve_forget_size
from unlearnkit.data.digits import digits

LABELS = np.repeat(np.arange(4), 25)  # 100 training labels
TEST = np.tile(np.arange(4), 5)  # 20 test labels


def test_random_split_count_fraction_and_partition():
    a = make_split(LABELS, TEST, scenario="random", seed=3, data_hash="h", forget_size=10)
    b = make_split(LABELS, TEST, scenario="random", seed=3, data_hash="h", forget_size=0.1)
    assert len(a.forget) == 10 and np.array_equal(a.forget, b.forget) and a.hash == b.hash
    assert np.array_equal(np.sort(np.concatenate([a.forget, a.retain])), np.arange(100))
    assert len(np.intersect1d(a.forget, a.retain)) == 0 and len(a.test) == 20


def test_hash_changes_with_seed_and_data():
    a = make_split(LABELS, TEST, scenario="random", seed=0, data_hash="h", forget_size=10)
    assert a.hash != make_split(LABELS, TEST, scenario="random", seed=1, data_hash="h", forget_size=10).hash
    assert a.hash != make_split(LABELS, TEST, scenario="random", seed=0, data_hash="g", forget_size=10).hash


def test_class_split_takes_whole_classes():
    s = make_split(LABELS, TEST, scenario="class", seed=0, data_hash="h", forget_classes=[2, 0])
    assert s.forget_classes == (0, 2)
    assert set(LABELS[s.forget]) == {0, 2} and set(LABELS[s.retain]) == {1, 3} and len(s.forget) == 50
    assert np.array_equal(s.test_forget, np.flatnonzero(np.isin(TEST, [0, 2]))) and len(s.test_forget) == 10


FINE = np.repeat(np.arange(8), 13)[:100]  # 8 fine classes; coarse = fine // 2
FINE_TEST = np.arange(20) % 8


def test_subclass_split_takes_one_fine_class_and_keeps_its_superclass():
    s = make_split(FINE // 2, FINE_TEST // 2, scenario="subclass", seed=0, data_hash="h", forget_subclasses=[5],
                   train_fine=FINE, test_fine=FINE_TEST)
    assert np.array_equal(s.forget, np.flatnonzero(FINE == 5))
    assert s.forget_classes == () and s.forget_subclasses == (5,)
    assert 2 in set((FINE // 2)[s.retain])  # fine class 4 of the same superclass 2 is retained
    assert np.array_equal(s.test_forget, np.flatnonzero(FINE_TEST == 5))
    assert s.describe()["n_test_forget"] == 2
    other = make_split(FINE // 2, FINE_TEST // 2, scenario="subclass", seed=0, data_hash="h", forget_subclasses=[4],
                       train_fine=FINE, test_fine=FINE_TEST)
    assert other.hash != s.hash


def test_random_split_has_no_test_forget_and_keeps_its_hash():
    s = make_split(LABELS, TEST, scenario="random", seed=0, data_hash="h", forget_size=10)
    assert len(s.test_forget) == 0 and s.forget_subclasses == ()
    assert s.hash == "aeb7817e5dd428039f076abd"  # unchanged by the subclass fields (cached models stay valid)


@pytest.mark.parametrize("size, message", [
    (100, r"forget_size=100 is not smaller than the training set \(100 examples\): nothing would be retained"),
    (5000, "forget_size=5000 is not smaller than the training set"),
    (0.001, "selects no example"),
    (-1, "must be a count >= 1 or a fraction"),
    (2.5, "a count must be an integer"),
])
def test_bad_forget_sizes(size, message):
    with pytest.raises(ValueError, match=message):
        resolve_forget_size(size, 100)


@pytest.mark.parametrize("kwargs, message", [
    ({"scenario": "class", "forget_classes": [7]}, r"class\(es\) \[7\] not in the training labels"),
    ({"scenario": "class", "forget_classes": [0, 1, 2, 3]}, "covers every class"),
    ({"scenario": "class", "forget_classes": []}, "needs forget_classes"),
    ({"scenario": "sideways"}, "scenario='sideways': must be one of random, class, subclass"),
    ({"scenario": "subclass", "forget_subclasses": [1]}, "scenario=subclass needs a data set with fine labels"),
])
def test_bad_scenarios(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_split(LABELS, TEST, seed=0, data_hash="h", **kwargs)


def test_digits_is_real_and_stable():
    d = digits()
    assert d.x_train.shape == (1347, 1, 8, 8) and d.x_test.shape == (450, 1, 8, 8)
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    per_class = np.bincount(d.y_train) + np.bincount(d.y_test)
    assert np.abs(np.bincount(d.y_test) - 0.25 * per_class).max() <= 1  # stratified 25 % test split
    assert d.hash == digits().hash and len(d.hash) == 24


def test_digits_coarse_keeps_the_digit_as_fine_label():
    from unlearnkit.data.digits import digits_coarse

    d, c = digits(), digits_coarse()
    assert np.array_equal(c.x_train, d.x_train) and c.num_classes == 5 and c.hash != d.hash
    assert np.array_equal(c.y_train, d.y_train // 2) and np.array_equal(c.fine_train, d.y_train)
    assert np.array_equal(c.fine_test, d.y_test) and c.fine_names[7] == "7" and c.class_names[3] == "6-7"
