"""JiT (arXiv 2402.01401) and SSD / LFSSD (arXiv 2308.07707, 2402.19308) against brute-force references."""

import copy
import dataclasses
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from unlearnkit.cache import TENSORS_FILE, CacheCorruptionWarning, cache_root
from unlearnkit.config import ConfigError
from unlearnkit.data import UnlearnData
from unlearnkit.methods import create_method
from unlearnkit.methods._importance import dampen, importance_sums, reduce_mean
from unlearnkit.methods._influence import per_example_grads_loop
from unlearnkit.methods.jit import jit_loss, jit_loss_loop
from unlearnkit.tasks import get_task
from unlearnkit.testing import memorized

TASK = get_task("classifier")


def net(seed=0, bn=False):
    """[B, 2, 2, 2] -> [B, 3]; dropout (JiT must run it in eval mode) or BatchNorm (faithful runs it in train mode)."""
    torch.manual_seed(seed)
    mid = nn.BatchNorm1d(6) if bn else nn.Dropout(0.5)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), mid, nn.Tanh(), nn.Linear(6, 3))


def inputs(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g)


def brute_jit(model, x, noise):
    """mean_i (1/N) Σ_j ‖f(x_i) − f(x_i + ξ_ij)‖ / ‖ξ_ij‖, one example and one draw at a time."""
    out = model(x)
    terms = [[torch.linalg.vector_norm(out[i] - model((x[i] + noise[j, i])[None])[0].detach())
              / noise[j, i].flatten().norm() for j in range(noise.shape[0])] for i in range(len(x))]
    return torch.stack([torch.stack(t).mean() for t in terms]).mean()


def test_batched_loss_equals_loop_and_brute_force():
    model, (x, _) = net().eval(), inputs(5)
    noise = 0.3 * torch.randn(7, *x.shape)  # [N, B, ...]
    f = model
    assert torch.allclose(jit_loss(f, x, noise), brute_jit(model, x, noise), atol=1e-6)
    bounds = (torch.tensor([-0.5, -1.0]).view(2, 1, 1), torch.tensor([0.5, 1.0]).view(2, 1, 1))
    for kw in ({}, {"faithful": True}, {"bounds": bounds}):
        a, b = jit_loss(f, x, noise, **kw), jit_loss_loop(f, x, noise, **kw)
        ga = torch.autograd.grad(a, list(model.parameters()))
        gb = torch.autograd.grad(b, list(model.parameters()))
        assert abs(a.item() - b.item()) < 1e-6
        assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(ga, gb, strict=True))
    assert not torch.allclose(jit_loss(f, x, noise), jit_loss(f, x, noise, bounds=bounds))


def test_noise_norm_is_over_the_flattened_input():
    x, _ = inputs(4)  # f = 3·flatten(x): ‖f(x) − f(x+ξ)‖ / ‖ξ‖ = 3 exactly when ‖ξ‖ is over all C·H·W entries
    f = lambda t: 3 * t.flatten(1)  # noqa: E731
    assert jit_loss(f, x, torch.randn(5, *x.shape)).item() == pytest.approx(3.0, abs=1e-5)


def _run(method, model, x):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = method.unlearn(model, UnlearnData(forget=TensorDataset(x, torch.zeros(len(x), dtype=torch.long))), TASK)
    return out, " ".join(str(w.message) for w in caught)


def reference(model, x, faithful, lr):
    """Two hand-written steps on x[:4], x[4:]. Default: eval mode, batch mean, this step's gradient only.
    Faithful: train mode (BatchNorm batch statistics), batch-min/max clamp, batch sum, gradients accumulated."""
    ref, gen, acc, losses = copy.deepcopy(model).train(faithful), torch.Generator().manual_seed(5), None, []
    for batch in (x[:4], x[4:]):
        noise = 0.4 * torch.randn(3, *batch.shape, generator=gen)  # [N, B, ...]
        if faithful:
            out_x, total = ref(batch), 0.0
            for draw in noise:
                noisy = (batch + draw).clamp(batch.min(), batch.max())
                with torch.no_grad():
                    noisy_out = ref(noisy)
                total = total + ((out_x - noisy_out).norm(dim=1) / (noisy - batch).flatten(1).norm(dim=1)).sum()
            loss = total / 3
        else:
            loss = brute_jit(ref, batch, noise)
        losses.append(loss.item())
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        acc = [a + g for a, g in zip(acc, grads, strict=True)] if faithful and acc else grads
        with torch.no_grad():
            for p, g in zip(ref.parameters(), acc, strict=True):
                p -= lr * g  # plain SGD
    return ref, losses


@pytest.mark.parametrize("faithful", [False, True])
def test_two_updates_match_a_hand_written_reference(faithful):
    model, (x, _) = net(bn=faithful), inputs(8)
    method = create_method("jit", lr=0.3, n_noise=3, batch_size=4, sigma=0.4, seed=5, faithful=faithful)
    out, said = _run(method, copy.deepcopy(model), x)
    assert ("BatchNorm" in said) == faithful  # a BN model is warned about
    ref, losses = reference(model, x, faithful, lr=0.3)
    assert method.losses_ == pytest.approx(losses, rel=1e-6)
    for a, b in zip(out.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_jit_rejects_bad_values_before_any_work():
    model, (x, _) = net(), inputs(4)
    for kwargs, message in (({"clamp": [(0.0, 1.0)] * 3}, "3 \\(low, high\\) pairs.*shape \\(2, 2, 2\\)"),
                            ({"clamp": [(1.0, 0.0)]}, "low must be < high"),
                            ({"clamp": [(0.0, 1.0)], "faithful": True}, "must be None")):
        with pytest.raises(ValueError, match=message):
            _run(create_method("jit", **kwargs), model, x)
    for bad in ({"n_noise": 0}, {"sigma": 0.0}, {"lr": -1.0}):
        with pytest.raises(ConfigError, match=list(bad)[0]):
            create_method("jit", **bad)
    _, said = _run(create_method("jit", lr=1e30, batch_size=2, n_noise=2), net(), x)  # diverges at step 2
    assert "non-finite at step 1" in said


# ---------------------------------------------------------------------------------------------------------- SSD
def data_of(x, y, n_forget=3, **kw):
    return UnlearnData(forget=TensorDataset(x[:n_forget], y[:n_forget]), retain=TensorDataset(x[n_forget:],
                       y[n_forget:]), **kw)


def token_net():
    """A Linear on [B, 2, 2, 2] rows (not one row per example): the closed form does not apply."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3))


@pytest.mark.parametrize("label_free", [False, True])
@pytest.mark.parametrize("make, method", [(net, "linear"), (partial(net, bn=True), "vmap"), (token_net, "vmap")])
def test_per_sample_importance_is_the_mean_of_per_example_statistics(label_free, make, method):
    model, (x, y) = make().eval(), inputs(10)
    got = importance_sums(model, TASK, TensorDataset(x, y), kind="sample", label_free=label_free, batch_size=4)
    names = [n for n, _ in model.named_parameters()]
    if label_free:  # ‖f(x)‖₂², |∇|
        per = [torch.autograd.grad(model(x[i:i + 1]).pow(2).sum(), list(model.parameters())) for i in range(10)]
        expected = {n: torch.stack([g[k] for g in per]).abs().mean(0) for k, n in enumerate(names)}
    else:  # CE, ∇²: the diagonal Fisher from a per-example autograd loop
        expected = {n: g.pow(2).mean(0) for n, g in per_example_grads_loop(model, TASK, TensorDataset(x, y),
                                                                            names).items()}
    assert (got.count, got.method) == (10, method)
    for n in names:
        assert torch.allclose(got.sums[n] / got.count, expected[n], atol=1e-6)


@pytest.mark.parametrize("label_free", [False, True])
def test_batch_importance_is_the_mean_of_minibatch_statistics(label_free):
    model, (x, y) = net().eval(), inputs(10)
    got = importance_sums(model, TASK, TensorDataset(x, y), kind="batch", label_free=label_free, batch_size=4)
    stat = torch.abs if label_free else torch.square
    batches = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    per = [torch.autograd.grad(model(b).pow(2).sum(1).mean() if label_free else F.cross_entropy(model(b), t),
                               list(model.parameters())) for b, t in batches]
    assert got.count == 3
    for k, (n, _) in enumerate(model.named_parameters()):
        assert torch.allclose(got.sums[n] / 3, torch.stack([stat(g[k]) for g in per]).mean(0), atol=1e-6)


@pytest.mark.parametrize("kind", ["sample", "batch"])
def test_shards_of_processes_sum_to_the_single_process_importance(kind):
    model, (x, y) = net().eval(), inputs(10)
    ds, common = TensorDataset(x, y), {"kind": kind, "label_free": False, "batch_size": 3}
    whole, parts = importance_sums(model, TASK, ds, **common), [
        importance_sums(model, TASK, ds, rank=r, world=2, **common) for r in (0, 1)]
    assert parts[0].count + parts[1].count == whole.count
    assert all(torch.allclose(parts[0].sums[n] + parts[1].sums[n], whole.sums[n], atol=1e-6) for n in whole.sums)
    assert reduce_mean(whole.sums, whole.count).keys() == whole.sums.keys()


def test_dampening_rule_element_by_element():
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]]))
        layer.bias.copy_(torch.tensor([1.0, -1.0, 2.0]))
    imp_d = {"weight": torch.tensor([[1.0, 1.0], [1.0, 0.0], [2.0, 1.0]]), "bias": torch.tensor([0.0, 1.0, 1.0])}
    imp_f = {"weight": torch.tensor([[20.0, 5.0], [3.0, 0.0], [100.0, 11.0]]), "bias": torch.tensor([1.0, 1.0, 20.0])}
    big = copy.deepcopy(layer)
    assert dampen(layer, imp_d, imp_f, alpha=10, lam=1) == (5, 9)  # I_f > 10·I_D at 5 places (0 > 10·0 is not)
    expected_w = [[1.0 * 1 / 20, -2.0], [3.0, 4.0], [-5.0 * 2 / 100, 6.0 * 1 / 11]]
    assert torch.allclose(layer.weight, torch.tensor(expected_w))
    assert torch.equal(layer.bias[:2], torch.tensor([0.0, -1.0]))  # I_D = 0 < I_f: factor 0
    assert layer.bias[2].item() == pytest.approx(2.0 / 20)
    dampen(big, imp_d, imp_f, alpha=10, lam=50)  # λ·I_D/I_f >= 1 except where I_D = 0: clipped at 1, never grown
    assert torch.equal(big.weight, torch.tensor([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]]))
    assert torch.equal(big.bias, torch.tensor([0.0, -1.0, 2.0]))


def test_ssd_changes_only_selected_weights_and_never_grows_them():
    model, data = memorized()
    method = create_method("ssd")
    out = method.unlearn(copy.deepcopy(model), data, TASK)
    f, r = (importance_sums(model, TASK, d, kind="sample", label_free=False, batch_size=64) for d in (data.forget,
                                                                                                    data.retain))
    changed = 0
    for (n, old), new in zip(model.named_parameters(), out.parameters(), strict=True):
        chosen = f.sums[n] / f.count > 10 * (f.sums[n] + r.sums[n]) / (f.count + r.count)
        assert torch.equal(new[~chosen], old[~chosen]) and (new.abs() <= old.abs()).all()
        changed += int((new != old).sum())
    assert 0 < changed <= method.selected_


def test_lfssd_ignores_labels_and_ssd_does_not():
    model, data = memorized()
    relabelled = dataclasses.replace(data, forget=TensorDataset(data.forget.tensors[0], data.forget.tensors[1] * 0))
    for name, same in (("lfssd", True), ("ssd", False)):
        a = create_method(name, selection_weighting=1.5).unlearn(copy.deepcopy(model), data, TASK)
        b = create_method(name, selection_weighting=1.5).unlearn(copy.deepcopy(model), relabelled, TASK)
        assert all(torch.equal(u, v) for u, v in zip(a.parameters(), b.parameters(), strict=True)) == same


def test_ssd_warns_when_alpha_leaves_nothing_to_select():
    model, data = memorized(scenario="class")  # one class of four: I_Df/I_D <= 4
    with pytest.warns(UserWarning, match="selection_weighting=10.0 >= \\|D\\|/\\|D_f\\| = 4.00"):
        out = create_method("ssd").unlearn(copy.deepcopy(model), data, TASK)
    assert all(torch.equal(u, v) for u, v in zip(out.parameters(), model.parameters(), strict=True))


@pytest.mark.parametrize("importance", ["sample", "batch"])
def test_importances_of_d_are_cached_per_model_and_training_set(home, importance):
    model, data = memorized()
    data = dataclasses.replace(data, train_hash="h1")

    def run(m, d, name="ssd", **kw):
        method = create_method(name, importance=importance, **kw)
        return method, method.unlearn(copy.deepcopy(m), d, TASK)

    first, a = run(model, data)
    second, b = run(model, data)
    assert (first.importance_cached_, second.importance_cached_) == (False, True)
    assert all(torch.equal(u, v) for u, v in zip(a.parameters(), b.parameters(), strict=True))
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.bias.add_(0.01)
    assert not run(other, data)[0].importance_cached_  # another model
    assert not run(model, dataclasses.replace(data, train_hash="h2"))[0].importance_cached_  # another D
    assert not run(model, dataclasses.replace(data, train_hash=None))[0].importance_key_  # no hash: no cache
    assert not run(model, data, "lfssd")[0].importance_cached_  # another importance (label-free)
    assert run(model, data, batch_size=32)[0].importance_cached_ == (importance == "sample")  # batches matter
    (cache_root() / "models" / second.importance_key_ / TENSORS_FILE).write_bytes(b"garbage")
    with pytest.warns(CacheCorruptionWarning):
        rebuilt, c = run(model, data)
    assert not rebuilt.importance_cached_ and run(model, data)[0].importance_cached_
    assert all(torch.equal(u, v) for u, v in zip(a.parameters(), c.parameters(), strict=True))
