"""The TOFU evaluation on a real tiny Llama: per-sample losses, truth ratios, forget quality, model utility, attacks,
greedy decoding, retain logs. References: direct task-adapter computations, scipy, sklearn, closed forms."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
import torch

from unlearnkit.data.qa import QADataset, QAFormat, qa_pairs, train_word_tokenizer
from unlearnkit.data.tofu_synth import generate_authors
from unlearnkit.metrics import tofu_eval as E
from unlearnkit.metrics.evaluate import evaluate
from unlearnkit.models import build_model
from unlearnkit.tasks import get_task

FMT = QAFormat()


@lru_cache(maxsize=1)
def _setup():
    synth = generate_authors(n_authors=10, n_holdout=2, seed=0)
    texts = [r[k] if isinstance(r[k], str) else " ".join(r[k]) for rows in synth.splits.values() for r in rows
             for k in ("question", "answer", "paraphrased_answer", "perturbed_answer") if k in r]
    tok = train_word_tokenizer(texts + ["Question:", "Answer:"])
    prepared = E.prepare_tofu_eval(synth.splits, "forget10", tok, FMT, data_hash="synth-10")
    return synth, tok, prepared


def _model(seed: int):
    _, tok, _ = _setup()
    return build_model("tiny_llama", seed=seed, vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                       num_layers=1, num_heads=2, pad_token_id=0, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id).eval()


@lru_cache(maxsize=2)
def _outputs(seed: int) -> E.TofuOutputs:
    return E.collect_tofu_outputs(_model(seed), _setup()[2], batch_size=7, max_new_tokens=6)


def _direct_avg_loss(model, rows, key, option=None) -> np.ndarray:
    _, tok, _ = _setup()
    ds = QADataset(qa_pairs(rows, key, option=option), tok, FMT)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        return get_task("causal_lm").per_example_loss(model, batch).double().numpy()


def test_eval_split_names_and_bad_split():
    assert E.eval_split_names("forget05")["holdout"] == "holdout05"
    with pytest.raises(ValueError, match="forget_split='retain90'"):
        E.eval_split_names("retain90")


def test_avg_losses_match_the_task_adapter_batched_or_not():
    synth, _, prepared = _setup()
    model, out = _model(1), _outputs(1)
    rows = prepared.sets["forget"].rows
    np.testing.assert_allclose(out.avg_loss["forget/answer"], _direct_avg_loss(model, rows, "answer"), rtol=1e-5)
    np.testing.assert_allclose(out.avg_loss["forget/correct"], _direct_avg_loss(model, rows, "paraphrased_answer"),
                               rtol=1e-5)
    for j in range(3):
        np.testing.assert_allclose(out.avg_loss["forget/perturbed"][:, j],
                                   _direct_avg_loss(model, rows, "perturbed_answer", option=j), rtol=1e-5)
    ra = prepared.sets["ra"].rows
    np.testing.assert_allclose(out.avg_loss["ra/correct"], _direct_avg_loss(model, ra, "answer"), rtol=1e-5)
    # token log-probs of the MIA sets sum to −avg_loss · n
    for i, lp in enumerate(out.token_logp["holdout"]):
        assert -lp.mean() == pytest.approx(out.avg_loss["holdout/answer"][i], rel=1e-5)


def test_truth_ratio_forget_quality_and_closed_forms():
    out, ref = _outputs(1), _outputs(2)
    lc, lp = out.avg_loss["forget/correct"], out.avg_loss["forget/perturbed"]
    r = np.exp(-lp.mean(1)) / np.exp(-lc)  # R_i = geometric mean of perturbed probs / correct prob
    np.testing.assert_allclose(E.truth_ratios(out), r, rtol=1e-10)
    tr = E.forget_truth_ratio(out)
    assert tr["forget_truth_ratio"] == pytest.approx(np.mean(np.minimum(r, 1 / r)))
    assert tr["forget_truth_ratio_prob_mean"] == pytest.approx(np.mean(1 / (1 + r)))
    from scipy.stats import ks_2samp

    fq = E.forget_quality(out, ref)["forget_quality"]
    assert fq == pytest.approx(ks_2samp(r, E.truth_ratios(ref)).pvalue)
    assert E.forget_quality(ref, ref)["forget_quality"] == 1.0


def test_model_utility_is_the_harmonic_mean_of_nine():
    from scipy.stats import hmean

    values = E.model_utility(_outputs(1))
    parts = [v for k, v in values.items() if k != "model_utility"]
    assert len(parts) == 9
    assert values["model_utility"] == pytest.approx(hmean(parts) if min(parts) > 0 else 0.0)
    assert values["retain_Q_A_Prob"] == pytest.approx(np.exp(-_outputs(1).avg_loss["retain/answer"]).mean())


def test_attacks_match_sklearn_and_privleak_of_the_reference_is_zero():
    from sklearn.metrics import roc_auc_score

    out, ref = _outputs(1), _outputs(2)
    f, h = out.avg_loss["forget/answer"], out.avg_loss["holdout/answer"]
    labels = np.r_[np.zeros(len(f)), np.ones(len(h))]
    got = E.attack(out, "loss")
    assert got["mia_loss_auc"] == pytest.approx(roc_auc_score(labels, np.r_[f, h]))
    assert 0 <= got["mia_loss_tpr_at_1pct_fpr"] <= 1 or math.isnan(got["mia_loss_tpr_at_1pct_fpr"])
    rs = E.attack(out, "reference", ref)["mia_reference_auc"]
    assert rs == pytest.approx(roc_auc_score(labels, np.r_[f - ref.avg_loss["forget/answer"],
                                                            h - ref.avg_loss["holdout/answer"]]))
    assert E.privleak(ref, ref)["privleak"] == 0.0
    with pytest.raises(ValueError, match="gradnorm"):
        E.attack(out, "gradnorm")


def test_gradnorm_attack_matches_a_direct_gradient():
    _, _, prepared = _setup()
    model = _model(4)
    out = E.collect_tofu_outputs(model, prepared, batch_size=16, max_new_tokens=2, gradnorm=True)
    ds = prepared.sets["holdout"].answer
    item = ds.collate([ds[3]])
    loss = get_task("causal_lm").per_example_loss(model, item).sum()
    grads = torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)
    expected = np.mean([float(g.norm()) for g in grads if g is not None])
    assert out.gradnorm["holdout"][3] == pytest.approx(expected, rel=1e-4)
    assert len(out.gradnorm["forget"]) == len(prepared.sets["forget"].rows)
    assert 0 <= E.attack(out, "gradnorm")["mia_gradnorm_auc"] <= 1


def test_evaluate_needs_the_reference_for_referenced_metrics():
    out = E.collect_tofu_outputs(_model(3), _setup()[2], batch_size=16, max_new_tokens=2)
    values = evaluate(out, ["tofu_forget_truth_ratio", "tofu_model_utility", "exact_memorization"])
    assert {"forget_truth_ratio", "model_utility", "exact_memorization"} <= set(values)
    with pytest.raises(ValueError, match="pass ref"):
        evaluate(out, ["tofu_forget_quality"])


def test_greedy_generation_equals_a_manual_argmax_loop():
    from unlearnkit.data.qa import prompt_batch

    _, tok, prepared = _setup()
    model = _model(1)
    q = prepared.sets["forget"].questions[:3]
    got = E.greedy_generate(model, tok, q, FMT, batch_size=2, max_new_tokens=5)
    for question, text in zip(q, got, strict=True):
        ids = prompt_batch(tok, [question], FMT)["input_ids"]
        new = []
        with torch.no_grad():
            for _ in range(5):
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        assert text == tok.decode(new, skip_special_tokens=True).strip()


def test_retain_log_round_trip_and_refusals(tmp_path):
    ref = _outputs(2)
    path = E.save_outputs(tmp_path / "retain.json", ref, "tiny_llama")
    back = E.load_outputs(path, identity=_setup()[2].identity, model_id="tiny_llama")
    assert E.forget_quality(back, ref)["forget_quality"] == 1.0
    assert E.privleak(_outputs(1), back) == E.privleak(_outputs(1), ref)
    with pytest.raises(ValueError, match="comes from model 'tiny_llama', not 'Llama-3.2-1B'"):
        E.load_outputs(path, model_id="Llama-3.2-1B")
    with pytest.raises(ValueError, match="another forget_split"):
        E.load_outputs(path, identity={"forget_split": "forget05"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a TOFU outputs log"):
        E.load_outputs(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        E.load_outputs(tmp_path / "missing.json")


def test_shards_cover_every_example_once_with_equal_lengths():
    class Acc:  # the two attributes of an accelerate.Accelerator that _shard reads
        def __init__(self, world, rank):
            self.num_processes, self.process_index = world, rank

    for n, world in ((10, 3), (2, 4), (7, 1)):
        shards = [E._shard(n, Acc(world, r)) for r in range(world)]
        assert len({len(s) for s in shards}) == 1
        per = math.ceil(n / world)
        real = [i for r, s in enumerate(shards) for i in s[:max(0, min(per, n - r * per))]]
        assert real == list(range(n))
