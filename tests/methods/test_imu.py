"""IMU (Fan et al. 2025, arXiv 2508.01620) and its per-example-gradient / influence helpers, on the real toy models."""

import copy
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from unlearnkit.data import UnlearnData
from unlearnkit.methods import create_method, losses
from unlearnkit.methods._influence import (
    NotTheLogits,
    head_grads_closed_form,
    influence_weights,
    linear_head,
    per_example_grads,
    per_example_grads_loop,
    select_parameters,
)
from unlearnkit.tasks import get_task
from unlearnkit.testing import forget_loss, memorized, tiny_causal_lm, tiny_classifier
from unlearnkit.testing.toy import DictDataset

# vmap over the toy LM's CPU attention uses torch's (correct, slower) fallback and says so
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")

KINDS = ("classifier", "causal_lm")
OTHER_PARAMS = {"classifier": ["features.1.*"], "causal_lm": ["layers.1.mlp.*"]}


def _ragged_lm_forget(data):
    """The LM forget set with a different number of scored tokens per sequence (one sequence has none)."""
    rows = [data.forget[i] for i in range(len(data.forget))]
    ids, labels = torch.stack([r["input_ids"] for r in rows]), torch.stack([r["labels"] for r in rows]).clone()
    for i in range(len(rows)):
        labels[i, 4 + i % 6:] = -100  # i % 6 scored tokens (sequence 0 and 6 have none scored)
    return DictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)


def _models_and_sets(kind):
    """(model, data set) pairs: the memorized original on its forget set, and an untrained model (larger gradients)
    on it; for the LM also on sequences with different numbers of scored tokens."""
    model, data = memorized(kind)
    fresh = tiny_classifier(seed=3) if kind == "classifier" else tiny_causal_lm(seed=3)
    pairs = [(model, data.forget), (fresh, data.forget)]
    if kind == "causal_lm":
        pairs.append((fresh, _ragged_lm_forget(data)))
    return pairs


def _assert_close(a, b):
    assert a.keys() == b.keys()
    for n in a:
        assert a[n].shape == b[n].shape, n
        scale = b[n].abs().max().item()
        assert scale > 0, f"{n}: all-zero reference gradient, the comparison would be vacuous"
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-5 * scale)


# ---------------------------------------------------------------------------------------------------------------
# per-example gradients
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["head", "other"])
def test_vmap_grads_equal_the_per_example_loop(kind, which):
    task = get_task(kind)
    for model, dataset in _models_and_sets(kind):
        names = select_parameters(model, [] if which == "head" else OTHER_PARAMS[kind])
        vmapped = per_example_grads(model, task, dataset, names, batch_size=5)  # several batches, the last partial
        _assert_close(vmapped, per_example_grads_loop(model, task, dataset, names))
        assert next(iter(vmapped.values())).shape[0] == len(dataset)


@pytest.mark.parametrize("kind", KINDS)
def test_closed_form_head_grads_equal_autograd(kind):
    task = get_task(kind)
    for model, dataset in _models_and_sets(kind):
        names = select_parameters(model, [])
        head = linear_head(model, names)
        assert head == ("head" if kind == "classifier" else "lm_head")
        closed = head_grads_closed_form(model, task, dataset, head, batch_size=3)
        _assert_close(closed, per_example_grads(model, task, dataset, names))


def test_closed_form_refuses_a_layer_that_does_not_produce_the_logits():
    model, data = memorized("classifier")
    with pytest.raises(NotTheLogits, match="output of 'features.1' is not the logits"):
        head_grads_closed_form(model, get_task("classifier"), data.forget, "features.1")


def test_select_parameters_defaults_to_the_output_layer_and_names_bad_patterns():
    assert select_parameters(tiny_classifier(), []) == ["head.weight", "head.bias"]
    assert select_parameters(tiny_causal_lm(), []) == ["lm_head.weight", "lm_head.bias"]
    assert select_parameters(tiny_causal_lm(), ["layers.1.mlp.2.*", "norm.bias"]) == [
        "layers.1.mlp.2.weight", "layers.1.mlp.2.bias", "norm.bias"]
    with pytest.raises(ValueError, match=r"no parameter matches \['nope\.\*'\]; parameters include: features.1.weight"):
        select_parameters(tiny_classifier(), ["nope.*"])


def test_a_tied_output_layer_is_not_given_the_closed_form():
    model = tiny_causal_lm()
    model.lm_head.weight = model.embed.weight  # tied: the head gradient is only part of the weight's gradient
    names = select_parameters(model, [])
    assert names == ["embed.weight", "lm_head.bias"] and linear_head(model, names) is None
    _, data = memorized("causal_lm")
    task = get_task("causal_lm")
    _assert_close(per_example_grads(model, task, data.forget, names),
                  per_example_grads_loop(model, task, data.forget, names))


# ---------------------------------------------------------------------------------------------------------------
# influence weights
# ---------------------------------------------------------------------------------------------------------------
# G (5 examples x 3 parameters), given as a [5, 1, 2] and a [5] tensor to test the flattening.
G = torch.tensor([[1.0, 0, 2], [-1, 1, 0], [2, 1, 1], [0, -2, -1], [3, 0, 1]], dtype=torch.float64)
GRADS = {"w": G[:, :2].reshape(5, 1, 2), "b": G[:, 2]}
# By hand: mean G² = [15, 6, 7]/5 = [3, 1.2, 1.4] -> F⁻¹ = 1/[3.01, 1.21, 1.41]; ḡ = [1, 0, 0.6]
# -> I_i = −(G_i0/3.01 + 0.6·G_i2/1.41).
I_HAND = torch.tensor([-(1 / 3.01 + 1.2 / 1.41), 1 / 3.01, -(2 / 3.01 + 0.6 / 1.41), 0.6 / 1.41,
                       -(3 / 3.01 + 0.6 / 1.41)], dtype=torch.float64)


def test_influence_weights_by_hand():
    kept, w, infl = influence_weights(GRADS, lam=0.01, top_data=1.0, clip_quantile=0.93)
    torch.testing.assert_close(infl, I_HAND)
    assert kept.tolist() == [0, 2, 4] and kept.dtype == torch.int64  # the negative ones
    raw = [math.sqrt(-I_HAND[i].item()) for i in (0, 2, 4)]  # sorted: raw[1] < raw[0] < raw[2]
    cap = raw[0] + 0.86 * (raw[2] - raw[0])  # 0.93-quantile of 3 values: position 0.93·2 = 1.86
    torch.testing.assert_close(w, torch.tensor([raw[0], raw[1], cap], dtype=torch.float64))
    assert (w >= 0).all() and w.sum() > 0


def test_influence_weights_top_data_and_clipping():
    # top_data 0.5 of 3 negatives -> ceil(1.5) = 2 with the largest |I|: examples 4 (|I| 1.42) and 0 (1.18)
    kept, w, _ = influence_weights(GRADS, lam=0.01, top_data=0.5, clip_quantile=1.0)
    assert kept.tolist() == [0, 4]
    torch.testing.assert_close(w, (-I_HAND[[0, 4]]).sqrt())
    # clip at the median of the three kept weights: the largest is clipped to the middle one (example 0)
    kept, w, _ = influence_weights(GRADS, lam=0.01, clip_quantile=0.5)
    assert kept.tolist() == [0, 2, 4]
    torch.testing.assert_close(w, (-I_HAND[[0, 2, 0]]).sqrt())
    # lam enters the Fisher: another lam, other influences
    _, _, infl = influence_weights(GRADS, lam=1.0)
    torch.testing.assert_close(infl, -(G[:, 0] / 4.0 + 0.6 * G[:, 2] / 2.4))


def test_influence_weights_without_a_negative_influence_is_an_error():
    symmetric = {"g": torch.tensor([[1.0, 2.0], [-1.0, -2.0]])}  # ḡ = 0: every influence is 0
    with pytest.raises(ValueError, match="IMU: no forget example has negative influence"):
        influence_weights(symmetric)


# ---------------------------------------------------------------------------------------------------------------
# the method
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, params", [("classifier", []), ("causal_lm", []),
                                          ("classifier", ["features.1.*"]), ("causal_lm", ["layers.1.mlp.*"])])
def test_imu_changes_only_the_selected_parameters_and_raises_the_forget_loss(kind, params):
    task = get_task(kind)
    model, data = memorized(kind)
    original = copy.deepcopy(model)
    method = create_method("imu", params=params, lr=1e-2, epochs=3, batch_size=4)
    out = method.unlearn(model, data, task)
    assert method.grad_method_ == ("closed_form" if not params else "hooks")
    chosen = set(select_parameters(original, params))
    assert set(method.params_) == chosen
    for (n, p), q in zip(out.named_parameters(), original.parameters(), strict=True):
        assert torch.equal(p, q) != (n in chosen), f"{n}: {'unchanged' if n in chosen else 'changed'}"
    assert forget_loss(out, data, task) > forget_loss(original, data, task)
    assert method.steps_ == 3 * math.ceil(len(method.kept_) / 4) and not method.diverged_


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grad_method", ["auto", "vmap"])
def test_imu_weights_come_from_the_original_model(kind, grad_method):
    task = get_task(kind)
    model, data = memorized(kind)
    names = select_parameters(model, [])
    kept, w, infl = influence_weights(per_example_grads_loop(model, task, data.forget, names), top_data=0.5)
    method = create_method("imu", grad_method=grad_method, lr=1e-2, top_data=0.5)
    method.unlearn(model, data, task)
    assert method.kept_.tolist() == kept.tolist()
    torch.testing.assert_close(method.weights_, w, rtol=1e-4, atol=0)
    torch.testing.assert_close(method.influences_, infl, rtol=1e-4, atol=1e-6 * infl.abs().max().item())
    assert (method.weights_ >= 0).all() and method.weights_.sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_imu_first_loss_is_the_weighted_ascent_plus_l1(kind):
    task = get_task(kind)
    model, data = memorized(kind)
    original = copy.deepcopy(model)
    method = create_method("imu", alpha=0.01, batch_size=len(data.forget))  # one batch: every kept example
    method.unlearn(model, data, task)
    kept = method.kept_.tolist()
    batch = torch.utils.data.default_collate([data.forget[i] for i in kept])
    with torch.no_grad():
        nll = task.per_example_loss(original.train(), batch)
        head = [dict(original.named_parameters())[n] for n in method.params_]
        expected = losses.weighted_ascent(nll, method.weights_) + 0.01 * losses.l1(head)
    assert method.losses_[0] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_imu_l1_term_shrinks_the_head(kind):
    task = get_task(kind)
    runs = {}
    for alpha in (0.0, 0.1):
        model, data = memorized(kind)
        out = create_method("imu", alpha=alpha, lr=1e-2, epochs=3, batch_size=4, seed=1).unlearn(model, data, task)
        runs[alpha] = sum(p.abs().sum().item() for n, p in out.named_parameters() if n.endswith("head.weight"))
    assert runs[0.1] < 0.95 * runs[0.0]


def test_imu_without_a_negative_influence_fails_before_training():
    # all-zero weights: features 0 and uniform p, so with one copy of an input per class the mean gradient is 0
    model = tiny_classifier()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    before = copy.deepcopy(model.state_dict())
    data = UnlearnData(forget=TensorDataset(torch.ones(4, 8), torch.arange(4)))
    with pytest.raises(ValueError, match="IMU: no forget example has negative influence"):
        create_method("imu").unlearn(model, data, get_task("classifier"))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_imu_closed_form_needs_a_linear_output_layer():
    model, data = memorized("classifier")
    task = get_task("classifier")
    with pytest.raises(ValueError, match="closed_form.*exactly the weight"):
        create_method("imu", grad_method="closed_form", params=["features.1.weight"]).unlearn(model, data, task)
    with pytest.raises(NotTheLogits):
        create_method("imu", grad_method="closed_form", params=["features.1.*"]).unlearn(model, data, task)
