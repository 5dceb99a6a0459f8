import math

import pytest
import torch

from unlearnkit.config import ConfigError
from unlearnkit.data import UnlearnData
from unlearnkit.methods import create_method
from unlearnkit.methods.grad_ascent import GradAscent
from unlearnkit.methods.retrain import reinitialize
from unlearnkit.tasks import get_task
from unlearnkit.testing import memorized, tiny_classifier

TASK = get_task("classifier")


def test_neggrad_plus_epoch_is_a_pass_over_the_retain_set():
    model, data = memorized()
    method = create_method("neggrad_plus", epochs=2, batch_size=16)
    method.unlearn(model, data, TASK)
    assert method.steps_ == 2 * math.ceil(len(data.retain) / 16)


def test_grad_ascent_epoch_is_a_pass_over_the_forget_set_and_raises_loss_every_step():
    model, data = memorized()
    method = create_method("grad_ascent", epochs=3, batch_size=4, lr=1e-2)
    method.unlearn(model, data, TASK)
    assert method.steps_ == 3 * math.ceil(len(data.forget) / 4)
    assert method.losses_[-1] < method.losses_[0]  # the loss is −CE: it falls as CE rises


def test_neggrad_plus_alpha_one_equals_finetune():
    model, data = memorized()
    a = create_method("neggrad_plus", alpha=1.0, epochs=1, batch_size=16).unlearn(model, data, TASK)
    model, _ = memorized()
    b = create_method("finetune", epochs=1, batch_size=16).unlearn(model, data, TASK)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_bad_hyperparameters_fail_before_training():
    model, data = memorized()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match="method.grad_ascent.lr = -1.*must be > 0"):
        GradAscent(lr=-1.0).unlearn(model, data, TASK)
    with pytest.raises(ConfigError, match=r"method.neggrad_plus.alpha = 1.5: must be <= 1"):
        create_method("neggrad_plus", alpha=1.5)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_missing_retain_set_is_named():
    model, data = memorized()
    with pytest.raises(ValueError, match="method 'neggrad_plus' needs a non-empty retain set"):
        create_method("neggrad_plus").unlearn(model, UnlearnData(forget=data.forget), TASK)


def test_retrain_redraws_every_parameter_and_depends_only_on_init_seed():
    model, data = memorized()
    fresh = reinitialize(memorized()[0], seed=5)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters(), strict=True))
    again = reinitialize(tiny_classifier(seed=9), seed=5)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), again.parameters(), strict=True))


def test_reinitialize_refuses_parameters_it_cannot_reset():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))

    with pytest.raises(ValueError, match=r"cannot re-initialise \['scale'\]"):
        reinitialize(Odd(), seed=0)


def test_divergent_gradient_ascent_stops_with_finite_weights():
    model, data = memorized()
    method = create_method("grad_ascent", lr=50.0, momentum=0.0, epochs=200, batch_size=4)
    with pytest.warns(RuntimeWarning, match="the loss became non-finite"):
        out = method.unlearn(model, data, TASK)
    assert method.diverged_ is True and method.steps_ < 200 * 3
    assert all(torch.isfinite(p).all() for p in out.parameters())


def test_retrain_without_reinitialize_trains_the_given_model_as_it_is():
    model, data = memorized()
    task = get_task("classifier")
    kept = create_method("retrain", epochs=0, reinitialize=False).unlearn(copy_of(model), data, task)
    redrawn = create_method("retrain", epochs=0).unlearn(copy_of(model), data, task)
    assert all(torch.equal(a, b) for a, b in zip(kept.parameters(), model.parameters(), strict=True))
    assert not torch.equal(redrawn.head.weight, model.head.weight)


def copy_of(model):
    import copy

    return copy.deepcopy(model)
