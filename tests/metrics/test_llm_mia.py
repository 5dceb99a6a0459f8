import math
import zlib

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from unlearnkit.metrics.llm_mia import (
    ATTACKS,
    attack_auc,
    gradnorm_score,
    loss_score,
    min_k_plus_plus_score,
    min_k_score,
    privleak,
    reference_score,
    rel_diff,
    token_distribution_stats,
    zlib_score,
)
from unlearnkit.tasks import get_task
from unlearnkit.testing.toy import tiny_causal_lm, tiny_lm_data

# Two examples, T = 6; example 0 scores 5 tokens, example 1 scores 3 (mask zeros hold junk that must be ignored).
LP = np.array([[-0.1, -2.0, -0.5, -3.0, -1.0, 99.0],
               [-4.0, 7.0, -0.2, -1.5, 7.0, 7.0]])
MASK = np.array([[1, 1, 1, 1, 1, 0],
                 [1, 0, 1, 1, 0, 0]], dtype=bool)


# ---------------------------------------------------------------- LOSS / MinK
def test_loss_score_masked_hand_values():
    got = loss_score(LP, MASK)
    np.testing.assert_allclose(got, [(0.1 + 2.0 + 0.5 + 3.0 + 1.0) / 5, (4.0 + 0.2 + 1.5) / 3], rtol=1e-12)
    # list form gives the same, and torch (bf16-safe) input too
    rows = [np.array([-0.1, -2.0, -0.5, -3.0, -1.0]), np.array([-4.0, -0.2, -1.5])]
    np.testing.assert_allclose(loss_score(rows), got, rtol=1e-12)
    np.testing.assert_allclose(loss_score(torch.tensor(LP), torch.tensor(MASK)), got, rtol=1e-12)
    assert loss_score(torch.tensor(LP, dtype=torch.bfloat16), torch.tensor(MASK)).dtype == np.float64


def test_min_k_floor_and_at_least_one():
    # k=0.4: ex0 n=5 -> ⌊2.0⌋ = 2 lowest {-3.0, -2.0}; ex1 n=3 -> ⌊1.2⌋ = 1 lowest {-4.0}
    np.testing.assert_allclose(min_k_score(LP, MASK, k=0.4), [2.5, 4.0], rtol=1e-12)
    # k=0.2: ex0 ⌊1.0⌋ = 1 -> 3.0; ex1 ⌊0.6⌋ = 0 -> at least 1 -> 4.0
    np.testing.assert_allclose(min_k_score(LP, MASK, k=0.2), [3.0, 4.0], rtol=1e-12)
    # k=0.6: ex0 3 lowest {-3,-2,-1} -> 2.0; ex1 ⌊1.8⌋ = 1 -> 4.0
    np.testing.assert_allclose(min_k_score(LP, MASK, k=0.6), [2.0, 4.0], rtol=1e-12)
    # k=1 is LOSS
    np.testing.assert_allclose(min_k_score(LP, MASK, k=1.0), loss_score(LP, MASK), rtol=1e-12)
    with pytest.raises(ValueError, match="k must"):
        min_k_score(LP, MASK, k=0.0)


def test_empty_example_raises():
    with pytest.raises(ValueError, match=r"token_logprobs\[1\] has no scored"):
        loss_score(LP, np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="mask shape"):
        loss_score(LP, MASK[:, :3])


# ---------------------------------------------------------------- zlib / reference
def test_zlib_against_zlib_directly():
    texts = ["The author was born in Paris.", "ééé — unicode ✓", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]
    loss = np.array([1.5, 2.0, 0.25])
    sizes = [len(zlib.compress(t.encode("utf-8"))) for t in texts]
    assert sizes[2] < len(texts[2])  # repetitive text compresses
    np.testing.assert_allclose(zlib_score(loss, texts), loss / np.array(sizes), rtol=1e-12)
    with pytest.raises(ValueError, match="one per avg_loss"):
        zlib_score(loss, texts[:2])


def test_reference_is_difference():
    np.testing.assert_allclose(reference_score([1.0, 2.5], [0.25, 3.0]), [0.75, -0.5], rtol=1e-12)
    with pytest.raises(ValueError, match="differ in shape"):
        reference_score([1.0, 2.0], [1.0])


# ---------------------------------------------------------------- MinK++
def test_token_distribution_stats_and_min_k_pp_by_hand():
    # one example, three positions, V = 3 explicit distributions
    probs = np.array([[[0.5, 0.25, 0.25], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]])
    targets = np.array([[0, 2, 1]])
    lp_full = np.log(probs)
    logp_y, mu, s2 = token_distribution_stats(lp_full, targets)
    exp_mu, exp_s2, exp_lpy = [], [], []
    for t in range(3):
        pr = probs[0, t]
        m = sum(q * math.log(q) for q in pr)
        exp_mu.append(m)
        exp_s2.append(sum(q * math.log(q) ** 2 for q in pr) - m * m)
        exp_lpy.append(math.log(pr[targets[0, t]]))
    np.testing.assert_allclose(mu[0], exp_mu, rtol=1e-12)
    np.testing.assert_allclose(s2[0], exp_s2, rtol=1e-10)
    np.testing.assert_allclose(logp_y[0], exp_lpy, rtol=1e-12)
    # explicit values for position 0: μ = −(0.5 ln2 + 0.5 ln4) = −1.5 ln2, E[(log p)²] = 0.5 ln²2 + 0.5·4 ln²2
    assert mu[0, 0] == pytest.approx(-1.5 * math.log(2), rel=1e-12)
    assert s2[0, 0] == pytest.approx(2.5 * math.log(2) ** 2 - 2.25 * math.log(2) ** 2, rel=1e-10)
    z = [(exp_lpy[t] - exp_mu[t]) / math.sqrt(exp_s2[t]) for t in range(3)]
    # k = 0.4, n = 3 -> ⌊1.2⌋ = 1 lowest z; k = 0.7 -> 2 lowest
    got = min_k_plus_plus_score(logp_y, mu, s2, k=0.4)
    assert got[0] == pytest.approx(-min(z), rel=1e-12)
    assert min_k_plus_plus_score(logp_y, mu, s2, k=0.7)[0] == pytest.approx(-np.mean(sorted(z)[:2]), rel=1e-12)
    # torch path agrees (float32)
    t_lp, t_mu, t_s2 = token_distribution_stats(torch.tensor(lp_full, dtype=torch.float32), torch.tensor(targets))
    np.testing.assert_allclose(t_mu, mu, rtol=1e-5)
    np.testing.assert_allclose(t_s2, s2, rtol=1e-4)
    np.testing.assert_allclose(t_lp, logp_y, rtol=1e-6)


def test_min_k_pp_degenerate_distribution_clamped_and_masked():
    # one-hot distribution (p = 0 entries -> −inf logs) gives μ = 0, σ² = 0 -> clamped to 1e-6; −100 target masked
    with np.errstate(divide="ignore"):
        lp_full = np.log(np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]]]))
        logp_y, mu, s2 = token_distribution_stats(lp_full, np.array([[0, -100]]))
    assert mu[0, 0] == 0.0 and s2[0, 0] == pytest.approx(1e-6)
    assert logp_y[0, 1] == 0.0 and s2[0, 1] == 1.0  # unscored position filled
    mask = np.array([[True, False]])
    assert min_k_plus_plus_score(logp_y, mu, s2, mask)[0] == pytest.approx(0.0, abs=1e-12)
    # the clamp also applies to sigma2 passed in directly: z = (−1 − 0) / sqrt(1e-6) = −1000
    assert min_k_plus_plus_score([np.array([-1.0])], [np.array([0.0])], [np.array([0.0])])[0] == pytest.approx(1e3)


# ---------------------------------------------------------------- AUC / privleak / rel_diff
def test_attack_auc_orientation_matches_sklearn():
    rng = np.random.default_rng(0)
    forget = np.round(rng.normal(0.0, 1.0, 40), 1)  # rounding creates ties
    holdout = np.round(rng.normal(0.7, 1.0, 30), 1)
    labels = np.r_[np.zeros(40), np.ones(30)]
    expected = roc_auc_score(labels, np.r_[forget, holdout])
    assert attack_auc(forget, holdout) == pytest.approx(expected, rel=1e-12)
    assert attack_auc(forget, holdout) > 0.5  # holdout has the higher (less member-like) scores
    # perfectly separated: forget low loss (memorised) -> AUC 1; swapped -> 0
    assert attack_auc([0.1, 0.2], [1.0, 2.0]) == 1.0
    assert attack_auc([1.0, 2.0], [0.1, 0.2]) == 0.0


def test_privleak_hand_values():
    assert privleak(0.7, 0.7) == 0.0
    # ((1−0.9) − (1−0.5)) / 0.5 × 100 = −80 (under-unlearning: AUC_u > AUC_ret)
    assert privleak(0.9, 0.5) == pytest.approx(-80.0)
    assert privleak(0.9, 0.5) < 0
    # ((1−0.3) − (1−0.6)) / 0.4 × 100 = 75 (over-unlearning)
    assert privleak(0.3, 0.6) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="auc_retain = 1"):
        privleak(0.5, 1.0)
    with pytest.raises(ValueError, match="auc_unlearned"):
        privleak(1.5, 0.5)


def test_rel_diff():
    assert rel_diff(0.6, 0.5) == pytest.approx(20.0)
    assert rel_diff(0.4, 0.5) == pytest.approx(-20.0)
    with pytest.raises(ValueError, match="ref = 0"):
        rel_diff(1.0, 0.0)


def test_attacks_dict():
    expected = {"mia_loss": loss_score, "mia_zlib": zlib_score, "mia_reference": reference_score,
                "mia_min_k": min_k_score, "mia_min_k_plus_plus": min_k_plus_plus_score, "mia_gradnorm": gradnorm_score}
    assert expected == ATTACKS


# ---------------------------------------------------------------- GradNorm
def _hand_gradnorm(model, data, p):
    out = []
    model.eval()
    for i in range(len(data)):
        row = data[i]
        ids, labels = row["input_ids"][None], row["labels"][None]
        logits = model(ids)[:, :-1]
        tgt = labels[:, 1:]
        m = tgt != -100
        logp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
        loss = -(logp[m]).mean()
        model.zero_grad(set_to_none=True)
        loss.backward()
        norms = [q.grad.norm(p) for q in model.parameters() if q.grad is not None]
        out.append(float(torch.stack(norms).mean()))
    model.zero_grad(set_to_none=True)
    return np.array(out)


@pytest.mark.parametrize("p", [2, 1, math.inf])
def test_gradnorm_matches_hand_autograd_loop(p):
    model, data = tiny_causal_lm(0), tiny_lm_data(0, n_retain=4, n_forget=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    got = gradnorm_score(model, get_task("causal_lm"), data.forget, p=p)
    assert model.training and all(mod.training for mod in model.modules())  # mode restored
    assert all(q.grad is None for q in model.parameters())  # no gradient left behind
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights unchanged
    expected = _hand_gradnorm(model, data.forget, p)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert len(set(np.round(got, 6))) == 3  # genuinely per example


def test_gradnorm_p_variants_differ_and_invalid_p():
    model, data = tiny_causal_lm(0), tiny_lm_data(0, n_retain=4, n_forget=2)
    task = get_task("causal_lm")
    s1, s2, sinf = (gradnorm_score(model, task, data.forget, p=p) for p in (1, 2, math.inf))
    assert np.all(s1 > s2) and np.all(s2 > sinf)  # ‖g‖₁ ≥ ‖g‖₂ ≥ ‖g‖∞ per tensor
    with pytest.raises(ValueError, match="p must be"):
        gradnorm_score(model, task, data.forget, p=3)


class _DropoutLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lm, self.drop = tiny_causal_lm(0), nn.Dropout(0.5)

    def forward(self, input_ids, attention_mask=None):
        return self.drop(self.lm(input_ids))


def test_gradnorm_eval_mode_no_dropout_noise_and_submodule_modes_restored():
    model, data = _DropoutLM(), tiny_lm_data(0, n_retain=4, n_forget=2)
    model.train()
    model.lm.layers[0].eval()  # mixed modes must come back exactly
    modes = [mod.training for mod in model.modules()]
    existing = [torch.full_like(q, 3.0) for q in model.parameters()]
    for q, g in zip(model.parameters(), existing, strict=True):
        q.grad = g.clone()
    task = get_task("causal_lm")
    a = gradnorm_score(model, task, data.forget)
    b = gradnorm_score(model, task, data.forget)
    np.testing.assert_array_equal(a, b)  # dropout would make these differ in train mode
    assert [mod.training for mod in model.modules()] == modes
    for q, g in zip(model.parameters(), existing, strict=True):
        assert torch.equal(q.grad, g)  # pre-existing grads untouched (nothing accumulated)
