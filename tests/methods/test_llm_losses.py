"""The LLM methods of specs/llm.md §2.5-2.11 (dpo, rmu, undial, ce_u, satimp, wga, pdu) and the token-averaged KL:
each loss against a hand computation with explicit loops over positions, plus the behaviours the spec pins down
(DPO's value at θ = ref, UNDIAL's masking, CE-U's A', PDU's dual ascent, RMU's frozen parameters, early errors)."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from unlearnkit._registry import METHODS
from unlearnkit.data import UnlearnData
from unlearnkit.methods import _loop, create_method, losses
from unlearnkit.methods.dpo import alternate
from unlearnkit.methods.rmu import control_vector, find_block
from unlearnkit.tasks import get_task
from unlearnkit.testing import memorized
from unlearnkit.testing.toy import DictDataset

TASK = get_task("causal_lm")
LLM = ("dpo", "rmu", "undial", "ce_u", "satimp", "wga", "pdu")


def first(dataset, n):
    return next(iter(DataLoader(dataset, batch_size=n)))


def perturbed(model, scale=0.3, seed=1):
    """The model moved away from the original, so that p_t, log-ratios and KLs are far from their start values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def toy():
    """(perturbed model, original, forget batch of 2, retain batch of 2)."""
    model, data = memorized("causal_lm")
    original = memorized("causal_lm")[0].requires_grad_(False)
    return perturbed(model), original, first(data.forget, 2), first(data.retain, 2)


class FixedLogits(nn.Module):
    """A "model" whose logits [B, T, V] are a parameter: any logits, written by hand, can be fed to a loss."""

    def __init__(self, logits):
        super().__init__()
        self.z = nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask=None):
        return self.z


def labelled(labels):
    """(i, t, y) for every position t whose NEXT label y = labels[i, t+1] is not −100 (logits at t predict t+1)."""
    return [(i, t, int(labels[i, t + 1])) for i in range(labels.shape[0]) for t in range(labels.shape[1] - 1)
            if labels[i, t + 1] != -100]


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a.detach().double(), torch.as_tensor(b).detach().double(), rtol=tol, atol=1e-6)


# ---- WGA and SatImp: one atom, a stop-gradient token weight ---------------------------------------------------

@pytest.mark.parametrize("name, kwargs, weight", [
    ("wga", {"beta": 1.5}, lambda p: p**1.5),
    ("satimp", {"beta1": 2.0, "beta2": 3.0}, lambda p: p**2.0 * (1 - p) ** 3.0),
])
def test_weighted_ascent_matches_explicit_loops(toy, name, kwargs, weight):
    model, _, forget, _ = toy
    method = create_method(name, retain_loss="none", gamma=0.7, **kwargs)
    logits = model(forget["input_ids"])  # [2, T, V]
    terms = []
    for i, t, y in labelled(forget["labels"]):
        nll = -torch.log_softmax(logits[i, t], -1)[y]
        terms.append(weight(math.exp(-nll.item())) * nll)  # the weight is a constant: stop-gradient
    assert len(terms) == 2 * 6
    expected = -0.7 * torch.stack(terms).mean()
    got = method.loss(TASK, model, forget, None, {})
    close(got, expected)
    params = list(model.parameters())  # the gradient too: sg() keeps the weight out of it
    for g, e in zip(torch.autograd.grad(got, params), torch.autograd.grad(expected, params), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)


def test_wga_and_satimp_add_the_retain_nll(toy):
    model, _, forget, retain = toy
    for name in ("wga", "satimp"):
        method = create_method(name)
        alone = create_method(name, retain_loss="none").loss(TASK, model, forget, None, {})
        close(method.loss(TASK, model, forget, retain, {}), alone + method.alpha * TASK.loss(model, retain))


# ---- DPO -------------------------------------------------------------------------------------------------------

def sequence_logprob(model, batch):
    """Σ over labelled tokens of log p(y_t), one example at a time."""
    logits = model(batch["input_ids"])
    out = torch.zeros(batch["input_ids"].shape[0])
    for i, t, y in labelled(batch["labels"]):
        out[i] += torch.log_softmax(logits[i, t], -1)[y]
    return out


def test_dpo_starts_at_two_log_two_over_beta():
    model, data = memorized("causal_lm")
    dpo = create_method("dpo", beta=0.5, retain_loss="none")
    close(dpo.loss(TASK, model, first(data.forget, 8), None, dpo.frozen_models(model)), (2 / 0.5) * math.log(2))


def test_dpo_matches_sequence_sums_by_hand(toy):
    model, original, forget, _ = toy
    beta = 0.3
    idk = alternate(forget)
    assert set(idk) == {"input_ids", "attention_mask", "labels"}
    assert torch.equal(idk["input_ids"][:, :4], forget["input_ids"][:, :4])  # same prompt, another answer
    with torch.no_grad():
        r_idk = sequence_logprob(model, idk) - sequence_logprob(original, idk)
        r_f = sequence_logprob(model, forget) - sequence_logprob(original, forget)
    expected = -(2 / beta) * torch.nn.functional.logsigmoid(beta * (r_idk - r_f)).mean()
    assert abs(expected - (2 / beta) * math.log(2)) > 0.1  # away from the start value
    got = create_method("dpo", beta=beta, retain_loss="none").loss(TASK, model, forget, None, {"ref": original})
    close(got, expected, tol=1e-4)


def test_dpo_without_alternates_fails_before_any_work():
    _, data = memorized("causal_lm")
    plain = DictDataset(**{k: v for k, v in data.forget.columns.items() if not k.startswith("alt_")})
    with pytest.raises(ValueError, match=r"alternate \(IDK\) answers.*alt_input_ids.*alternates=IDK_ANSWERS"):
        create_method("dpo").unlearn(None, UnlearnData(forget=plain, retain=data.retain), TASK)  # no model needed


# ---- UNDIAL ----------------------------------------------------------------------------------------------------

V = 128  # > 100, so that V − 100 = 28 is a real vocabulary id a −100 index would wrap to


def undial_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (2, 6), generator=g)
    labels[0, :3] = labels[1, :2] = labels[1, 5] = -100  # prompts and a padded end
    batch = {"input_ids": labels.clamp(min=0), "labels": labels}
    return batch, torch.randn(2, 6, V, generator=g), torch.randn(2, 6, V, generator=g)


def test_undial_matches_the_soft_label_cross_entropy_by_hand():
    batch, z, z_ref = undial_batch()
    beta = 3.0
    terms = []
    for i, t, y in labelled(batch["labels"]):
        teacher = z_ref[i, t].clone()
        teacher[y] -= beta
        q = torch.softmax(teacher, -1)
        terms.append(-(q * torch.log_softmax(z[i, t], -1)).sum())
    got = create_method("undial", beta=beta).loss(TASK, FixedLogits(z), batch, None, {"ref": FixedLogits(z_ref)})
    close(got, torch.stack(terms).mean())


def test_undial_never_indexes_the_vocabulary_with_minus_100():
    batch, z, z_ref = undial_batch()
    method = create_method("undial", beta=10.0)
    base = method.loss(TASK, FixedLogits(z), batch, None, {"ref": FixedLogits(z_ref)})
    masked = batch["labels"][:, 1:] == -100  # [B, T−1]: positions whose target is −100
    z2, z_ref2 = z.clone(), z_ref.clone()
    z2[:, :-1][masked] = torch.randn(int(masked.sum()), V) * 50  # anything at all, V − 100 included
    z2[:, :-1][masked, V - 100] = 1e4
    z_ref2[:, :-1][masked, V - 100] = -1e4
    close(method.loss(TASK, FixedLogits(z2), batch, None, {"ref": FixedLogits(z_ref2)}), base)
    # the reference code's scatter (labels −100 -> id V − 100, mean over all positions) does see these logits
    labels = batch["labels"][:, 1:]
    onehot = torch.zeros(2, 5, V)
    onehot[torch.arange(2)[:, None], torch.arange(5)[None], labels] = 1.0
    buggy = -(torch.softmax(z_ref2[:, :-1] - 10.0 * onehot, -1) * torch.log_softmax(z2[:, :-1], -1)).sum(-1).mean()
    assert abs(buggy - base) > 1.0
    # on the toy (V = 24 < 100) a −100 index would not even wrap: it raises
    model, data = memorized("causal_lm")
    assert torch.isfinite(method.loss(TASK, model, first(data.forget, 8), None, method.frozen_models(model)))


# ---- CE-U ------------------------------------------------------------------------------------------------------

def test_ce_u_drops_exactly_the_first_n_answer_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(losses.skip_first_answer_tokens(mask, 0), mask)
    assert losses.skip_first_answer_tokens(mask, 1).int().tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0],
                                                                        [0] * 6]
    assert losses.skip_first_answer_tokens(mask, 2).int().tolist() == [[0, 0, 0, 0, 1, 0], [0] * 6, [0] * 6]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_ce_u_matches_the_cross_entropy_without_the_true_token(n):
    batch, z, _ = undial_batch(seed=1)
    terms, seen = [], {}
    for i, t, y in labelled(batch["labels"]):
        seen[i] = seen.get(i, 0) + 1
        if seen[i] <= n:  # the first n answer tokens of example i
            continue
        target = z[i, t].clone()
        target[y] = -math.inf
        q = torch.softmax(target, -1)
        assert q[y] == 0
        terms.append(-(q * torch.log_softmax(z[i, t], -1)).sum())
    got = create_method("ce_u", ignore_first_n_answer_tokens=n).loss(TASK, FixedLogits(z), batch, None, {})
    close(got, torch.stack(terms).mean())


# ---- PDU -------------------------------------------------------------------------------------------------------

def test_pdu_margin_is_the_squared_top_minus_mean_logit_on_labelled_positions():
    batch, z, _ = undial_batch(seed=2)
    terms = [(z[i, t].max() - z[i, t].mean()) ** 2 for i, t, _ in labelled(batch["labels"])]
    close(losses.logit_margin(TASK, FixedLogits(z), batch), torch.stack(terms).mean(), tol=1e-4)


def test_pdu_requires_epsilon_before_any_work():
    _, data = memorized("causal_lm")
    with pytest.raises(ValueError, match=r"method\.pdu\.epsilon is required"):
        create_method("pdu").unlearn(None, data, TASK)  # fails before touching the (absent) model


def test_pdu_lagrangian_at_alpha_zero(toy):
    model, _, forget, retain = toy
    pdu = create_method("pdu", epsilon=0.3, gamma=0.5, alpha=2.0)
    close(pdu.loss(TASK, model, forget, retain, {}),
          0.5 * losses.logit_margin(TASK, model, forget) + 2.0 * (TASK.loss(model, retain) - 0.3))


def test_pdu_dual_ascent_every_step_after_warmup():
    model, data = memorized("causal_lm")
    eps, eta = 0.5, 2.0
    pdu = create_method("pdu", epsilon=eps, eta=eta, alpha=1.0, dual_warmup_epochs=1, epochs=3, batch_size=4, lr=1e-3)
    pdu.unlearn(model, data, TASK)
    a, r = pdu.alphas_, pdu.retain_losses_
    assert len(a) == len(r) == pdu.steps_ == 6  # 2 steps per epoch (8 forget examples)
    assert a[:3] == [1.0, 1.0, 1.0]  # epoch 0 is warmup; the first update happens after step 2's loss
    for k in range(2, 5):
        assert a[k + 1] == pytest.approx(max(0.0, a[k] + eta * (r[k] - eps)))
    assert a[3] < 1.0  # the toy's retain loss (≈ 0) is below ε: α falls


def test_pdu_epoch_update_uses_a_full_eval_pass_over_retain():
    model, data = memorized("causal_lm")
    eps, eta = 0.01, 5.0
    ends = {}

    def after_step(m, step):  # the retain loss over the whole retain set at each epoch end (steps 2 and 4)
        if step % 2 == 0:
            with torch.no_grad():
                ends[step] = TASK.per_example_loss(m.eval(), first(data.retain, len(data.retain))).mean().item()

    pdu = create_method("pdu", epsilon=eps, eta=eta, update="epoch", dual_warmup_epochs=0, epochs=3, batch_size=4,
                        lr=1e-3)
    pdu.unlearn(model, data, TASK, after_step=after_step)
    a = pdu.alphas_
    assert a[0] == a[1] and a[2] == a[3] and a[4] == a[5]  # constant within an epoch
    assert a[2] == pytest.approx(max(0.0, a[1] + eta * (ends[2] - eps)), rel=1e-4)
    assert a[4] == pytest.approx(max(0.0, a[3] + eta * (ends[4] - eps)), rel=1e-4)
    assert a[2] != a[1]


# ---- RMU -------------------------------------------------------------------------------------------------------

def block_outputs(model, ids, upto):
    """The toy's forward written out, to the output of block `upto`."""
    h = model.embed(ids) + model.pos(torch.arange(ids.shape[1]))
    for layer in model.layers[:upto + 1]:
        h = layer(h)
    return h  # [B, T, d]


def activation_loss_by_hand(h, target, labels):
    per_example = []
    for i in range(h.shape[0]):
        ts = [t for t in range(h.shape[1]) if labels[i, t] != -100]  # before the shift
        per_example.append(sum(((h[i, t] - target[i, t]) ** 2).sum() / h.shape[-1] for t in ts) / len(ts))
    return torch.stack(per_example).mean()


@pytest.mark.parametrize("layer, upto", [("layers.0", 0), ("layers.1", 1)])
def test_rmu_loss_matches_a_hand_computed_target(toy, layer, upto):
    model, original, forget, retain = toy
    c, seed = 3.0, 7
    rmu = create_method("rmu", layer=layer, steering_coeff=c, seed=seed, gamma=0.5, alpha=2.0)
    with torch.no_grad():
        h_f, h_r = block_outputs(model, forget["input_ids"], upto), block_outputs(model, retain["input_ids"], upto)
        h_ref = block_outputs(original, retain["input_ids"], upto)
    r = torch.rand(h_f.shape[-1], generator=torch.Generator().manual_seed(seed))
    target = (c * r / r.norm()).expand_as(h_f)
    assert torch.allclose(control_vector(h_f.shape[-1], seed), r / r.norm())
    expected = (0.5 * activation_loss_by_hand(h_f, target, forget["labels"])
                + 2.0 * activation_loss_by_hand(h_r, h_ref, retain["labels"]))
    calls = []
    handle = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        got = rmu.loss(TASK, model, forget, retain, {"ref": original})
    finally:
        handle.remove()
    close(got, expected, tol=1e-4)
    assert calls == []  # the forward stopped at the block
    full = create_method("rmu", layer=layer, steering_coeff=c, seed=seed, gamma=0.5, alpha=2.0, stop_at_layer=False)
    close(full.loss(TASK, model, forget, retain, {"ref": original}), got)


def test_rmu_trains_only_the_selected_tensors(monkeypatch):
    model, data = memorized("causal_lm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    chosen = {"layers.0.mlp.2.weight", "layers.1.mlp.2.weight"}
    seen = {}
    make = _loop.make_optimizer

    def spy(params, parameters):
        parameters = list(parameters)
        seen["optimised"] = [id(p) for p in parameters]
        return make(params, parameters)

    monkeypatch.setattr(_loop, "make_optimizer", spy)
    flags = []
    rmu = create_method("rmu", layer="layers.1", trainable=[r"layers\.(0|1)\.mlp\.2\.weight"], lr=1e-2, epochs=1,
                        batch_size=4)
    rmu.unlearn(model, data, TASK, after_step=lambda m, step: flags.append(
        {n for n, p in m.named_parameters() if p.requires_grad}))
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in seen["optimised"]} == chosen  # the optimiser sees the trainable tensors only
    assert flags and all(f == chosen for f in flags)  # everything else has requires_grad=False during the run
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n in chosen), n


def test_rmu_hooks_the_block_object_under_lora():
    pytest.importorskip("peft")
    model, data = memorized("causal_lm")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    kw = dict(layer="layers.1", epochs=1, batch_size=4, lr=1e-2, trainable=[r"layers\.1\..*"])
    plain = create_method("rmu", **kw)
    plain.unlearn(memorized("causal_lm")[0], data, TASK)
    lora = create_method("rmu", lora_r=2, lora_targets=["qkv", "proj"], **kw)
    out = lora.unlearn(model, data, TASK)  # peft renames every module: the hook was placed on the object
    assert lora.losses_[0] == pytest.approx(plain.losses_[0], rel=1e-5)  # LoRA starts at the same weights
    assert lora.losses_[-1] < lora.losses_[0]
    changed = {n for n, p in out.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"layers.1.qkv.weight", "layers.1.proj.weight"}  # the adapters, merged, on block 1 only


def test_rmu_layer_and_trainable_errors():
    model, data = memorized("causal_lm")
    with pytest.raises(ValueError, match=r"layer 'model\.layers\.7'.*blocks: layers\.0, layers\.1"):
        create_method("rmu").unlearn(model, data, TASK)
    with pytest.raises(ValueError, match=r"matches no parameter"):
        create_method("rmu", layer="layers.1", trainable=[r"mlp\.2\.weight"]).unlearn(model, data, TASK)
    wrapped = nn.ModuleDict({"base": model})  # a wrapper renames modules (peft, accelerate): found by suffix
    assert find_block(wrapped, "layers.1") is model.layers[1]


# ---- KL averaged over labelled tokens (§6 P2) ---------------------------------------------------------------

def test_token_kl_is_the_mean_over_labelled_positions(toy):
    model, original, forget, retain = toy
    logits, logits_ref = model(retain["input_ids"]), original(retain["input_ids"])
    kls = []
    for i, t, _ in labelled(retain["labels"]):
        p_ref = torch.softmax(logits_ref[i, t], -1)
        kls.append((p_ref * (torch.log(p_ref) - torch.log_softmax(logits[i, t], -1))).sum())
    by_hand = torch.stack(kls).mean()
    close(losses.kl_to_reference(TASK, model, original, retain, per_token=True), by_hand, tol=1e-4)
    close(losses.kl_to_reference(TASK, model, original, retain), torch.stack(kls).sum() / 2, tol=1e-4)  # default
    kl = create_method("kl", gamma=0.0, kl_reduction="token")
    close(kl.loss(TASK, model, forget, retain, {"ref": original}), by_hand, tol=1e-4)
    both = create_method("grad_diff_kl_forget", retain_loss="kl", gamma=0.0, alpha=0.0, kl_reduction="token")
    close(both.loss(TASK, model, forget, retain, {"ref": original}),
          losses.kl_to_reference(TASK, model, original, forget, per_token=True))


# ---- registration ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("dpo", dict(beta=0.1, gamma=1.0, alpha=1.0, retain_loss="nll", lr=1e-5, epochs=10)),
    ("rmu", dict(layer="model.layers.7", steering_coeff=2.0, gamma=1.0, alpha=1.0, retain_loss="embed_diff",
                 trainable=[], lr=1e-5, epochs=10)),
    ("undial", dict(beta=10.0, gamma=1.0, alpha=0.0, lr=1e-4, epochs=10)),
    ("ce_u", dict(ignore_first_n_answer_tokens=1, retain_loss="none", lr=1e-5, epochs=10)),
    ("satimp", dict(beta1=5.0, beta2=1.0, gamma=0.1, alpha=1.0, retain_loss="nll", lr=1e-5, epochs=5)),
    ("wga", dict(beta=1.0, gamma=1.0, alpha=1.0, retain_loss="nll", lr=1e-5, epochs=5)),
    ("pdu", dict(epsilon=None, primal_dual=True, eta=1.0, update="step", dual_warmup_epochs=5, gamma=1.0, alpha=1.0,
                 retain_loss="nll", lr=1e-5, epochs=10)),
])
def test_registered_defaults_follow_the_spec(name, expected):
    method = create_method(name)
    assert {k: getattr(method, k) for k in expected} == expected
    assert method.kl_reduction == "sequence"
    assert METHODS.get(name).obj.__doc__ and METHODS.get(name).tags["paper"]


@pytest.mark.parametrize("name, uses, reference", [
    ("dpo", ("forget", "retain"), True), ("rmu", ("forget", "retain"), True), ("undial", ("forget",), True),
    ("ce_u", ("forget",), False), ("satimp", ("forget", "retain"), False), ("wga", ("forget", "retain"), False),
    ("pdu", ("forget", "retain"), False), ("simnpo", ("forget",), False), ("npo", ("forget",), True),
])
def test_only_methods_that_use_a_reference_build_one(name, uses, reference):
    model, _ = memorized("causal_lm")
    method = create_method(name)
    assert (tuple(method.uses), METHODS.get(name).tags["needs_reference"]) == (uses, reference)
    assert set(method.frozen_models(model)) == ({"ref"} if reference else set())


def test_capabilities_follow_the_hyperparameters():
    model, _ = memorized("causal_lm")
    assert create_method("rmu", retain_loss="nll").frozen_models(model) == {}
    assert create_method("undial", alpha=1.0).uses == ("forget", "retain")
    assert create_method("wga", retain_loss="kl").needs_reference
    assert METHODS.get("pdu").tags["tasks"] == ("causal_lm",)
    assert all(METHODS.get(n).tags["tasks"] == ("causal_lm",) for n in LLM if n != "pdu")


def test_rmu_freezes_what_its_loss_cannot_reach():
    """On a 2-layer Llama steered at layer 0 with the embed_diff retain loss, layer 1, the final norm and the LM head
    never receive a gradient: they are frozen for the run (no optimiser state) and left exactly as they were, while
    the embeddings and layer 0 change."""
    import copy

    from unlearnkit.models import build_model
    from unlearnkit.testing.toy import tiny_lm_data

    model = build_model("tiny_llama", seed=0, vocab_size=24, hidden_size=16, intermediate_size=32, num_layers=2,
                        num_heads=2, pad_token_id=0)
    before = copy.deepcopy(model)
    method = create_method("rmu", layer="model.layers.0", lr=1e-2, epochs=1, batch_size=4)
    out = method.unlearn(model, tiny_lm_data(), get_task("causal_lm"))
    assert set(method.unreached_) == {n for n, _ in before.named_parameters()
                                      if n.startswith(("model.layers.1.", "model.norm", "lm_head"))}
    for (name, p), q in zip(out.named_parameters(), before.parameters(), strict=True):
        assert torch.equal(p, q) == (name in method.unreached_), name
    with pytest.raises(ValueError, match="does not reach"):
        create_method("rmu", layer="model.layers.0", trainable=[r"lm_head\..*"], epochs=1).unlearn(
            copy.deepcopy(before), tiny_lm_data(), get_task("causal_lm"))
