"""MIMU's graph helpers (shared/specs/mimu.md §3–§5) against hand computations and explicit references: the edge-free
rook aggregation against an edge list, the GCN on both, the features, the prior, the relaxed top-K and the loss."""

import copy
import itertools
import math
import statistics
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.methods._mimu_graph import (
    MaskGCN,
    edge_list,
    edge_list_aggregate,
    gumbel_noise,
    hard_topk_mask,
    likelihood_term,
    log_prior,
    mimu_loss,
    node_features,
    prior_term,
    relaxed_topk,
    rook_degree,
    rook_mean_aggregate,
    weight_gradient,
)

SHAPES = [(1, 2), (2, 1), (1, 7), (7, 1), (2, 2), (3, 5), (6, 8), (9, 4)]
MASKED = "3.weight"  # W [6, 8] of the tiny classifier below


def classifier(seed=0):
    """A bias-free MLP [B, 5] -> [B, 3] whose masked layer `3` is Linear(8 -> 6): W [6, 8], N = 48."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 6, bias=False),
                         nn.ReLU(), nn.Linear(6, 3, bias=False)).eval()


def batch(size=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, 5, generator=g), torch.randint(0, 3, (size,), generator=g)


def layer_signals(model, x, y):
    """(a [B, 8], o [B, 6], ∂L/∂o [B, 6]) of the masked layer, L = CE(f(x_b), y_b) per sample (summed: the samples
    do not interact in eval mode, so ∂Σ_b L_b / ∂o_b = ∂L_b / ∂o_b)."""
    seen = {}

    def hook(_mod, inp, out):
        out.retain_grad()
        seen.update(a=inp[0].detach(), o=out)

    handle = model[3].register_forward_hook(hook)
    try:
        F.cross_entropy(model(x), y, reduction="sum").backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    return seen["a"], seen["o"].detach(), seen["o"].grad


def brute_edges(m, n, include_self=False):
    """{(source, target)} of the rook's graph by enumeration: nodes sharing a row or a column."""
    nodes = list(itertools.product(range(m), range(n)))
    return {(i2 * n + j2, i * n + j) for (i, j), (i2, j2) in itertools.product(nodes, nodes)
            if ((i == i2) != (j == j2)) or (include_self and (i, j) == (i2, j2))}


# --- aggregation --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("m, n", [(1, 1), (1, 3), (3, 1), (3, 4)])
def test_edge_list_is_the_rook_graph(m, n, include_self):
    edges = edge_list(m, n, include_self=include_self)
    pairs = list(map(tuple, edges.T.tolist()))
    assert len(pairs) == len(set(pairs)) == m * n * (m + n - 2) + include_self * m * n
    assert set(pairs) == brute_edges(m, n, include_self)


def test_edge_count_of_the_mlp_layer():
    assert edge_list(64, 128).shape == (2, 1_556_480)  # §3: mn(m + n − 2)


def test_rook_aggregation_by_hand():
    h = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).unsqueeze(-1)         # [2, 2, 1], degree 2
    want = torch.tensor([[(2 + 3) / 2, (1 + 4) / 2], [(1 + 4) / 2, (2 + 3) / 2]]).unsqueeze(-1)
    torch.testing.assert_close(rook_mean_aggregate(h), want)
    with_self = torch.tensor([[(1 + 2 + 3) / 3, (1 + 2 + 4) / 3], [(1 + 3 + 4) / 3, (2 + 3 + 4) / 3]]).unsqueeze(-1)
    torch.testing.assert_close(rook_mean_aggregate(h, include_self=True), with_self)


@pytest.mark.parametrize("mode", ["index_add", "sparse"])
@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("m, n", SHAPES)
def test_rook_aggregation_equals_edge_list(m, n, include_self, mode):
    h = torch.randn(2, 3, m, n, 5, generator=torch.Generator().manual_seed(m * 10 + n))   # leading dims [2, 3]
    got = rook_mean_aggregate(h, include_self=include_self)
    want = edge_list_aggregate(h, edge_list(m, n, include_self=include_self), mode=mode)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert rook_degree(m, n, include_self=include_self) == m + n - 2 + include_self


def test_degree_zero_is_rejected():
    """A 1×1 layer has no rook neighbour: the edge-free aggregation refuses it (§4); the edge list is empty and its
    empty mean is 0 (PyG's convention); with the node itself counted the mean is the node."""
    h = torch.randn(1, 1, 3)
    with pytest.raises(ValueError, match="1x1 layer has no rook neighbours"):
        rook_mean_aggregate(h)
    with pytest.raises(ValueError, match="1x1"):
        MaskGCN()(torch.randn(1, 1, 4))
    assert edge_list(1, 1).shape == (2, 0)
    torch.testing.assert_close(edge_list_aggregate(h, edge_list(1, 1)), torch.zeros_like(h))
    torch.testing.assert_close(rook_mean_aggregate(h, include_self=True), h)
    with pytest.raises(ValueError, match="mode"):
        edge_list_aggregate(h, edge_list(1, 1), mode="dense")


# --- GCN ----------------------------------------------------------------------------------------------------------

def test_gcn_has_the_reference_parameter_count():
    assert sum(p.numel() for p in MaskGCN().parameters()) == 4385                       # §4
    assert sum(p.numel() for p in MaskGCN(rounds=1).parameters()) == 2 * 4 * 32 + 33    # projection + readout
    with pytest.raises(ValueError, match="activation"):
        MaskGCN(activation="tanh")
    with pytest.raises(ValueError, match="rounds"):
        MaskGCN(rounds=0)


@pytest.mark.parametrize("mode", ["index_add", "sparse"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("m, n", [(6, 8), (1, 5), (5, 1)])
def test_gcn_equal_on_both_aggregations(m, n, activation, mode):
    """Same weights, the two aggregations: same logits, same parameter gradients, every gradient non-zero."""
    torch.manual_seed(0)
    gcn = MaskGCN(activation=activation)
    x = torch.randn(2, m, n, 4)
    reference = partial(edge_list_aggregate, edges=edge_list(m, n), mode=mode)
    weights = torch.randn(2, m * n)
    z_free, z_edge = gcn(x), gcn(x, reference)
    assert z_free.shape == (2, m * n)
    torch.testing.assert_close(z_free, z_edge, atol=1e-5, rtol=0)
    g_free = torch.autograd.grad((weights * z_free).sum(), list(gcn.parameters()))
    g_edge = torch.autograd.grad((weights * z_edge).sum(), list(gcn.parameters()))
    for a, b in zip(g_free, g_edge, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert a.abs().sum() > 0


def test_gcn_by_an_explicit_neighbour_loop():
    """§4 written out node by node: h' = A·mean(neighbours' h) + B·h; projection, then 2 × (conv → sigmoid),
    then the readout; the neighbours enumerated from the rook's-graph definition."""
    torch.manual_seed(0)
    gcn, m, n = MaskGCN(), 2, 3
    x = torch.randn(m, n, 4)
    nbrs = {t: [s for s, t2 in brute_edges(m, n) if t2 == t] for t in range(m * n)}

    def conv(layer, h):                                                 # h: list of N vectors
        means = [torch.stack([h[s] for s in nbrs[t]]).mean(0) for t in range(m * n)]
        return [layer.A.weight @ means[t] + layer.B.weight @ h[t] for t in range(m * n)]

    h = conv(gcn.proj_in, list(x.reshape(m * n, 4)))
    for layer in gcn.convs:
        h = [torch.sigmoid(v) for v in conv(layer, h)]
    want = torch.stack([gcn.proj_out.weight[0] @ v + gcn.proj_out.bias[0] for v in h])
    torch.testing.assert_close(gcn(x), want, atol=1e-6, rtol=0)
    # the `aggregate` argument is what the layers use: another graph (self-loops added) gives other logits
    with_self = gcn(x, partial(edge_list_aggregate, edges=edge_list(m, n, include_self=True)))
    assert (with_self - want).abs().max() > 1e-3


def test_gcn_logits_are_row_major():
    """Logit i·n + j is the readout of node (i, j): permuting the grid's rows permutes the logit blocks."""
    torch.manual_seed(0)
    gcn, x = MaskGCN(), torch.randn(3, 4, 4)
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(gcn(x[perm]), gcn(x).view(3, 4)[perm].flatten(), atol=1e-6, rtol=0)


# --- features -----------------------------------------------------------------------------------------------------

def test_node_features_by_hand():
    a, o = [1.0, 4.0, 0.0], [2.0, -1.0]                               # n = 3 inputs, m = 2 outputs
    w = [[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]]
    g = [[0.1, 0.0, -0.3], [0.2, 0.2, 0.9]]
    feats = node_features(torch.tensor(a), torch.tensor(o), torch.tensor(w), torch.tensor(g))
    assert feats.shape == (2, 3, 4)
    raw = [[[a[j], o[i], w[i][j], g[i][j]] for j in range(3)] for i in range(2)]   # F[i, j] = [a_j, o_i, W_ij, g_ij]
    for c in range(4):
        values = [raw[i][j][c] for i in range(2) for j in range(3)]                # the channel over the N = 6 nodes
        mean, std = statistics.mean(values), statistics.stdev(values)
        for i, j in itertools.product(range(2), range(3)):
            assert feats[i, j, c].item() == pytest.approx((raw[i][j][c] - mean) / (std + 1e-8), abs=1e-6)


def test_node_features_are_per_sample():
    torch.manual_seed(0)
    a, o, w, g = torch.randn(3, 8), torch.randn(3, 6), torch.randn(6, 8), torch.randn(3, 6, 8)
    batched = node_features(a, o, w, g)
    assert batched.shape == (3, 6, 8, 4)
    for b in range(3):
        torch.testing.assert_close(batched[b], node_features(a[b], o[b], w, g[b]))
    constant = node_features(a[0], o[0], w, torch.zeros(6, 8))                     # a zero gradient stays finite
    assert torch.isfinite(constant).all() and (constant[..., 3] == 0).all()
    with pytest.raises(ValueError, match="want"):
        node_features(a, o, w.T, g)
    with pytest.raises(ValueError, match="at least 2"):
        node_features(torch.ones(1), torch.ones(1), torch.ones(1, 1), torch.ones(1, 1))


def test_weight_gradient_is_the_per_sample_gradient():
    model, (x, y) = classifier(), batch()
    a, _o, out_grad = layer_signals(model, x, y)
    got = weight_gradient(out_grad, a)                                              # [B, 6, 8]
    for b in range(len(y)):
        want, = torch.autograd.grad(F.cross_entropy(model(x[b:b + 1]), y[b:b + 1]), model[3].weight)
        torch.testing.assert_close(got[b], want)


# --- prior and sampler --------------------------------------------------------------------------------------------

def test_log_prior():
    w = torch.tensor([[1.0, -3.0], [0.0, 4.0]])
    torch.testing.assert_close(log_prior(w), torch.log(torch.tensor([1 / 8, 3 / 8, 0.0, 4 / 8]) + 1e-12))
    g = torch.stack([torch.tensor([[2.0, 0.0], [-2.0, 4.0]]), torch.zeros(2, 2)])   # [2 samples, 2, 2]
    want = torch.log(torch.tensor([[0.25, 0.0, 0.25, 0.5], [0.25, 0.25, 0.25, 0.25]]) + 1e-12)  # zero -> uniform
    torch.testing.assert_close(log_prior(w, g, kind="gradient"), want)
    assert torch.isfinite(log_prior(w)).all()
    with pytest.raises(ValueError, match="allowed: weight, gradient"):
        log_prior(w, kind="fisher")
    with pytest.raises(ValueError, match="needs the per-sample gradient"):
        log_prior(w, kind="gradient")


def test_relaxed_topk_sums_to_about_k():
    z = torch.linspace(3.0, -3.0, 61)                 # spacing 0.1 = τ; sorted, so z_(K) = z[K − 1]
    k = 20
    mask = relaxed_topk(z, k)
    want = sum(1 / (1 + math.exp(-(z[i].item() - z[k - 1].item()) / 0.1)) for i in range(61))
    assert mask.sum().item() == pytest.approx(want, rel=1e-5)
    assert abs(mask.sum().item() - k) < 1
    assert mask[k - 1].item() == pytest.approx(0.5)
    batched = relaxed_topk(torch.randn(5, 100, generator=torch.Generator().manual_seed(0)) * 10, 30)
    assert ((batched.sum(-1) - 30).abs() < 1.5).all()


def test_hard_topk_picks_exactly_k():
    z = torch.tensor([[0.3, 2.0, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])     # ties included
    for k in (1, 2, 3, 5):
        hard = hard_topk_mask(z, k)
        assert (hard.sum(-1) == k).all() and set(hard.unique().tolist()) <= {0.0, 1.0}
    assert hard_topk_mask(z, 2)[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    for bad in (0, 6):
        with pytest.raises(ValueError, match=r"K must be in \[1, N = 5\]"):
            relaxed_topk(z, bad)


@pytest.mark.parametrize("sampler", ["relaxed_topk", "gumbel"])
def test_straight_through_is_hard_forward_soft_backward(sampler):
    z = torch.randn(3, 40, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.randn(3, 40)
    st = relaxed_topk(z, 7, sampler=sampler, straight_through=True, generator=torch.Generator().manual_seed(5))
    soft = relaxed_topk(z, 7, sampler=sampler, generator=torch.Generator().manual_seed(5))
    assert (st.sum(-1) == 7).all() and set(st.detach().unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(st.detach(), (soft.detach() >= 0.5).float())    # for distinct g: top-K ⟺ σ ≥ ½
    g_st, = torch.autograd.grad((weights * st).sum(), z)
    g_soft, = torch.autograd.grad((weights * soft).sum(), z)
    torch.testing.assert_close(g_st, g_soft)


def test_gumbel_sampler_is_seeded_and_tends_to_the_hard_top_k():
    z = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    one = relaxed_topk(z, 10, sampler="gumbel", generator=torch.Generator().manual_seed(3))
    again = relaxed_topk(z, 10, sampler="gumbel", generator=torch.Generator().manual_seed(3))
    other = relaxed_topk(z, 10, sampler="gumbel", generator=torch.Generator().manual_seed(4))
    assert torch.equal(one, again) and not torch.equal(one, other)
    assert not torch.equal(one, relaxed_topk(z, 10, temperature=1.0))   # the noise is there
    noise = gumbel_noise(z.shape, generator=torch.Generator().manual_seed(3))
    hard = hard_topk_mask(z + noise, 10)
    cold = relaxed_topk(z, 10, sampler="gumbel", temperature=1e-6, generator=torch.Generator().manual_seed(3))
    # every entry but the K-th (σ(0) = ½) is within 1e-4 of the hard top-K of z + the same Gumbel noise
    off = (cold - hard).abs()
    assert ((off < 1e-4) | ((off - 0.5).abs() < 1e-6)).all() and ((off - 0.5).abs() < 1e-6).sum() == 4
    warmer = [(relaxed_topk(z, 10, sampler="gumbel", temperature=t, generator=torch.Generator().manual_seed(3))
               - hard).abs().sum().item() for t in (1.0, 0.1, 0.01)]
    assert warmer[0] > warmer[1] > warmer[2]
    with pytest.raises(ValueError, match="temperature"):
        relaxed_topk(z, 10, temperature=0.0)
    with pytest.raises(ValueError, match="allowed: relaxed_topk, gumbel"):
        relaxed_topk(z, 10, sampler="sinkhorn")


# --- loss ---------------------------------------------------------------------------------------------------------

def test_prior_term_by_hand():
    z, mask = torch.tensor([0.0, math.log(3.0)]), torch.tensor([0.5, 1.0])           # Q = (1/4, 3/4)
    log_pi = torch.log(torch.tensor([0.5, 0.5]))
    want = 0.5 * (math.log(0.25) - math.log(0.5)) + 1.0 * (math.log(0.75) - math.log(0.5))
    assert prior_term(z, mask, log_pi).item() == pytest.approx(want, rel=1e-6)
    # with the mask held fixed, ∂/∂z_k Σ_i m_i·log softmax(z)_i = m_k − Q_k·Σ_i m_i
    z = z.requires_grad_()
    grad, = torch.autograd.grad(prior_term(z, mask, log_pi), z)
    torch.testing.assert_close(grad, mask - torch.tensor([0.25, 0.75]) * mask.sum())


def test_likelihood_term_equals_an_explicitly_masked_model():
    """Value and ∂/∂mask against a copy of the classifier whose layer holds W ⊙ m_b as a plain parameter:
    ∂L/∂m = W ⊙ ∂L/∂W' at W' = W ⊙ m (chain rule)."""
    model, (x, y) = classifier(), batch()
    w = model[3].weight.detach()
    mask = torch.rand(4, 48, generator=torch.Generator().manual_seed(2), requires_grad=True)
    got = likelihood_term(model, MASKED, mask, x, y)
    got_grad, = torch.autograd.grad(got.sum(), mask)
    for b in range(4):
        masked = copy.deepcopy(model)
        masked[3].weight = nn.Parameter(w * mask[b].detach().view(6, 8))
        want = F.cross_entropy(masked(x[b:b + 1]), y[b:b + 1])
        want_grad, = torch.autograd.grad(want, masked[3].weight)
        assert got[b].item() == pytest.approx(want.item(), rel=1e-6)
        torch.testing.assert_close(got_grad[b], (w * want_grad).flatten())
    assert all(p.grad is None for p in model.parameters())     # the classifier is read, not trained
    with pytest.raises(ValueError, match="no parameter 'head.weight'"):
        likelihood_term(model, "head.weight", mask, x, y)
    with pytest.raises(ValueError, match=r"mask \(4, 47\)"):
        likelihood_term(model, MASKED, mask[:, :47], x, y)


@pytest.mark.parametrize("sampler", ["relaxed_topk", "gumbel"])
def test_likelihood_term_trains_the_gcn(sampler):
    """The reference's bug (§10 M1): term 1 detached, so only the prior term reached the GCN. Here the gradient of
    term 1 w.r.t. every GCN parameter is non-zero, and the loss is term 1 + term 2 with their gradients adding up."""
    model, (x, y) = classifier(), batch()
    w = model[3].weight.detach()
    a, o, out_grad = layer_signals(model, x, y)
    grad = weight_gradient(out_grad, a)
    feats = node_features(a, o, w, grad)                                           # [4, 6, 8, 4]
    torch.manual_seed(0)
    gcn = MaskGCN()
    params = list(gcn.parameters())
    z = gcn(feats)                                                                  # [4, 48]
    mask = relaxed_topk(z, 40, sampler=sampler, generator=torch.Generator().manual_seed(0))
    log_pi = log_prior(w)
    term1 = likelihood_term(model, MASKED, mask, x, y)
    term2 = prior_term(z, mask, log_pi)
    g1 = torch.autograd.grad(term1.mean(), params, retain_graph=True)
    named = dict(zip((n for n, _ in gcn.named_parameters()), g1, strict=True))
    assert all(g.abs().sum() > 0 for n, g in named.items() if n != "proj_out.bias")
    # the readout bias shifts all logits alike and the mask is shift-invariant: no gradient, up to rounding
    assert named["proj_out.bias"].abs().item() < 1e-6
    g2 = torch.autograd.grad(term2.mean(), params, retain_graph=True)
    loss = mimu_loss(model, MASKED, x, y, z, mask, log_pi)
    assert loss.item() == pytest.approx((term1 + term2).mean().item(), rel=1e-6)
    g = torch.autograd.grad(loss, params)
    for total, one, two in zip(g, g1, g2, strict=True):
        torch.testing.assert_close(total, one + two)
    # the gradient prior, per sample, gives a finite loss too
    assert torch.isfinite(mimu_loss(model, MASKED, x, y, z, mask, log_prior(w, grad, kind="gradient")))
