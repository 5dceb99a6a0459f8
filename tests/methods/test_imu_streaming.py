"""IMU's streamed influences (two passes over batches of per-example gradients, never G [N, P]) against the stacked
ones, the stack / stream choice, and the streamed path's peak memory."""

import copy

import pytest
import torch

from unlearnkit.methods import create_method, imu
from unlearnkit.methods._influence import (
    head_grads_closed_form,
    influence_weights,
    iter_head_grads_closed_form,
    iter_per_example_grads,
    per_example_grads,
    select_by_influence,
    select_parameters,
    stacked_influences,
    streamed_influences,
)
from unlearnkit.tasks import get_task
from unlearnkit.testing import memorized, tiny_causal_lm
from unlearnkit.testing.toy import tiny_lm_data

# vmap over the toy LM's CPU attention uses torch's (correct, slower) fallback and says so
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")

# (task kind, params, grad_method_ expected): the closed-form head, and other Linear parameters through the hooks
# back-end (for the classifier, features.1 is a Linear that is not the logits: auto tries the closed form first)
CASES = [("classifier", [], "closed_form"), ("causal_lm", [], "closed_form"),
         ("classifier", ["features.1.*"], "hooks"), ("causal_lm", ["layers.1.mlp.*"], "hooks")]


# G (5 examples x 3 parameters) of test_imu.py, as a [5, 1, 2] and a [5] tensor, and its influences by hand
G = torch.tensor([[1.0, 0, 2], [-1, 1, 0], [2, 1, 1], [0, -2, -1], [3, 0, 1]], dtype=torch.float64)
GRADS = {"w": G[:, :2].reshape(5, 1, 2), "b": G[:, 2]}
I_HAND = torch.tensor([-(1 / 3.01 + 1.2 / 1.41), 1 / 3.01, -(2 / 3.01 + 0.6 / 1.41), 0.6 / 1.41,
                       -(3 / 3.01 + 0.6 / 1.41)], dtype=torch.float64)


def _influences(kind, params, mode, batch_size=3):
    model, data = memorized(kind)
    method = create_method("imu", params=params, influence_memory=mode, influence_batch_size=batch_size,
                           top_data=0.7)
    names = select_parameters(model, params)
    infl = method.influences(model, get_task(kind), data.forget, names)
    return method, infl, model


# ---------------------------------------------------------------------------------------------------------------
# the computation
# ---------------------------------------------------------------------------------------------------------------
def test_streamed_influences_by_hand():
    # G of test_imu.py in batches of 2, 2, 1, in float64: the hand-computed influences
    def batches():
        for lo in (0, 2, 4):
            yield {n: g[lo:lo + 2] for n, g in GRADS.items()}

    infl = streamed_influences(batches, lam=0.01)
    assert infl.dtype == torch.float64
    torch.testing.assert_close(infl, I_HAND)
    torch.testing.assert_close(infl, stacked_influences(GRADS, lam=0.01))


def test_the_selection_is_shared():
    kept, w, infl = influence_weights(GRADS, lam=0.01, top_data=0.5, clip_quantile=0.8)
    kept2, w2 = select_by_influence(infl, top_data=0.5, clip_quantile=0.8)
    assert torch.equal(kept, kept2) and torch.equal(w, w2)


def test_streamed_influences_need_the_same_batches_twice():
    calls = []

    def shrinking():  # the second pass gives fewer examples
        calls.append(1)
        yield {n: g[:5 - len(calls)] for n, g in GRADS.items()}

    with pytest.raises(ValueError, match="second pass gave 3 gradients, the first 4"):
        streamed_influences(shrinking)
    with pytest.raises(ValueError, match="empty data set"):
        streamed_influences(lambda: iter([]))


def test_per_batch_gradients_check_their_arguments_before_the_first_batch():
    model, data = memorized("classifier")
    task = get_task("classifier")
    with pytest.raises(ValueError, match="'features.2' is a ReLU, not an nn.Linear"):
        iter_head_grads_closed_form(model, task, data.forget, "features.2")
    with pytest.raises(ValueError, match="unknown parameter"):
        iter_per_example_grads(model, task, data.forget, ["nope.weight"])


@pytest.mark.parametrize("kind", ["classifier", "causal_lm"])
def test_per_batch_gradients_concatenate_to_the_data_set_ones(kind):
    model, data = memorized(kind)
    task = get_task(kind)
    names = select_parameters(model, [])
    head = names[0].rsplit(".", 1)[0]
    batches = list(iter_head_grads_closed_form(model, task, data.forget, head, batch_size=3))
    assert [len(b[names[0]]) for b in batches] == [3] * (len(data.forget) // 3) + [len(data.forget) % 3] * bool(
        len(data.forget) % 3)
    vm = list(iter_per_example_grads(model, task, data.forget, names, batch_size=3))
    for n in names:
        torch.testing.assert_close(torch.cat([b[n] for b in vm]),
                                   per_example_grads(model, task, data.forget, names)[n])


# ---------------------------------------------------------------------------------------------------------------
# IMU: stack vs stream
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, params, grad_method", CASES)
def test_streamed_equals_stacked(kind, params, grad_method):
    stacked, infl_stack, _ = _influences(kind, params, "stack")
    streamed, infl_stream, model = _influences(kind, params, "stream")  # batches of 3: the last one partial
    assert (stacked.influence_memory_, streamed.influence_memory_) == ("stack", "stream")
    assert stacked.grad_method_ == streamed.grad_method_ == grad_method
    assert streamed.influence_batch_size_ == 3
    assert not any(m._forward_hooks for m in model.modules())  # the closed form's hook is gone after a fallback
    # float rounding only: another summation order
    torch.testing.assert_close(infl_stream, infl_stack, rtol=1e-5, atol=1e-6 * infl_stack.abs().max().item())
    kept, w = select_by_influence(infl_stack, top_data=0.7)
    kept_s, w_s = select_by_influence(infl_stream, top_data=0.7)
    assert kept_s.tolist() == kept.tolist()
    torch.testing.assert_close(w_s, w, rtol=1e-5, atol=0)


@pytest.mark.parametrize("kind, params", [("classifier", []), ("causal_lm", ["layers.1.mlp.*"])])
def test_imu_unlearns_the_same_either_way(kind, params):
    task = get_task(kind)
    runs = {}
    for mode in ("stack", "stream"):
        model, data = memorized(kind)
        method = create_method("imu", params=params, influence_memory=mode, influence_batch_size=4, lr=1e-2,
                               epochs=2, batch_size=4)
        runs[mode] = (method, method.unlearn(model, data, task))
    (a, model_a), (b, model_b) = runs["stack"], runs["stream"]
    assert (a.influence_memory_, b.influence_memory_) == ("stack", "stream")
    assert a.kept_.tolist() == b.kept_.tolist()
    torch.testing.assert_close(b.weights_, a.weights_, rtol=1e-5, atol=0)
    for (n, p), q in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=n)


def test_auto_stacks_small_sets_bit_identically_and_streams_large_ones(monkeypatch):
    model, data = memorized("causal_lm")
    task = get_task("causal_lm")
    names = select_parameters(model, [])
    grads = head_grads_closed_form(model, task, data.forget, "lm_head")  # what IMU did before streaming existed
    ref_kept, ref_w, ref_infl = influence_weights(grads, top_data=0.5)
    method = create_method("imu", lr=1e-2, top_data=0.5)
    method.unlearn(copy.deepcopy(model), data, task)
    assert method.influence_memory_ == "stack" and method.influence_batch_size_ == 256
    assert torch.equal(method.kept_, ref_kept) and torch.equal(method.weights_, ref_w)
    assert torch.equal(method.influences_, ref_infl)

    row = sum(dict(model.named_parameters())[n].numel() for n in names) * 4  # bytes of one g_i
    monkeypatch.setattr(imu, "STACK_LIMIT_BYTES", len(data.forget) * row - 1)  # G just over the limit: stream
    method = create_method("imu", lr=1e-2, top_data=0.5)
    method.unlearn(copy.deepcopy(model), data, task)
    assert method.influence_memory_ == "stream"
    assert method.influence_batch_size_ == len(data.forget) - 1  # one batch of gradients fits in the limit
    assert method.kept_.tolist() == ref_kept.tolist()
    torch.testing.assert_close(method.influences_, ref_infl, rtol=1e-5, atol=1e-6 * ref_infl.abs().max().item())
    monkeypatch.setattr(imu, "STACK_LIMIT_BYTES", len(data.forget) * row)  # exactly at the limit: stack
    assert method.memory_plan(model, data.forget, names) == ("stack", 256)
    monkeypatch.setattr(imu, "STACK_LIMIT_BYTES", row // 2)  # not even one g_i fits: batches of one
    assert method.memory_plan(model, data.forget, names) == ("stream", 1)


def _cpu_peak_bytes(run):
    """Peak bytes of torch's CPU allocator while `run()` runs (unlearnkit.testing.memory)."""
    from unlearnkit.testing.memory import cpu_peak_bytes

    try:
        return cpu_peak_bytes(run)
    except RuntimeError as err:
        pytest.skip(str(err))


@pytest.mark.parametrize("params", [[], ["layers.1.mlp.*"]])
def test_the_streamed_path_never_holds_all_gradients(params):
    """512 forget sequences: G [N, P] is 1.6 MB (head, P = 792) or 17 MB (MLP, P = 8352), against 0.11 MB of
    model. The stacked path's peak must be at least N·P·4 bytes (so the measurement sees such a tensor); the
    streamed one (batches of 8) must stay below a quarter of it (measured: 0.12 and 0.05 of it)."""
    model, data = tiny_causal_lm(seed=3), tiny_lm_data(n_forget=512)
    task = get_task("causal_lm")
    names = select_parameters(model, params)
    full = len(data.forget) * sum(dict(model.named_parameters())[n].numel() for n in names) * 4
    peaks = {}
    for mode in ("stack", "stream"):
        method = create_method("imu", params=params, influence_memory=mode, influence_batch_size=8)
        peaks[mode] = _cpu_peak_bytes(lambda m=method: m.influences(model, task, data.forget, names))
    assert peaks["stack"] >= full, peaks
    assert peaks["stream"] < full / 4, peaks
