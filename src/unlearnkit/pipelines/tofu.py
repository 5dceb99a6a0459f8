"""TOFU benchmark (specs/llm.md §3; Maini et al. 2024, arXiv 2401.06121), OpenUnlearning-style.

    rows      = TOFU splits: the embedded generator of fictitious authors (no download), a hub id, or a local dir
    tokenizer = a word-level tokenizer trained on the rows (tiny model), or the model's own
    original  = cache(train `model` on full [+ general-knowledge splits])   or a given fine-tuned model (real presets)
    retain    = cache(train a fresh model on retainYY [+ general])         or a given model, or only its saved log
    ref       = the retain model's TOFU outputs (forget quality, privleak, the Reference attack read them)
    for each method: cache(method.unlearn(copy(original), forgetXX, retainYY)), optionally evaluated every k steps,
                     the best step kept by a chosen metric
    evaluate original, retain and every method -> one row each in results.jsonl -> report.md

On the embedded data the tiny model learns every author's `answer` and `paraphrased_answer` (a model trained from
scratch cannot generalise to a paraphrase it never saw; TOFU's pre-trained models can), plus the real-world splits
(world_facts, real_authors), which stand in for pre-training knowledge: both the original and the retain model know
them, and model utility measures how much of that an unlearning method destroys.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .._io import append_jsonl, content_hash
from .._registry import BENCHMARKS, METHODS, METRICS
from ..config import ConfigError, param, to_dict
from ..data.tofu_synth import generate_authors
from ..methods._loop import LoopParams
from ._stages import RunResult, Stage, now, start_run, unlearn_cached, versioned

DEFAULT_METHODS = ("grad_ascent", "grad_diff", "npo", "simnpo", "dpo", "rmu", "undial", "ce_u", "satimp", "wga",
                   "pdu", "imu")
SPLIT_PAIRS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
# A trained tokenizer reads these whatever the forget split, so the original model (trained on `full`) is one model
# for every split: forget10 ⊇ forget05 ⊇ forget01 and holdout10 ⊇ holdout05 ⊇ holdout01 in TOFU's layout.
TOKENIZER_SPLITS = ("full", "forget10_perturbed", "holdout10", "retain_perturbed", "world_facts_perturbed",
                    "real_authors_perturbed")


@dataclass
class TofuData:
    """Where the TOFU rows come from."""

    source: str = param("synthetic", help="synthetic (embedded generator), a hub dataset id (locuslab/TOFU) or a "
                                          "directory of <split>.json / .jsonl / .parquet files")
    n_authors: int = param(100, ge=2, help="synthetic: training authors")
    n_holdout: int = param(10, ge=1, help="synthetic: holdout authors (MIA non-members)")
    seed: int = param(0, help="synthetic: generator seed")
    train_answers: list[str] = param(["answer", "paraphrased_answer"], help="answer fields the model is trained on "
                                     "(training here only)")
    general_splits: list[str] = param(["world_facts", "real_authors"], help="splits both the original and the retain "
                                      "model are trained on, as pre-training knowledge (training here only)")


@dataclass
class TofuModel:
    """The model family, and where the original / retain models come from."""

    name: str = param("tiny_llama", help="registered model builder (tiny_llama, hf_causal_lm)")
    args: dict[str, Any] = param({}, help="builder arguments (hf_causal_lm: name_or_path, dtype, ...)")
    tokenizer: str = param("train", help="'train' = a word-level tokenizer trained on the data, else a name or path")
    original: str | None = param(None, help="name or path of the fine-tuned target model; None = train it here")
    retain: str | None = param(None, help="name or path of the retain model ({retain_split} is replaced, e.g. "
                                          "..._{retain_split}); None = train it here (if original is None) or use "
                                          "retain_logs")
    retain_logs: str | None = param(None, help="a saved retain-model outputs log (instead of the retain model)")


@dataclass
class FinetuneRecipe(LoopParams):
    """Training of the tiny original and retain models from scratch (until they have memorized the authors)."""

    lr: float = param(3e-3, gt=0, help="learning rate")
    epochs: int = param(40, ge=1, help="training epochs")
    batch_size: int = param(32, gt=0, help="batch size")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adamw", help="optimiser")
    weight_decay: float = param(0.0, ge=0, help="weight decay")
    schedule: Literal["constant", "cosine", "linear"] = param("cosine", help="learning-rate schedule")


@dataclass
class TofuEval:
    """The TOFU evaluation (metrics/tofu_eval.py)."""

    metrics: list[str] = param(["tofu_forget_truth_ratio", "tofu_forget_quality", "tofu_forget_prob",
                                "tofu_forget_rouge", "tofu_model_utility", "tofu_privleak", "extraction_strength",
                                "exact_memorization", "mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus",
                                "mia_reference"], help="registered TOFU metrics and attacks")
    batch_size: int = param(32, gt=0, help="evaluation batch size")
    max_new_tokens: int = param(200, gt=0, help="greedy decoding length for ROUGE")
    mia_k: float = param(0.4, gt=0, le=1, help="k of Min-K% and Min-K%++")
    gradnorm: bool = param(False, help="collect the GradNorm attack's gradients (one backward per sample)")
    every: int = param(0, ge=0, help="also evaluate every k unlearning steps (curve; 0 = final model only)")
    select: str | None = param(None, help="keep the evaluated step with the best value of this metric key (e.g. "
                                          "model_utility); None = the last step")
    select_mode: Literal["max", "min"] = param("max", help="best = max or min of `select`")
    no_reference: bool = param(False, help="opt in to a run of a given model.original WITHOUT a retain model or log: "
                                           "the metrics that compare with the retain model (forget quality, "
                                           "privleak, the Reference attack) are skipped, and rows say so (P13)")
    stop_below: dict[str, float] = param({}, help="early stopping: end a method's run at the first evaluated step "
                                                  "where a named metric falls below its floor, e.g. "
                                                  "{model_utility: 0.5} (needs every > 0)")


@dataclass
class TofuConfig:
    """A TOFU run. `unlearnkit run tofu method=npo method.beta=0.1 forget_split=forget10` works as in OpenUnlearning."""

    benchmark: str = param("tofu", help="benchmark name")
    data: TofuData = field(default_factory=TofuData)
    forget_split: Literal["forget01", "forget05", "forget10"] = param("forget10", help="forget split")
    retain_split: str | None = param(None, help="retain split (default: the complement of forget_split)")
    format: dict[str, Any] = param({}, help="QAFormat fields: template (tags|chat), system_prompt, max_length, ...")
    model: TofuModel = field(default_factory=TofuModel)
    finetune: FinetuneRecipe = field(default_factory=FinetuneRecipe)
    methods: list[str] = param(["grad_ascent", "grad_diff", "npo", "simnpo", "rmu", "imu"],
                               help="methods to run; [] = evaluate the original and retain models only (and write "
                                    "the retain log)")
    method: dict[str, dict[str, Any]] = param({}, help="hyperparameter overrides per method: method.NAME.KEY=VALUE")
    unlearn: dict[str, Any] = param({}, help="loop overrides given to every method (lr, epochs, batch_size, ...)")
    eval: TofuEval = field(default_factory=TofuEval)
    seeds: list[int] = param([0], help="model-initialisation / training / unlearning seeds")
    output_dir: str = param("runs/tofu", help="where results.jsonl, report.md and the retain log go")
    cache_unlearned: bool = param(True, help="cache unlearned models, so a restarted run skips finished methods")
    save_models: bool = param(False, help="also write every unlearned model as a Hugging Face checkpoint (weights, "
                                          "config, tokenizer) to output_dir/models/<method>-seed<s>")

    def __post_init__(self) -> None:
        expected = SPLIT_PAIRS[self.forget_split]
        if self.retain_split is not None and self.retain_split != expected:
            raise ValueError(f"retain_split='{self.retain_split}' does not pair with forget_split="
                             f"'{self.forget_split}' (allowed: {expected})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds}: give one or more distinct seeds")
        if self.finetune.seed != 0:
            raise ValueError(f"finetune.seed={self.finetune.seed}: the training seed comes from seeds=[...]")
        m = self.model
        if m.original is None and (m.retain is not None or m.retain_logs is not None):
            raise ValueError("model.retain / model.retain_logs are for a given model.original; without one both "
                             "models are trained here")
        if m.original is not None and m.retain is None and m.retain_logs is None and not self.eval.no_reference:
            raise ValueError(f"model.original='{m.original}' needs model.retain or model.retain_logs (the reference "
                             "of forget quality and privleak; spec P13: never a silent reference), or "
                             "eval.no_reference=true to skip the metrics that need one")


def rewrite_overrides(items: Sequence[str]) -> list[str]:
    """OpenUnlearning-style overrides: `method=npo` selects one method (methods=[npo]) and `method.beta=0.1` sets its
    hyperparameter (method.npo.beta=0.1); `method.NAME.KEY=V` keeps working."""
    chosen = [i.split("=", 1)[1] for i in items if i.startswith("method=")]
    out = []
    for item in items:
        key, _, value = item.partition("=")
        if key == "method":
            out.append(f"methods=[{value}]")
        elif key.startswith("method.") and key.split(".")[1] not in METHODS:
            if len(chosen) != 1:
                raise ConfigError(f"'{item}': name the method first (method=NAME) or write method.NAME."
                                  f"{key.split('.', 1)[1]}={value}")
            out.append(f"method.{chosen[0]}.{key.split('.', 1)[1]}={value}")
        else:
            out.append(item)
    return out


# ---------------------------------------------------------------------------------------------------------------
# validation (before any data or model is touched)
# ---------------------------------------------------------------------------------------------------------------
def create_methods(cfg: TofuConfig, seed: int) -> list[tuple[str, Any]]:
    for name in [*cfg.methods, *cfg.method]:
        METHODS.get(name)
    out = []
    for name in cfg.methods:
        unknown = sorted(k for k in cfg.unlearn if k not in METHODS.get(name).obj.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unlearn.{unknown[0]}: method '{name}' has no such hyperparameter")
        out.append((name, METHODS.create(name, **{**cfg.unlearn, "seed": seed, **cfg.method.get(name, {})})))
    return out


def validate(cfg: TofuConfig) -> None:
    from ..config import build
    from ..data.qa import QAFormat

    for name in cfg.eval.metrics:
        entry = METRICS.get(name)
        if entry.tags.get("task") != "causal_lm":
            raise ConfigError(f"metric '{name}' is not a TOFU / causal-LM metric")
    if (cfg.eval.select or cfg.eval.stop_below) and not cfg.eval.every:
        raise ConfigError("eval.select / eval.stop_below need eval.every > 0 (evaluate every k unlearning steps)")
    if cfg.eval.gradnorm is False and "mia_gradnorm" in cfg.eval.metrics:
        raise ConfigError("metric mia_gradnorm needs eval.gradnorm=true")
    build(QAFormat, cfg.format, where="format")
    for seed in cfg.seeds:
        for _name, method in create_methods(cfg, seed):
            if "causal_lm" not in method.capabilities["tasks"]:
                raise ConfigError(f"method '{method.registry_name}' does not support causal LMs")


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
class TofuRunner:
    """The cached stages of one TOFU run."""

    def __init__(self, cfg: TofuConfig, *, cache: Any = None, say: Callable[[str], None] = print,
                 accelerator: Any = None) -> None:
        from ..cache import ModelCache
        from ..config import build
        from ..data.qa import QAFormat
        from ..metrics.tofu_eval import eval_split_names
        from ..tasks import get_task

        self.cfg, self.say, self.acc = cfg, say, accelerator
        self.cache = cache or ModelCache()
        self.task = get_task("causal_lm")
        self.fmt = build(QAFormat, cfg.format, where="format")
        self.retain_split = cfg.retain_split or SPLIT_PAIRS[cfg.forget_split]
        needed = {"full", cfg.forget_split, self.retain_split, *cfg.data.general_splits,
                  *eval_split_names(cfg.forget_split).values()}
        if cfg.model.original is not None:
            needed.discard("full")
        self.splits = self._load_rows(sorted(needed))
        self.data_hash = content_hash({k: self.splits[k] for k in sorted(self.splits)})[:16]
        self.tokenizer = self._tokenizer()
        self.vocab_hash = content_hash(sorted(self.tokenizer.get_vocab().items()))[:16]
        self._eval = None
        self.check_methods()
        self.retain_log = None
        if cfg.model.retain_logs is not None:  # read and checked now, before any model is loaded
            from ..metrics.tofu_eval import load_outputs

            self.retain_log = load_outputs(cfg.model.retain_logs, identity=self.prepared().identity,
                                           model_id=self.model_id())

    def _load_rows(self, names: list[str], missing_ok: bool = False) -> dict[str, list[dict]]:
        """Rows of the named splits; with missing_ok, a split a local directory lacks is left out."""
        d = self.cfg.data
        if d.source == "synthetic":
            if getattr(self, "_synth", None) is None:  # generated once per run
                self._synth = generate_authors(n_authors=d.n_authors, n_holdout=d.n_holdout, seed=d.seed)
            return {n: self._synth.split(n) for n in names}
        from ..data.qa import load_qa_rows

        out = {}
        for n in names:
            try:
                out[n] = load_qa_rows(n, d.source)
            except FileNotFoundError:
                if not missing_ok:
                    raise
        return out

    def _tokenizer(self):
        from ..data.qa import check_format, train_word_tokenizer

        m = self.cfg.model
        if m.tokenizer == "train":
            names = sorted({*TOKENIZER_SPLITS, *self.cfg.data.general_splits})  # never the forget split's own
            loaded = {n: self.splits[n] for n in names if n in self.splits}
            loaded.update(self._load_rows([n for n in names if n not in loaded], missing_ok=True))
            keys = ("question", self.fmt.question_key, "answer", "paraphrased_answer", "perturbed_answer")
            texts = [r[k] if isinstance(r[k], str) else " ".join(r[k]) for n in names if n in loaded
                     for r in loaded[n] for k in dict.fromkeys(keys) if k in r]
            texts += [self.fmt.question_start, self.fmt.question_end, self.fmt.answer_start]
            tok = train_word_tokenizer(texts)
        else:
            from ..models.llm import load_tokenizer

            tok = load_tokenizer(m.tokenizer)
        check_format(tok, self.fmt)
        return tok

    # -- models ---------------------------------------------------------------------------------------------------
    def skeleton(self):
        """The architecture without weights (meta device): module names for the early checks, no download of
        weights (a given model's config only)."""
        import torch

        if self.cfg.model.original is None:
            with torch.device("meta"):
                return self.fresh(0)
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(self.cfg.model.original)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)

    def check_methods(self) -> None:
        """Module names a method refers to (LoRA targets, RMU's layer) must exist, before any training."""
        from ..methods.rmu import find_block
        from ..models.llm import apply_lora

        # a given model's config is read now, so an unreachable or misspelled model fails before any work
        model = self.skeleton() if self.cfg.model.original is not None else None
        for name, method in create_methods(self.cfg, self.cfg.seeds[0]):
            layer, lora = getattr(method, "layer", None), getattr(method, "lora_r", 0)
            if not lora and layer is None:
                continue
            model = model if model is not None else self.skeleton()
            try:
                if layer is not None:
                    find_block(model, layer)
                if lora:  # on a throw-away copy of the meta-device skeleton: checks every target, costs nothing
                    apply_lora(copy.deepcopy(model), r=method.lora_r, targets=method.lora_targets)
            except ValueError as err:
                raise ConfigError(f"method.{name}: {err}") from None

    def model_args(self) -> dict[str, Any]:
        from ..data.qa import pad_token_id

        args = dict(self.cfg.model.args)
        if self.cfg.model.name == "tiny_llama":
            t = self.tokenizer
            args = {"vocab_size": len(t), "pad_token_id": pad_token_id(t), "bos_token_id": t.bos_token_id,
                    "eos_token_id": t.eos_token_id, **args}
        return args

    def fresh(self, seed: int):
        from ..models import build_model

        return build_model(self.cfg.model.name, seed=seed, **self.model_args())

    def pretrained(self, name_or_path: str):
        from ..models import build_model

        return build_model("hf_causal_lm", seed=0, **{**self.cfg.model.args, "name_or_path": name_or_path})

    def train_rows(self, split: str) -> list[tuple[str, str]]:
        from ..data.qa import qa_pairs

        pairs = []
        for key in self.cfg.data.train_answers:
            pairs += qa_pairs(self.splits[split], key, self.fmt.question_key)
        for general in self.cfg.data.general_splits:
            pairs += qa_pairs(self.splits[general], "answer", self.fmt.question_key)
        return pairs

    def trained(self, seed: int, which: Literal["original", "retain"]) -> Stage:
        """The stage of the original (trained on full) or retain model (on retainYY)."""
        from ..cache import spec_key
        from ..data.qa import QADataset
        from ..methods.retrain import fit

        given = self.cfg.model.original if which == "original" else self.cfg.model.retain
        if given is not None:
            given = given.format(retain_split=self.retain_split)  # e.g. ..._{retain_split} -> ..._retain90
            model = self.pretrained(given).eval()
            return Stage(which, model, {"source": given}, True, _checkpoint_key(given, model))
        split = "full" if which == "original" else self.retain_split
        recipe = self.cfg.finetune
        # keyed by what training reads (its rows and the vocabulary), not by the evaluation splits, so one original
        # serves every forget split
        data = content_hash({"rows": self.train_rows(split), "vocab": self.vocab_hash})[:16]
        spec = versioned({"kind": "tofu_trained", "data": data, "split": split, "model": self.cfg.model.name,
                          "args": self.model_args(), "format": to_dict(self.fmt), "recipe": to_dict(recipe),
                          "train_answers": self.cfg.data.train_answers,
                          "general": self.cfg.data.general_splits, "seed": seed})
        key = spec_key(spec)

        def train(m):
            ds = QADataset(self.train_rows(split), self.tokenizer, self.fmt)
            result = fit(m, ds, self.task, replace(recipe, seed=seed), accelerator=self.acc, desc=which)
            return {"train_time_s": result.seconds, "final_loss": result.losses[-1] if result.losses else None}

        model, meta, hit = self.cache.get_or_build(key, self.fresh(seed), train, spec=spec)
        self.say(f"[seed {seed}] {which} ({split}): {'loaded from cache' if hit else 'trained'} "
                 f"({meta.get('train_time_s', 0):.1f}s)")
        return Stage(which, model.eval(), meta, hit, key)

    def save_checkpoint(self, model: Any, path: Path) -> Path:
        """`model` and the tokenizer as a Hugging Face checkpoint directory, written atomically (a crash never
        leaves a half-written checkpoint under that name)."""
        from .._io import atomic_write_dir

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

        path = atomic_write_dir(path, write)
        self.say(f"saved {path}")
        return path

    # -- data for unlearning ---------------------------------------------------------------------------------------
    def unlearn_data(self, seed: int):
        from ..data import UnlearnData
        from ..data.qa import IDK_ANSWERS, QADataset, qa_pairs

        q = self.fmt.question_key
        forget = QADataset(qa_pairs(self.splits[self.cfg.forget_split], "answer", q), self.tokenizer, self.fmt,
                           alternates=IDK_ANSWERS, seed=seed)
        retain = QADataset(qa_pairs(self.splits[self.retain_split], "answer", q), self.tokenizer, self.fmt)
        return UnlearnData(forget=forget, retain=retain)

    # -- evaluation ------------------------------------------------------------------------------------------------
    def prepared(self):
        from ..metrics.tofu_eval import prepare_tofu_eval

        if self._eval is None:
            self._eval = prepare_tofu_eval(self.splits, self.cfg.forget_split, self.tokenizer, self.fmt,
                                           data_hash=self.data_hash)
        return self._eval

    def outputs(self, model):
        from ..metrics.tofu_eval import collect_tofu_outputs

        e = self.cfg.eval
        return collect_tofu_outputs(model, self.prepared(), batch_size=e.batch_size, max_new_tokens=e.max_new_tokens,
                                    mia_k=e.mia_k, gradnorm=e.gradnorm, accelerator=self.acc)

    def metrics(self, outputs, ref) -> dict[str, float]:
        from ..metrics.evaluate import evaluate

        names = self.cfg.eval.metrics
        if ref is None:  # eval.no_reference: only the metrics of the model alone
            names = [n for n in names if not METRICS.get(n).tags.get("needs_reference")]
        return evaluate(outputs, names, ref=ref)

    def model_id(self) -> str:
        m = self.cfg.model
        return m.args.get("name_or_path", m.name) if m.original is None else m.original.split("_full")[0]

    def reference(self, seed: int, retain_stage) -> Any:
        """The retain model's outputs: from its log (given, or cached from an earlier run), else evaluated now and
        saved as a log (cache and output dir) for later runs and other tools."""
        from ..metrics.tofu_eval import load_outputs, save_outputs

        ident = self.prepared().identity
        if self.retain_log is not None or retain_stage is None:
            return self.retain_log  # None: eval.no_reference
        e = self.cfg.eval
        key = content_hash({"retain": retain_stage.key, "identity": ident, "mia_k": e.mia_k, "gradnorm": e.gradnorm,
                            "max_new_tokens": e.max_new_tokens})[:20]
        path = self.cache.root / "tofu_logs" / f"{key}.json"
        if path.is_file():
            try:
                return load_outputs(path, identity=ident, model_id=self.model_id())
            except ValueError:
                pass  # a damaged log is recomputed
        out = self.outputs(retain_stage.model)
        if self.acc is None or self.acc.is_main_process:
            save_outputs(path, out, self.model_id())
            save_outputs(Path(self.cfg.output_dir) / f"retain_logs_{self.cfg.forget_split}_seed{seed}.json", out,
                         self.model_id())
        return out


def _checkpoint_key(name_or_path: str, model: Any) -> str:
    """A cache key of a given checkpoint that changes when its weights do (spec P12): the hub commit it was loaded
    from, or for a local directory the names, sizes and modification times of its weight files."""
    files = sorted(Path(name_or_path).glob("*.safetensors")) + sorted(Path(name_or_path).glob("*.bin"))
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return "given-" + content_hash({"source": name_or_path, "commit": commit, "files": stamp})[:20]


def _select(curve: list[dict], metric: str | None, mode: str) -> dict | None:
    """The evaluated point with the best `metric` (None when no metric is chosen or nothing was evaluated)."""
    if not metric or not curve:
        return None
    pts = [p for p in curve if not math.isnan(p.get(metric, math.nan))]
    if not pts:
        raise ConfigError(f"eval.select='{metric}': no evaluated step reports it (keys: {sorted(curve[0])})")
    return (max if mode == "max" else min)(pts, key=lambda p: p[metric])


class _KeepBest:
    """Runs `method`; with eval.every > 0, evaluates every k steps (the curve) and, with eval.select, ends with the
    weights of the best evaluated step instead of the last (the best checkpoint, kept in CPU memory)."""

    def __init__(self, method: Any, runner: TofuRunner, ref: Any) -> None:
        self.method, self.runner, self.ref = method, runner, ref
        self.curve: list[dict] = []
        self.best_state: dict | None = None

    def after_step(self, model: Any, step: int) -> bool:
        """Evaluate every `eval.every` steps; True (stop) once a metric of `eval.stop_below` is under its floor. The
        values are gathered over all processes, so every process takes the same decision."""
        e = self.runner.cfg.eval
        if step % e.every:
            return False
        point = {"step": step, **self.runner.metrics(self.runner.outputs(model), self.ref)}
        self.curve.append(point)
        if _select(self.curve, e.select, e.select_mode) is point:
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return any(point[k] < floor for k, floor in e.stop_below.items())

    def unlearn(self, model: Any, data: Any, task: Any, **kwargs: Any) -> Any:
        out = self.method.unlearn(model, data, task, **kwargs)
        if self.best_state is not None:
            out.load_state_dict(self.best_state)
        return out

    def meta(self) -> dict[str, Any]:
        e = self.runner.cfg.eval
        best = _select(self.curve, e.select, e.select_mode)
        return {"curve": self.curve, "best_step": best["step"] if best else None,
                "steps": getattr(self.method, "steps_", None),
                "setup": getattr(self.method, "setup_", None)}  # world size, per-device batch, DeepSpeed (P18)


def run_tofu(cfg: TofuConfig, *, cache: Any = None, say: Callable[[str], None] = print,
             accelerator: Any = None) -> RunResult:
    from ..methods._loop import default_accelerator
    from ..report import build_report

    validate(cfg)
    accelerator = accelerator or default_accelerator()
    try:  # rows, tokenizer, prompt format and module names: every input error surfaces here, before training
        runner = TofuRunner(cfg, cache=cache, say=say, accelerator=accelerator)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    except OSError as err:  # a missing file, or the hub unreachable (no network, no access to a gated model)
        raise ConfigError(f"{err} (data.source={cfg.data.source!r}, model.original={cfg.model.original!r}; the "
                          "embedded benchmark `unlearnkit run tofu_tiny` needs no download)") from None
    main = accelerator.is_main_process  # every process trains and evaluates; the main one writes
    out_dir, config, world = Path(cfg.output_dir), to_dict(cfg), accelerator.num_processes
    run_id, versions = start_run(out_dir, config, runner.cache, data_hash=runner.data_hash, world_size=world) \
        if main else ("", {})
    common = {"run_id": run_id, "benchmark": cfg.benchmark, "scenario": cfg.forget_split, "model": cfg.model.name,
              "data_hash": runner.data_hash, "split_hash": runner.data_hash, "versions": versions, "config": config,
              "world_size": world}
    result = RunResult(out_dir)
    for seed in cfg.seeds:
        original = runner.trained(seed, "original")
        has_retain = cfg.model.retain_logs is None and (cfg.model.original is None or cfg.model.retain is not None)
        retain = runner.trained(seed, "retain") if has_retain else None
        ref = runner.reference(seed, retain)
        reference = cfg.model.retain_logs or (f"retain model {retain.key}" if retain else
                                              "none (eval.no_reference: no forget quality, privleak, Reference)")
        stages = [(original, runner.metrics(runner.outputs(original.model), ref))]
        unknown = sorted({cfg.eval.select, *cfg.eval.stop_below} - set(stages[0][1]) - {None})
        if unknown:  # checked on the original's values, before any unlearning
            raise ConfigError(f"eval.select / eval.stop_below name {unknown}, which the metrics do not report; "
                              f"keys: {', '.join(sorted(stages[0][1]))}")
        if retain is not None:
            stages.append((retain, runner.metrics(ref, ref)))
        data = runner.unlearn_data(seed)
        for name, method in create_methods(cfg, seed):
            keep = _KeepBest(method, runner, ref)
            spec = {"kind": "tofu_unlearned", "base": original.key, "method": name, "params": to_dict(method),
                    "forget_split": cfg.forget_split, "data": runner.data_hash, "eval_every": cfg.eval.every,
                    "select": cfg.eval.select, "select_mode": cfg.eval.select_mode,
                    "stop_below": cfg.eval.stop_below}
            model, meta, hit, key = unlearn_cached(runner.cache, spec, original.model, keep, data, runner.task,
                                                   enabled=cfg.cache_unlearned, extra=keep.meta,
                                                   after_step=keep.after_step if cfg.eval.every else None)
            say(f"[seed {seed}] {name}: {'loaded from cache' if hit else 'done'} ({meta['unlearn_time_s']:.2f}s)")
            stages.append((Stage(name, model, meta, hit, key, method), runner.metrics(runner.outputs(model), ref)))
            if cfg.save_models and main:
                runner.save_checkpoint(model, out_dir / "models" / f"{name}-seed{seed}")
            del model
        for stage, values in stages if main else ():
            if stage.method is None:
                params = to_dict(replace(cfg.finetune, seed=seed)) if cfg.model.original is None else {}
                times = {"train_s": stage.meta.get("train_time_s", math.nan)}
            else:
                params, times = to_dict(stage.method), {"unlearn_s": stage.meta["unlearn_time_s"]}
            row = {**common, "created": now(), "method": stage.name, "label": stage.name, "seed": seed,
                   "params": params, "seeds": {"data": cfg.data.seed, "train": seed, "unlearn": params.get("seed")},
                   "metrics": values, "times": times, "cached": stage.hit, "cache_key": stage.key,
                   "variant": content_hash({k: v for k, v in params.items() if k != "seed"})[:8],
                   "curve": stage.meta.get("curve", []), "best_step": stage.meta.get("best_step"),
                   "setup": stage.meta.get("setup"), "steps": stage.meta.get("steps"), "reference": reference}
            append_jsonl(out_dir / "results.jsonl", row)
            result.rows.append(row)
            result.cache_hits[f"{seed}/{stage.name}"] = stage.hit
    if main:
        result.report = build_report(out_dir)
    return result


TOFU_COLUMNS = ("forget_quality", "model_utility", "forget_Q_A_ROUGE", "privleak", "forget_truth_ratio",
                "forget_Q_A_Prob", "extraction_strength", "mia_min_k_auc", "unlearn_s")


def _figures(rows: list[dict], out_dir: Path, stem: str) -> list[Path]:
    from ..report.curves import plot_tofu

    return plot_tofu(rows, out_dir, stem)


@BENCHMARKS.register("tofu", config=TofuConfig, validate=validate, columns=TOFU_COLUMNS, figures=_figures,
                     rewrite_overrides=rewrite_overrides,
                     paper="TOFU (Maini et al. 2024, arXiv 2401.06121); OpenUnlearning (locuslab/open-unlearning)")
def tofu_benchmark(cfg: TofuConfig, **kwargs: Any) -> Any:
    """TOFU: fictitious-author QA, forget / retain splits, forget quality vs the retain model, model utility."""
    return run_tofu(cfg, **kwargs)


__all__ = ["DEFAULT_METHODS", "TofuConfig", "rewrite_overrides", "run_tofu"]
