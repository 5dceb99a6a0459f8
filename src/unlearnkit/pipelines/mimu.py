"""MIMU benchmark `mimu` (shared/specs/mimu.md §6–§9): one GCN per K, masks per (forget class, κ), and the
same-budget baselines, evaluated on the test split.

    validate everything (names, values, the head contract, K, κ, forget classes, the tracker)    # before any work
    for seed in seeds:
        classifier  = cache(train the model on the training split, the §9 recipe)       # shared with `digits`/`vision`
        graph       = a seeded slice of the TRAINING split (graph_samples), hashed (§3, M10: never the test split)
        reps        = n_representatives seeded TRAINING samples per class                (§6.1)
        for K in top_k:   gcn_K = cache(train_gcn(classifier, graph, K))  ->  z̄_K = cache(class_logits(gcn_K, reps))
        for f in forget_classes:
            sft  = cache(sft_randomize(classifier) on the train images of f)     # once, not per κ (M7)
            for K:  pure class mask M_f (mask efficacy, §6.6)
                for κ in kappa:  mimu = zero the top-κ of forget_mask(z̄_K, f);  random = zero κ random weights
                    evaluate on the TEST split: forget set = class f, retain set = the others (§8)
                    -> output_dir/json/<id>.json (the §8 fields), rows in results.jsonl, the tracker
    report.md (+ per-κ figures and the comparison table in Markdown and LaTeX) from the rows

Every trained thing (classifier, GCN, class logits, SFT model) is a content-addressed cache entry, so a second run,
or a run restarted after a crash, redoes none of it; masks are cheap and recomputed.

Metrics of one model on one set S (the forget set or the retain set), from its test logits z [|S|, C]:
    loss  = mean_i CE(z_i, y_i) over all of S (sample-weighted)      score = 100 · accuracy on S
    probability = mean_i softmax(z_i)[f] over S: the forget-class probability (on the retain set: how much the
                  model still assigns to f), for any C (the reference: first batch only, C = 10 only; M5)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from .._io import append_jsonl, atomic_write_json, content_hash
from .._registry import BENCHMARKS, DATASETS, METHODS, MODELS
from ..config import ConfigError, param, to_dict
from ._stages import RunResult, Stage, now, start_run, unlearn_cached, versioned
from ._tracking import Tracker, Tracking, check_tracking
from .classification import TrainRecipe, load_dataset, original_spec, resolve_classes, warm_up_imports

BASELINES = ("random_mask", "sft_randomize")
METHOD_NAMES = ("mimu", *BASELINES)
# Hyperparameters the pipeline sets itself (swept, seeded or a stage of their own): not method.NAME overrides.
OWNED = {"mimu": ("top_k", "kappa", "forget_class", "seed", "graph_samples"), "random_mask": ("kappa", "seed"),
         "sft_randomize": ("seed",)}
METRICS = ("loss", "score", "probability")
SETS = ("forget", "retain")
MIMU_FRACTIONS = [k / 8192 for k in (1000, 4900, 5700, 6000, 7000)]  # the MLP's κ budgets as fractions of N


@dataclass
class MimuRecipe(TrainRecipe):
    """The classifier recipe of spec §9: AdamW lr 1e-3 (torch's weight decay 0.01), cross-entropy, constant, batch
    512, 2 epochs, no augmentation."""

    lr: float = param(1e-3, gt=0, help="learning rate")
    epochs: int = param(2, ge=1, help="training epochs (spec §9: 8 for CIFAR-100, 2 otherwise)")
    batch_size: int = param(512, gt=0, help="batch size")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adamw", help="optimiser")
    weight_decay: float = param(0.01, ge=0, help="weight decay (torch's AdamW default)")
    schedule: Literal["constant", "cosine", "linear"] = param("constant", help="learning-rate schedule")


@dataclass
class MimuConfig:
    """A MIMU benchmark run. Every key can be overridden as `key=value` on the command line."""

    train_augment: ClassVar[bool] = False  # the §9 recipe never augments (read by original_spec)

    benchmark: str = param("mimu", help="benchmark name (the registered pipeline)")
    dataset: str = param("digits", help="registered data set")
    dataset_args: dict[str, Any] = param({}, help="keyword arguments of the data set loader, e.g. root, download")
    model: str = param("mlp_mimu", help="registered model with MIMU's bias-free head: mlp_mimu, resnet18_mimu")
    model_args: dict[str, Any] = param({}, help="extra keyword arguments of the model builder")
    train: MimuRecipe = field(default_factory=MimuRecipe)
    seeds: list[int] = param([0], help="one full run per seed (classifier, graph samples, GCN, masks, baselines)")
    forget_classes: list[int | str] = param([0], help="classes to forget, one at a time (indices or names)")
    graph_samples: int = param(2048, gt=0, help="training samples the GCN trains on (all when fewer)")
    top_k: list[int | float] = param([8000 / 8192], help="K values (an int count or a fraction of N): one GCN each")
    kappa: list[int | float] = param(list(MIMU_FRACTIONS), help="κ values (int or fraction of N): weights zeroed "
                                                                "(unused by strategy=set_difference)")
    baselines: list[str] = param(list(BASELINES), help="baselines besides the original: random_mask, sft_randomize")
    method: dict[str, dict[str, Any]] = param({}, help="hyperparameters per method: method.mimu.steps=16, "
                                                       "method.sft_randomize.lr=0.01, ...")
    eval_batch_size: int = param(256, gt=0, help="batch size of the test-split evaluation (spec §8: 256)")
    output_dir: str = param("runs/mimu", help="where json/, results.jsonl and report.md go")
    tracking: Tracking = field(default_factory=Tracking)

    def __post_init__(self) -> None:
        for key in ("seeds", "forget_classes", "top_k", "baselines"):
            values = getattr(self, key)
            if key != "baselines" and not values:
                raise ValueError(f"{key} is empty: give at least one value")
            if len({json.dumps(v) for v in values}) != len(values):
                raise ValueError(f"{key}={values} repeats a value")
        if self.train.seed != 0:
            raise ValueError(f"train.seed={self.train.seed}: each run's training seed comes from seeds=[...]")


@dataclass
class Plan:
    """Everything validated and resolved before any heavy work."""

    config: MimuConfig
    data: Any
    layer: str  # the masked layer W [m, n]
    shape: tuple[int, int]  # (m, n)
    num_classes: int
    forget_classes: list[int]
    top_ks: list[int]  # resolved counts
    kappas: list[int]  # resolved counts ([] for strategy=set_difference)
    mimu: Any  # the MIMU instance: its hyperparameters (its seed, K, κ and class are the pipeline's)
    baselines: dict[str, Any]  # name -> instance (seed set per run)
    splits: dict[tuple[int, int], Any]  # (seed, forget class) -> class Split

    @property
    def num_weights(self) -> int:
        return self.shape[0] * self.shape[1]


def _counts(values: list[Any], key: str, num_weights: int, minimum: int) -> list[int]:
    """int counts of `values` (ints or fractions of N), each in [minimum, N]; a value that lands on another's
    count is an error (it would repeat that experiment)."""
    from ..methods._mimu_masks import resolve_count

    out = []
    for i, value in enumerate(values):
        try:
            count = resolve_count(value, num_weights, f"{key}[{i}]", minimum=minimum)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if count in out:
            raise ConfigError(f"{key}={values}: {value!r} gives {count} weights, as an earlier value does")
        out.append(count)
    return out


def _methods(cfg: MimuConfig) -> tuple[Any, dict[str, Any]]:
    """The MIMU and baseline instances with the method.NAME overrides (seed 0; each run sets its seed)."""
    for name in cfg.baselines:
        if name not in BASELINES:
            raise ConfigError(f"baselines: unknown baseline '{name}'; allowed: {', '.join(BASELINES)}")
    for name, overrides in cfg.method.items():
        if name not in METHOD_NAMES:
            raise ConfigError(f"method.{name}: '{name}' is not a method of this benchmark; allowed: "
                              f"{', '.join(METHOD_NAMES)}")
        owned = sorted(set(overrides) & set(OWNED[name]))
        if owned:
            hint = {"top_k": "top_k=[...]", "kappa": "kappa=[...]", "forget_class": "forget_classes=[...]",
                    "seed": "seeds=[...]", "graph_samples": "graph_samples=..."}
            raise ConfigError(f"method.{name}.{owned[0]} is set by the pipeline; use "
                              f"{hint[owned[0]]} at the top level instead")
    made = {}
    for name in ("mimu", *cfg.baselines):
        try:
            made[name] = METHODS.create(name, **cfg.method.get(name, {}))
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from None
    return made.pop("mimu"), made


def _probe(cfg: MimuConfig, data: Any, layers: dict[str, str | None]) -> tuple[str, tuple[int, int], int]:
    """Build the model once (no download) and check MIMU's head contract: (masked layer, W's shape, C)."""
    from ..methods._mimu_masks import _resolve
    from ..models import build_model

    args = {**cfg.model_args, **({"pretrained": False} if "pretrained" in cfg.model_args else {})}
    where = f"model='{cfg.model}' on dataset '{cfg.dataset}' (input {data.input_shape}, {data.num_classes} classes)"
    try:
        model = build_model(cfg.model, seed=0, input_shape=data.input_shape, num_classes=data.num_classes, **args)
    except (TypeError, ValueError, ImportError) as err:
        raise ConfigError(f"{where}: {err}") from None
    target = None
    for name, layer in layers.items():
        try:
            target = _resolve(model, masked_layer=layer, data_classes=data.num_classes)
        except ValueError as err:
            prefix = where if layer is None else f"method.{name}.masked_layer"
            raise ConfigError(f"{prefix}: {err}") from None
    weight = model.get_submodule(target.layer).weight
    return target.layer, (int(weight.shape[0]), int(weight.shape[1])), target.num_classes


def plan(cfg: MimuConfig) -> Plan:
    """Check every name and value before any training: all errors surface here, as one-line ConfigErrors."""
    from ..data import make_split

    for registry, name, key in ((DATASETS, cfg.dataset, "dataset"), (MODELS, cfg.model, "model")):
        if name not in registry:
            raise ConfigError(f"{key}='{name}' is not registered; available: {', '.join(registry.list())}")
    mimu, baselines = _methods(cfg)
    check_tracking(cfg.tracking)
    data = load_dataset(cfg.dataset, cfg.dataset_args)
    layers = {name: m.masked_layer for name, m in (("mimu", mimu), *baselines.items())}
    layer, shape, num_classes = _probe(cfg, data, layers)
    num_weights = shape[0] * shape[1]
    forget = resolve_classes(cfg.forget_classes, getattr(data, "class_names", ()), num_classes, "forget_classes")
    if len(set(forget)) != len(forget):
        raise ConfigError(f"forget_classes={cfg.forget_classes} names a class twice")
    top_ks = _counts(cfg.top_k, "top_k", num_weights, 1)
    kappas = _counts(cfg.kappa, "kappa", num_weights, 0) if mimu.strategy == "rank" else []
    if mimu.strategy == "rank" and not kappas:
        raise ConfigError("kappa is empty: give at least one κ (or method.mimu.strategy=set_difference)")
    missing = [c for c in range(num_classes) if not np.any(data.y_train == c)]
    if missing:
        raise ConfigError(f"class(es) {missing[:10]} have no training sample: every class needs representatives "
                          f"(n_representatives={mimu.n_representatives}) for its mask")
    untested = [f for f in forget if not np.any(data.y_test == f)]
    if untested:
        raise ConfigError(f"forget_classes: class(es) {untested} have no test image, so their forget metrics would be "
                          "undefined; choose classes present in the test split")
    splits = {}
    for seed in cfg.seeds:
        for f in forget:
            try:
                splits[seed, f] = make_split(data.y_train, data.y_test, scenario="class", seed=seed,
                                             data_hash=data.hash, forget_classes=[f])
            except ValueError as err:
                raise ConfigError(str(err)) from None
    return Plan(cfg, data, layer, shape, num_classes, forget, top_ks, kappas, mimu, baselines, splits)


# --------------------------------------------------------------------------------------------- evaluation


def set_metrics(logits: np.ndarray, labels: np.ndarray, forget_class: int) -> dict[str, dict[str, float]]:
    """The §8 metrics of one model's test logits [T, C] on the forget set (label f) and the retain set (the rest):
    {"forget"|"retain": {"loss", "score", "probability"}} (module docstring)."""
    from ..metrics.classifier import accuracy, cross_entropy, log_softmax

    out = {}
    for name, rows in (("forget", labels == forget_class), ("retain", labels != forget_class)):
        z, y = logits[rows], labels[rows]
        prob = float(np.exp(log_softmax(z)[:, forget_class]).mean()) if len(y) else float("nan")
        out[name] = {"loss": cross_entropy(z, y), "score": accuracy(z, y), "probability": prob}
    return out


def _keys(prefix: str, probability: str) -> dict[str, str]:
    return {"loss": f"{prefix}_loss", "score": f"{prefix}_score", "probability": probability}


# §8 keys: the metric of each model in a JSON section ("after" = MIMU, or the pure class mask in mask efficacy)
JSON_KEYS = {"before": _keys("before_masking", "before_mask_probability"),
             "after": _keys("after_masking", "after_mask_probability"),
             "random": _keys("random_masking", "random_masking_probability"),
             "sft": _keys("sft_baseline", "sft_baseline_probability")}


def json_section(models: dict[str, dict[str, dict[str, float]] | None], part: str) -> dict[str, float | None]:
    """One §8 metrics section: models = {"before", "after", "random", "sft"} -> set_metrics (None: not run)."""
    return {JSON_KEYS[who][m]: (None if ev is None else ev[part][m]) for who, ev in models.items() for m in METRICS}


def read_experiments(path: str | Path) -> list[dict[str, Any]]:
    """The per-experiment JSONs of a MIMU run: a file (one JSON object, or JSON lines as the reference appends to
    top-{K}-kappa-{κ}.json) or a directory (every *.json under it, sorted). The reference's `maked_layer` [sic] is
    read as `masked_layer`."""
    path = Path(path)
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    out = []
    for file in files:
        text = file.read_text(encoding="utf-8").strip()
        try:
            records = [json.loads(text)]
        except json.JSONDecodeError:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        for record in records:
            if not isinstance(record, dict):
                raise ValueError(f"{file}: expected a JSON object per experiment, got {type(record).__name__}")
            if "maked_layer" in record:
                record = {("masked_layer" if k == "maked_layer" else k): v for k, v in record.items()}
            out.append(record)
    return out


# --------------------------------------------------------------------------------------------- stages


class _Runner:
    """Cached stages of one MIMU run (module docstring)."""

    def __init__(self, the_plan: Plan, cache: Any, say: Callable[[str], None]) -> None:
        from ..methods._loop import default_accelerator
        from ..tasks import get_task

        self.plan, self.cfg, self.data, self.cache, self.say = the_plan, the_plan.config, the_plan.data, cache, say
        self.task = get_task("classifier")
        self.device = default_accelerator().device
        self.test = self.data.subset("test", np.arange(len(self.data.y_test)))

    def classifier(self, seed: int) -> Stage:
        from ..cache import spec_key
        from ..methods.retrain import fit
        from ..models import build_model

        cfg, data = self.cfg, self.data
        spec = original_spec(cfg, data, seed)  # shared with `unlearnkit run digits/vision` on the same recipe
        model = build_model(cfg.model, seed=seed, input_shape=data.input_shape, num_classes=data.num_classes,
                            **cfg.model_args)

        def train(m: Any) -> dict[str, float]:
            result = fit(m, data.subset("train", np.arange(len(data.y_train))), self.task,
                         dataclasses.replace(cfg.train, seed=seed), desc="classifier")
            return {"train_time_s": result.seconds}

        key = spec_key(spec)
        model, meta, hit = self.cache.get_or_build(key, model, train, spec=spec)
        self.say(f"[seed {seed}] classifier: {'loaded from cache' if hit else 'trained'} "
                 f"({meta['train_time_s']:.1f}s, cache key {key})")
        return Stage("classifier", model.to(self.device).eval(), meta, hit, key)

    def graph_samples(self, seed: int) -> tuple[np.ndarray, str]:
        """A seeded slice of the training split (indices, hash): the GCN's samples (§3, never the test split)."""
        n = len(self.data.y_train)
        index = np.random.default_rng(seed).permutation(n)[:min(self.cfg.graph_samples, n)]
        return index, content_hash({"data": self.data.hash, "split": "train", "indices": index.tolist()})[:16]

    def representatives(self, seed: int) -> tuple[np.ndarray, str]:
        """n_representatives seeded training samples per class (§6.1): (indices, hash)."""
        import torch

        from ..methods.mimu import representatives

        chosen = representatives(torch.from_numpy(self.data.y_train), self.plan.num_classes,
                                 self.plan.mimu.n_representatives, seed=seed)
        index = torch.cat(chosen).numpy()
        return index, content_hash({"data": self.data.hash, "split": "train", "indices": index.tolist()})[:16]

    def gcn(self, seed: int, clf: Stage, top_k: int, graph: tuple[np.ndarray, str]) -> tuple[Any, Stage]:
        """The GCN of one K (cached: its state dict, the loss of each step, the training time)."""
        import torch

        from ..cache import spec_key
        from ..methods._mimu_graph import MaskGCN
        from ..methods.mimu import load_samples, train_gcn

        options = {**self.plan.mimu.gcn_options(), "seed": seed}
        spec = versioned({"kind": "mimu_gcn", "classifier": clf.key, "layer": self.plan.layer, "top_k": top_k,
                          "options": options, "graph_samples": graph[1]})
        key = spec_key(spec)

        def build() -> dict[str, Any]:
            x, y = load_samples(self.data.subset("train", graph[0]))
            start = time.perf_counter()
            trained, losses = train_gcn(clf.model, self.plan.layer, x, y, top_k=top_k, **options)
            return {**{f"gcn.{k}": v for k, v in trained.state_dict().items()},
                    "losses": torch.tensor(losses, dtype=torch.float64),
                    "seconds": torch.tensor(time.perf_counter() - start, dtype=torch.float64)}

        tensors, meta, hit = self.cache.get_or_build_tensors(key, build, spec=spec)
        gcn = MaskGCN(hidden=options["hidden"], rounds=options["rounds"], activation=options["activation"])
        gcn.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("gcn.")})
        weight = clf.model.get_submodule(self.plan.layer).weight
        gcn.to(device=weight.device, dtype=weight.dtype).eval()
        seconds = float(tensors["seconds"])
        losses = tensors["losses"].tolist()
        self.say(f"[seed {seed}] GCN K={top_k}: {'loaded from cache' if hit else 'trained'} ({seconds:.1f}s, "
                 f"{len(losses)} steps, loss {losses[0] if losses else float('nan'):.4g} -> "
                 f"{losses[-1] if losses else float('nan'):.4g}, cache key {key})")
        return gcn, Stage(f"gcn K={top_k}", None, {**meta, "seconds": seconds, "losses": losses}, hit, key)

    def class_logits(self, seed: int, clf: Stage, gcn: Any, gcn_stage: Stage,
                     reps: tuple[np.ndarray, str]) -> tuple[Any, Stage]:
        """z̄ [C, N] of one K (cached)."""
        from ..cache import spec_key
        from ..methods.mimu import class_logits, load_samples

        mimu = self.plan.mimu
        spec = versioned({"kind": "mimu_class_logits", "gcn": gcn_stage.key, "representatives": reps[1],
                          "n_representatives": mimu.n_representatives})
        key = spec_key(spec)

        def build() -> dict[str, Any]:
            x, y = load_samples(self.data.subset("train", reps[0]))
            return {"class_logits": class_logits(gcn, clf.model, self.plan.layer, x, y,
                                                 n_representatives=mimu.n_representatives, seed=None,
                                                 batch_size=mimu.batch_size)}

        tensors, meta, hit = self.cache.get_or_build_tensors(key, build, spec=spec)
        return tensors["class_logits"].double(), Stage("class logits", None, meta, hit, key)

    def sft(self, seed: int, clf: Stage, forget_class: int) -> Stage:
        """SFT randomisation of the classifier for one forget class: trained once, not per κ (M7)."""
        split = self.plan.splits[seed, forget_class]
        method = dataclasses.replace(self.plan.baselines["sft_randomize"], seed=seed)
        spec = {"kind": "unlearned", "base": clf.key, "method": "sft_randomize", "params": to_dict(method),
                "split": split.hash}
        model, meta, hit, key = unlearn_cached(self.cache, spec, clf.model, method,
                                               self.data.unlearn_data(split), self.task)
        self.say(f"[seed {seed}] sft_randomize (class {forget_class}): {'loaded from cache' if hit else 'done'} "
                 f"({meta['unlearn_time_s']:.2f}s, cache key {key})")
        return Stage("sft_randomize", model, meta, hit, key, method)

    def evaluate(self, model: Any, forget_class: int) -> dict[str, dict[str, float]]:
        from ..metrics.evaluate import predict

        logits, labels = predict(model, self.test, self.task, self.cfg.eval_batch_size)
        return set_metrics(logits, labels, forget_class)

    def masked(self, clf: Stage, keep: Any) -> Any:
        """A copy of the classifier with W ← W ⊙ keep."""
        from ..methods.mimu import apply_mask

        return apply_mask(copy.deepcopy(clf.model), self.plan.layer, keep)


# --------------------------------------------------------------------------------------------- outputs


def setting_of(cfg: MimuConfig) -> dict[str, Any]:
    """What defines a run's experiments apart from the seeds, forget classes, K and κ: rows of one setting and one
    (class, K, κ) are repetitions over seeds."""
    setting = {k: v for k, v in to_dict(cfg).items()
               if k in ("dataset", "model", "model_args", "graph_samples", "baselines", "method")}
    setting["train"] = {k: v for k, v in to_dict(cfg.train).items() if k != "seed"}
    return setting


def experiment_id(cfg: MimuConfig, forget_class: int, top_k: int, kappa: int | None, seed: int) -> str:
    """<model>-<dataset>-class<f>-top<K>-kappa<κ>-seed<s> (κ "setdiff" for strategy=set_difference)."""
    return (f"{cfg.model}-{cfg.dataset}-class{forget_class}-top{top_k}-"
            f"kappa{'setdiff' if kappa is None else kappa}-seed{seed}")


def row_metrics(ev: dict[str, dict[str, float]]) -> dict[str, float]:
    """set_metrics -> the row's flat keys: forget_/retain_ + loss, score, prob."""
    return {f"{part}_{'prob' if k == 'probability' else k}": v for part in SETS for k, v in ev[part].items()}


@dataclass
class _Output:
    """Where a run's results go: rows of results.jsonl and one §8 JSON per experiment under json/."""

    cfg: MimuConfig
    the_plan: Plan
    common: dict[str, Any]  # run id, versions, config, ... of every row
    provenance: dict[str, Any]
    result: RunResult
    setting: dict[str, Any] = field(init=False)
    setting_hash: str = field(init=False)

    def __post_init__(self) -> None:
        self.setting = setting_of(self.cfg)
        self.setting_hash = content_hash(self.setting)[:8]

    def row(self, base: dict[str, Any], method: str, label: str, params: dict[str, Any], metrics: dict[str, Any],
            times: dict[str, float], stage: Stage, *, top_k: int | None = None, kappa: int | None = None) -> None:
        """One row per evaluated model: the original and SFT per (seed, class), the pure class mask per K, MIMU and
        the random mask per (K, κ). `variant` hashes everything but the seed, so rows of one label and variant are
        repetitions over seeds."""
        params = {"forget_class": base["forget_class"], "top_k": top_k, "kappa": kappa, **params}
        row = {**self.common, **base, "created": now(), "method": method, "label": label, "params": params,
               "variant": content_hash({**self.setting, "params": {k: v for k, v in params.items()
                                                                   if k != "seed"}})[:8],
               "mimu": {"setting": self.setting_hash, "dataset": self.cfg.dataset, "forget_class": base["forget_class"],
                        "top_k": top_k, "kappa": kappa, "strategy": self.the_plan.mimu.strategy},
               "metrics": metrics, "times": times, "cached": stage.hit, "cache_key": stage.key}
        append_jsonl(Path(self.cfg.output_dir) / "results.jsonl", row)
        self.result.rows.append(row)

    def experiment(self, seed: int, forget_class: int, top_k: int, kappa: int | None, info: dict[str, Any],
                   models: dict[str, Any], efficacy: dict[str, Any]) -> Path:
        """The §8 JSON of one (model, dataset, class, K, κ, seed), written atomically; κ = the count zeroed for
        strategy=set_difference."""
        p, (m, n) = self.the_plan, self.the_plan.shape
        record = {
            "id": experiment_id(self.cfg, forget_class, top_k, kappa, seed), "model": self.cfg.model,
            "dataset": self.cfg.dataset, "num_classes": p.num_classes, "forget_class": forget_class, "seed": seed,
            "masked_layer": p.layer, "num_graph_vertices": m * n, "num_graph_edges": m * n * (m + n - 2),
            "top_k_value": top_k, "kappa": info["kappa_used"] if kappa is None else kappa,
            "strategy": p.mimu.strategy, "num_forget_specific": info["num_forget_specific"],
            "unlearning_metrics": json_section(models, "forget"),
            "performance_degradation_metrics": json_section(models, "retain"),
            "mask_efficacy_metrics": efficacy, "provenance": self.provenance}
        return atomic_write_json(Path(self.cfg.output_dir) / "json" / f"{record['id']}.json", record)


# --------------------------------------------------------------------------------------------- run


def _forget_class(runner: _Runner, out: _Output, tracker: Tracker, seed: int, clf: Stage, f: int,
                  masks: dict[int, tuple[Any, Stage]]) -> None:
    """Every model of one (seed, forget class): original, SFT, and per K the pure class mask and per κ MIMU and the
    random mask; rows, JSONs, tracker."""
    from ..methods._mimu_masks import random_keep_mask
    from ..methods.mimu import forget_mask, pure_class_mask

    p, say = runner.plan, runner.say
    mimu, big_n = p.mimu, p.num_weights
    base = {"forget_class": f, "seed": seed, "split_hash": p.splits[seed, f].hash,
            "seeds": {"train": seed, "unlearn": seed, "eval": 0}, "classifier_key": clf.key}
    before = runner.evaluate(clf.model, f)
    out.row(base, "original", f"original (class {f})", to_dict(dataclasses.replace(runner.cfg.train, seed=seed)),
            row_metrics(before), {"train_s": clf.meta["train_time_s"]}, clf)
    sft_ev = None
    if "sft_randomize" in p.baselines:
        sft = runner.sft(seed, clf, f)
        out.result.cache_hits[f"{seed}/sft_randomize class {f}"] = sft.hit
        sft_ev = runner.evaluate(sft.model, f)
        out.row(base, "sft_randomize", f"sft_randomize (class {f})", to_dict(sft.method), row_metrics(sft_ev),
                {"unlearn_s": sft.meta["unlearn_time_s"]}, sft)
    mimu_params = {k: v for k, v in to_dict(mimu).items() if k not in OWNED["mimu"]}
    for top_k, (z, gcn_stage) in masks.items():
        pure = runner.evaluate(runner.masked(clf, pure_class_mask(z, f, top_k)), f)
        out.row(base, "pure_class_mask", f"pure_class_mask (class {f}, K {top_k})", mimu_params,
                {**row_metrics(pure), "kappa_used": big_n - top_k}, {}, clf, top_k=top_k)
        # mask efficacy (§6.6) on the forget set: "after" keeps only M_f; "random" zeroes as many (N − K) at random
        random_pure = runner.evaluate(runner.masked(clf, random_keep_mask(big_n, big_n - top_k, seed)), f)
        efficacy = json_section({"before": before, "after": pure, "random": random_pure, "sft": sft_ev}, "forget")
        beyond = []
        for kappa in p.kappas or [None]:
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:  # κ > #forget-specific: said once per K below
                warnings.simplefilter("always")
                keep, info = forget_mask(z, f, top_k=top_k, kappa=kappa, temperature=mimu.temperature or 0.1,
                                         strategy=mimu.strategy, cap_to_forget_specific=mimu.cap_to_forget_specific)
            after_model = runner.masked(clf, keep)
            mask_s = time.perf_counter() - start
            beyond += [kappa] if caught else []
            used = info["kappa_used"]
            shown = used if kappa is None else kappa
            after = runner.evaluate(after_model, f)
            out.row(base, "mimu", f"mimu (class {f}, K {top_k}, κ {shown})", mimu_params,
                    {**row_metrics(after), "num_forget_specific": info["num_forget_specific"], "kappa_used": used},
                    {"gcn_s": gcn_stage.meta["seconds"], "mask_s": mask_s}, gcn_stage, top_k=top_k, kappa=shown)
            random_ev = None
            if "random_mask" in p.baselines:  # the same budget: the number of weights MIMU zeroed
                rand = dataclasses.replace(p.baselines["random_mask"], kappa=used, seed=seed)
                start = time.perf_counter()
                random_model = rand.unlearn(copy.deepcopy(clf.model), None, runner.task)
                rand_s = time.perf_counter() - start
                random_ev = runner.evaluate(random_model, f)
                out.row(base, "random_mask", f"random_mask (class {f}, κ {shown})", to_dict(rand),
                        {**row_metrics(random_ev), "kappa_used": int((~rand.keep_mask_).sum())}, {"mask_s": rand_s},
                        clf, top_k=top_k, kappa=shown)
            models = {"before": before, "after": after, "random": random_ev, "sft": sft_ev}
            out.experiment(seed, f, top_k, kappa, info, models, efficacy)
            tracker.log({f"seed{seed}/class{f}/top{top_k}/{who}/{part}_{k}": v
                         for who, ev in (("mimu", after), ("random_mask", random_ev), ("sft_randomize", sft_ev),
                                         ("original", before), ("pure_class_mask", pure)) if ev is not None
                         for part in SETS for k, v in ev[part].items()}, step=shown)
            scores = [f"{who} {ev['forget']['score']:.1f}/{ev['retain']['score']:.1f}"
                      for who, ev in (("mimu", after), ("random", random_ev), ("sft", sft_ev), ("original", before))
                      if ev is not None]
            say(f"[seed {seed}] class {f} K={top_k} κ={shown}: forget/retain score " + ", ".join(scores))
        if beyond:
            say(f"[seed {seed}] class {f} K={top_k}: κ in {beyond} exceeds the {info['num_forget_specific']} "
                "forget-specific weights (s > 0); the extra ones are ranked by s_soft alone")


def run_mimu(cfg: MimuConfig, *, cache: Any = None, say: Callable[[str], None] = print) -> RunResult:
    """Run the MIMU benchmark described by `cfg` (module docstring); returns the rows and the report path."""
    from .._env import git_sha
    from ..cache import ModelCache
    from ..report import build_report

    the_plan = plan(cfg)
    warm_up_imports()
    cache = cache or ModelCache()
    out_dir = Path(cfg.output_dir)
    config = to_dict(cfg)
    runner = _Runner(the_plan, cache, say)
    graphs = {seed: runner.graph_samples(seed) for seed in cfg.seeds}
    reps = {seed: runner.representatives(seed) for seed in cfg.seeds}
    run_id, versions = start_run(
        out_dir, config, cache, data_hash=the_plan.data.hash,
        graph_samples={seed: {"split": "train", "count": len(g[0]), "hash": g[1]} for seed, g in graphs.items()},
        representatives={seed: {"split": "train", "count": len(r[0]), "hash": r[1]} for seed, r in reps.items()})
    common = {"run_id": run_id, "benchmark": cfg.benchmark, "scenario": cfg.dataset, "model": cfg.model,
              "data_hash": the_plan.data.hash, "versions": versions, "config": config}
    provenance = {"config": config, "versions": versions, "data_hash": the_plan.data.hash,
                  "git_sha": git_sha(Path(__file__).parent)}  # the code that ran, wherever it runs from
    result = RunResult(out_dir)
    out = _Output(cfg, the_plan, common, provenance, result)
    tracker = Tracker(cfg.tracking, out_dir, config)
    try:
        for seed in cfg.seeds:
            clf = runner.classifier(seed)
            result.cache_hits[f"{seed}/classifier"] = clf.hit
            masks = {}
            for top_k in the_plan.top_ks:
                gcn, gcn_stage = runner.gcn(seed, clf, top_k, graphs[seed])
                z, logits_stage = runner.class_logits(seed, clf, gcn, gcn_stage, reps[seed])
                masks[top_k] = (z, gcn_stage)
                result.cache_hits[f"{seed}/gcn K={top_k}"] = gcn_stage.hit
                result.cache_hits[f"{seed}/class_logits K={top_k}"] = logits_stage.hit
            for f in the_plan.forget_classes:
                _forget_class(runner, out, tracker, seed, clf, f, masks)
    finally:
        tracker.end()
    result.report = build_report(out_dir)
    return result


# --------------------------------------------------------------------------------------------- registration


COLUMNS = ("forget_score", "retain_score", "forget_loss", "retain_loss", "forget_prob", "num_forget_specific")


def _figures(rows: list[dict], run_dir: Path, stem: str) -> list[Path]:
    from ..report.mimu import plot_kappa_curves

    return plot_kappa_curves(rows, run_dir, stem)


def _sections(rows: list[dict], run_dir: Path, stem: str) -> str:
    from ..report.mimu import comparison_tables

    return comparison_tables(rows, run_dir)


@BENCHMARKS.register("mimu", config=MimuConfig, validate=plan, columns=COLUMNS, figures=_figures,
                     sections=_sections, paper="MIMU, zxjrsch/machine-unlearning (no paper; shared/specs/mimu.md)")
def mimu_benchmark(cfg: MimuConfig, **kwargs: Any) -> RunResult:
    """MIMU (one GCN per K, per-class masks, κ weights zeroed) against random masking, SFT randomisation and the
    original, per forget class and κ on the test split; per-experiment JSONs, κ curves, the comparison table."""
    return run_mimu(cfg, **kwargs)


__all__ = ["MimuConfig", "MimuRecipe", "Tracking", "plan", "read_experiments", "run_mimu", "set_metrics"]
