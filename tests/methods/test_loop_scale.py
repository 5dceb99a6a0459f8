"""The loop's scale options (specs/llm.md §1, §6 P9, P18, P19): learning-rate warmup, gradient accumulation, LoRA
as an option of every gradient method, activation checkpointing, the recorded set-up, a data set's own collate."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from unlearnkit.methods import create_method
from unlearnkit.methods._influence import iter_batches
from unlearnkit.methods._loop import LoopParams, _checkpointing_is_on, run_loop
from unlearnkit.tasks import get_task
from unlearnkit.testing import forget_loss, memorized, tiny_classifier

LM = get_task("causal_lm")


def _ds(n):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 4, (n,), generator=g))


def _ce(m, f, r, _):
    return F.cross_entropy(m(f[0]), f[1])


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _lrs(params, n):
    """The learning rate of every optimiser step of a run over n examples."""
    model = tiny_classifier()
    opt = torch.optim.SGD(model.parameters(), lr=params.lr)
    seen = []
    res = run_loop(model, _ce, params, forget=_ds(n), optimizer=opt,
                   before_step=lambda m: seen.append(opt.param_groups[0]["lr"]), progress=False)
    assert res.steps == len(seen)
    return seen, res


@pytest.mark.parametrize("schedule, accum, expected", [
    # 8 examples, batch 2: 4 batches a pass, 2 passes. warmup 0.5 epoch = ⌊0.5·4⌋ = 2 steps: lr·s/2, then the
    # schedule over the 6 remaining steps (HF get_linear_schedule_with_warmup)
    ("linear", 1, [0, 1 / 2, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
    ("constant", 1, [0, 1 / 2, 1, 1, 1, 1, 1, 1]),
    ("cosine", 1, [0, 1 / 2] + [0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)]),
    # accumulation 2: 2 optimiser steps a pass, 4 in all; warmup ⌊0.5·4/2⌋ = 1 step
    ("linear", 2, [0, 1, 2 / 3, 1 / 3]),
])
def test_warmup_then_schedule_learning_rates(schedule, accum, expected):
    params = LoopParams(lr=0.5, epochs=2, batch_size=2, schedule=schedule, warmup_epochs=0.5, grad_accum=accum)
    seen, res = _lrs(params, 8)
    assert seen == pytest.approx([0.5 * e for e in expected])
    assert res.setup["warmup_steps"] == round(0.5 * 4 / accum) and res.setup["total_steps"] == len(expected)


def test_warmup_counts_whole_epochs_of_steps_and_no_warmup_is_unchanged():
    seen, _ = _lrs(LoopParams(lr=1.0, epochs=3, batch_size=4, schedule="linear", warmup_epochs=1), 12)
    assert seen == pytest.approx([0, 1 / 3, 2 / 3, 1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    seen, _ = _lrs(LoopParams(lr=1.0, epochs=1, batch_size=4, schedule="linear"), 12)
    assert seen == pytest.approx([1, 2 / 3, 1 / 3])


def test_grad_accumulation_equals_the_larger_batch():
    """k micro-batches of b with equally weighted examples (mean CE, equal sizes) = one batch of k·b: same data
    order (the same shuffled permutation), same gradients, same SGD steps."""
    ds = _ds(48)

    def train(batch, accum):
        model = tiny_classifier()
        res = run_loop(model, _ce, LoopParams(lr=0.1, epochs=2, batch_size=batch, grad_accum=accum, momentum=0.0,
                                              weight_decay=0.0, seed=3), forget=ds, progress=False)
        return model, res

    big, res_big = train(16, 1)
    acc, res_acc = train(8, 2)
    assert res_acc.steps == res_big.steps == 2 * 3
    torch.testing.assert_close(_weights(acc), _weights(big))
    assert res_acc.losses == pytest.approx(res_big.losses, rel=1e-5)  # one loss per step: the micro-batch mean
    assert res_acc.setup["grad_accum"] == 2 and res_acc.setup["effective_batch"] == 16
    assert res_acc.setup["world_size"] == 1 and res_acc.setup["per_device_batch"] == 8


def test_grad_accumulation_groups_stay_within_a_pass_and_max_steps_counts_optimiser_steps():
    """10 examples, batch 4: 3 batches a pass -> groups of (2, 1) batches; the recorded loss is the group mean."""
    ds = TensorDataset(torch.arange(10.0).unsqueeze(1).repeat(1, 8), torch.zeros(10, dtype=torch.long))
    micro, events = [], []

    def loss_fn(m, f, r, _):
        value = f[0][:, 0].mean()
        micro.append(float(value))
        events.append("b")
        return m(f[0]).sum() * 0.0 + value

    res = run_loop(tiny_classifier(), loss_fn, LoopParams(epochs=2, batch_size=4, grad_accum=2), forget=ds,
                   on_epoch=events.append, after_step=lambda m, s: events.append("step"), progress=False)
    assert res.steps == 4 and events == [0, "b", "b", "step", "b", "step", 1, "b", "b", "step", "b", "step"]
    expected = [(micro[0] + micro[1]) / 2, micro[2], (micro[3] + micro[4]) / 2, micro[5]]
    assert res.losses == pytest.approx(expected)
    micro.clear()
    res = run_loop(tiny_classifier(), loss_fn, LoopParams(max_steps=5, batch_size=4, grad_accum=2), forget=ds,
                   progress=False)
    assert res.steps == 5 and len(micro) == 2 + 1 + 2 + 1 + 2


def test_a_data_sets_own_collate_is_used():
    class Collating(Dataset):
        calls = 0

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.full((8,), float(i))

        def collate(self, items):
            Collating.calls += 1
            return (torch.stack(items), torch.zeros(len(items), dtype=torch.long))

    run_loop(tiny_classifier(), _ce, LoopParams(epochs=1, batch_size=4), forget=Collating(), progress=False)
    assert Collating.calls == 2
    batches = list(iter_batches(Collating(), 4, torch.device("cpu")))
    assert Collating.calls == 4 and [len(b[0]) for b in batches] == [4, 2]


# ------------------------------------------------------------------------------------------------------- LoRA
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None or importlib.util.find_spec("transformers")
                                is None, reason="LoRA needs peft and transformers (pip install unlearnkit[llm])")
LORA = {"lora_r": 4, "lora_targets": ["qkv", "proj"], "lr": 1e-2, "epochs": 5, "batch_size": 8}


@needs_peft
@pytest.mark.parametrize("name", ["grad_diff", "npo"])
def test_lora_unlearning_returns_the_original_architecture_with_merged_adapters(name):
    model, data = memorized("causal_lm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_before = forget_loss(model, data, LM)
    method = create_method(name, **LORA)
    out = method.unlearn(model, data, LM)
    assert type(out).__name__ == "TinyCausalLM" and not any("lora" in n for n, _ in out.named_modules())
    after = dict(out.named_parameters())
    assert list(after) == list(before)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    # only the weights of the LoRA-adapted Linear layers move; embeddings, norms, MLP, head and biases do not
    assert changed == {n for n in before if n.endswith(("qkv.weight", "proj.weight"))}
    assert all(p.requires_grad for p in out.parameters())
    assert forget_loss(out, data, LM) > loss_before + 0.1
    assert method.setup_["lora_r"] == 4 and method.steps_ == 5 * math.ceil(len(data.forget) / 8)
    # same seed, same adapters, same weights
    again = create_method(name, **LORA).unlearn(memorized("causal_lm")[0], data, LM)
    assert torch.equal(_weights(again), _weights(out))


@needs_peft
def test_lora_keeps_frozen_models_unwrapped_and_applies_trainable_to_base_names():
    model, data = memorized("causal_lm")
    ref = memorized("causal_lm")[0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = {}

    def loss_fn(m, f, r, frozen):
        seen["ref_lora"] = any("lora" in n for n, _ in frozen["ref"].named_modules())
        seen["trainable"] = sorted(n for n, p in m.named_parameters() if p.requires_grad)
        return -LM.loss(m, f) + 0 * LM.loss(frozen["ref"], f)

    out = run_loop(model, loss_fn, LoopParams(lr=1e-2, epochs=2, batch_size=8, lora_r=2, lora_targets=["qkv", "proj"]),
                   forget=data.forget, frozen={"ref": ref}, trainable=lambda n: n.startswith("layers.1."),
                   progress=False).model
    assert seen["ref_lora"] is False
    assert seen["trainable"] and all(".layers.1." in n and ".lora_" in n for n in seen["trainable"])
    changed = {n for n, p in out.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {"layers.1.qkv.weight", "layers.1.proj.weight"}


@needs_peft
def test_a_lora_target_matching_nothing_fails_before_any_step():
    model, data = memorized("causal_lm")
    before = _weights(model)
    steps = []
    with pytest.raises(ValueError, match="'nope' matches no"):
        run_loop(model, lambda m, f, r, _: steps.append(1) or LM.loss(m, f),
                 LoopParams(lora_r=4, lora_targets=["qkv", "nope"]), forget=data.forget, progress=False)
    assert steps == [] and torch.equal(_weights(model), before)
    assert not any("lora" in n for n, _ in model.named_modules())


@needs_peft
def test_lora_needs_peft_and_its_own_optimizer(monkeypatch):
    model, data = memorized("causal_lm")
    with pytest.raises(ValueError, match="caller-owned optimizer"):
        run_loop(model, lambda m, f, r, _: LM.loss(m, f), LoopParams(lora_r=4, lora_targets=["qkv"]),
                 forget=data.forget, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install unlearnkit\[llm\]"):
        create_method("grad_ascent", lora_r=4, lora_targets=["qkv"]).unlearn(model, data, LM)


# ------------------------------------------------------------------------------------- activation checkpointing
def test_gradient_checkpointing_is_a_no_op_on_a_model_without_support():
    def train(flag):
        model = tiny_classifier()
        res = run_loop(model, _ce, LoopParams(epochs=2, batch_size=8, gradient_checkpointing=flag), forget=_ds(24),
                       progress=False)
        return _weights(model), res.setup["gradient_checkpointing"]

    (a, on_a), (b, on_b) = train(True), train(False)
    assert torch.equal(a, b) and on_a is on_b is False


@needs_peft
def test_gradient_checkpointing_with_lora_on_a_transformers_model():
    """P19: LoRA behind checkpointed blocks still gets gradients (enable_input_require_grads); checkpointing is on
    for the run only, and the result equals the run without it."""
    from unlearnkit.models.llm import tiny_llama
    from unlearnkit.testing import tiny_lm_data

    data = tiny_lm_data()

    def train(flag):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = tiny_llama(vocab_size=24, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        during = []

        def loss_fn(m, f, r, _):
            during.append(_checkpointing_is_on(m.base_model.model))
            return LM.loss(m, f)

        res = run_loop(model, loss_fn, LoopParams(lr=1e-2, epochs=1, batch_size=4, lora_r=4, optimizer="adam",
                                                  gradient_checkpointing=flag), forget=data.forget, progress=False)
        changed = {n for n, p in res.model.named_parameters() if not torch.equal(before[n], p)}
        assert type(res.model).__name__ == "LlamaForCausalLM" and not _checkpointing_is_on(res.model)
        assert set(during) == {flag} and res.setup["gradient_checkpointing"] is flag
        return res.model, changed

    on, changed_on = train(True)
    off, changed_off = train(False)
    assert changed_on == changed_off and any("q_proj" in n for n in changed_on)
    assert not any("embed" in n or "norm" in n for n in changed_on)
    torch.testing.assert_close(_weights(on), _weights(off))
