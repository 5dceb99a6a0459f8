"""The registered metric bindings (suite.py) on real outputs: values, orientation and error paths."""

import numpy as np
import pytest

from unlearnkit.metrics import classifier as C
from unlearnkit.metrics.evaluate import Evaluation, evaluate
from unlearnkit.metrics.suite import CLASSIFIER_METRICS


def _ev(seed, n=60, c=3, forget_classes=()):
    rng = np.random.default_rng(seed)
    logits = {s: rng.normal(size=(n, c)) * 3 for s in ("forget", "retain", "test")}
    labels = {s: rng.integers(0, c, n) for s in ("forget", "retain", "test")}
    ev = Evaluation(logits, labels, forget_classes)
    ev.incompetent_forget = rng.normal(size=(n, c)) * 0.1
    return ev


def test_reference_metrics_against_the_pure_functions():
    u, r = _ev(0), _ev(1)
    evaluate(r, [m for m in CLASSIFIER_METRICS if m not in ("tow", "avg_gap")])
    values = evaluate(u, CLASSIFIER_METRICS, ref=r)
    acc = {k: C.accuracy(u.logits[k], u.labels[k]) for k in ("forget", "retain", "test")}
    acc_r = {k: C.accuracy(r.logits[k], r.labels[k]) for k in ("forget", "retain", "test")}
    assert values["tow"] == pytest.approx(C.tow(acc, acc_r))
    assert values["ua"] == pytest.approx(100 - acc["forget"])
    gap = np.mean([abs(values["ua"] - r.values["ua"]), abs(acc["retain"] - acc_r["retain"]),
                   abs(acc["test"] - acc_r["test"]), 100 * abs(values["mia_svc"] - r.values["mia_svc"])])
    assert values["avg_gap"] == pytest.approx(gap)
    self_values = evaluate(r, ["tow", "avg_gap"], ref=r)
    assert self_values["tow"] == 1.0 and self_values["tow_mia"] == 1.0 and self_values["avg_gap"] == 0.0


def test_zrf_against_scipy_jensenshannon():
    from scipy.spatial.distance import jensenshannon
    from scipy.special import softmax

    ev = _ev(4)
    value = evaluate(ev, ["zrf"])["zrf"]
    p, q = softmax(ev.logits["forget"], axis=1), softmax(ev.incompetent_forget, axis=1)
    assert value == pytest.approx(1 - np.mean(jensenshannon(p, q, axis=1) ** 2), abs=1e-10)
    same = Evaluation(ev.logits, ev.labels, incompetent_forget=ev.logits["forget"].copy())
    assert evaluate(same, ["zrf"])["zrf"] == pytest.approx(1.0)  # identical to the random model: fully "forgotten"
    far = Evaluation({**ev.logits, "forget": np.array([[50.0, -50.0]])}, ev.labels,
                     incompetent_forget=np.array([[-50.0, 50.0]]))
    assert evaluate(far, ["zrf"])["zrf"] == pytest.approx(1 - np.log(2))  # disjoint supports: JS = log 2


def test_zrf_without_the_random_model_outputs_is_an_error():
    ev = _ev(0)
    ev.incompetent_forget = None
    with pytest.raises(ValueError, match="randomly initialised model"):
        evaluate(ev, ["zrf"])


def test_subclass_test_accuracies_use_the_test_forget_indices():
    ev = _ev(2)
    ev.test_forget = np.arange(0, 60, 3)  # e.g. the test images of one fine class; labels are superclasses
    values = evaluate(ev, ["accuracy"])
    mask = np.zeros(60, dtype=bool)
    mask[ev.test_forget] = True
    assert values["test_forget_acc"] == pytest.approx(C.accuracy(ev.logits["test"][mask], ev.labels["test"][mask]))
    assert values["test_retain_acc"] == pytest.approx(C.accuracy(ev.logits["test"][~mask], ev.labels["test"][~mask]))


def test_forget_class_test_accuracies():
    ev = _ev(0, forget_classes=(1,))
    values = evaluate(ev, ["accuracy"])
    mask = ev.labels["test"] == 1
    assert values["test_forget_acc"] == pytest.approx(C.accuracy(ev.logits["test"][mask], ev.labels["test"][mask]))
    assert values["test_retain_acc"] == pytest.approx(C.accuracy(ev.logits["test"][~mask], ev.labels["test"][~mask]))


def test_reference_metric_without_reference_is_an_error():
    with pytest.raises(ValueError, match="metric 'tow' compares with the retrained model: pass ref="):
        evaluate(_ev(0), ["accuracy", "mia_svc", "tow"])


def test_non_finite_outputs_give_nan_attacks_not_a_crash():
    ev = _ev(0)
    ev.logits["forget"][0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="not finite"):
        values = evaluate(ev, ["mia_svc", "mia_entropy_lr"])
    assert np.isnan(values["mia_svc"]) and np.isnan(values["mia_entropy_lr"])


def test_required_metrics_are_added_in_order():
    from unlearnkit.metrics.evaluate import with_requirements

    assert with_requirements(["tow"]) == ["accuracy", "mia_svc", "tow"]
    assert with_requirements(["avg_gap", "tow", "accuracy"]) == ["accuracy", "mia_svc", "avg_gap", "tow"]
    u, r = _ev(0), _ev(1)
    evaluate(r, ["accuracy", "mia_svc"])
    assert "tow" in evaluate(u, ["tow"], ref=r)  # its requirements ran first, no KeyError


def test_forget_class_probability_for_several_forget_classes_matches_scipy():
    from scipy.special import softmax

    ev = _ev(3, c=5, forget_classes=(1, 4))
    ev.labels["forget"] = np.where(np.arange(60) % 2 == 0, 1, 4)  # forget examples of two classes
    expected = softmax(ev.logits["forget"], axis=1)[np.arange(60), ev.labels["forget"]].mean()
    assert evaluate(ev, ["forget_class_prob"])["forget_class_prob"] == pytest.approx(expected)


def test_a_metric_runs_once_per_evaluation():
    ev = _ev(0)
    evaluate(ev, ["accuracy"])
    ev.logits["test"] = ev.logits["test"] * 0  # would change test_acc if accuracy ran again
    assert evaluate(ev, ["accuracy", "cross_entropy"])["test_acc"] == C.accuracy(_ev(0).logits["test"],
                                                                                   _ev(0).labels["test"])
    assert ev.done == {"accuracy", "cross_entropy"}
