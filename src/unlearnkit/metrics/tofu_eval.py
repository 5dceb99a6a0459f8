"""The TOFU evaluation (specs/llm.md §3, §5): run a causal LM once over the evaluation splits, then score it with
the registered TOFU metrics and membership attacks.

    prepare_tofu_eval(splits, forget_split, tokenizer, fmt)   # tokenised once per data set (model-independent)
    out = collect_tofu_outputs(model, prepared)              # ONE teacher-forced pass per answer set + greedy decoding
    evaluate(out, ["tofu_forget_quality", ...], ref=retain)  # metrics/evaluate.py: per-model metrics, then referenced

Evaluation sets (keys of `TofuOutputs.avg_loss`, "set/answer-kind"):
    forget   = forgetXX_perturbed   correct = paraphrased_answer   (truth ratio, prob, ROUGE, EM, ES, MIA members)
    holdout  = holdoutXX            answer only                    (MIA non-members)
    retain   = retain_perturbed     correct = paraphrased_answer   (model utility)
    ra / wf  = real_authors_perturbed / world_facts_perturbed, correct = answer (model utility)

`ref` is the retain model's `TofuOutputs` (computed from the cached retain model, or read from a retain log written
by `save_outputs`): forget quality is the KS test of the two models' raw forget truth ratios, privleak compares the
two MinK AUCs, the Reference attack subtracts the retain model's per-sample losses. A log records which data, split,
format and base model it came from; `load_outputs` refuses a log of another setting (spec P13: never a silent
reference). In a multi-process run every process scores its share of the examples (all processes take part, as
FSDP / ZeRO-3 need) and the shares are gathered in the original order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._registry import METRICS
from . import llm_mia
from . import tofu as T

EVAL_SETS = ("forget", "holdout", "retain", "ra", "wf")
ROUGE_SETS = ("forget", "retain", "ra", "wf")
LOG_VERSION = 1


def eval_split_names(forget_split: str) -> dict[str, str]:
    """The TOFU split read for each evaluation set: forget10 -> forget10_perturbed, holdout10, ..."""
    if not (forget_split.startswith("forget") and forget_split[6:].isdigit()):
        raise ValueError(f"forget_split='{forget_split}': must be forgetNN, e.g. forget01, forget05, forget10")
    pct = forget_split[6:]
    return {"forget": f"{forget_split}_perturbed", "holdout": f"holdout{pct}", "retain": "retain_perturbed",
            "ra": "real_authors_perturbed", "wf": "world_facts_perturbed"}


@dataclass
class EvalSet:
    """One evaluation split, tokenised: the datasets scored by teacher forcing and the prompts decoded greedily."""

    rows: list[dict]
    answer: Any  # QADataset of (question, answer)
    correct: Any | None = None  # QADataset of (question, the truth-ratio's correct answer)
    perturbed: list[Any] = field(default_factory=list)  # QADataset per perturbed option j
    questions: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)  # the answers decoded from their labels (ROUGE, ZLib)


@dataclass
class TofuEvalData:
    sets: dict[str, EvalSet]
    tokenizer: Any
    fmt: Any
    forget_split: str
    identity: dict[str, Any]  # what a retain log must match: data hash, split, format


def prepare_tofu_eval(splits: Mapping[str, Sequence[dict]], forget_split: str, tokenizer: Any, fmt: Any, *,
                      data_hash: str = "") -> TofuEvalData:
    """Tokenise the evaluation splits once. `splits` maps TOFU split names (see `eval_split_names`) to rows."""
    from .._io import content_hash
    from ..config import to_dict
    from ..data.qa import QADataset, check_format, qa_pairs

    check_format(tokenizer, fmt)
    names = eval_split_names(forget_split)
    missing = [n for n in names.values() if n not in splits]
    if missing:
        raise ValueError(f"the TOFU evaluation needs the splits {missing} (have: {', '.join(sorted(splits))})")
    sets = {}
    for key, split in names.items():
        rows = list(splits[split])
        qkey = fmt.question_key
        ds = lambda pairs: QADataset(pairs, tokenizer, fmt)  # noqa: E731
        answer = ds(qa_pairs(rows, "answer", qkey))
        s = EvalSet(rows, answer, questions=[r[qkey] for r in rows], references=_reference_texts(answer, tokenizer))
        if key != "holdout":
            correct = "paraphrased_answer" if key in ("forget", "retain") else "answer"
            s.correct = ds(qa_pairs(rows, correct, qkey))
            n_opt = min(len(r["perturbed_answer"]) for r in rows)
            s.perturbed = [ds(qa_pairs(rows, "perturbed_answer", qkey, option=j)) for j in range(n_opt)]
        sets[key] = s
    identity = {"data": data_hash, "forget_split": forget_split, "format": to_dict(fmt),
                "questions": content_hash([r[fmt.question_key] for r in sets["forget"].rows])}
    return TofuEvalData(sets, tokenizer, fmt, forget_split, identity)


@dataclass
class TofuOutputs:
    """Per-sample results of one model; the metrics read only these (and a reference's)."""

    avg_loss: dict[str, np.ndarray]  # "forget/answer" [N], "forget/correct" [N], "forget/perturbed" [N, K], ...
    token_logp: dict[str, list[np.ndarray]]  # "forget", "holdout": answer-token log-probs per sample
    min_k_pp: dict[str, np.ndarray]  # "forget", "holdout": Min-K%++ scores (k = mia_k)
    em: np.ndarray  # forget: exact memorization per sample
    es: np.ndarray  # forget: extraction strength per sample
    generations: dict[str, list[str]]  # greedy answers per ROUGE set
    references: dict[str, list[str]]  # the reference answers decoded from the labels
    answer_texts: dict[str, list[str]]  # "forget", "holdout": decoded answers (ZLib)
    gradnorm: dict[str, np.ndarray] = field(default_factory=dict)  # only when collected
    mia_k: float = 0.4
    identity: dict[str, Any] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


# ---------------------------------------------------------------------------------------------------------------
# collection
# ---------------------------------------------------------------------------------------------------------------
def _shard(n: int, acc: Any) -> list[int]:
    """This process's example indices, padded so every process runs the same number of batches."""
    world, rank = (acc.num_processes, acc.process_index) if acc is not None else (1, 0)
    per = math.ceil(n / world)
    idx = list(range(rank * per, min(n, (rank + 1) * per)))
    return idx + [idx[-1] if idx else 0] * (per - len(idx)) if n else []


def _gather(local: list, acc: Any, n: int) -> list:
    """Concatenate the processes' shares in rank order and drop the padding (the inverse of `_shard`)."""
    if acc is None or acc.num_processes == 1:
        return local[:n]
    from accelerate.utils import gather_object

    per = math.ceil(n / acc.num_processes)
    parts = gather_object([local])  # one list per process
    out = []
    for rank, part in enumerate(parts):
        out.extend(part[:max(0, min(per, n - rank * per))])
    return out


def _batches(dataset: Any, indices: list[int], batch_size: int, device: Any):
    for i in range(0, len(indices), batch_size):
        items = [dataset[j] for j in indices[i:i + batch_size]]
        batch = dataset.collate(items)
        yield {k: v.to(device) for k, v in batch.items()}


def _score(model: Any, dataset: Any, batch_size: int, acc: Any, *, detail: bool = False, mia_k: float = 0.4):
    """Teacher-forced pass: per-sample avg_loss; with detail also the answer-token log-probs, Min-K%++, EM, ES."""
    import torch

    from ..tasks import get_task

    task = get_task("causal_lm")
    device = next(model.parameters()).device
    rows: list[tuple] = []
    with torch.no_grad():
        for batch in _batches(dataset, _shard(len(dataset), acc), batch_size, device):
            logp_all, mask = task.distribution(model, batch)  # [B, T-1, V], [B, T-1]
            targets = batch["labels"][:, 1:]
            logp_y = logp_all.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
            avg = (-(logp_y * mask).sum(-1) / mask.sum(-1).clamp(min=1)).double().cpu().numpy()
            if not detail:
                rows.extend((float(a),) for a in avg)
                continue
            lp, mu, s2 = llm_mia.token_distribution_stats(logp_all, targets, mask)
            pred = logp_all.argmax(-1).cpu().numpy()
            m, tg = mask.cpu().numpy(), targets.cpu().numpy()
            for b in range(len(avg)):
                mb = m[b]
                tok = lp[b][mb]
                mkpp = llm_mia.min_k_plus_plus_score([tok], [mu[b][mb]], [s2[b][mb]], k=mia_k)[0]
                em = T.exact_memorization(pred[b][mb], tg[b][mb])
                es = T.extraction_strength(pred[b][mb], tg[b][mb])
                rows.append((float(avg[b]), tok.tolist(), float(mkpp), float(em), float(es)))
    return _gather(rows, acc, len(dataset))


def greedy_generate(model: Any, tokenizer: Any, questions: Sequence[str], fmt: Any, *, batch_size: int = 32,
                    max_new_tokens: int = 200, acc: Any = None) -> list[str]:
    """Greedy answers (do_sample False), cut at eos, decoded without special tokens (spec §3.2)."""
    import torch

    from ..data.qa import pad_token_id, prompt_batch

    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, pad_token_id(tokenizer)
    sync = acc is not None and acc.num_processes > 1
    out: list[str] = []
    indices = _shard(len(questions), acc)
    with torch.no_grad():
        for i in range(0, len(indices), batch_size):
            batch = prompt_batch(tokenizer, [questions[j] for j in indices[i:i + batch_size]], fmt)
            batch = {k: v.to(device) for k, v in batch.items()}
            width = batch["input_ids"].shape[1]
            if hasattr(model, "generate"):
                gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                     pad_token_id=pad, synced_gpus=sync)
            else:  # a plain nn.Module LM: greedy decoding without a KV cache
                gen = _greedy_plain(model, batch, max_new_tokens, eos)
            for row in gen[:, width:].tolist():
                row = row[:row.index(eos)] if eos in row else row
                out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return _gather(out, acc, len(questions))


def _greedy_plain(model: Any, batch: Mapping[str, Any], max_new_tokens: int, eos: int):
    import torch

    ids, mask = batch["input_ids"], batch["attention_mask"]
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        out = model(input_ids=ids, attention_mask=mask)
        nxt = (out.logits if hasattr(out, "logits") else out)[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
        ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        done |= nxt == eos
        if done.all():
            break
    return ids


def _reference_texts(dataset: Any, tokenizer: Any) -> list[str]:
    out = []
    for i in range(len(dataset)):
        item = dataset[i]
        labels = item["labels"][item["labels"] != -100].tolist()
        if labels and labels[-1] == tokenizer.eos_token_id:
            labels = labels[:-1]
        out.append(tokenizer.decode(labels, skip_special_tokens=True).strip())
    return out


def collect_tofu_outputs(model: Any, data: TofuEvalData, *, batch_size: int = 32, max_new_tokens: int = 200,
                         mia_k: float = 0.4, gradnorm: bool = False, accelerator: Any = None) -> TofuOutputs:
    """Everything the TOFU metrics read, from one teacher-forced pass per answer set and one greedy decoding per
    ROUGE set, in evaluation mode (the model's mode is restored). bf16 outputs are cast to float (P11)."""
    from ..tasks._hooks import eval_mode

    avg: dict[str, np.ndarray] = {}
    token_logp, mkpp, answers = {}, {}, {}
    em = es = np.zeros(0)
    gens, refs = {}, {}
    with eval_mode(model):
        for key, s in data.sets.items():
            detail = key in ("forget", "holdout")
            rows = _score(model, s.answer, batch_size, accelerator, detail=detail, mia_k=mia_k)
            avg[f"{key}/answer"] = np.array([r[0] for r in rows])
            if detail:
                token_logp[key] = [np.asarray(r[1]) for r in rows]
                mkpp[key] = np.array([r[2] for r in rows])
                answers[key] = s.references
                if key == "forget":
                    em, es = np.array([r[3] for r in rows]), np.array([r[4] for r in rows])
            if s.correct is not None:
                avg[f"{key}/correct"] = np.array([r[0] for r in _score(model, s.correct, batch_size, accelerator)])
                avg[f"{key}/perturbed"] = np.stack([np.array([r[0] for r in _score(model, p, batch_size, accelerator)])
                                                    for p in s.perturbed], axis=1)
            if key in ROUGE_SETS:
                gens[key] = greedy_generate(model, data.tokenizer, s.questions, data.fmt, batch_size=batch_size,
                                            max_new_tokens=max_new_tokens, acc=accelerator)
                refs[key] = s.references
    grads = {}
    if gradnorm:
        from ..tasks import get_task

        task = get_task("causal_lm")
        for key in ("forget", "holdout"):
            grads[key] = llm_mia.gradnorm_score(model, task, data.sets[key].answer)  # one example at a time
    return TofuOutputs(avg, token_logp, mkpp, em, es, gens, refs, answers, grads, mia_k, dict(data.identity))


# ---------------------------------------------------------------------------------------------------------------
# retain logs
# ---------------------------------------------------------------------------------------------------------------
def save_outputs(path: str | Path, out: TofuOutputs, model_id: str) -> Path:
    """Write `out` as a JSON log (atomically), with the identity of its data and `model_id` (the base model)."""
    from .._io import atomic_write_json

    return atomic_write_json(path, {
        "version": LOG_VERSION, "model": model_id, "identity": out.identity, "mia_k": out.mia_k,
        "avg_loss": {k: v.tolist() for k, v in out.avg_loss.items()},
        "token_logp": {k: [r.tolist() for r in v] for k, v in out.token_logp.items()},
        "min_k_pp": {k: v.tolist() for k, v in out.min_k_pp.items()}, "em": out.em.tolist(), "es": out.es.tolist(),
        "generations": out.generations, "references": out.references, "answer_texts": out.answer_texts,
        "gradnorm": {k: v.tolist() for k, v in out.gradnorm.items()}}, indent=None)


def load_outputs(path: str | Path, *, identity: Mapping[str, Any] | None = None,
                 model_id: str | None = None) -> TofuOutputs:
    """Read a log written by `save_outputs`; with `identity` / `model_id`, refuse a log of other data, another
    forget split, another prompt format or another base model (ValueError naming what differs)."""
    import json

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"retain log '{path}' not found")
    try:
        log = json.loads(p.read_text())
        version = log["version"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"retain log '{path}' is not a TOFU outputs log ({err})") from None
    if version != LOG_VERSION:
        raise ValueError(f"retain log '{path}' has version {version}; this unlearnkit reads version {LOG_VERSION}")
    if model_id is not None and log["model"] != model_id:
        raise ValueError(f"retain log '{path}' comes from model '{log['model']}', not '{model_id}': forget quality "
                         "and privleak need the retain model of the same base model")
    for key, want in (identity or {}).items():
        if log["identity"].get(key) != want:
            raise ValueError(f"retain log '{path}' was computed with another {key} ({log['identity'].get(key)!r} "
                             f"vs {want!r}); compute the retain model's outputs for this setting")
    arr = lambda d: {k: np.asarray(v, dtype=np.float64) for k, v in d.items()}  # noqa: E731
    return TofuOutputs(arr(log["avg_loss"]), {k: [np.asarray(r) for r in v] for k, v in log["token_logp"].items()},
                       arr(log["min_k_pp"]), np.asarray(log["em"]), np.asarray(log["es"]), log["generations"],
                       log["references"], log["answer_texts"], arr(log.get("gradnorm", {})), log["mia_k"],
                       log["identity"])


# ---------------------------------------------------------------------------------------------------------------
# metrics (registered; specs/llm.md §3.3, §5)
# ---------------------------------------------------------------------------------------------------------------
def truth_ratios(ev: TofuOutputs, key: str = "forget") -> np.ndarray:
    """Raw per-sample truth ratios R_i of evaluation set `key`."""
    return T.truth_ratio(ev.avg_loss[f"{key}/correct"], ev.avg_loss[f"{key}/perturbed"])


def _rouge(ev: TofuOutputs, key: str) -> float:
    return float(np.mean([T.rouge_l_recall(g, r, stemmer=True)
                          for g, r in zip(ev.generations[key], ev.references[key], strict=True)]))


def _prob(ev: TofuOutputs, key: str) -> float:
    return float(np.mean(T.prob_from_avg_loss(ev.avg_loss[f"{key}/answer"])))


@METRICS.register("tofu_forget_prob", task="causal_lm", needs_reference=False)
def forget_prob(ev: TofuOutputs, ref: TofuOutputs | None = None) -> dict[str, float]:
    """forget_Q_A_Prob = mean_i exp(−avg_loss(answer_i)) on the forget split."""
    return {"forget_Q_A_Prob": _prob(ev, "forget")}


@METRICS.register("tofu_forget_rouge", task="causal_lm", needs_reference=False)
def forget_rouge(ev: TofuOutputs, ref: TofuOutputs | None = None) -> dict[str, float]:
    """forget_Q_A_ROUGE = mean ROUGE-L recall (with stemmer) of the greedy answers against the answers."""
    return {"forget_Q_A_ROUGE": _rouge(ev, "forget")}


@METRICS.register("tofu_forget_truth_ratio", task="causal_lm", needs_reference=False)
def forget_truth_ratio(ev: TofuOutputs, ref: TofuOutputs | None = None) -> dict[str, float]:
    """forget_truth_ratio = closer_to_1_better aggregate of R on the forget split (paraphrased vs perturbed), with
    the two other documented aggregates under their names."""
    r = truth_ratios(ev)
    return {"forget_truth_ratio": T.truth_ratio_score(r, "closer_to_1_better"),
            "forget_truth_ratio_true_better": T.truth_ratio_score(r, "true_better"),
            "forget_truth_ratio_prob_mean": T.truth_ratio_score(r, "prob_mean")}


@METRICS.register("tofu_forget_quality", task="causal_lm", needs_reference=True)
def forget_quality(ev: TofuOutputs, ref: TofuOutputs) -> dict[str, float]:
    """forget_quality = KS-test p-value of the raw forget truth ratios against the retain model's (1.0 for the
    retain model itself)."""
    return {"forget_quality": T.forget_quality(truth_ratios(ev), truth_ratios(ref))}


@METRICS.register("tofu_model_utility", task="causal_lm", needs_reference=False)
def model_utility(ev: TofuOutputs, ref: TofuOutputs | None = None) -> dict[str, float]:
    """model_utility = harmonic mean of the nine retain / real-authors / world-facts sub-metrics (§3.3)."""
    parts = {"retain_Q_A_Prob": _prob(ev, "retain"), "retain_Q_A_ROUGE": _rouge(ev, "retain"),
             "retain_Truth_Ratio": T.truth_ratio_score(truth_ratios(ev, "retain"), "true_better")}
    for key in ("ra", "wf"):
        parts[f"{key}_Q_A_Prob_normalised"] = T.prob_normalised(ev.avg_loss[f"{key}/correct"],
                                                                ev.avg_loss[f"{key}/perturbed"])
        parts[f"{key}_Q_A_ROUGE"] = _rouge(ev, key)
        parts[f"{key}_Truth_Ratio"] = T.truth_ratio_score(truth_ratios(ev, key), "true_better")
    return {**parts, "model_utility": T.model_utility(parts)}


@METRICS.register("exact_memorization", task="causal_lm", needs_reference=False)
def exact_memorization(ev: TofuOutputs, ref: TofuOutputs | None = None) -> dict[str, float]:
    """exact_memorization = mean over forget samples of the teacher-forced argmax accuracy on answer tokens."""
    return {"exact_memorization": float(ev.em.mean())}


@METRICS.register("extraction_strength", task="causal_lm", needs_reference=False)
def extraction_strength(ev: TofuOutputs, ref: TofuOutputs | None = None) -> dict[str, float]:
    """extraction_strength = mean over forget samples of 1 − k*/n_A (0 when no suffix matches, P14)."""
    return {"extraction_strength": float(ev.es.mean())}


def _attack_scores(ev: TofuOutputs, attack: str, ref: TofuOutputs | None, key: str) -> np.ndarray:
    if attack == "loss":
        return llm_mia.loss_score(ev.token_logp[key])
    if attack == "zlib":
        return llm_mia.zlib_score(ev.avg_loss[f"{key}/answer"], ev.answer_texts[key])
    if attack == "min_k":
        return llm_mia.min_k_score(ev.token_logp[key], k=ev.mia_k)
    if attack == "min_k_plus_plus":
        return ev.min_k_pp[key]
    if attack == "reference":
        return llm_mia.reference_score(ev.avg_loss[f"{key}/answer"], ref.avg_loss[f"{key}/answer"])
    if key not in ev.gradnorm:
        raise ValueError("mia_gradnorm needs the gradient norms: evaluate with gradnorm=True (eval.gradnorm=true)")
    return ev.gradnorm[key]


def attack(ev: TofuOutputs, name: str, ref: TofuOutputs | None = None) -> dict[str, float]:
    """AUC (forget = 0, holdout = 1; scores higher = less member-like) and TPR at 1% FPR of one attack."""
    from .mia import tpr_at_fpr

    f, h = _attack_scores(ev, name, ref, "forget"), _attack_scores(ev, name, ref, "holdout")
    tpr = tpr_at_fpr(-f, -h, 0.01)  # members = forget, oriented higher = member
    return {f"mia_{name}_auc": llm_mia.attack_auc(f, h), f"mia_{name}_tpr_at_1pct_fpr": math.nan if tpr is None
            else float(tpr)}


def _register_attack(name: str, needs_reference: bool, doc: str) -> None:
    def fn(ev: TofuOutputs, ref: TofuOutputs | None = None) -> dict[str, float]:
        return attack(ev, name, ref)

    fn.__doc__ = doc
    fn.__name__ = f"mia_{name}"
    METRICS.register(f"mia_{name}", task="causal_lm", needs_reference=needs_reference)(fn)


for _name, _ref, _doc in (
        ("loss", False, "LOSS attack (Yeom et al. 2018): s = avg_loss; AUC forget vs holdout and TPR@1%FPR."),
        ("zlib", False, "ZLib attack (Carlini et al. 2021): s = avg_loss / zlib length of the answer."),
        ("min_k", False, "Min-K% (Shi et al. 2023): s = −mean of the ⌊k·n⌋ lowest token log-probs (k = mia_k)."),
        ("min_k_plus_plus", False, "Min-K%++ (Zhang et al. 2024): standardised token log-probs, lowest ⌊k·n⌋."),
        ("reference", True, "Reference attack (Carlini et al. 2021): s = avg_loss − the retain model's avg_loss."),
        ("gradnorm", False, "GradNorm: s = mean over parameter tensors of the answer-loss gradient's 2-norm.")):
    _register_attack(_name, _ref, _doc)


@METRICS.register("tofu_privleak", task="causal_lm", needs_reference=True)
def privleak(ev: TofuOutputs, ref: TofuOutputs) -> dict[str, float]:
    """privleak = ((1 − AUC_u) − (1 − AUC_ret)) / (1 − AUC_ret) × 100 with the Min-K AUC (MUSE convention; ≈ 0 is
    good, negative = under-unlearning, positive = over-unlearning)."""
    au = attack(ev, "min_k")["mia_min_k_auc"]
    ar = attack(ref, "min_k")["mia_min_k_auc"]
    return {"privleak": llm_mia.privleak(au, ar), "mia_min_k_auc": au, "mia_min_k_auc_retain": ar}


TOFU_DEFAULT_METRICS = ("tofu_forget_truth_ratio", "tofu_forget_quality", "tofu_forget_prob", "tofu_forget_rouge",
                        "tofu_model_utility", "tofu_privleak", "extraction_strength")
