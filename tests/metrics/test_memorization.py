import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from unlearnkit.metrics.memorization import (
    binary_acc_proxy,
    confidence_proxy,
    entanglement_score,
    es_groups,
    feldman_zhang,
    holdout_kl_score,
    load_score_file,
    loss_curvature,
    max_conf_proxy,
    neg_entropy_proxy,
    rank_correlations,
    subset_masks,
)


# --------------------------------------------------------------------------------------------------
# Feldman–Zhang
# --------------------------------------------------------------------------------------------------
def test_subset_masks_sizes_and_determinism():
    m = subset_masks(10, 50, fraction=0.7, seed=3)
    assert m.shape == (50, 10) and m.dtype == bool
    assert (m.sum(axis=1) == 7).all()
    assert np.array_equal(m, subset_masks(10, 50, fraction=0.7, seed=3))
    assert not np.array_equal(m, subset_masks(10, 50, fraction=0.7, seed=4))
    # rounding half up: 0.25 * 10 = 2.5 -> 3; 0.7 * 7 = 4.9 -> 5
    assert (subset_masks(10, 4, fraction=0.25).sum(axis=1) == 3).all()
    assert (subset_masks(7, 4, fraction=0.7).sum(axis=1) == 5).all()
    # every example is drawn about 70% of the time
    big = subset_masks(20, 2000, seed=0)
    assert np.allclose(big.mean(axis=0), 0.7, atol=0.04)


@pytest.mark.parametrize(
    ("args", "match"),
    [((1, 5), "n"), ((10, 0), "k"), ((10, 5, 1.0), "fraction"), ((10, 5, 0.0), "fraction"),
     ((10, 5, 0.01), "subsets of 0"), ((10, 5, 0.99), "subsets of 10")],
)
def test_subset_masks_errors(args, match):
    with pytest.raises(ValueError, match=match):
        subset_masks(*args)


def test_feldman_zhang_hand_example():
    # 4 runs, 3 examples
    masks = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [0, 0, 1]], dtype=bool)
    correct = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0]])
    # ex0: in runs 0,1 -> 1,1 ; out runs 2,3 -> 0,1   => 1 - 0.5 = 0.5
    # ex1: in runs 0,2 -> 1,1 ; out runs 1,3 -> 0,0   => 1 - 0 = 1
    # ex2: in runs 1,2,3 -> 1,1,0 ; out run 0 -> 0    => 2/3 - 0
    mem = feldman_zhang(masks, correct)
    assert mem == pytest.approx([0.5, 1.0, 2.0 / 3.0], abs=1e-15)


def test_feldman_zhang_matches_brute_force_loop():
    rng = np.random.default_rng(0)
    masks = subset_masks(40, 30, seed=1)
    correct = rng.random((30, 40)) < 0.6
    mem = feldman_zhang(masks, correct)
    for i in range(40):
        ins = [correct[k, i] for k in range(30) if masks[k, i]]
        outs = [correct[k, i] for k in range(30) if not masks[k, i]]
        assert mem[i] == pytest.approx(np.mean(ins) - np.mean(outs), abs=1e-12)


def test_feldman_zhang_correct_only_when_included_is_one():
    masks = subset_masks(25, 40, seed=2)
    correct = masks.copy()  # every example right exactly when trained on
    correct[:, 0] = True  # example 0: always right -> 0
    correct[:, 1] = ~masks[:, 1]  # example 1: right only when held out -> -1
    mem = feldman_zhang(masks, correct.astype(int))
    assert mem[0] == 0.0 and mem[1] == -1.0
    assert np.all(mem[2:] == 1.0)


def test_feldman_zhang_missing_examples():
    masks = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)  # ex0 in all runs, ex2 in none
    correct = np.ones((2, 3))
    mem = feldman_zhang(masks, correct)
    assert math.isnan(mem[0]) and math.isnan(mem[2]) and mem[1] == 0.0
    with pytest.raises(ValueError, match=r"2 example\(s\).*indices 0, 2"):
        feldman_zhang(masks, correct, on_missing="raise")
    with pytest.raises(ValueError, match="on_missing"):
        feldman_zhang(masks, correct, on_missing="drop")


def test_feldman_zhang_validation():
    m = np.ones((2, 3), dtype=bool)
    with pytest.raises(ValueError, match="same shape|shape of masks"):
        feldman_zhang(m, np.ones((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        feldman_zhang(np.ones(3, dtype=bool), np.ones(3))
    with pytest.raises(ValueError, match="0/1"):
        feldman_zhang(np.full((2, 3), 2), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"in \[0, 1\].*run 1, example 2"):
        feldman_zhang(m, np.array([[1, 0, 1], [1, 1, 3.0]]))


# --------------------------------------------------------------------------------------------------
# learning-event proxies
# --------------------------------------------------------------------------------------------------
def _probs():
    # E=2 epochs, N=3 examples, C=3 classes; labels [0, 1, 2]
    p = np.array([
        [[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.2, 0.3, 0.5]],
        [[0.9, 0.1, 0.0], [0.1, 0.6, 0.3], [0.6, 0.3, 0.1]],
    ])
    return p, np.array([0, 1, 2])


def test_confidence_max_conf_binary_acc_hand_values():
    p, y = _probs()
    assert confidence_proxy(p, y) == pytest.approx([-(0.7 + 0.9) / 2, -(0.25 + 0.6) / 2, -(0.5 + 0.1) / 2])
    assert max_conf_proxy(p, y) == pytest.approx([-(0.7 + 0.9) / 2, -(0.5 + 0.6) / 2, -(0.5 + 0.6) / 2])
    # argmax: ex0 right twice; ex1 wrong then right; ex2 right then wrong
    assert binary_acc_proxy(p, y) == pytest.approx([-1.0, -0.5, -0.5])


def test_neg_entropy_proxy_matches_scipy_entropy_and_keeps_zero_probs():
    p, y = _probs()
    expected = scipy.stats.entropy(p, axis=-1).mean(axis=0)  # 0 log 0 = 0 in scipy
    got = neg_entropy_proxy(p, y)
    assert got == pytest.approx(expected, rel=1e-12)
    assert np.isfinite(got).all()  # the exact 0.0 in epoch 1 of example 0 does not drop the row
    assert got[0] < got[2]  # the confident example is the less memorised one


def test_proxies_drop_non_finite_rows():
    p, y = _probs()
    p = p.copy()
    p[1, 0, :] = np.nan  # epoch 1 of example 0 diverged
    p[:, 2, 0] = np.inf  # example 2 has no finite epoch
    conf = confidence_proxy(p, y)
    assert conf[0] == pytest.approx(-0.7)  # mean over epoch 0 only
    assert conf[1] == pytest.approx(-(0.25 + 0.6) / 2)
    assert math.isnan(conf[2])
    ent = neg_entropy_proxy(p, y)
    assert ent[0] == pytest.approx(scipy.stats.entropy([0.7, 0.2, 0.1]))
    assert math.isnan(ent[2])
    assert binary_acc_proxy(p, y)[0] == -1.0 and math.isnan(max_conf_proxy(p, y)[2])


def test_proxies_orientation_on_random_softmax():
    # an example the model gets right with high confidence every epoch scores lower than a hard one
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 2, 4))
    logits[:, 0, 1] += 8.0  # easy example (label 1)
    y = np.array([1, 1])
    p = scipy.special.softmax(logits, axis=-1)
    for proxy in (confidence_proxy, max_conf_proxy, neg_entropy_proxy, binary_acc_proxy):
        s = proxy(p, y)
        assert s[0] < s[1], proxy.__name__


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [(np.ones((2, 3)), [0, 0], "3-D"),
     (np.full((1, 2, 3), 1 / 3), [0, 3], r"\[0, 3\)"),
     (np.full((1, 2, 3), 1 / 3), [0], "length 1 but there are 2 examples"),
     (np.full((1, 2, 3), 1 / 3), [0.5, 1], "integers"),
     (np.array([[[2.0, -1.0, 0.0]]]), [0], "softmax probabilities"),
     (np.array([[[0.5, 0.2, 0.1]]]), [0], "sum 0.8")],
)
def test_proxies_validation(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        confidence_proxy(probs, labels)


def test_holdout_kl_score_matches_rel_entr_and_hand_value():
    rng = np.random.default_rng(1)
    p = scipy.special.softmax(rng.normal(size=(6, 5)), axis=1)
    q = scipy.special.softmax(rng.normal(size=(6, 5)), axis=1)
    expected = 0.5 * (scipy.special.rel_entr(p, q).sum(1) + scipy.special.rel_entr(q, p).sum(1))
    assert holdout_kl_score(p, q) == pytest.approx(expected, rel=1e-12)
    # hand value: p=(1/2,1/2), q=(1/4,3/4): sym KL/2 = ½ Σ (p−q) log(p/q) = ½ (¼ log 2 − ¼ log(2/3))
    hand = 0.5 * (0.25 * math.log(2) - 0.25 * math.log(2 / 3))
    assert holdout_kl_score([[0.5, 0.5]], [[0.25, 0.75]])[0] == pytest.approx(hand, rel=1e-14)
    assert holdout_kl_score(p, p) == pytest.approx(np.zeros(6), abs=1e-15)
    # zeros: matching zeros contribute nothing; mass against a zero is infinite (as scipy)
    zp, zq = np.array([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]), np.array([[0.0, 0.25, 0.75], [0.5, 0.5, 0.0]])
    ref = 0.5 * (scipy.special.rel_entr(zp, zq).sum(1) + scipy.special.rel_entr(zq, zp).sum(1))
    got = holdout_kl_score(zp, zq)
    assert got[0] == pytest.approx(ref[0]) and math.isinf(got[1]) and math.isinf(ref[1])


def test_holdout_kl_score_validation():
    with pytest.raises(ValueError, match="same shape"):
        holdout_kl_score(np.full((2, 3), 1 / 3), np.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="finite; rows 1"):
        holdout_kl_score([[0.5, 0.5], [np.nan, 1.0]], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="softmax probabilities"):
        holdout_kl_score([[2.0, 1.0]], [[0.5, 0.5]])


# --------------------------------------------------------------------------------------------------
# loss curvature
# --------------------------------------------------------------------------------------------------
class _Quadratic(torch.nn.Module):
    """Per-example ½ xᵀAx (A symmetric), plus a parameter so the module has a device."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = torch.nn.Parameter(a)

    def forward(self, x):
        return 0.5 * torch.einsum("bi,ij,bj->b", x, self.a, x)


def _identity_loss(out, y):
    return out


def _z(g: np.ndarray, h: float) -> np.ndarray:
    s = np.sign(g)
    s[~s.any(axis=1)] = 1.0
    return h * s / np.linalg.norm(s, axis=1, keepdims=True)


def test_loss_curvature_quadratic_is_exactly_norm_az():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(5, 5))
    a = b + b.T
    x = rng.normal(size=(7, 5))
    x[3] = 0.0  # zero gradient: z = h·1/√d
    model = _Quadratic(torch.tensor(a, dtype=torch.float64))
    h = 0.05
    got = loss_curvature(model, torch.tensor(x), torch.zeros(7), h=h, loss_fn=_identity_loss)
    z = _z(x @ a, h)  # ∇(½xᵀAx) = Ax
    expected = np.linalg.norm(z @ a, axis=1)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[3] == pytest.approx(np.linalg.norm(a.sum(axis=1)) * h / math.sqrt(5), rel=1e-12)


def test_loss_curvature_linear_loss_is_zero():
    lin = torch.nn.Linear(6, 1).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    got = loss_curvature(lin, x, torch.zeros(9), loss_fn=lambda out, y: out[:, 0])
    assert np.all(got == 0.0)


def test_loss_curvature_cross_entropy_closed_form_for_linear_classifier():
    # logits = Wx + b, L = CE: ∇_x L = Wᵀ(softmax(Wx+b) − e_y), so ∇L(x+z) − ∇L(x) = Wᵀ(p(x+z) − p(x)) exactly
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    h = 0.3
    got = loss_curvature(lin, x, y, h=h)
    w, bias = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    xn, yn = x.numpy(), y.numpy()
    p0 = scipy.special.softmax(xn @ w.T + bias, axis=1)
    g0 = (p0 - np.eye(3)[yn]) @ w
    z = _z(g0, h)
    p1 = scipy.special.softmax((xn + z) @ w.T + bias, axis=1)
    expected = np.linalg.norm((p1 - p0) @ w, axis=1)
    assert got == pytest.approx(expected, rel=1e-10)
    # small h: ≈ ‖H z‖ with H = Wᵀ(diag p − ppᵀ)W, so curv/h tends to a limit
    small = loss_curvature(lin, x, y, h=1e-4) / 1e-4
    hz = np.stack([w.T @ (np.diag(p) - np.outer(p, p)) @ w @ zi
                   for p, zi in zip(p0, _z(g0, 1.0), strict=True)])
    assert small == pytest.approx(np.linalg.norm(hz, axis=1), rel=1e-3)


def test_loss_curvature_cnn_batched_equals_one_at_a_time_and_restores_mode():
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Dropout(0.5),
        torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5),
    )
    net.train()
    x = torch.randn(6, 3, 8, 8)
    y = torch.randint(0, 5, (6,))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    full = loss_curvature(net, x, y)
    assert net.training  # mode restored
    for k, v in net.state_dict().items():  # BatchNorm running stats untouched (eval mode)
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())
    assert full.shape == (6,) and np.isfinite(full).all() and (full >= 0).all() and (full > 0).any()
    chunked = loss_curvature(net, x, y, batch_size=4)
    single = np.concatenate([loss_curvature(net, x[i : i + 1], y[i : i + 1]) for i in range(6)])
    assert chunked == pytest.approx(full, rel=1e-4, abs=1e-9)
    assert single == pytest.approx(full, rel=1e-4, abs=1e-9)
    # works under no_grad and with numpy inputs
    with torch.no_grad():
        again = loss_curvature(net, x.numpy(), y.numpy())
    assert again == pytest.approx(full, rel=1e-5)


def test_loss_curvature_validation():
    lin = torch.nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="h must be"):
        loss_curvature(lin, x, y, h=0.0)
    with pytest.raises(ValueError, match="floating"):
        loss_curvature(lin, torch.ones(4, 3, dtype=torch.long), y)
    with pytest.raises(ValueError, match="N=4"):
        loss_curvature(lin, x, y[:3])
    with pytest.raises(ValueError, match=r"per-example losses of shape \[4\]"):
        loss_curvature(lin, x, y, loss_fn=lambda out, t: out.sum())
    with pytest.raises(ValueError, match="batch_size"):
        loss_curvature(lin, x, y, batch_size=0)


# --------------------------------------------------------------------------------------------------
# rank correlations, score files
# --------------------------------------------------------------------------------------------------
def test_rank_correlations_matches_spearmanr_with_pairwise_nan_drop():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=50)
    a = ref + rng.normal(scale=0.5, size=50)
    b = -ref.copy()
    b[[3, 7]] = np.nan
    ref_nan = ref.copy()
    ref_nan[10] = np.nan
    out = rank_correlations({"a": a, "b": b, "mono": np.exp(ref)}, ref_nan)
    assert list(out) == ["a", "b", "mono"]
    keep_a = ~np.isnan(ref_nan)
    rho, p = scipy.stats.spearmanr(a[keep_a], ref[keep_a])
    assert out["a"] == pytest.approx((rho, p), rel=1e-12)
    keep_b = keep_a & ~np.isnan(b)
    assert keep_b.sum() == 47
    assert out["b"][0] == pytest.approx(-1.0)
    assert out["b"][1] == pytest.approx(scipy.stats.spearmanr(b[keep_b], ref[keep_b]).pvalue)
    assert out["mono"][0] == pytest.approx(1.0)
    few = rank_correlations({"x": [1.0, np.nan, 2.0]}, [1.0, 2.0, 3.0])["x"]
    assert math.isnan(few[0]) and math.isnan(few[1])
    with pytest.raises(ValueError, match="'a' has shape"):
        rank_correlations({"a": a[:10]}, ref)


def test_load_score_file(tmp_path):
    mem = np.linspace(-0.1, 1.0, 12)
    path = tmp_path / "cifar100_infl_matrix.npz"
    np.savez(path, tr_mem=mem, tr_labels=np.arange(12), tt_labels=np.arange(4))
    assert np.array_equal(load_score_file(path, key="tr_mem"), mem)
    assert load_score_file(str(path), key="tr_labels").dtype == np.float64
    with pytest.raises(ValueError, match=r"3 arrays; pass key= one of \['tr_labels', 'tr_mem', 'tt_labels'\]"):
        load_score_file(path)
    with pytest.raises(ValueError, match=r"no key 'memorization'; keys: \['tr_labels', 'tr_mem', 'tt_labels'\]"):
        load_score_file(path, key="memorization")
    one = tmp_path / "one.npz"
    np.savez(one, memorization=mem)
    assert np.array_equal(load_score_file(one), mem)
    npy = tmp_path / "s.npy"
    np.save(npy, mem)
    assert np.array_equal(load_score_file(npy), mem)
    with pytest.raises(ValueError, match="key must be None"):
        load_score_file(npy, key="tr_mem")
    bad = mem.copy()
    bad[[2, 5]] = [np.nan, np.inf]
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"2 value\(s\) are not, at indices 2, 5"):
        load_score_file(tmp_path / "bad.npy")
    np.save(tmp_path / "two_d.npy", np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"1-D.*\(3, 2\)"):
        load_score_file(tmp_path / "two_d.npy")
    (tmp_path / "s.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"allowed: \.npy, \.npz"):
        load_score_file(tmp_path / "s.csv")


# --------------------------------------------------------------------------------------------------
# entanglement score
# --------------------------------------------------------------------------------------------------
def test_entanglement_score_hand_example():
    r = np.array([[0.0, 0.0], [2.0, 0.0]])  # μ_R = (1,0), mean sq. dist 1
    s = np.array([[5.0, 1.0], [5.0, -1.0], [5.0, 0.0]])  # μ_S = (5,0), mean sq. dist 2/3
    # μ = (3,0); (‖μ_R − μ‖² + ‖μ_S − μ‖²)/2 = (4 + 4)/2 = 4
    assert entanglement_score(r, s) == pytest.approx((1 + 2 / 3) / 4, rel=1e-14)


def test_entanglement_score_brute_force_and_invariances():
    rng = np.random.default_rng(0)
    r, s = rng.normal(size=(30, 4)), rng.normal(loc=0.7, size=(11, 4))
    mu_r, mu_s = r.mean(0), s.mean(0)
    mu = (mu_r + mu_s) / 2
    num = np.mean([np.sum((z - mu_r) ** 2) for z in r]) + np.mean([np.sum((z - mu_s) ** 2) for z in s])
    den = (np.sum((mu_r - mu) ** 2) + np.sum((mu_s - mu) ** 2)) / 2
    es = entanglement_score(r, s)
    assert es == pytest.approx(num / den, rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    shift = rng.normal(size=4)
    assert entanglement_score(3.0 * r @ q + shift, 3.0 * s @ q + shift) == pytest.approx(es, rel=1e-10)
    # tighter, farther-apart sets are less entangled
    assert entanglement_score(0.5 * r, 0.5 * s + 5.0) < es


def test_entanglement_score_edge_cases():
    assert math.isinf(entanglement_score([[0.0], [2.0]], [[1.0]]))  # equal means
    assert math.isnan(entanglement_score([[1.0]], [[1.0]]))
    with pytest.raises(ValueError, match="same dimension"):
        entanglement_score(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        entanglement_score(np.ones(3), np.ones((2, 3)))


def test_es_groups_cut_is_zero_based_equal_chunks():
    # 1-D features with global mean 0; distances |v| are 0..15 (a permutation), one leftover with n_chunks=5
    rng = np.random.default_rng(0)
    dist = rng.permutation(16).astype(float)
    sign = np.where(np.arange(16) % 2 == 0, 1.0, -1.0)
    vals = sign * dist
    vals -= vals.mean()  # make the global mean exactly 0 ... and keep it easy to recompute
    order = np.argsort(np.abs(vals), kind="stable")
    groups = es_groups(vals[:, None], n_chunks=5, chunks=(0, 3, 4))
    assert [g.tolist() for g in groups] == [order[0:3].tolist(), order[9:12].tolist(), order[12:15].tolist()]
    assert order[15] not in np.concatenate(groups)  # N mod n_chunks farthest examples are in no chunk
    # default: 15 chunks, (3, 12, 14), each N // 15 long
    feats = rng.normal(size=(45, 3))
    low, mid, high = es_groups(feats)
    d = np.linalg.norm(feats - feats.mean(0), axis=1)
    full = np.argsort(d, kind="stable")
    assert low.tolist() == full[9:12].tolist()
    assert mid.tolist() == full[36:39].tolist() and high.tolist() == full[42:45].tolist()


def test_es_groups_ties_and_errors():
    feats = np.array([[1.0], [-1.0], [1.0], [-1.0]])  # all at distance 1: ties by index
    assert [g.tolist() for g in es_groups(feats, n_chunks=2, chunks=(0, 1))] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match=r"chunk index 2 is out of range; allowed 0..1"):
        es_groups(feats, n_chunks=2, chunks=(0, 2))
    with pytest.raises(ValueError, match=r"n_chunks must lie in \[1, N=4\]"):
        es_groups(feats, n_chunks=5, chunks=(0,))
