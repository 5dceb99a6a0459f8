"""IMU's LLM version (specs/markov_imu.md §3): per-example gradients of nn.Linear weights from layer hooks (one
batched forward + backward, no vmap) against autograd on the toy LM and on a transformers Llama with padded batches;
influences per forget batch on the current model (influence_scope="batch")."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset, default_collate

from unlearnkit.data import UnlearnData
from unlearnkit.methods import create_method, losses
from unlearnkit.methods._influence import (
    NotCaptured,
    influence_weights,
    iter_linear_grads_by_hooks,
    linear_grads_by_hooks,
    linear_grads_by_hooks_of_batch,
    linear_owners,
    per_example_grads,
    per_example_grads_loop,
    select_parameters,
    stacked_influences,
)
from unlearnkit.models import build_model
from unlearnkit.tasks import get_task
from unlearnkit.testing import forget_loss, memorized, tiny_causal_lm, tiny_classifier
from unlearnkit.testing.toy import DictDataset

# vmap over the toy LM's CPU attention uses torch's (correct, slower) fallback and says so
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")

LM = get_task("causal_lm")
TOY_LM_PARAMS = ["layers.1.proj.weight", "layers.1.mlp.2.weight", "layers.1.mlp.2.bias", "layers.0.qkv.*"]
LLAMA_PARAMS = ["model.layers.*.self_attn.o_proj.weight", "model.layers.*.mlp.down_proj.weight"]


def _assert_close(a, b, rtol=1e-5):
    assert a.keys() == b.keys()
    for n in a:
        assert a[n].shape == b[n].shape, n
        scale = b[n].abs().max().item()
        assert scale > 0, f"{n}: all-zero reference gradient, the comparison would be vacuous"
        torch.testing.assert_close(a[n], b[n], rtol=rtol, atol=rtol * scale, msg=n)


def _ragged(data):
    """The toy LM forget set with a different number of scored tokens per sequence (sequence 0 has none)."""
    rows = [data.forget[i] for i in range(len(data.forget))]
    ids, labels = torch.stack([r["input_ids"] for r in rows]), torch.stack([r["labels"] for r in rows]).clone()
    for i in range(len(rows)):
        labels[i, 4 + i % 6:] = -100
    return DictDataset(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)


def tiny_llama():
    return build_model("tiny_llama", seed=0, vocab_size=50, hidden_size=32, intermediate_size=64, num_layers=2,
                       num_heads=2, pad_token_id=0)


# (real length, prompt length) per sequence; right-padded with token 0 to the longest; labels −100 on the prompt
# and the padding. Lengths differ, two sequences are unpadded, one has a single scored token.
SHAPES = [(9, 3), (5, 2), (12, 4), (7, 3), (3, 2), (12, 5), (10, 9)]


def padded_qa(seed=0, vocab=50):
    g = torch.Generator().manual_seed(seed)
    width = max(n for n, _ in SHAPES)
    ids = torch.zeros(len(SHAPES), width, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (n, prompt) in enumerate(SHAPES):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, prompt:n] = ids[i, prompt:n]
    return DictDataset(input_ids=ids, attention_mask=mask, labels=labels)


def trimmed_autograd(model, dataset, names):
    """The reference: for each example alone, cut to its real length (no padding at all), one autograd backward."""
    params = [dict(model.named_parameters())[n] for n in names]
    out = {n: [] for n in names}
    model.eval()
    for i, (n, _) in enumerate(SHAPES):
        batch = {k: v[None, :n] for k, v in dataset[i].items()}
        for name, g in zip(names, torch.autograd.grad(LM.per_example_loss(model, batch).sum(), params), strict=True):
            out[name].append(g)
    return {n: torch.stack(gs) for n, gs in out.items()}


# ---------------------------------------------------------------------------------------------------------------
# per-example gradients by layer hooks
# ---------------------------------------------------------------------------------------------------------------
def test_hook_grads_equal_autograd_on_the_toy_models():
    model, data = memorized("causal_lm")
    fresh = tiny_causal_lm(seed=3)  # larger gradients
    for m, dataset in [(model, data.forget), (fresh, data.forget), (fresh, _ragged(data))]:
        names = select_parameters(m, TOY_LM_PARAMS)
        hooks = linear_grads_by_hooks(m, LM, dataset, names, batch_size=3)  # several batches, the last partial
        _assert_close(hooks, per_example_grads_loop(m, LM, dataset, names))
    assert hooks["layers.1.mlp.2.weight"][0].abs().max() == 0  # sequence 0 of the ragged set scores no token
    model, data = memorized("classifier")
    task = get_task("classifier")
    names = select_parameters(model, ["features.1.*", "head.weight"])
    _assert_close(linear_grads_by_hooks(model, task, data.forget, names, batch_size=5),
                  per_example_grads_loop(model, task, data.forget, names))


def test_hook_grads_on_a_transformers_llama_with_padded_batches():
    model, dataset = tiny_llama(), padded_qa()
    names = select_parameters(model, LLAMA_PARAMS)
    assert names == ["model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight",
                     "model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    batches = list(iter_linear_grads_by_hooks(model, LM, dataset, names, batch_size=4))  # 4 + 3, padded to 12
    assert [len(b[names[0]]) for b in batches] == [4, 3]
    hooks = {n: torch.cat([b[n] for b in batches]) for n in names}
    # padding positions get δ = 0 (their labels are −100 and nothing before them attends to them): the padded
    # batch gives the gradients of each sequence run alone without any padding
    _assert_close(hooks, trimmed_autograd(model, dataset, names))


def test_a_linear_called_twice_gets_the_sum_of_its_calls():
    class Twice(nn.Module):  # one Linear applied twice per forward (weight sharing across depth)
        def __init__(self):
            super().__init__()
            self.inp, self.shared, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.head(torch.tanh(self.shared(torch.tanh(self.shared(torch.tanh(self.inp(x)))))))

    torch.manual_seed(0)
    model, task = Twice(), get_task("classifier")
    dataset = TensorDataset(torch.randn(7, 8), torch.randint(0, 4, (7,)))
    names = ["shared.weight", "shared.bias", "inp.weight"]
    _assert_close(linear_grads_by_hooks(model, task, dataset, names, batch_size=3),
                  per_example_grads_loop(model, task, dataset, names))


class _Leaky(nn.Module):
    """A classifier that also uses its Linear's weight outside the Linear's forward: hooks cannot see that use."""

    def __init__(self):
        super().__init__()
        self.lin, self.head = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.lin(x)) + 0.5 * F.linear(x, self.lin.weight))


def test_a_weight_used_outside_its_layer_is_caught_and_auto_falls_back_to_vmap():
    torch.manual_seed(0)
    model, task = _Leaky(), get_task("classifier")
    data = UnlearnData(forget=TensorDataset(torch.randn(6, 8), torch.randint(0, 4, (6,))))
    with pytest.raises(NotCaptured, match="'lin.weight'.*outside its nn.Linear"):
        linear_grads_by_hooks(model, task, data.forget, ["lin.weight"])
    auto = create_method("imu", params=["lin.weight"], influence_memory="stream", influence_batch_size=4)
    infl = auto.influences(model, task, data.forget, ["lin.weight"])
    assert auto.grad_method_ == "vmap"
    torch.testing.assert_close(infl, stacked_influences(per_example_grads_loop(model, task, data.forget,
                                                                               ["lin.weight"])))
    with pytest.raises(NotCaptured):
        create_method("imu", params=["lin.weight"], grad_method="hooks").influences(model, task, data.forget,
                                                                                     ["lin.weight"])


def test_hooks_need_linear_weights_and_leave_the_model_as_it_was():
    model = tiny_causal_lm()
    assert linear_owners(model, ["norm.weight"]) is None
    with pytest.raises(ValueError, match="'norm.weight' is the 'weight' of norm \\(LayerNorm\\)"):
        iter_linear_grads_by_hooks(model, LM, memorized("causal_lm")[1].forget, ["norm.weight"])
    with pytest.raises(ValueError, match="grad_method='hooks' needs"):
        create_method("imu", grad_method="hooks", params=["norm.*"]).unlearn(*memorized("causal_lm"), LM)
    tied = tiny_causal_lm()
    tied.lm_head.weight = tied.embed.weight  # held by the embedding too: only vmap
    assert linear_owners(tied, select_parameters(tied, [])) is None
    assert create_method("imu").grad_methods(tied, select_parameters(tied, [])) == ["vmap"]
    assert create_method("imu").grad_methods(model, select_parameters(model, [])) == ["closed_form", "hooks", "vmap"]

    model, data = memorized("causal_lm")
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    batch = default_collate([data.forget[i] for i in range(4)])
    linear_grads_by_hooks_of_batch(model, LM, batch, select_parameters(model, TOY_LM_PARAMS), check=True)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_imu_on_a_transformers_llama_uses_the_hooks_stacked_or_streamed():
    model, dataset = tiny_llama(), padded_qa()
    data = UnlearnData(forget=dataset)
    names = select_parameters(model, LLAMA_PARAMS)
    runs = {}
    for mode in ("stack", "stream"):
        method = create_method("imu", params=LLAMA_PARAMS, influence_memory=mode, influence_batch_size=3)
        runs[mode] = method.influences(model, LM, dataset, names)
        assert method.grad_method_ == "hooks" and method.influence_memory_ == mode
    torch.testing.assert_close(runs["stream"], runs["stack"], rtol=1e-5, atol=1e-6 * runs["stack"].abs().max())
    torch.testing.assert_close(runs["stack"], stacked_influences(trimmed_autograd(model, dataset, names)),
                               rtol=1e-4, atol=1e-6 * runs["stack"].abs().max())
    original = copy.deepcopy(model)
    method = create_method("imu", params=LLAMA_PARAMS, lr=1e-2, epochs=2, batch_size=4)
    out = method.unlearn(model, data, LM)
    for (n, p), q in zip(out.named_parameters(), original.parameters(), strict=True):
        assert torch.equal(p, q) != (n in names), f"{n}: {'unchanged' if n in names else 'changed'}"
    assert forget_loss(out, data, LM) > forget_loss(original, data, LM)


# ---------------------------------------------------------------------------------------------------------------
# influence_scope="batch": weights per forget batch, on the current model
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params, grad_method", [([], "closed_form"), (TOY_LM_PARAMS, "hooks")])
def test_batch_scope_raises_the_forget_loss_and_records_the_kept_counts(params, grad_method):
    model, data = memorized("causal_lm")
    original = copy.deepcopy(model)
    method = create_method("imu", params=params, influence_scope="batch", lr=1e-2, epochs=3, batch_size=4)
    out = method.unlearn(model, data, LM)
    assert method.grad_method_ == grad_method and method.kept_ is None
    assert method.steps_ == 3 * math.ceil(len(data.forget) / 4) == len(method.kept_per_step_)
    assert all(1 <= k <= 4 for k in method.kept_per_step_)  # Σ_i I_i = −B·ḡF⁻¹ḡ < 0: some I_i < 0 in a batch
    chosen = set(select_parameters(original, params))
    for (n, p), q in zip(out.named_parameters(), original.parameters(), strict=True):
        assert torch.equal(p, q) != (n in chosen), n
    assert forget_loss(out, data, LM) > forget_loss(original, data, LM)


@pytest.mark.parametrize("params", [[], TOY_LM_PARAMS])
def test_batch_scope_first_step_is_the_weighted_ascent_of_that_batch(params):
    # one batch = the whole forget set, first step on the original model: the weights are those of the dataset
    # scope (influences from autograd, over the same examples), the loss is their weighted ascent + L1
    model, data = memorized("causal_lm")
    original = copy.deepcopy(model)
    names = select_parameters(model, params)
    kept, w, _ = influence_weights(per_example_grads_loop(model, LM, data.forget, names), top_data=0.5)
    method = create_method("imu", params=params, influence_scope="batch", top_data=0.5, alpha=0.01,
                           batch_size=len(data.forget), max_steps=1)
    method.unlearn(model, data, LM)
    assert method.kept_per_step_ == [len(kept)]
    with torch.no_grad():
        batch = default_collate([data.forget[i] for i in kept.tolist()])
        nll = LM.per_example_loss(original.train(), batch)
        theta = [dict(original.named_parameters())[n] for n in names]
        expected = losses.weighted_ascent(nll, w) + 0.01 * losses.l1(theta)
    assert method.losses_[0] == pytest.approx(expected.item(), rel=1e-5)


def test_a_batch_without_negative_influence_adds_no_ascent_gradient():
    # a classifier with all-zero weights and one copy of the same input per class: uniform p, so the mean head
    # gradient ḡ is exactly 0 and every influence is 0. The dataset scope refuses such a forget set; the batch
    # scope keeps nobody in that batch, and with α = 0 plain SGD leaves the weights as they were
    model = tiny_classifier()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    data = UnlearnData(forget=TensorDataset(torch.ones(4, 8), torch.arange(4)))
    task = get_task("classifier")
    with pytest.raises(ValueError, match="no forget example has negative influence"):
        create_method("imu").unlearn(copy.deepcopy(model), data, task)
    method = create_method("imu", influence_scope="batch", alpha=0.0, optimizer="sgd", momentum=0.0, lr=1.0,
                           batch_size=4)
    out = method.unlearn(copy.deepcopy(model), data, task)
    assert method.kept_per_step_ == [0] and method.losses_ == [0.0]
    assert all((p == 0).all() for p in out.parameters())


def test_zero_weights_leave_only_the_l1_step(monkeypatch):
    # the closure on batches where ascent WOULD move θ_h (the memorized LM): with every weight 0, one SGD step is
    # exactly the L1 step θ − lr·α·sign(θ); with the real weights it is not
    model, data = memorized("causal_lm")
    lr, alpha = 0.1, 0.01
    kw = dict(params=TOY_LM_PARAMS, influence_scope="batch", alpha=alpha, optimizer="sgd", momentum=0.0,
              weight_decay=0.0, lr=lr, batch_size=4, max_steps=1)
    names = select_parameters(model, TOY_LM_PARAMS)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in names}
    l1_step = {n: p - lr * alpha * p.sign() for n, p in before.items()}

    real = create_method("imu", **kw).unlearn(copy.deepcopy(model), data, LM)
    assert any(not torch.allclose(dict(real.named_parameters())[n], l1_step[n]) for n in names)

    method = create_method("imu", **kw)
    monkeypatch.setattr(type(method), "batch_weights", lambda self, m, task, batch, names: torch.zeros(
        task.batch_size(batch)))
    out = method.unlearn(copy.deepcopy(model), data, LM)
    assert method.kept_per_step_ == [0]
    for n in names:
        torch.testing.assert_close(dict(out.named_parameters())[n], l1_step[n], rtol=0, atol=1e-7)


def test_batch_scope_on_a_transformers_llama():
    model, dataset = tiny_llama(), padded_qa()
    data = UnlearnData(forget=dataset)
    names = select_parameters(model, ["model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.down_proj.weight"])
    original = copy.deepcopy(model)
    method = create_method("imu", params=names, influence_scope="batch", lr=1e-2, epochs=2, batch_size=3)
    out = method.unlearn(model, data, LM)
    assert method.grad_method_ == "hooks" and len(method.kept_per_step_) == method.steps_ == 6
    for (n, p), q in zip(out.named_parameters(), original.parameters(), strict=True):
        assert torch.equal(p, q) != (n in names), n
    assert forget_loss(out, data, LM) > forget_loss(original, data, LM)


def test_batch_scope_refuses_lora_before_any_work():
    with pytest.raises(ValueError, match="influence_scope='batch'.*LoRA"):
        create_method("imu", influence_scope="batch", lora_r=4).check(memorized("causal_lm")[1])


def test_vmap_still_gives_the_same_hook_gradients():
    # the same numbers from the two automatic back-ends where both apply (the toy LM traces under vmap)
    model, data = memorized("causal_lm")
    names = select_parameters(model, TOY_LM_PARAMS)
    _assert_close(linear_grads_by_hooks(model, LM, data.forget, names, batch_size=5),
                  per_example_grads(model, LM, data.forget, names, batch_size=5))


# ---------------------------------------------------------------------------------------------------------------
# the TOFU presets
# ---------------------------------------------------------------------------------------------------------------
PRESET_MODELS = {"tofu_tiny": ("llama", 2, [1]), "tofu": ("llama", 16, [13, 14, 15]),
                 "tofu_llama31_8b": ("llama", 32, [19, 20, 21]), "tofu_qwen25_1p5b": ("qwen2", 28, [19, 20, 21])}


@pytest.mark.parametrize("preset", list(PRESET_MODELS))
def test_the_tofu_presets_name_late_linear_layers_of_their_architecture(preset):
    """Each preset's IMU θ_h, on a miniature of its architecture (same family and number of layers): the o_proj and
    down_proj weights of the named layers, all nn.Linear weights, so per-example gradients come from the hooks."""
    import transformers

    from unlearnkit.pipelines import load_run_config
    from unlearnkit.pipelines.tofu import create_methods

    _, cfg = load_run_config(preset, [])
    imu = dict(create_methods(cfg, 0))["imu"]
    assert imu.influence_scope == "batch"
    family, n_layers, layers = PRESET_MODELS[preset]
    config_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[family]
    model = model_cls(config_cls(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=n_layers,
                                 num_attention_heads=2, num_key_value_heads=2))
    names = select_parameters(model, imu.params)
    assert names == [f"model.layers.{i}.{part}.weight" for i in layers
                     for part in ("self_attn.o_proj", "mlp.down_proj")]
    assert imu.grad_methods(model, names) == ["hooks", "vmap"]
