"""RUM benchmark: memorisation-aware forget-set refinement and meta-unlearning (Zhao et al., "What makes unlearning
hard and what to do about it", NeurIPS 2024, arXiv 2406.01257; specs/vision.md §5).

    validate everything (config, score, groups, methods, plans)       # errors here, before any training
    for seed in seeds:
        original (+ what the proxies need, recorded while it trains) = cache(train on D)
        score  = cache(SCORES[score](...))                            # one value per training example, higher = more
                                                                      # memorised
        groups = S_1..S_K, low -> high:  forget=mix    the reference's bottom / closest-to-mid / top n_per_group
                                         forget=random a random S refined into K equal-count groups by the score
                                         forget=es     chunks of the distance-to-mean ordering of the original's
                                                       penultimate features (the ES study)
        study=refine:   S = S_1 ∪ ... ∪ S_K, gold = cache(retrain on D \\ S)
            for each method m:  vanilla  m on S
                                shuffle  m on K random equal parts of S, in turn
                                rum      m on S_1, ..., S_K in turn (RUM^F)
            for each plan p:    step k of p on S_k (`none` leaves the model as it is): full RUM
            the retain set of every step is D \\ S (cumulative_retain: D \\ (S_1 ∪ ... ∪ S_k), the reference's)
        study=separate: each S_k is its own forget set with its own gold retrain; each method once on it (the paper's
                        "ToW falls as memorisation / ES rises" study)
        evaluate every model against its gold: ToW, ToW-MIA, accuracies and the SVC MIA on each group and on S
    report.md: the per-group table with 95% t-intervals over seeds, and ToW vs. group for each method

Every model (original, score, gold, each step of each variant) is a content-addressed cache entry, so a restarted run
redoes nothing it has finished.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._io import append_jsonl, content_hash
from .._registry import BENCHMARKS, DATASETS, METHODS, MODELS, SCORES
from ..config import ConfigError, param, to_dict
from ._stages import RunResult, Stage, now, start_run, unlearn_cached
from .classification import TrainRecipe, check_model, load_dataset, original_spec, train_set, warm_up_imports

GROUP_NAMES = {1: ("all",), 2: ("low", "high"), 3: ("low", "mid", "high")}
EVAL_METRICS = ("accuracy", "mia_svc", "tow")
VARIANTS = ("vanilla", "shuffle", "rum")


def group_names(k: int) -> tuple[str, ...]:
    """Names of K groups, lowest score first: low/mid/high for three, g1..gK otherwise."""
    return GROUP_NAMES.get(k) or tuple(f"g{i + 1}" for i in range(k))


@dataclass
class RumConfig:
    """A RUM run. Every key can be overridden as `key=value` on the command line."""

    benchmark: str = param("rum", help="benchmark name (the registered pipeline)")
    dataset: str = param("digits", help="registered data set")
    dataset_args: dict[str, Any] = param({}, help="keyword arguments of the data set loader, e.g. root, download")
    model: str = param("mlp", help="registered model builder")
    model_args: dict[str, Any] = param({}, help="extra keyword arguments of the model builder")
    train_augment: bool = param(False, help="augment the original training and the gold retrain (crop + flip)")
    train: TrainRecipe = field(default_factory=TrainRecipe)
    seeds: list[int] = param([0, 1, 2], help="one full run per seed; >1 gives 95% t-intervals")
    score: str = param("confidence", help="registered memorisation score (`unlearnkit list scores`): exact, "
                                          "confidence, max_conf, neg_entropy, binary_acc, holdout, curvature, file")
    score_args: dict[str, dict[str, Any]] = param({}, help="hyperparameters per score: score_args.NAME.KEY=VALUE, "
                                                           "e.g. score_args.exact.k=64")
    forget: Literal["mix", "random", "es"] = param("mix", help="forget-set construction: mix (bottom / mid / top "
                                                              "n_per_group of the score), random (a random set "
                                                              "refined into `groups` by the score), es (ES chunks, "
                                                              "ordered by their ES)")
    n_per_group: int = param(50, ge=1, help="mix: examples per group")
    forget_size: float = param(150, gt=0, help="random: a count (>= 1) or a fraction (< 1) of the train set")
    groups: int = param(3, ge=1, help="random: the number K of refined subsets (equal-count groups of the score)")
    es_chunks: int = param(15, ge=1, help="es: the number of distance chunks")
    es_groups: list[int] = param([3, 12, 14], help="es: the chunks (0-based) that form the groups, low -> high")
    study: Literal["refine", "separate"] = param("refine", help="refine: the groups form one forget set (vanilla / "
                                                                "shuffle / RUM); separate: each group is its own "
                                                                "forget set")
    methods: list[str] = param(["neggrad_plus", "finetune", "salun"], help="methods run as vanilla / shuffle / rum")
    variants: list[Literal["vanilla", "shuffle", "rum"]] = param(list(VARIANTS), help="study=refine: which "
                                                                                      "variants of each method")
    method: dict[str, dict[str, Any]] = param({}, help="hyperparameter overrides per method: method.NAME.KEY=VALUE")
    plans: dict[str, list[Any] | None] = param({}, help="named meta-unlearning plans, one step per group (low -> "
                                                        "high): none, a method name, or {method: {overrides}}; "
                                                        "plans.NAME=null drops a preset's plan")
    cumulative_retain: bool = param(False, help="the reference's retain sets: step k retains D \\ (S_1 ∪ ... ∪ S_k) "
                                                "instead of D \\ S")
    feature_layer: str = param("features", help="submodule whose output is the penultimate representation (ES)")
    eval_batch_size: int = param(512, gt=0, help="batch size of the evaluation forward passes")
    output_dir: str = param("runs/rum", help="where results.jsonl and report.md go")

    def __post_init__(self) -> None:
        self.plans = {name: steps for name, steps in self.plans.items() if steps is not None}
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed, e.g. seeds=[0]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds} repeats a seed")
        if not self.methods and not self.plans:
            raise ValueError("nothing to run: name methods (methods=[neggrad_plus]) or plans")
        if self.train.seed != 0:
            raise ValueError(f"train.seed={self.train.seed}: each run's training seed comes from seeds=[...]")
        if self.study == "refine" and self.methods and not self.variants:
            raise ValueError(f"variants is empty: choose from {', '.join(VARIANTS)}")

    @property
    def n_groups(self) -> int:
        return {"mix": 3, "random": self.groups, "es": len(self.es_groups)}[self.forget]

    @property
    def setting(self) -> str:
        """The report's scenario column: how the groups are built and used."""
        return f"{self.forget}:{self.score}:{self.study}:k{self.n_groups}"


@dataclass
class Step:
    """One step of a variant: apply `method` (None: leave the model as it is) with forget set `subset` (an index into
    the variant's subsets)."""

    subset: int
    method: Any


@dataclass
class Variant:
    label: str  # e.g. "neggrad_plus/rum" or a plan's name
    base: str  # the method (or the plan's name) this variant belongs to
    kind: str  # vanilla | shuffle | rum | plan
    steps: list[Step]


@dataclass
class Plan:
    """Everything validated before any heavy work."""

    config: RumConfig
    data: Any
    score: Any  # the score instance
    variants: list[Variant]  # study=refine (their methods are per-seed copies, see `seeded`)
    groups: tuple[str, ...]


def parse_step(step: Any, where: str) -> tuple[str | None, dict[str, Any]]:
    """A plan step -> (method name or None, overrides). Steps: `none` / null, `name`, or `{name: {key: value}}`."""
    if step is None or step == "none":
        return None, {}
    if isinstance(step, str):
        name, overrides = step, {}
    elif isinstance(step, dict) and len(step) == 1:
        name, overrides = next(iter(step.items()))
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: the hyperparameters of '{name}' must be a mapping; got {overrides!r}")
    else:
        raise ConfigError(f"{where}: a step is none, a method name or {{method: {{key: value}}}}; got {step!r}")
    if name not in METHODS:
        raise ConfigError(f"{where} names unknown method '{name}'; available: {', '.join(METHODS.list())}")
    return str(name), dict(overrides)


def make_method(cfg: RumConfig, name: str, overrides: dict[str, Any], seed: int, where: str) -> Any:
    """Method defaults <- method.NAME overrides <- the step's own; `seed` is the run's."""
    try:
        return METHODS.create(name, **{"seed": seed, **cfg.method.get(name, {}), **overrides})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def build_variants(cfg: RumConfig, seed: int) -> list[Variant]:
    """The variants of a refine study, with method instances for `seed` (this also validates every step)."""
    k = cfg.n_groups
    out = []
    for name in cfg.methods:
        for kind in cfg.variants:
            m = make_method(cfg, name, {}, seed, f"method.{name}")
            steps = [Step(0, m)] if kind == "vanilla" else [Step(i, m) for i in range(k)]
            out.append(Variant(f"{name}/{kind}", name, kind, steps))
    for plan_name, steps in cfg.plans.items():
        if len(steps) != k:
            raise ConfigError(f"plans.{plan_name} has {len(steps)} steps; it needs one per group ({k}: "
                              f"{', '.join(group_names(k))}), `none` to skip a group")
        parsed = []
        for i, step in enumerate(steps):
            name, overrides = parse_step(step, f"plans.{plan_name} step {i + 1}")
            parsed.append(Step(i, None if name is None else
                               make_method(cfg, name, overrides, seed, f"plans.{plan_name} step {i + 1}")))
        out.append(Variant(plan_name, plan_name, "plan", parsed))
    return out


def plan(cfg: RumConfig) -> Plan:
    """Check every name and value before training: all errors surface here."""
    for registry, name, key in ((DATASETS, cfg.dataset, "dataset"), (MODELS, cfg.model, "model"),
                                (SCORES, cfg.score, "score")):
        if name not in registry:
            raise ConfigError(f"{key}='{name}' is not registered; available: {', '.join(registry.list())}")
    for name in cfg.score_args:  # arguments of a score not used are kept, misspelled names are not
        if name not in SCORES:
            raise ConfigError(f"score_args.{name}: '{name}' is not a registered score; available: "
                              f"{', '.join(SCORES.list())}")
    try:
        score = SCORES.create(cfg.score, **cfg.score_args.get(cfg.score, {}))
        if hasattr(score, "check"):  # e.g. the score file exists: not after hours of training
            score.check()
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"score_args for score '{cfg.score}': {err}") from None
    for name in [*cfg.methods, *cfg.method]:
        if name not in METHODS:
            raise ConfigError(f"method '{name}' is not registered; available: {', '.join(METHODS.list())}")
    if cfg.study == "separate" and cfg.plans:
        raise ConfigError("plans run on the refined groups of one forget set: they need study=refine")
    data = load_dataset(cfg.dataset, cfg.dataset_args)
    check_model(cfg, data)
    n = len(data.y_train)
    k = cfg.n_groups
    if cfg.forget == "mix" and 3 * cfg.n_per_group >= n:
        raise ConfigError(f"forget=mix: 3 groups of n_per_group={cfg.n_per_group} need fewer than the {n} training "
                          "examples (something must be retained)")
    if cfg.forget == "random":
        from ..data.splits import resolve_forget_size

        try:
            size = resolve_forget_size(cfg.forget_size, n)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if k > size:
            raise ConfigError(f"groups={k}: cannot refine a forget set of {size} examples into more subsets than it "
                              f"has examples; use groups <= {size}")
    if cfg.forget == "es":
        if not cfg.es_groups:
            raise ConfigError("forget=es needs es_groups, e.g. es_groups=[3,12,14]")
        if cfg.es_chunks > n:
            raise ConfigError(f"es_chunks={cfg.es_chunks} exceeds the {n} training examples")
        bad = [c for c in cfg.es_groups if not 0 <= c < cfg.es_chunks]
        if bad:
            raise ConfigError(f"es_groups={cfg.es_groups}: chunk(s) {bad} out of range; allowed 0..{cfg.es_chunks - 1}"
                              " (0-based)")
        if len(set(cfg.es_groups)) != len(cfg.es_groups):
            raise ConfigError(f"es_groups={cfg.es_groups} repeats a chunk")
    if cfg.study == "refine" and k == 1 and "rum" in cfg.variants:
        raise ConfigError("one group: RUM has nothing to refine; use groups >= 2")
    variants = build_variants(cfg, cfg.seeds[0])  # every method and plan step, with its hyperparameters
    return Plan(cfg, data, score, variants, group_names(k))


# --------------------------------------------------------------------------------------------- groups


def make_groups(cfg: RumConfig, data: Any, score: np.ndarray, features: np.ndarray, seed: int,
                mid_target: float | str) -> list[np.ndarray]:
    """S_1..S_K (index arrays over the training set, low -> high) for the configured construction."""
    from ..data.refine import refine, rum_mix_split
    from ..data.splits import resolve_forget_size
    from ..metrics.memorization import es_groups

    nan_policy = "omit" if np.isnan(score).any() else "raise"
    if cfg.forget == "mix":
        return list(rum_mix_split(score, cfg.n_per_group, mid_target, nan_policy=nan_policy))
    if cfg.forget == "random":
        n = len(data.y_train)
        size = resolve_forget_size(cfg.forget_size, n)
        forget = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        return refine(forget, np.nan_to_num(score, nan=-np.inf), cfg.groups)
    # Ordered by their measured ES(D \ S_k, S_k), low first: which end of the distance ordering is the entangled one
    # depends on the geometry (on digits the chunks nearest the mean are; the spec does not fix the sort direction).
    chunks = [np.sort(g) for g in es_groups(features, cfg.es_chunks, cfg.es_groups)]
    return sorted(chunks, key=lambda g: _es(features, g))


def _es(features: np.ndarray, subset: np.ndarray) -> float:
    """ES(D minus S, S) on the original's penultimate features."""
    from ..metrics.memorization import entanglement_score

    rest = np.setdiff1d(np.arange(len(features)), subset)
    return float(entanglement_score(features[rest], features[subset]))


def features_of(model: Any, data: Any, task: Any, layer: str, batch_size: int) -> np.ndarray:
    """Penultimate features z [N, d] of every training example (evaluation mode, flattened)."""
    import torch
    from torch.utils.data import DataLoader

    from ..tasks._hooks import eval_mode

    out = []
    with torch.no_grad(), eval_mode(model):
        for batch in DataLoader(data.subset("train", np.arange(len(data.y_train))), batch_size=batch_size):
            out.append(task.hidden_states(model, batch, layer).flatten(1).float())
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------- evaluation


@dataclass
class Outputs:
    """A model's logits on the whole training set and the test set."""

    train: np.ndarray
    test: np.ndarray


def outputs_of(model: Any, data: Any, task: Any, batch_size: int) -> Outputs:
    from ..metrics.evaluate import predict

    train = predict(model, data.subset("train", np.arange(len(data.y_train))), task, batch_size)[0]
    return Outputs(train, predict(model, data.subset("test", np.arange(len(data.y_test))), task, batch_size)[0])


def _evaluation(o: Outputs, data: Any, forget: np.ndarray, retain: np.ndarray) -> Any:
    from ..metrics.evaluate import Evaluation

    return Evaluation({"forget": o.train[forget], "retain": o.train[retain], "test": o.test},
                      {"forget": data.y_train[forget], "retain": data.y_train[retain], "test": data.y_test})


def reference_evaluations(ref: Outputs, data: Any, views: dict[str, np.ndarray], retain: np.ndarray) -> dict[str, Any]:
    """The retrained model's accuracy and SVC MIA per view, computed once per experiment (every model reads them)."""
    from ..metrics.evaluate import evaluate

    out = {}
    for name, forget in views.items():
        out[name] = _evaluation(ref, data, forget, retain)
        evaluate(out[name], EVAL_METRICS[:2])
    return out


def group_metrics(out: Outputs, refs: dict[str, Any], data: Any, views: dict[str, np.ndarray],
                  retain: np.ndarray) -> dict[str, float]:
    """The registered accuracy / SVC-MIA / ToW metrics for each forget view (name -> training indices) with the
    retain set `retain`, against `refs` (reference_evaluations): keys `<metric>_<view>`, unsuffixed for the view named
    "all"."""
    from ..metrics.evaluate import evaluate

    values: dict[str, float] = {}
    for name, forget in views.items():
        got = evaluate(_evaluation(out, data, forget, retain), EVAL_METRICS, ref=refs[name])
        suffix = "" if name == "all" else f"_{name}"
        keys = ("forget_acc", "mia_svc", "tow", "tow_mia", "disagreement")
        values.update({f"{k}{suffix}": got[k] for k in keys})
        values.update({k: got[k] for k in ("retain_acc", "test_acc")})
    return values


# --------------------------------------------------------------------------------------------- run



class _Runner:
    """Cached training, scoring and unlearning for one RUM run."""

    def __init__(self, the_plan: Plan, cache: Any, say: Callable[[str], None]) -> None:
        from ..tasks import get_task

        self.plan, self.cache, self.say = the_plan, cache, say
        self.cfg, self.data = the_plan.config, the_plan.data
        self.task = get_task("classifier")

    def fresh(self, seed: int) -> Any:
        from ..models import build_model

        return build_model(self.cfg.model, seed=seed, input_shape=self.data.input_shape,
                           num_classes=self.data.num_classes, **self.cfg.model_args)

    def original(self, seed: int) -> tuple[Stage, Any]:
        from ..metrics.scores import original_with_record

        cfg = self.cfg
        options = self.plan.score.record_options()
        dataset = train_set(self.data, range(len(self.data.y_train)), cfg.train_augment, seed)
        plain = self.data.subset("train", np.arange(len(self.data.y_train))) if cfg.train_augment else None
        model, meta, hit, key, record = original_with_record(
            self.cache, original_spec(cfg, self.data, seed), self.fresh(seed), dataset, self.task,
            replace(cfg.train, seed=seed), options, say=self.say, curvature_data=plain)
        self.say(f"[seed {seed}] original: {'loaded from cache' if hit else 'trained'} ({meta['train_time_s']:.1f}s, "
                 f"cache key {key})")
        return Stage("original", model.eval(), {**meta, "seconds": meta["train_time_s"]}, hit, key), record

    def score(self, seed: int, original: Stage, record: Any) -> np.ndarray:
        from ..metrics.scores import ScoreContext, compute_score

        cfg = self.cfg
        ctx = ScoreContext(data=self.data, dataset=cfg.dataset, dataset_args=cfg.dataset_args, model=cfg.model,
                           model_args=cfg.model_args, recipe=replace(cfg.train, seed=seed), seed=seed,
                           cache=self.cache, original=original.model, original_key=original.key, record=record,
                           eval_batch_size=cfg.eval_batch_size, say=self.say)
        return compute_score(self.plan.score, ctx)

    def split(self, seed: int, forget: np.ndarray, retain: np.ndarray) -> Any:
        from ..data.splits import Split

        return Split("random", seed, self.data.hash, np.sort(forget).astype(np.int64), np.sort(retain).astype(np.int64),
                     np.arange(len(self.data.y_test), dtype=np.int64))

    def gold(self, seed: int, forget: np.ndarray, base: Stage) -> Stage:
        """Retrain from scratch on D \\ forget with the original recipe (cached)."""
        cfg = self.cfg
        split = self.split(seed, forget, np.setdiff1d(np.arange(len(self.data.y_train)), forget))
        method = METHODS.create("retrain", **{**to_dict(cfg.train), "seed": seed}, init_seed=seed,
                                reinitialize=False)
        udata = self.data.unlearn_data(split)
        if cfg.train_augment:
            udata = replace(udata, retain=train_set(self.data, split.retain, True, seed))
        spec = {"kind": "unlearned", "base": base.key, "method": "retrain", "params": to_dict(method),
                "split": split.hash, **({"augment": True} if cfg.train_augment else {})}
        model, meta, hit, key = unlearn_cached(self.cache, spec, self.fresh(seed), method, udata, self.task)
        self.say(f"[seed {seed}] retrain on {len(split.retain)} examples: "
                 f"{'loaded from cache' if hit else 'done'} ({meta['unlearn_time_s']:.1f}s)")
        return Stage("retrain", model, {**meta, "seconds": meta["unlearn_time_s"]}, hit, key)

    def run_variant(self, seed: int, variant: Variant, subsets: list[np.ndarray], base: Stage) -> Stage:
        """The variant's steps in order, each cached on the previous one (a restarted run resumes mid-variant)."""
        from ..data.refine import retain_sets

        n = len(self.data.y_train)
        retains = retain_sets(n, subsets, cumulative=self.cfg.cumulative_retain)
        current, seconds, hits = base, 0.0, []
        for step in variant.steps:
            if step.method is None:
                continue
            forget = subsets[step.subset]
            split = self.split(seed, forget, retains[step.subset])
            spec = {"kind": "unlearned", "base": current.key, "method": step.method.registry_name,
                    "params": to_dict(step.method), "split": split.hash}
            model, meta, hit, key = unlearn_cached(self.cache, spec, current.model, step.method,
                                                   self.data.unlearn_data(split), self.task)
            current = Stage(variant.label, model, meta, hit, key)
            seconds += meta["unlearn_time_s"]
            hits.append(hit)
        self.say(f"[seed {seed}] {variant.label}: {'loaded from cache' if hits and all(hits) else 'done'} "
                 f"({seconds:.2f}s, {sum(s.method is not None for s in variant.steps)} step(s))")
        return Stage(variant.label, current.model, {"seconds": seconds}, bool(hits) and all(hits), current.key)


def run_rum(cfg: RumConfig, *, cache: Any = None, say: Callable[[str], None] = print) -> RunResult:
    """Run the RUM benchmark described by `cfg` (see the module docstring)."""
    from ..cache import ModelCache
    from ..report import build_report

    the_plan = plan(cfg)
    warm_up_imports()
    cache = cache or ModelCache()
    out_dir = Path(cfg.output_dir)
    config = to_dict(cfg)
    run_id, versions = start_run(out_dir, config, cache, score=cfg.score, groups=list(the_plan.groups))
    common = {"run_id": run_id, "benchmark": cfg.benchmark, "scenario": cfg.setting, "model": cfg.model,
              "data_hash": the_plan.data.hash, "versions": versions, "config": config}
    runner = _Runner(the_plan, cache, say)
    data, names = the_plan.data, the_plan.groups
    result = RunResult(out_dir)
    everything = np.arange(len(data.y_train))
    for seed in cfg.seeds:
        original, record = runner.original(seed)
        score = runner.score(seed, original, record)
        feats = features_of(original.model, data, runner.task, cfg.feature_layer, cfg.eval_batch_size)
        subsets = make_groups(cfg, data, score, feats, seed, the_plan.score.mid_target())
        described = describe_groups(names, subsets, score, feats)
        say(f"[seed {seed}] groups by {cfg.score} ({cfg.forget}): " + ", ".join(
            f"{g} n={d['size']} score {d['score_mean']:.3g} ES {d['es']:.3g}" for g, d in described.items()))
        base_row = {**common, "seed": seed, "groups": described, "group_order": list(names),
                    "score": {"name": cfg.score, **to_dict(the_plan.score)}}

        # One experiment per forget set: S with its groups as views (refine), or each group on its own (separate).
        rows: dict[str, dict] = {}  # label -> what its row accumulates over the experiments
        for forget, views, runs in experiments(cfg, the_plan, names, subsets, seed):
            gold = runner.gold(seed, forget, original)
            ev_gold = outputs_of(gold.model, data, runner.task, cfg.eval_batch_size)
            retain = np.setdiff1d(everything, forget)
            refs = reference_evaluations(ev_gold, data, views, retain)
            models = [("original", "original", "original", original, {}), ("retrain", "retrain", "retrain", gold, {})]
            models += [(v.label, v.base, v.kind, runner.run_variant(seed, v, parts, original), _params(v))
                       for v, parts in runs]
            for label, method, kind, m, params in models:
                ev = ev_gold if kind == "retrain" else outputs_of(m.model, data, runner.task, cfg.eval_batch_size)
                values = group_metrics(ev, refs, data, views, retain)
                if "all" not in views:  # separate: every value belongs to this group's experiment
                    (g,) = views
                    values = {k if k.endswith(f"_{g}") else f"{k}_{g}": v for k, v in values.items()}
                row = rows.setdefault(label, {"method": method, "kind": kind, "model": m, "params": params,
                                              "metrics": {}, "seconds": 0.0, "retrain_s": 0.0, "hit": True})
                row["metrics"].update(values)
                row["seconds"] += m.meta["seconds"]
                row["retrain_s"] += gold.meta["seconds"]
                row["hit"] &= m.hit
        for label, r in rows.items():
            rte = r["seconds"] / max(r["retrain_s"], 1e-12)
            times = {"train_s": original.meta["seconds"]} if r["kind"] == "original" else \
                {"unlearn_s": r["seconds"], "retrain_s": r["retrain_s"], "rte": rte}
            row = {**base_row, "variant": _variant(cfg, r["params"]), "created": now(), "method": r["method"],
                   "label": label, "rum": {"kind": r["kind"], "method": r["method"]}, "params": r["params"],
                   "seeds": {"train": seed, "unlearn": seed, "eval": 0}, "metrics": r["metrics"], "times": times,
                   "cached": r["hit"], "cache_key": r["model"].key}
            append_jsonl(out_dir / "results.jsonl", row)
            result.rows.append(row)
            result.cache_hits[f"{seed}/{label}"] = r["hit"]
    result.report = build_report(out_dir)
    return result


def experiments(cfg: RumConfig, the_plan: Plan, names: tuple[str, ...], subsets: list[np.ndarray],
                seed: int) -> list[tuple[np.ndarray, dict[str, np.ndarray], list[tuple[Variant, list[np.ndarray]]]]]:
    """(forget set, evaluation views, [(variant, the forget sets of its steps)]) of each experiment of a seed."""
    from ..data.refine import shuffle_split

    if cfg.study == "separate":
        return [(s, {g: s}, [(Variant(f"{m}/vanilla", m, "vanilla", [Step(0, make_method(cfg, m, {}, seed, m))]), [s])
                             for m in cfg.methods]) for g, s in zip(names, subsets, strict=True)]
    forget = np.concatenate(subsets)
    parts = {"vanilla": [forget], "shuffle": shuffle_split(forget, len(subsets), seed), "rum": subsets,
             "plan": subsets}
    variants = the_plan.variants if seed == cfg.seeds[0] else build_variants(cfg, seed)
    return [(forget, {**dict(zip(names, subsets, strict=True)), "all": forget},
             [(v, parts[v.kind]) for v in variants])]


def _variant(cfg: RumConfig, params: dict) -> str:
    """A short hash of what defines a row's experiment except the seeds (rows of one label and variant are
    repetitions over seeds, averaged in the report): the setting, the data, model, recipe, score and the steps."""
    steps = [s if s is None else {k: v for k, v in s.items() if k != "seed"} for s in params.get("steps", [])]
    setting = {k: v for k, v in to_dict(cfg).items() if k in ("dataset", "model", "model_args", "train_augment",
                                                               "score", "score_args", "forget", "n_per_group",
                                                               "forget_size", "groups", "es_chunks", "es_groups",
                                                               "study", "cumulative_retain")}
    setting["train"] = {k: v for k, v in to_dict(cfg.train).items() if k != "seed"}
    return content_hash({**setting, "params": {**params, "steps": steps}})[:8]


def _params(v: Variant) -> dict:
    return {"kind": v.kind, "steps": [None if s.method is None else
                                      {"method": s.method.registry_name, **to_dict(s.method)} for s in v.steps]}


def describe_groups(names: tuple[str, ...], subsets: list[np.ndarray], score: np.ndarray,
                    features: np.ndarray) -> dict[str, dict[str, float]]:
    """Per group: size, mean score and ES(D \\ S_k, S_k) on the original's penultimate features."""
    return {g: {"size": int(len(s)), "score_mean": float(np.nanmean(score[s])), "es": _es(features, s)}
            for g, s in zip(names, subsets, strict=True)}


def report_columns(setting: str) -> tuple[str, ...]:
    """ToW and ToW-MIA per group (and on the whole forget set for study=refine), the accuracies, cost."""
    try:
        _forget, _score, study, k = setting.split(":")
        names = group_names(int(k.lstrip("k")))
    except ValueError:
        study, names = "refine", group_names(3)
    overall = ("tow", "tow_mia", "forget_acc") if study == "refine" else ()
    tows = tuple(f"tow_{g}" for g in names)
    mias = tuple(f"tow_mia_{g}" for g in names)
    accs = ("retain_acc", "test_acc") if study == "refine" else ()
    return (*tows, *overall[:1], *mias, *overall[1:], *accs, "unlearn_s", "rte")


def _figures(rows: list[dict], run_dir: Path, stem: str) -> list[Path]:
    from ..report.curves import plot_rum_groups

    return plot_rum_groups(rows, run_dir, stem)


@BENCHMARKS.register("rum", config=RumConfig, validate=plan, columns=report_columns, figures=_figures,
                     paper="RUM, Zhao et al. NeurIPS 2024 (arXiv 2406.01257)")
def rum_benchmark(cfg: RumConfig, **kwargs: Any) -> RunResult:
    """Memorisation / entanglement-aware refinement of the forget set and meta-unlearning (vanilla, shuffle, RUM^F,
    full-RUM plans), evaluated per group with ToW and ToW-MIA against retraining."""
    return run_rum(cfg, **kwargs)


__all__ = ["RumConfig", "group_names", "make_groups", "plan", "run_rum"]
