"""GradDiff (+ kl, grad_diff_kl_forget), NPO (+ npo_kl, npo_rt), SimNPO (+ simnpo_kl, simnpo_rt) and grad_descent:
losses against closed forms computed by hand from the logits, the NPO gradient, capability tags, validation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from unlearnkit._registry import METHODS
from unlearnkit.config import ConfigError, to_dict
from unlearnkit.data import UnlearnData
from unlearnkit.methods import create_method
from unlearnkit.tasks import get_task
from unlearnkit.testing import memorized

NEW = ("grad_diff", "kl", "grad_diff_kl_forget", "npo", "npo_kl", "npo_rt", "simnpo", "simnpo_kl", "simnpo_rt",
       "grad_descent")
KINDS = ("classifier", "causal_lm")


def first(dataset, n=8):
    """The first n examples as one batch (no shuffling)."""
    return next(iter(DataLoader(dataset, batch_size=n)))


def setup(kind, perturb=False):
    """(model, frozen copy of the original, task, forget batch, retain batch); perturbing moves the model away from
    the copy so that log π_θ ≠ log π_ref and the KL terms are non-zero."""
    model, data = memorized(kind)
    original = memorized(kind)[0].requires_grad_(False)
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model, original, get_task(kind), first(data.forget), first(data.retain)


def by_hand(kind, model, batch):
    """(log p(· | prefix) [B, P, V], targets [B, P], mask [B, P]) straight from the model's logits; P = 1 for a
    classifier, the shifted answer positions for a causal LM."""
    if kind == "classifier":
        x, y = batch
        logp = torch.log_softmax(model(x), -1)[:, None]
        return logp, y[:, None], torch.ones_like(y[:, None], dtype=torch.bool)
    logp = torch.log_softmax(model(batch["input_ids"])[:, :-1], -1)
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    return logp, targets.clamp(min=0), mask


def token_nll(kind, model, batch):
    logp, targets, mask = by_hand(kind, model, batch)
    return -logp.gather(-1, targets[..., None])[..., 0] * mask, mask  # [B, P] each


def mean_nll(kind, model, batch):
    """Token-weighted mean NLL (batch-mean CE for a classifier)."""
    nll, mask = token_nll(kind, model, batch)
    return nll.sum() / mask.sum()


def kl_by_hand(kind, model, ref, batch):
    """Σ over labelled positions of KL(p_ref ‖ p_θ), divided by the batch size."""
    logp, _, mask = by_hand(kind, model, batch)
    logp_ref, _, _ = by_hand(kind, ref, batch)
    return ((logp_ref.exp() * (logp_ref - logp)).sum(-1) * mask).sum() / mask.shape[0]


def close(a, b):
    torch.testing.assert_close(a.detach(), torch.as_tensor(b, dtype=a.dtype).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_npo_at_initialisation_is_two_log_two_over_beta(kind):
    model, original, task, forget, retain = setup(kind)
    npo = create_method("npo", beta=0.5)
    close(npo.loss(task, model, forget, None, npo.frozen_models(model)), (2 / 0.5) * math.log(2))
    npo_rt = create_method("npo_rt", beta=0.5, alpha=2.0)
    close(npo_rt.loss(task, model, forget, retain, npo_rt.frozen_models(model)),
          (2 / 0.5) * math.log(2) + 2.0 * mean_nll(kind, original, retain))


@pytest.mark.parametrize("kind", KINDS)
def test_simnpo_loss_is_the_closed_form_on_per_example_nll(kind):
    model, _, task, forget, retain = setup(kind, perturb=True)
    beta, delta, gamma = 2.0, 0.3, 0.5
    nll, mask = token_nll(kind, model, forget)
    avg = nll.sum(-1) / mask.sum(-1)  # [B] mean token NLL of each example
    method = create_method("simnpo", beta=beta, delta=delta, gamma=gamma)
    assert avg.std() > 0.05  # the per-example NLLs differ, so a batch-mean shortcut would not match
    close(method.loss(task, model, forget, None, {}), gamma * (2 / beta) * F.softplus(-beta * (avg - delta)).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_grad_diff_loss_is_weighted_retain_minus_forget_nll(kind):
    model, _, task, forget, retain = setup(kind, perturb=True)
    method = create_method("grad_diff", gamma=0.5, alpha=2.0)
    close(method.loss(task, model, forget, retain, {}),
          -0.5 * mean_nll(kind, model, forget) + 2.0 * mean_nll(kind, model, retain))


@pytest.mark.parametrize("kind", KINDS)
def test_kl_terms_match_kl_computed_by_hand(kind):
    model, original, task, forget, retain = setup(kind, perturb=True)
    kl_retain = kl_by_hand(kind, model, original, retain)
    kl_forget = kl_by_hand(kind, model, original, forget)
    assert kl_retain > 1e-3 and kl_forget > 1e-3
    frozen = {"ref": original}
    close(create_method("kl").loss(task, model, forget, retain, frozen), -mean_nll(kind, model, forget) + kl_retain)
    close(create_method("kl", gamma=0.0, alpha=3.0).loss(task, model, forget, retain, frozen), 3.0 * kl_retain)
    close(create_method("grad_diff_kl_forget").loss(task, model, forget, retain, frozen),
          -mean_nll(kind, model, forget) + mean_nll(kind, model, retain) + kl_forget)
    npo_kl = create_method("npo_kl", beta=0.5)
    close(npo_kl.loss(task, model, forget, retain, frozen) - create_method("npo", beta=0.5).loss(
        task, model, forget, None, frozen), kl_retain)


@pytest.mark.parametrize("kind", KINDS)
def test_kl_is_zero_when_the_model_is_the_reference(kind):
    model, _, task, forget, retain = setup(kind)
    kl = create_method("kl", gamma=0.0)
    close(kl.loss(task, model, forget, retain, kl.frozen_models(model)), 0.0)
    on_forget = create_method("grad_diff_kl_forget")
    close(on_forget.loss(task, model, forget, retain, on_forget.frozen_models(model)),
          -mean_nll(kind, model, forget) + mean_nll(kind, model, retain))


def test_npo_gradient_is_gradient_ascent_weighted_by_two_sigmoid():
    model, original, task, forget, _ = setup("classifier", perturb=True)
    beta, params = 0.5, list(model.parameters())
    method = create_method("npo", beta=beta)
    grads = torch.autograd.grad(method.loss(task, model, forget, None, {"ref": original}), params)
    nll, _ = token_nll("classifier", model, forget)  # [B, 1]
    with torch.no_grad():
        log_ratio = -nll[:, 0] + token_nll("classifier", original, forget)[0][:, 0]  # log π_θ − log π_ref, [B]
    weights = 2 * torch.sigmoid(beta * log_ratio)
    assert (weights - 1).abs().max() > 0.05  # far from the initial weight 1: the test tells NPO from plain ascent
    expected = [torch.zeros_like(p) for p in params]
    for i, w in enumerate(weights):  # Σ_i w_i·∇(−NLL_i) / B, one example at a time
        for e, g in zip(expected, torch.autograd.grad(-nll[i, 0], params, retain_graph=True), strict=True):
            e.add_(w * g / len(weights))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, uses, needs_reference", [
    ("grad_diff", ("forget", "retain"), False),
    ("kl", ("forget", "retain"), True),
    ("grad_diff_kl_forget", ("forget", "retain"), True),
    ("npo", ("forget",), True),
    ("npo_kl", ("forget", "retain"), True),
    ("npo_rt", ("forget", "retain"), True),
    ("simnpo", ("forget",), False),
    ("simnpo_kl", ("forget", "retain"), True),
    ("simnpo_rt", ("forget", "retain"), False),
    ("grad_descent", ("retain",), False),
])
def test_capabilities_in_tags_and_at_run_time(name, uses, needs_reference):
    tags = METHODS.get(name).tags
    assert (tags["uses"], tags["needs_reference"], tags["kind"]) == (uses, needs_reference, "gradient")
    assert tags["tasks"] == KINDS
    model, _ = memorized()
    method = create_method(name)
    assert tuple(method.uses) == uses
    assert set(method.frozen_models(model)) == ({"ref"} if needs_reference else set())


def test_capabilities_follow_the_hyperparameters():
    assert create_method("grad_diff", forget_kl=True).needs_reference
    assert create_method("simnpo", retain_loss="kl").needs_reference
    assert create_method("npo", retain_loss="nll").uses == ("forget", "retain")
    assert create_method("npo_rt", retain_loss="none").uses == ("forget",)


@pytest.mark.parametrize("name", ["npo", "npo_rt", "simnpo", "simnpo_kl"])
def test_beta_zero_is_rejected(name):
    with pytest.raises(ConfigError, match=rf"method\.{name}\.beta = 0: must be > 0"):
        create_method(name, beta=0)


def test_grad_diff_rejects_an_unknown_retain_loss():
    with pytest.raises(ConfigError, match=r"method\.grad_diff\.retain_loss = 'none'"):
        create_method("grad_diff", retain_loss="none")


def test_npo_reads_only_the_forget_set_and_npo_rt_needs_retain():
    model, data = memorized()
    task = get_task("classifier")
    method = create_method("npo", epochs=2, batch_size=4, lr=1e-3)
    method.unlearn(model, UnlearnData(forget=data.forget), task)
    assert method.steps_ == 2 * math.ceil(len(data.forget) / 4)  # one epoch is one pass over the forget set
    with pytest.raises(ValueError, match="method 'npo_rt' needs a non-empty retain set"):
        create_method("npo_rt").unlearn(model, UnlearnData(forget=data.forget), task)


def test_grad_diff_epoch_is_a_pass_over_the_forget_set():
    model, data = memorized()
    method = create_method("grad_diff", epochs=2, batch_size=4)
    method.unlearn(model, data, get_task("classifier"))
    assert len(data.retain) > len(data.forget) and method.steps_ == 2 * math.ceil(len(data.forget) / 4)


def test_grad_descent_is_finetune_under_another_name():
    assert to_dict(create_method("grad_descent")) == to_dict(create_method("finetune"))
    data, task = memorized()[1], get_task("classifier")
    a = create_method("grad_descent", epochs=1, batch_size=16).unlearn(memorized()[0], data, task)
    b = create_method("finetune", epochs=1, batch_size=16).unlearn(memorized()[0], data, task)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_every_new_method_is_registered_for_the_conformance_suite():
    # tests/methods/test_conformance.py runs check_method on every name of METHODS.list()
    assert set(NEW) <= set(METHODS.list())
    assert all(METHODS.get(name).obj.__doc__ for name in NEW)
    assert len({METHODS.get(name).obj.__doc__ for name in NEW}) == len(NEW)  # each variant has its own docstring
