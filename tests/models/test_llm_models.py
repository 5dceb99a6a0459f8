"""Causal LM builders and LoRA: seeded tiny_llama, loading a saved checkpoint through hf_causal_lm (with the
flash-attn and bf16 fallbacks), LoRA on Llama and on the toy decoder, merging back to the original parameter names,
and gradient checkpointing that leaves LoRA gradients unchanged (spec §6 P16, P19)."""

import importlib.util
import warnings

import pytest
import torch

from unlearnkit._registry import MODELS
from unlearnkit.models import build_model
from unlearnkit.models.llm import (
    apply_lora,
    enable_gradient_checkpointing,
    hf_causal_lm,
    load_tokenizer,
    lora_targets_present,
    merge_lora,
)
from unlearnkit.tasks import get_task
from unlearnkit.testing.toy import tiny_causal_lm

TINY = dict(vocab_size=40, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=32,
            eos_token_id=3)


def tiny(seed: int = 0):
    return build_model("tiny_llama", seed=seed, **TINY)


def batch(seed: int = 0, vocab: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 9), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    labels[2, 7:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def logits(model, b):
    with torch.no_grad():
        return get_task("causal_lm").logits(model.eval(), b)


def test_llm_builders_are_registered_causal_lms():
    assert {"tiny_llama", "hf_causal_lm"} <= set(MODELS.list(task="causal_lm"))


def test_tiny_llama_is_seeded_and_runs():
    a, b, c = tiny(0), tiny(0), tiny(1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.self_attn.q_proj.weight"], sc["model.layers.0.self_attn.q_proj.weight"])
    assert a.config._attn_implementation == "sdpa" and a.config.attention_dropout == 0.0
    assert a.config.pad_token_id == 0 and a.config.eos_token_id == 3
    out = logits(a, batch())
    assert out.shape == (3, 9, 40) and torch.isfinite(out).all()
    loss = get_task("causal_lm").per_example_loss(a, batch())
    assert loss.shape == (3,) and (loss > 0).all()
    with pytest.raises(ValueError, match="divisible"):
        build_model("tiny_llama", seed=0, vocab_size=40, hidden_size=30, num_heads=4)


def test_lora_trains_only_adapters_and_merges_back():
    base = tiny(0)
    names = {k: v.shape for k, v in base.state_dict().items()}
    before = logits(base, batch())
    model = apply_lora(base, r=4, targets=["q_proj", "v_proj"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}
    assert torch.equal(logits(model, batch()), before)  # B = 0 at init

    # one optimizer step moves the adapters; merging must keep exactly that function
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    get_task("causal_lm").per_example_loss(model, batch()).mean().backward()
    opt.step()
    adapted = logits(model, batch())
    assert not torch.allclose(adapted, before)
    merged = merge_lora(model)
    assert {k: v.shape for k, v in merged.state_dict().items()} == names
    assert torch.allclose(logits(merged, batch()), adapted, atol=1e-5)
    assert all(p.requires_grad for p in merged.parameters())  # restored as before apply_lora
    assert merge_lora(merged) is merged


def test_lora_target_that_matches_nothing_lists_the_layers():
    model = tiny(0)
    assert len(lora_targets_present(model, ["q_proj"])) == TINY["num_layers"]
    with pytest.raises(ValueError, match=r"'qproj'.*q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"):
        apply_lora(model, targets=["q_proj", "qproj"])
    assert not any("lora_" in n for n, _ in model.named_parameters())  # checked before peft touched the model


def test_lora_on_the_toy_decoder():
    toy = tiny_causal_lm(0)
    names = set(toy.state_dict())
    b = batch(vocab=24)
    b["input_ids"] = b["input_ids"] % 24
    before = logits(toy, b)
    assert lora_targets_present(toy, ["qkv"]) == ["layers.0.qkv", "layers.1.qkv"]
    with pytest.raises(ValueError, match=r"layer names present: .*qkv, proj, mlp\.0, mlp\.2, lm_head"):
        apply_lora(toy, targets=["q_proj"])
    model = apply_lora(toy, r=2, targets=["qkv"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(".qkv.lora_" in n for n in trainable)
    assert torch.equal(logits(model, b), before)
    assert set(merge_lora(model).state_dict()) == names


def _lora_grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # lora_A is drawn from the global RNG
        model = apply_lora(tiny(0), r=4)
    with torch.no_grad():  # non-zero B, so that lora_A gets a gradient too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))))
    if checkpointing:
        assert enable_gradient_checkpointing(model) is True
    calls = []
    mlp = model.get_base_model().model.layers[0].mlp
    hook = mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    model.train()
    get_task("causal_lm").per_example_loss(model, batch()).mean().backward()
    hook.remove()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, len(calls)


def test_gradient_checkpointing_gives_the_same_lora_grads():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        plain, plain_calls = _lora_grads(False)
        ckpt, ckpt_calls = _lora_grads(True)
    assert (plain_calls, ckpt_calls) == (1, 2)  # checkpointing recomputes the block in backward
    assert plain.keys() == ckpt.keys() and len(plain) == 2 * 7 * TINY["num_layers"]
    for n in plain:
        assert ckpt[n] is not None and plain[n].abs().sum() > 0, n
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6), n
    assert enable_gradient_checkpointing(tiny_causal_lm(0)) is False


def test_hf_causal_lm_loads_a_saved_checkpoint(tmp_path):
    from unlearnkit.data.qa import train_word_tokenizer

    model = tiny(0)
    model.save_pretrained(tmp_path)
    train_word_tokenizer(["a b c"]).save_pretrained(tmp_path)
    loaded = hf_causal_lm(str(tmp_path), dtype="float32", local_files_only=True)
    assert type(loaded).__name__ == "LlamaForCausalLM" and loaded.dtype == torch.float32
    assert torch.equal(logits(loaded, batch()), logits(model, batch()))
    assert build_model("hf_causal_lm", seed=5, name_or_path=str(tmp_path), local_files_only=True).dtype == \
        torch.float32  # saved in float32, dtype="auto" keeps it
    assert load_tokenizer(str(tmp_path), local_files_only=True)("a b")["input_ids"] == [2, 4, 5]
    if not torch.cuda.is_available():
        assert hf_causal_lm(str(tmp_path), dtype="bfloat16", local_files_only=True).dtype == torch.bfloat16


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash_attn is installed")
def test_flash_attention_falls_back_to_sdpa(tmp_path):
    tiny(0).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="flash_attn package is not installed; using sdpa"):
        model = hf_causal_lm(str(tmp_path), attn_implementation="flash_attention_2", local_files_only=True)
    assert model.config._attn_implementation == "sdpa"


def test_bf16_falls_back_to_float32_without_device_support(tmp_path, monkeypatch):
    tiny(0).save_pretrained(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.warns(UserWarning, match="does not support bf16; using float32"):
        model = hf_causal_lm(str(tmp_path), dtype="bfloat16", local_files_only=True)
    assert model.dtype == torch.float32
