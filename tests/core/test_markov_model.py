"""`markov_gpt`, the IMU/SimNPO Markov-chain decoder (specs/markov_imu.md §2), used through the causal-LM task."""

import pytest
import torch
import torch.nn.functional as F

from unlearnkit._registry import MODELS
from unlearnkit.config import build
from unlearnkit.data.markov import MarkovParams, generate
from unlearnkit.methods.retrain import reinitialize
from unlearnkit.models import build_model
from unlearnkit.models.markov import MarkovTransformer
from unlearnkit.tasks import get_task

S, MAX_LEN = 10, 20  # the seed's setting: n_positions = 19


def seed_model(seed: int = 0, **kwargs) -> MarkovTransformer:
    return build_model("markov_gpt", seed=seed, state_size=S, max_len=MAX_LEN, **kwargs)


def tiny(seed: int = 0, **kwargs) -> MarkovTransformer:
    return build_model("markov_gpt", seed=seed, **{"state_size": 6, "max_len": 8, "n_embd": 16, "n_layer": 2,
                                                   **kwargs})


def test_parameter_count_of_the_seed_config():
    d, n_layer, n_positions = 128, 4, MAX_LEN - 1
    per_layer = 3 * d * d + 2 * (d * d + d) + 2 * 2 * d  # q, k, v (no bias); MLP; two LayerNorms
    expected = S * d + n_positions * d + n_layer * per_layer + d * S + S
    assert expected == 335_754
    assert sum(p.numel() for p in seed_model().parameters()) == expected


def test_parameter_names_follow_the_seed():
    names = set(seed_model().state_dict())
    for name in ("embedding.weight", "transformer.wpe.weight", "transformer._queries.3.weight",
                 "transformer._keys.0.weight", "transformer._values.0.weight", "transformer._lns_1.0.bias",
                 "transformer._mlps.2.0.weight", "transformer._mlps.2.2.bias", "transformer._lns_2.3.weight",
                 "output_layer.weight", "output_layer.bias"):
        assert name in names
    assert not any(n.endswith("_queries.0.bias") for n in names)


def test_output_shapes_and_the_full_length_convention():
    model = seed_model().eval()
    ids = torch.randint(0, S, (3, MAX_LEN))
    short = model(ids[:, :MAX_LEN - 1])  # T = n_positions
    full = model(ids, torch.ones_like(ids))  # T = n_positions + 1
    assert short.shape == (3, MAX_LEN - 1, S) and full.shape == (3, MAX_LEN, S)
    torch.testing.assert_close(full[:, :-1], short)
    torch.testing.assert_close(full[:, -1], model.output_layer.bias.expand(3, S))  # zero hidden state, unscored
    assert model(ids[:, :5]).shape == (3, 5, S)
    with pytest.raises(ValueError, match="T = 21 exceeds the maximum 20"):
        model(torch.zeros(1, MAX_LEN + 1, dtype=torch.long))


def test_output_layer_produces_the_whole_output_at_full_length():
    # closed-form head gradients (IMU) read the output layer's input and output through a forward hook
    model = seed_model().eval()
    seen = {}
    model.output_layer.register_forward_hook(lambda _m, inputs, out: seen.update(h=inputs[0], out=out))
    logits = model(torch.randint(0, S, (2, MAX_LEN)))
    assert seen["out"] is logits and seen["h"].shape == (2, MAX_LEN, 128)
    assert torch.equal(seen["h"][:, -1], torch.zeros(2, 128))


def test_attention_is_causal():
    model = tiny().eval()
    ids = torch.randint(0, 6, (2, 7))
    for t in (0, 3, 6):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % 6
        a, b = model(ids), model(changed)
        torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=0)
        assert not torch.allclose(a[:, t], b[:, t])


def test_seeded_build_is_reproducible_and_initialises_positions_like_gpt2():
    a, b, c = seed_model(3), seed_model(3), seed_model(4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.embedding.weight, c.embedding.weight)
    assert a.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.1)  # initializer_range
    assert a.embedding.weight.std().item() == pytest.approx(1.0, rel=0.1)  # nn.Embedding default


def test_reinitialize_redraws_every_parameter():
    model = tiny(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    reinitialize(model, seed=5)
    again = reinitialize(tiny(1), seed=5)
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(again.named_parameters())[name])
        if "wpe" in name or ("weight" in name and "_lns" not in name):
            assert not torch.equal(p, before[name])  # a fresh random draw (LayerNorms/biases reset to constants)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_multihead_option_runs_and_differs_from_the_seed_attention():
    seed = tiny(0).eval()
    multi = tiny(0, attention="multihead", n_head=4).eval()
    one_head = tiny(0, attention="multihead", n_head=1).eval()
    assert multi.state_dict().keys() == seed.state_dict().keys()
    multi.load_state_dict(seed.state_dict())
    one_head.load_state_dict(seed.state_dict())
    ids = torch.randint(0, 6, (2, 7))
    assert not torch.allclose(multi(ids), seed(ids), atol=1e-4)
    torch.testing.assert_close(one_head(ids), seed(ids))  # one head of width d is the seed's attention


def test_n_head_and_activation_do_not_change_the_seed_forward():
    ids = torch.randint(0, 6, (2, 7))
    base = tiny(0).eval()(ids)
    torch.testing.assert_close(tiny(0, n_head=2, activation="relu").eval()(ids), base)


def test_dropout_acts_only_in_training():
    model = tiny(0, dropout=0.5)
    ids = torch.randint(0, 6, (2, 7))
    model.eval()
    torch.testing.assert_close(model(ids), model(ids))
    model.train()
    assert not torch.allclose(model(ids), model(ids))


@pytest.mark.parametrize("kwargs, message", [
    ({"attention": "flash"}, "attention = 'flash'"),
    ({"activation": "gelu"}, "activation = 'gelu'"),
    ({"attention": "multihead", "n_head": 3}, "n_head = 3"),
    ({"max_len": 1}, "max_len = 1"),
    ({"dropout": 1.0}, "dropout = 1.0"),
])
def test_invalid_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(0, **kwargs)


def test_causal_lm_task_end_to_end_matches_a_manual_cross_entropy():
    assert MODELS.get("markov_gpt").tags["task"] == "causal_lm"
    params = build(MarkovParams, {"num_retain_sequences": 20, "num_forget_sequences1": 20, "num_forget_sequences2": 5,
                                  "seq_length_retain": 8, "seq_length_forget1": 5})
    data = generate(params)
    ds = data.dataset("train", ["retain", "forget1"])  # lengths 8 and 5, padded to 8
    model = tiny(0, state_size=10, max_len=8).eval()
    n = len(data.train["retain"])
    batch = torch.utils.data.default_collate([ds[i] for i in (0, 1, n, n + 1)])
    assert batch["input_ids"].shape == (4, 8) and batch["attention_mask"][2:, 5:].sum() == 0
    loss = get_task("causal_lm").loss(model, batch)
    assert torch.isfinite(loss)
    # positions 0..L-2 predict x_1..x_{L-1}, each sequence at its own length, without padding
    logits, targets = [], []
    for row in (data.train["retain"][0], data.train["retain"][1], data.train["forget1"][0], data.train["forget1"][1]):
        x = torch.from_numpy(row)[None]
        logits.append(model(x[:, :-1])[0])
        targets.append(x[0, 1:])
    torch.testing.assert_close(loss, F.cross_entropy(torch.cat(logits), torch.cat(targets)))
