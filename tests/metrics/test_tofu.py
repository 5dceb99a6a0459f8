import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from unlearnkit.metrics.tofu import (
    MODEL_UTILITY_KEYS,
    TRUTH_RATIO_AGGREGATORS,
    exact_memorization,
    extraction_strength,
    forget_quality,
    model_utility,
    prob_from_avg_loss,
    prob_normalised,
    rouge_l_f1,
    rouge_l_recall,
    rouge_tokenize,
    truth_ratio,
    truth_ratio_score,
)

E = math.e


# ---------------------------------------------------------------- prob / truth ratio
def test_prob_from_avg_loss():
    assert prob_from_avg_loss(0.0) == 1.0
    assert prob_from_avg_loss(math.log(4)) == pytest.approx(0.25, rel=1e-12)
    np.testing.assert_allclose(prob_from_avg_loss([math.log(2), 1.0]), [0.5, 1 / E], rtol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        prob_from_avg_loss([1.0, float("nan")])


def test_truth_ratio_2d_hand_case():
    # means of the perturbed losses: 2.0 and 1.0 -> R = exp(1 - 2), exp(2 - 1)
    r = truth_ratio([1.0, 2.0], np.array([[1.5, 2.5], [1.0, 1.0]]))
    np.testing.assert_allclose(r, [1 / E, E], rtol=1e-12)


def test_truth_ratio_ragged_all_three_aggregators():
    # example 0: correct 1.0, perturbed mean 2.0 -> R0 = e^-1
    # example 1: correct 2.0, perturbed mean (0.5 + 2.5 + 3.0)/3 = 2.0 -> R1 = 1
    r = truth_ratio([1.0, 2.0], [[1.5, 2.5], [0.5, 2.5, 3.0]])
    np.testing.assert_allclose(r, [1 / E, 1.0], rtol=1e-12)
    # min(R, 1/R): (e^-1 + 1)/2
    assert truth_ratio_score(r, "closer_to_1_better") == pytest.approx((1 / E + 1) / 2, rel=1e-12)
    # max(0, 1 - R): (1 - e^-1 + 0)/2
    assert truth_ratio_score(r, "true_better") == pytest.approx((1 - 1 / E) / 2, rel=1e-12)
    # p_c/(p_c + p_w): example 0 e^-1/(e^-1 + e^-2), example 1 e^-2/(e^-2 + e^-2) = 1/2
    pm0 = math.exp(-1) / (math.exp(-1) + math.exp(-2))
    assert truth_ratio_score(r, "prob_mean") == pytest.approx((pm0 + 0.5) / 2, rel=1e-12)
    assert truth_ratio_score(r, "prob_mean") == pytest.approx(0.6155292, abs=1e-7)


def test_truth_ratio_aggregators_differ_and_are_oriented():
    # R > 1 (prefers the perturbed answers) scores 0 under true_better but not under closer_to_1_better
    r = np.array([2.0, 4.0])
    assert truth_ratio_score(r, "true_better") == 0.0
    assert truth_ratio_score(r, "closer_to_1_better") == pytest.approx((0.5 + 0.25) / 2)
    assert truth_ratio_score(r, "prob_mean") == pytest.approx((1 / 3 + 1 / 5) / 2)


def test_truth_ratio_extreme_losses_stay_finite_scores():
    r = truth_ratio([0.0, 1000.0], [[1000.0], [0.0]])
    assert r[0] == 0.0 and r[1] == np.inf
    assert truth_ratio_score(r, "closer_to_1_better") == 0.0
    assert truth_ratio_score(r, "true_better") == pytest.approx(0.5)
    assert truth_ratio_score(r, "prob_mean") == pytest.approx(0.5)


def test_truth_ratio_errors():
    with pytest.raises(ValueError, match="allowed: closer_to_1_better, true_better, prob_mean"):
        truth_ratio_score([1.0], "geometric")
    assert TRUTH_RATIO_AGGREGATORS == ("closer_to_1_better", "true_better", "prob_mean")
    with pytest.raises(ValueError, match="3 rows but avg_loss_correct has 2"):
        truth_ratio([1.0, 2.0], np.ones((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        truth_ratio([1.0, float("nan")], np.ones((2, 2)))
    with pytest.raises(ValueError, match="must not be empty"):
        truth_ratio([1.0], [[]])
    with pytest.raises(ValueError, match="≥ 0"):
        truth_ratio_score([0.5, -1.0], "true_better")


def test_prob_normalised_hand_case_is_a_sum_over_options():
    # example 0: p_c = 1, p_pert = 0.5 + 0.25 -> 1/1.75 = 4/7
    # example 1: p_c = 0.5, p_pert = 0.5 + 0.5 -> 0.5/1.5 = 1/3
    got = prob_normalised([0.0, math.log(2)], np.array([[math.log(2), math.log(4)], [math.log(2), math.log(2)]]))
    assert got == pytest.approx((4 / 7 + 1 / 3) / 2, rel=1e-9)
    assert got == pytest.approx(19 / 42, rel=1e-9)
    # ragged options work too
    assert prob_normalised([0.0], [[math.log(2), math.log(4), math.log(4)]]) == pytest.approx(0.5, rel=1e-9)


def test_prob_normalised_epsilon_matters_only_for_tiny_probs():
    # all probabilities exp(-50) ≈ 2e-22 << 1e-10 -> ratio ≈ 0, not 1/2
    assert prob_normalised([50.0], [[50.0]]) < 1e-9


# ---------------------------------------------------------------- forget quality
def test_forget_quality_matches_ks_2samp_and_identity():
    rng = np.random.default_rng(0)
    r_retain = rng.lognormal(mean=-0.5, sigma=0.5, size=40)
    r_close = rng.lognormal(mean=-0.5, sigma=0.5, size=40)
    r_far = rng.lognormal(mean=-3.0, sigma=0.5, size=40)
    assert forget_quality(r_retain, r_retain) == 1.0
    assert forget_quality(r_close, r_retain) == scipy.stats.ks_2samp(r_close, r_retain).pvalue
    assert forget_quality(r_far, r_retain) == scipy.stats.ks_2samp(r_far, r_retain).pvalue
    assert forget_quality(r_far, r_retain) < 1e-10
    assert forget_quality(r_close, r_retain) > forget_quality(r_far, r_retain)
    with pytest.raises(ValueError, match="r_unlearned"):
        forget_quality([1.0, float("nan")], r_retain)


# ---------------------------------------------------------------- model utility
def _mu_values(**over):
    v = dict.fromkeys(MODEL_UTILITY_KEYS, 1.0)
    v.update(over)
    return v


def test_model_utility_keys_constant():
    assert MODEL_UTILITY_KEYS == (
        "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
        "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
        "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio",
    )  # fmt: skip


def test_model_utility_hand_and_scipy():
    # seven 1s, one 0.5, one 0.25: 9 / (7 + 2 + 4) = 9/13
    v = _mu_values(wf_Q_A_ROUGE=0.5, wf_Truth_Ratio=0.25)
    assert model_utility(v) == pytest.approx(9 / 13, rel=1e-12)
    rng = np.random.default_rng(1)
    v = dict(zip(MODEL_UTILITY_KEYS, rng.uniform(0.05, 1.0, size=9), strict=True))
    assert model_utility(v) == pytest.approx(scipy.stats.hmean(list(v.values())), rel=1e-12)


def test_model_utility_zero_gives_zero():
    assert model_utility(_mu_values(ra_Truth_Ratio=0.0)) == 0.0


def test_model_utility_errors():
    v = _mu_values()
    del v["ra_Q_A_ROUGE"]
    with pytest.raises(ValueError, match="missing \\['ra_Q_A_ROUGE'\\]"):
        model_utility(v)
    with pytest.raises(ValueError, match="unexpected \\['forget_Q_A_Prob'\\]"):
        model_utility(_mu_values(forget_Q_A_Prob=0.3))
    with pytest.raises(ValueError, match="'retain_Q_A_Prob'"):
        model_utility(_mu_values(retain_Q_A_Prob=-0.1))
    with pytest.raises(ValueError, match="'wf_Truth_Ratio'"):
        model_utility(_mu_values(wf_Truth_Ratio=float("nan")))


# ---------------------------------------------------------------- ROUGE-L
def test_rouge_tokenize_rules():
    assert rouge_tokenize("The cat was on a mat!") == ["the", "cat", "was", "on", "a", "mat"]
    assert rouge_tokenize("It's 3:45 PM—café!") == ["it", "s", "3", "45", "pm", "caf"]
    assert rouge_tokenize("  U.S.A.\n\tHello-World  ") == ["u", "s", "a", "hello", "world"]
    assert rouge_tokenize("!!! ...") == []


def test_rouge_l_recall_hand_case():
    # ref: the cat sat on the mat (6); pred: the cat was on a mat; LCS = the cat on mat = 4
    assert rouge_l_recall("The cat was on a mat!", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert rouge_l_f1("The cat was on a mat!", "the cat sat on the mat") == pytest.approx(4 / 6)


def test_rouge_l_f1_hand_case_precision_differs():
    # pred: the cat on the mat (5); LCS with the 6-token reference = 5 -> P = 1, R = 5/6, F = 10/11
    assert rouge_l_recall("The cat, on the mat.", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert rouge_l_f1("The cat, on the mat.", "the cat sat on the mat") == pytest.approx(10 / 11)
    # LCS is order-sensitive: a shuffled prediction keeps only e.g. "the sat the" (length 3) in order
    assert rouge_l_recall("mat the on sat cat the", "the cat sat on the mat") == pytest.approx(3 / 6)


def test_rouge_l_case_punctuation_and_empty():
    assert rouge_l_recall("HELLO, world!!!", "hello world") == 1.0
    assert rouge_l_f1("HELLO, world!!!", "hello world") == 1.0
    assert rouge_l_recall("anything", "") == 0.0
    assert rouge_l_recall("anything", "?!") == 0.0
    assert rouge_l_f1("", "the reference") == 0.0
    assert rouge_l_recall("totally different", "the reference") == 0.0


def test_rouge_stemmer_missing_gives_install_hint():
    if importlib.util.find_spec("nltk") is not None:
        pytest.skip("nltk is installed")
    with pytest.raises(ImportError, match=r"pip install 'unlearnkit\[llm\]'"):
        rouge_l_recall("cats running", "cat runs", stemmer=True)


def test_rouge_matches_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    pairs = [
        ("The cat was on a mat!", "the cat sat on the mat"),
        ("The authors were writing novels in 1999.", "The author wrote several novels, starting 1999"),
        ("It's 3:45 PM—café!", "it is 3 45 pm at the cafe"),
        ("", "nothing predicted"),
        ("running runners ran", "the runner runs and running"),
    ]
    for stem in (False, True):
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
        for pred, ref in pairs:
            s = scorer.score(ref, pred)["rougeL"]
            assert rouge_l_recall(pred, ref, stemmer=stem) == pytest.approx(s.recall, abs=1e-12)
            assert rouge_l_f1(pred, ref, stemmer=stem) == pytest.approx(s.fmeasure, abs=1e-12)


# ---------------------------------------------------------------- EM / ES
# prompt region (label -100) deliberately mismatched: it must not count
LABELS = np.array([-100, -100, 5, 6, 7, 8])


def test_em_es_masked_prompt_region():
    pred = np.array([9, 9, 5, 0, 7, 8])  # labelled matches: T F T T
    assert exact_memorization(pred, LABELS) == pytest.approx(3 / 4)
    # last mismatch at labelled index 1 -> k* = 2 -> ES = 1 - 2/4
    assert extraction_strength(pred, LABELS) == pytest.approx(0.5)
    mask = np.array([0, 0, 1, 1, 1, 1])
    assert exact_memorization(pred, LABELS, mask) == pytest.approx(3 / 4)
    assert extraction_strength(pred, LABELS, mask.astype(bool)) == pytest.approx(0.5)


def test_es_no_suffix_match_is_zero_not_one_over_n():
    pred = np.array([9, 9, 5, 6, 7, 0])  # matches T T T F: the last token is wrong
    assert exact_memorization(pred, LABELS) == pytest.approx(3 / 4)
    assert extraction_strength(pred, LABELS) == 0.0  # reference loop gives 1/4 (llm.md §6 P14)


def test_es_full_and_first_token_only_mismatch():
    assert extraction_strength(np.array([0, 0, 5, 6, 7, 8]), LABELS) == 1.0
    assert exact_memorization(np.array([0, 0, 5, 6, 7, 8]), LABELS) == 1.0
    # only the first labelled token wrong -> k* = 1 -> ES = 3/4
    assert extraction_strength(np.array([0, 0, 1, 6, 7, 8]), LABELS) == pytest.approx(3 / 4)


def test_explicit_mask_overrides_default_and_counts_within_a():
    labels = np.array([1, 2, 3, 4, 5])
    pred = np.array([1, 0, 3, 0, 5])
    mask = np.array([True, False, True, False, True])  # A = positions 0, 2, 4: all match
    assert exact_memorization(pred, labels, mask) == 1.0
    assert extraction_strength(pred, labels, mask) == 1.0
    assert exact_memorization(pred, labels) == pytest.approx(3 / 5)  # default mask: everything labelled
    assert extraction_strength(pred, labels) == pytest.approx(1 - 4 / 5)


def test_em_es_batched():
    labels = np.array([[-100, 5, 6, 7, 8], [-100, -100, -100, 3, 4]])
    pred = np.array([[0, 5, 6, 7, 0], [0, 0, 0, 0, 4]])
    em = exact_memorization(pred, labels)
    es = extraction_strength(pred, labels)
    assert isinstance(em, np.ndarray) and em.shape == (2,)
    np.testing.assert_allclose(em, [3 / 4, 1 / 2])
    np.testing.assert_allclose(es, [0.0, 1 / 2])


def test_em_es_errors():
    with pytest.raises(ValueError, match="n_A = 0"):
        exact_memorization(np.array([1, 2]), np.array([-100, -100]))
    with pytest.raises(ValueError, match=r"row 1"):
        extraction_strength(np.array([[1, 2], [1, 2]]), np.array([[1, 2], [-100, -100]]))
    with pytest.raises(ValueError, match="shape"):
        exact_memorization(np.array([1, 2, 3]), np.array([1, 2]))
    with pytest.raises(ValueError, match="mask shape"):
        exact_memorization(np.array([1, 2]), np.array([1, 2]), np.array([True]))


def test_import_stays_torch_free():
    code = "import sys, unlearnkit, unlearnkit.metrics.tofu; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rouge_stemmer_only_stems_tokens_longer_than_3(monkeypatch):
    # fake Porter stemmer that strips a trailing "s": checks the len > 3 rule without needing nltk
    import types

    from unlearnkit.metrics import tofu

    class FakeStemmer:
        def stem(self, t):
            return t[:-1] if t.endswith("s") else t

    porter = types.ModuleType("nltk.stem.porter")
    porter.PorterStemmer = FakeStemmer
    stem = types.ModuleType("nltk.stem")
    stem.porter = porter
    nltk = types.ModuleType("nltk")
    nltk.stem = stem
    monkeypatch.setitem(sys.modules, "nltk", nltk)
    monkeypatch.setitem(sys.modules, "nltk.stem", stem)
    monkeypatch.setitem(sys.modules, "nltk.stem.porter", porter)
    tofu._porter_stemmer.cache_clear()
    try:
        assert rouge_tokenize("Cats has dogs its", stemmer=True) == ["cat", "has", "dog", "its"]
        # "cats" -> "cat" matches the reference "cat"; "has" (3 chars) is left alone and does not match "ha"
        assert rouge_l_recall("cats has", "cat ha", stemmer=True) == pytest.approx(1 / 2)
    finally:
        tofu._porter_stemmer.cache_clear()
