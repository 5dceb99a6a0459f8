"""MIMU (shared/specs/mimu.md) and its baselines on real tiny models: the stages (graph batches, GCN training, class
logits, the forget mask against a hand-computed example), `mimu` end to end, `random_mask`, `sft_randomize`, and
every bad input rejected before any capture or GCN step. The registry-wide conformance suite runs the three methods
on the toy `mlp_mimu` (their `toy_model`)."""

import copy
import dataclasses
import time
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from unlearnkit.data import UnlearnData
from unlearnkit.methods import create_method
from unlearnkit.methods._mimu_graph import MaskGCN, likelihood_term, log_prior, mimu_loss, relaxed_topk
from unlearnkit.methods.mimu import (
    TOY_MODEL,
    apply_mask,
    class_logits,
    forget_mask,
    graph_batches,
    pure_class_mask,
    representatives,
    train_gcn,
)
from unlearnkit.models import build_model
from unlearnkit.tasks import get_task
from unlearnkit.testing import forget_loss, memorized

TASK = get_task("classifier")
LAYER = "features.fc2"
SMALL = ("mlp_mimu", {"hidden": (8, 6)})     # W [6, 8], N = 48


def trained(model=TOY_MODEL, scenario="class"):
    """(a tiny mlp_mimu trained on the 4-cluster toy, its data): class scenario = forget every training point of
    class 0 (the toy of the conformance suite, W [16, 32], N = 512, by default)."""
    return memorized("classifier", scenario=scenario, model=model)


def train_xy(data):
    """The training samples D_r ∪ D_f as tensors (x [160, 8], y [160])."""
    return (torch.cat([data.retain.tensors[0], data.forget.tensors[0]]),
            torch.cat([data.retain.tensors[1], data.forget.tensors[1]]))


def others_equal(a, b, but=f"{LAYER}.weight"):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k != but)


# --- stages -------------------------------------------------------------------------------------------------------

def test_graph_batches_are_per_sample_whatever_the_batching():
    model, data = trained(SMALL)
    x, y = train_xy(data)
    x, y = x[:10], y[:10]
    big = list(graph_batches(model, LAYER, x, y, batch_size=64))
    small = list(graph_batches(model, LAYER, x, y, batch_size=3))
    assert [tuple(f.shape) for f in big] == [(10, 6, 8, 4)]
    assert [len(f) for f in small] == [3, 3, 3, 1]
    torch.testing.assert_close(torch.cat(small), big[0])
    # channel 3 is the z-scored per-sample gradient: one sample's own gradient, not the batch's
    one = next(graph_batches(model, LAYER, x[4:5], y[4:5], batch_size=1))
    torch.testing.assert_close(one[0], big[0][4])


def test_train_gcn_loss_decreases_and_is_seeded():
    model, data = trained(SMALL)
    x, y = train_xy(data)
    x, y = x[::5], y[::5]                                       # 32 samples, every step on all of them
    gcn, losses = train_gcn(model, LAYER, x, y, top_k=24, steps=25, batch_size=32, lr=3e-2)
    assert len(losses) == 25 and isinstance(gcn, MaskGCN) and not gcn.training
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 < float("inf")
    again, losses_again = train_gcn(model, LAYER, x, y, top_k=24, steps=25, batch_size=32, lr=3e-2)
    assert losses_again == losses
    assert all(torch.equal(p, q) for p, q in zip(gcn.parameters(), again.parameters(), strict=True))
    # the classifier is read, not trained
    fresh, _ = trained(SMALL)
    assert others_equal(model, fresh, but=None) and all(p.grad is None for p in model.parameters())


def test_train_gcn_step_is_one_adamw_step_on_the_full_loss():
    """One train_gcn step = one AdamW step on mimu_loss of the drawn batch, whose likelihood term (not detached,
    §10 M1) has a non-zero gradient w.r.t. the GCN's parameters (test_mimu_graph checks the loss itself)."""
    model, data = trained(SMALL)
    x, y = train_xy(data)
    x, y = x[:12], y[:12]
    gcn, _ = train_gcn(model, LAYER, x, y, top_k=30, steps=1, batch_size=12, seed=3)
    torch.manual_seed(3)
    ref = MaskGCN()
    feats = next(graph_batches(model, LAYER, x, y, batch_size=12))
    z = ref(feats)
    mask = relaxed_topk(z, 30)
    term1 = likelihood_term(model.eval(), f"{LAYER}.weight", mask, x, y).mean()
    g1 = torch.autograd.grad(term1, list(ref.parameters()), retain_graph=True)
    assert all(g.abs().sum() > 0 for g, (n, _) in zip(g1, ref.named_parameters(), strict=True) if n != "proj_out.bias")
    optimizer = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=5e-4)
    mimu_loss(model, f"{LAYER}.weight", x, y, z, mask, log_prior(model.features.fc2.weight)).backward()
    optimizer.step()
    # the batch is all 12, in another order; the readout bias gets a gradient of 0 up to rounding, which Adam's first
    # step (≈ −lr·sign(g)) turns into ±lr: it is left out
    got, want = dict(gcn.named_parameters()), dict(ref.named_parameters())
    for name in got.keys() - {"proj_out.bias"}:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_class_logits_average_the_representatives():
    model, data = trained(SMALL)
    x, y = train_xy(data)
    torch.manual_seed(0)
    gcn = MaskGCN().eval()
    first = representatives(y, 4, 3, seed=None)
    assert [c.tolist() for c in first] == [(y == c).nonzero().flatten()[:3].tolist() for c in range(4)]
    seeded = representatives(y, 4, 3, seed=1)
    assert [c.tolist() for c in seeded] == [c.tolist() for c in representatives(y, 4, 3, seed=1)]
    assert all(set(s.tolist()) <= set((y == c).nonzero().flatten().tolist()) for c, s in enumerate(seeded))
    z = class_logits(gcn, model, LAYER, x, y, n_representatives=3, seed=None)
    assert z.shape == (4, 48)
    with torch.no_grad():
        for c, index in enumerate(first):
            want = gcn(next(graph_batches(model, LAYER, x[index], y[index], batch_size=8))).mean(0)
            torch.testing.assert_close(z[c], want)
    with pytest.raises(ValueError, match=r"no training sample of class\(es\) \[0\]"):
        class_logits(gcn, model, LAYER, x[y != 0], y[y != 0])


# --- the forget mask, by hand -------------------------------------------------------------------------------------

# C = 3 classes, N = 6 weights, K = 3, forget class 0:
#   M_0 = 111000, M_1 = 011100, M_2 = 001110  ->  s = M_0 − mean(M_1, M_2) = [1, .5, 0, −1, −.5, 0]
#   two weights with s > 0; the s = 0 tie between 2 and 5 goes to s_soft: 5 (≈ −2e-5) before 2 (≈ −.5)
LOGITS = torch.tensor([[5., 4., 3., 2., 1., 0.],
                       [0., 5., 4., 3., 2., 1.],
                       [0., 1., 5., 4., 3., 2.]])
RANKING = [0, 1, 5, 2, 4, 3]


def zeros(keep):
    return sorted((keep == 0).nonzero().flatten().tolist())


def test_forget_mask_by_hand():
    soft = torch.sigmoid((LOGITS - 3) / 0.1)                      # P_c, z_(K) = 3 in every row
    s_soft = soft[0] - soft[1:].mean(0)
    assert s_soft[5] > s_soft[2]
    for kappa in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keep, info = forget_mask(LOGITS, 0, top_k=3, kappa=kappa)
        assert keep.dtype == LOGITS.dtype and set(keep.tolist()) <= {0.0, 1.0}
        assert zeros(keep) == sorted(RANKING[:kappa]) and info["kappa_used"] == kappa
        assert info["num_forget_specific"] == 2 and info["top_k"] == 3 and info["num_weights"] == 6
    keep, info = forget_mask(LOGITS, 0, top_k=0.5, kappa=2 / 6)   # fractions of N
    assert zeros(keep) == [0, 1] and info["kappa"] == 2
    with pytest.warns(UserWarning, match=r"kappa = 3 exceeds the 2 forget-specific weights \(s > 0\) at top_k = 3"):
        forget_mask(LOGITS, 0, top_k=3, kappa=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # capped: no warning
        keep, info = forget_mask(LOGITS, 0, top_k=3, kappa=5, cap_to_forget_specific=True)
    assert zeros(keep) == [0, 1] and info["kappa"] == 5 and info["kappa_used"] == 2
    # forget class 2: M_2 − mean(M_0, M_1) = [−.5, −1, 0, .5, 1, 0]
    keep, info = forget_mask(LOGITS, 2, top_k=3, kappa=2)
    assert zeros(keep) == [3, 4] and info["num_forget_specific"] == 2


def test_set_difference_zeroes_exactly_the_forget_only_weights():
    keep, info = forget_mask(LOGITS, 0, top_k=3, strategy="set_difference")
    assert zeros(keep) == [0] and info["kappa_used"] == 1 and info["num_forget_specific"] == 2   # weight 1 is in M_1
    keep, _ = forget_mask(LOGITS, 1, top_k=4, strategy="set_difference")   # M_0 = 1111.., M_2 = ..1111
    assert zeros(keep) == []
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 40, generator=g)
    keep, info = forget_mask(z, 3, top_k=25, kappa=None, strategy="set_difference")
    hard = torch.zeros_like(z).scatter(1, z.topk(25, dim=1).indices, 1.0).bool()
    want = hard[3] & ~hard[[0, 1, 2, 4]].any(0)
    assert torch.equal(keep == 0, want) and info["kappa_used"] == int(want.sum()) > 0


def test_pure_class_mask_keeps_the_forget_class_top_k():
    assert pure_class_mask(LOGITS, 0, 3).tolist() == [1, 1, 1, 0, 0, 0]
    assert pure_class_mask(LOGITS, 2, 0.5).tolist() == [0, 0, 1, 1, 1, 0]


def test_apply_mask_zeroes_in_place_and_checks_the_mask():
    model = build_model("mlp_mimu", seed=0, input_shape=(8,), num_classes=4, hidden=(8, 6))
    before = copy.deepcopy(model)
    keep = torch.ones(48)
    keep[[0, 9, 47]] = 0
    assert apply_mask(model, LAYER, keep) is model
    w, w0 = model.features.fc2.weight, before.features.fc2.weight
    assert torch.equal(w, w0 * keep.view(6, 8)) and (w[0, 0], w[1, 1], w[5, 7]) == (0, 0, 0)
    assert others_equal(model, before)
    with pytest.raises(ValueError, match=r"keep_mask has 47 entries; 'features.fc2' has 48 weights \(6, 8\)"):
        apply_mask(model, LAYER, keep[:47])
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        apply_mask(model, LAYER, keep * 0.5)


# --- mimu end to end ----------------------------------------------------------------------------------------------

def test_mimu_zeroes_exactly_kappa_weights_and_is_seeded():
    original, data = trained()
    w0 = original.features.fc2.weight
    assert (w0 != 0).all()
    method = create_method("mimu", kappa=128)                   # a quarter of N = 512; the spec's K = 8000/8192
    with pytest.warns(UserWarning, match=r"kappa = 128 exceeds the \d+ forget-specific weights"):
        out = method.unlearn(copy.deepcopy(original), data, TASK)
    zeroed = out.features.fc2.weight == 0
    assert int(zeroed.sum()) == 128 == method.kappa_used_ == method.kappa_
    assert torch.equal(out.features.fc2.weight[~zeroed], w0[~zeroed]) and others_equal(out, original)
    assert method.top_k_ == 500 and method.forget_class_ == 0 and method.masked_layer_ == LAYER
    assert len(method.gcn_losses_) == 32 and method.class_logits_.shape == (4, 512)
    assert 0 < method.num_forget_specific_ < 128
    assert torch.equal(method.keep_mask_.view(16, 32), ~zeroed)
    # same seed -> same weights; the test split is never read
    twin = create_method("mimu", kappa=128)
    with pytest.warns(UserWarning, match="exceeds"):
        rerun = twin.unlearn(copy.deepcopy(original), dataclasses.replace(data, test=None), TASK)
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), rerun.state_dict().values(), strict=True))


@pytest.mark.filterwarnings("ignore:kappa = 5 exceeds")
def test_mimu_strategies_and_forget_class_sources():
    original, data = trained(SMALL)
    quick = {"steps": 2, "batch_size": 16, "graph_samples": 32, "n_representatives": 2}
    method = create_method("mimu", strategy="set_difference", top_k=40, kappa=10_000, **quick)   # κ unused
    out = method.unlearn(copy.deepcopy(original), data, TASK)
    assert method.kappa_ is None and int((out.features.fc2.weight == 0).sum()) == method.kappa_used_
    capped = create_method("mimu", top_k=40, kappa=48, cap_to_forget_specific=True, **quick)
    capped.unlearn(copy.deepcopy(original), data, TASK)
    assert capped.kappa_used_ == capped.num_forget_specific_ < 48
    # no forget_classes: the one label of the forget set; an explicit forget_class wins
    unnamed = dataclasses.replace(data, forget_classes=())
    inferred = create_method("mimu", kappa=5, **quick)
    inferred.unlearn(copy.deepcopy(original), unnamed, TASK)
    assert inferred.forget_class_ == 0
    explicit = create_method("mimu", kappa=5, forget_class=2, **quick)
    explicit.unlearn(copy.deepcopy(original), data, TASK)
    assert explicit.forget_class_ == 2


# --- baselines ----------------------------------------------------------------------------------------------------

def test_random_mask_zeroes_exactly_kappa_seeded_weights():
    original, data = trained()
    outs = {}
    for seed, kappa in ((0, 100), (0, 100), (1, 100), (0, 0.25)):
        method = create_method("random_mask", kappa=kappa, seed=seed)
        out = method.unlearn(copy.deepcopy(original), data, TASK)
        zeroed = out.features.fc2.weight == 0
        assert int(zeroed.sum()) == method.kappa_ == (100 if kappa == 100 else 128)
        assert torch.equal(out.features.fc2.weight[~zeroed], original.features.fc2.weight[~zeroed])
        assert others_equal(out, original)
        outs.setdefault((seed, kappa), []).append(zeroed)
    assert torch.equal(*outs[0, 100]) and not torch.equal(outs[0, 100][0], outs[1, 100][0])


def tiny_resnet_with_bn_stats():
    model = build_model("resnet18_mimu", seed=0, input_shape=(3, 32, 32), num_classes=3, width=12)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def test_sft_randomize_trains_only_the_masked_layer_with_batchnorm_frozen():
    original = tiny_resnet_with_bn_stats()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g)
    data = UnlearnData(forget=TensorDataset(x[:8], torch.zeros(8, dtype=torch.long)),
                       retain=TensorDataset(x[8:], y[8:]), num_classes=3, forget_classes=(0,))
    method = create_method("sft_randomize", max_steps=2, batch_size=4)
    out = method.unlearn(copy.deepcopy(original), data, TASK)
    assert not torch.equal(out.features.fc.weight, original.features.fc.weight)
    assert others_equal(out, original, but="features.fc.weight")   # every other weight and every BN buffer
    assert method.steps_ == 2 and method.masked_layer_ == "features.fc"
    assert all(p.requires_grad for p in out.parameters()) and not out.training


def test_sft_randomize_modes_and_seed():
    original, data = trained()
    runs = {}
    for mode in ("randomize_forget", "randomize_forget", "finetune_retain", "randomize_forget_and_finetune_retain"):
        method = create_method("sft_randomize", mode=mode, max_steps=4)
        out = method.unlearn(copy.deepcopy(original), data, TASK)
        assert others_equal(out, original) and method.steps_ == (8 if "_and_" in mode else 4)
        runs.setdefault(mode, []).append(out)
    assert method.uses == ("forget", "retain")
    assert create_method("sft_randomize", mode="finetune_retain").uses == ("retain",)
    first, second = runs["randomize_forget"]
    assert torch.equal(first.features.fc2.weight, second.features.fc2.weight)
    # random labels on class 0 raise its loss
    assert forget_loss(first, data, TASK) > 100 * forget_loss(original, data, TASK)


# --- bad input, before any work -----------------------------------------------------------------------------------

def one_by_one():
    return nn.Sequential(nn.Linear(8, 1, bias=False), nn.Linear(1, 1, bias=False), nn.Linear(1, 4, bias=False))


BAD = {
    "kappa_above_n": ("mimu", {"kappa": 513}, None, r"kappa=513 gives 513 weights, outside \[0, N\] = \[0, 512\]"),
    "kappa_fraction": ("mimu", {"kappa": 1.5}, None, r"kappa=1.5: a float is a fraction .* must be in \[0, 1\]"),
    "top_k_zero": ("mimu", {"top_k": 0}, None, r"top_k=0 gives 0 weights, outside \(0, N\] = \[1, 512\]"),
    "top_k_above_n": ("mimu", {"top_k": 600}, None, r"top_k=600 gives 600 weights, outside \(0, N\]"),
    "no_forget_class": ("mimu", {"forget_class": 4}, None,
                        r"forget_class=4 does not exist: the model has 4 classes, 0..3"),
    "biased_head": ("mimu", {}, lambda: build_model("mlp", seed=0, input_shape=(8,), num_classes=4),
                    r"SmallClassifier does not fit MIMU's head contract .*'head' \(Linear\) has a bias"),
    "one_by_one": ("mimu", {}, one_by_one, r"'1' is a 1x1 layer: MIMU's graph needs at least 2 weights"),
    "other_layer": ("mimu", {"masked_layer": "features.fc1"}, None,
                    r"masked_layer='features.fc1' is not the masked layer .* here 'features.fc2'"),
    "random_mask_kappa": ("random_mask", {"kappa": 513}, None, r"kappa=513 gives 513 weights"),
    "sft_head": ("sft_randomize", {}, lambda: build_model("mlp", seed=0, input_shape=(8,), num_classes=4),
                 r"does not fit MIMU's head contract"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_rejected_before_any_work(case):
    name, options, build, message = BAD[case]
    original, data = trained()
    model = build() if build else copy.deepcopy(original)
    before = copy.deepcopy(model)
    slow = {"steps": 100_000} if name == "mimu" else {"max_steps": 100_000} if name == "sft_randomize" else {}
    method = create_method(name, **options, **slow)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        method.unlearn(model, data, TASK)
    assert time.perf_counter() - start < 2.0                     # no GCN step, no training step
    assert others_equal(model, before, but=None)


def test_mimu_needs_one_forget_class():
    original, data = trained(scenario="random")                 # wrong labels of several classes, no forget_classes
    with pytest.raises(ValueError, match=r"MIMU forgets one class, but the forget set holds \d labels"):
        create_method("mimu", steps=100_000).unlearn(original, data, TASK)
    both = dataclasses.replace(trained()[1], forget_classes=(0, 1))
    with pytest.raises(ValueError, match=r"data.forget_classes = \(0, 1\): set forget_class"):
        create_method("mimu").unlearn(original, both, TASK)


def test_stage_functions_check_their_inputs():
    model, data = trained(SMALL)
    x, y = train_xy(data)
    with pytest.raises(ValueError, match=r"top_k=49 gives 49 weights, outside \(0, N\] = \[1, 48\]"):
        train_gcn(model, LAYER, x, y, top_k=49)
    with pytest.raises(ValueError, match=r"kappa=7 gives 7 weights, outside \[0, N\] = \[0, 6\]"):
        forget_mask(LOGITS, 0, top_k=3, kappa=7)
    with pytest.raises(ValueError, match=r"forget_class=3 does not exist: the model has 3 classes, 0..2"):
        forget_mask(LOGITS, 3, top_k=3, kappa=1)
    with pytest.raises(ValueError, match="strategy='rank' needs kappa"):
        forget_mask(LOGITS, 0, top_k=3)
    with pytest.raises(ValueError, match="unknown strategy 'union'"):
        forget_mask(LOGITS, 0, top_k=3, kappa=1, strategy="union")
    with pytest.raises(ValueError, match=r"unknown sampler 'sinkhorn'"):
        train_gcn(model, LAYER, x, y, top_k=10, sampler="sinkhorn")
    with pytest.raises(ValueError, match="x and y must hold the same S >= 1 samples"):
        graph_batches(model, LAYER, x[:3], y[:4], batch_size=2)        # at the call, before the first batch
