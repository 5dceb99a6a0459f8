import math

import pytest
import torch
import torch.nn.functional as F

from unlearnkit.tasks import get_task
from unlearnkit.testing import tiny_causal_lm, tiny_classifier, tiny_lm_data


def test_classifier_adapter_matches_closed_forms():
    task = get_task("classifier")
    model = tiny_classifier()
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    logits = model(x)
    per_ex = task.per_example_loss(model, (x, y))
    manual = -torch.log_softmax(logits, -1)[torch.arange(5), y]
    torch.testing.assert_close(per_ex, manual)
    torch.testing.assert_close(task.per_example_logprob(model, (x, y)), -manual)
    torch.testing.assert_close(task.loss(model, (x, y)), manual.mean())
    feats = task.hidden_states(model, (x, y), "features")
    assert feats.shape == (5, 32)
    torch.testing.assert_close(model.head(feats), logits)
    assert task.with_labels((x, y), y + 1)[1].tolist() == (y + 1).tolist()


def test_unknown_layer_names_the_layer_and_lists_some():
    task = get_task("classifier")
    with pytest.raises(ValueError, match="no layer 'nope' in SmallClassifier; layers include: features"):
        task.hidden_states(tiny_classifier(), (torch.randn(2, 8), torch.zeros(2, dtype=torch.long)), "nope")


def _lm_batch():
    data = tiny_lm_data()
    return torch.utils.data.default_collate([data.forget[i] for i in range(4)])


def test_causal_lm_adapter_masks_prompt_and_shifts():
    task = get_task("causal_lm")
    model = tiny_causal_lm()
    batch = _lm_batch()
    logits = model(batch["input_ids"])
    logp = torch.log_softmax(logits, -1)
    ids, labels = batch["input_ids"], batch["labels"]
    # log π(y|x): sum over answer positions t (labels[t] != -100) of log p(ids[t] | ids[<t]) = logp[t-1, ids[t]]
    expected = torch.stack([
        sum(logp[b, t - 1, ids[b, t]] for t in range(1, ids.shape[1]) if labels[b, t] != -100) for b in range(4)
    ])
    torch.testing.assert_close(task.per_example_logprob(model, batch), expected)
    n_answer = (labels[:, 1:] != -100).sum(1)
    torch.testing.assert_close(task.per_example_loss(model, batch), -expected / n_answer)
    torch.testing.assert_close(task.loss(model, batch), -expected.sum() / n_answer.sum())
    assert task.hidden_states(model, batch, "layers.1").shape == (4, ids.shape[1], 32)


def test_causal_lm_adapter_agrees_with_transformers_llama_loss():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=24, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    batch = _lm_batch()
    task = get_task("causal_lm")
    with torch.no_grad():
        ref = model(**batch).loss  # transformers shifts and ignores -100 itself
        ours = task.loss(model, batch)
        hidden = task.hidden_states(model, batch, "model.layers.0")
        hf_hidden = model(**batch, output_hidden_states=True).hidden_states[1]
    assert math.isclose(float(ours), float(ref), rel_tol=1e-5)
    torch.testing.assert_close(hidden, hf_hidden)


def test_sequence_without_labels_has_zero_loss_not_nan():
    task = get_task("causal_lm")
    batch = _lm_batch()
    batch["labels"][0] = -100
    per_ex = task.per_example_loss(tiny_causal_lm(), batch)
    assert per_ex[0].item() == 0.0 and torch.isfinite(per_ex).all()
    assert F.relu(per_ex[1:]).min() > 0
