"""Classifier unlearning benchmark (the embedded `digits` benchmark; the vision suite reuses it).

    validate everything (config, methods, metrics, splits)       # errors here, before any training or any file
    for seed in seeds:
        split    = make_split(scenario, seed)
        original = cache(train(fresh model(seed), D_train))         # shared by every scenario and method
        gold     = cache(retrain(original recipe, seed) on D_r)     # the reference of every metric
        for method in methods: model = cache(method.unlearn(copy(original), D_f, D_r))
        evaluate original, gold and every method -> one row each in results.jsonl
    report.md + figure from the rows

Every model is a content-addressed cache entry (config + split hash + seed), so a second run, or a run restarted
after a crash, retrains nothing it has already finished.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .._io import append_jsonl, content_hash
from .._registry import BENCHMARKS, DATASETS, METHODS, METRICS, MODELS
from ..config import ConfigError, param, to_dict
from ..methods._loop import LoopParams
from ..metrics.suite import CLASSIFIER_METRICS
from ._stages import RunResult, now, start_run, unlearn_cached, versioned

DEFAULT_METHODS = ("retrain", "finetune", "grad_ascent", "neggrad_plus", "grad_diff", "npo", "simnpo", "imu",
                   "l1_sparse", "salun", "random_label", "amnesiac", "bad_teacher", "scrub", "influence", "fisher",
                   "unsir", "ssd", "lfssd", "jit")


@dataclass
class TrainRecipe(LoopParams):
    """How the original model is trained; the gold-standard retrain uses the same recipe on D_r."""

    lr: float = param(0.1, gt=0, help="learning rate")
    epochs: int = param(30, ge=1, help="training epochs")
    batch_size: int = param(64, gt=0, help="batch size")
    schedule: Literal["constant", "cosine", "linear"] = param("cosine", help="learning-rate schedule")


@dataclass
class ClassificationConfig:
    """A classifier unlearning benchmark run. Every key can be overridden as `key=value` on the command line."""

    benchmark: str = param("digits", help="benchmark name (the registered pipeline)")
    dataset: str = param("digits", help="registered data set")
    dataset_args: dict[str, Any] = param({}, help="keyword arguments of the data set loader, e.g. root, download")
    model: str = param("mlp", help="registered model builder (mlp, cnn, resnet18, vgg11, vit_b_16, ...)")
    model_args: dict[str, Any] = param({}, help="extra keyword arguments of the model builder")
    scenario: Literal["random", "class", "subclass"] = param("random", help="forgetting scenario")
    forget_size: float = param(0.1, gt=0, help="random scenario: a count (>= 1) or a fraction (< 1) of the train set")
    forget_classes: list[int | str] = param([0], help="class scenario: the classes to forget (indices or names)")
    forget_subclasses: list[int | str] = param([], help="subclass scenario: the fine classes to forget (indices or "
                                                        "names, e.g. [rocket] on cifar20)")
    train_augment: bool = param(False, help="augment the original training and the gold retrain (crop + flip); "
                                            "unlearning never augments")
    seeds: list[int] = param([0], help="one full run per seed (split, training and unlearning); >1 gives 95% CIs")
    train: TrainRecipe = field(default_factory=TrainRecipe)
    methods: list[str] = param(list(DEFAULT_METHODS), help="registered methods to run")
    method: dict[str, dict[str, Any]] = param({}, help="hyperparameter overrides per method: method.NAME.KEY=VALUE")
    metrics: list[str] = param(list(CLASSIFIER_METRICS), help="registered metrics to compute")
    eval_batch_size: int = param(512, gt=0, help="batch size of the evaluation forward passes")
    output_dir: str = param("runs/digits", help="where results.jsonl and report.md go")
    cache_unlearned: bool = param(True, help="cache unlearned models too, so a restarted run skips finished methods")

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed, e.g. seeds=[0]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds} repeats a seed")
        if not self.methods:
            raise ValueError("methods is empty: name at least one method, e.g. methods=[finetune]")
        if self.train.seed != 0:
            raise ValueError(f"train.seed={self.train.seed}: each run's training seed comes from seeds=[...]; "
                             "set seeds instead")


@dataclass
class Plan:
    """Everything validated and resolved before any heavy work."""

    config: ClassificationConfig
    data: Any
    splits: dict[int, Any]
    methods: dict[int, list[tuple[str, Any]]]  # seed -> [(label, method instance)]
    gold: dict[int, Any]  # seed -> the gold-standard Retrain instance


SEED_KEYS = ("seed", "init_seed")


def variant(cfg: ClassificationConfig, params: dict) -> str:
    """A short hash of everything that defines a row's experiment except the seeds: rows of the same label and
    variant are repetitions over seeds; rows of another variant are never averaged with them."""
    keys = ("benchmark", "dataset", "model", "model_args", "scenario",
            {"random": "forget_size", "class": "forget_classes", "subclass": "forget_subclasses"}[cfg.scenario])
    setting = {k: v for k, v in to_dict(cfg).items() if k in keys}
    setting["train"] = {k: v for k, v in to_dict(cfg.train).items() if k not in SEED_KEYS}
    if cfg.train_augment:  # only when on, so rows of runs from before the option keep their variant
        setting["train_augment"] = True
    return content_hash({**setting, "params": {k: v for k, v in params.items() if k not in SEED_KEYS}})[:8]


def plan(cfg: ClassificationConfig) -> Plan:
    """Check every name and value and draw the splits: all errors surface here, before training."""
    for registry, name, key in ((DATASETS, cfg.dataset, "dataset"), (MODELS, cfg.model, "model")):
        if name not in registry:
            raise ConfigError(f"{key}='{name}' is not registered; available: {', '.join(registry.list())}")
    for name in [*cfg.methods, *cfg.method]:  # overrides of a method not run are kept, misspelled names are not
        METHODS.get(name)
    for name in cfg.metrics:
        METRICS.get(name)
    data = load_dataset(cfg.dataset, cfg.dataset_args)
    check_model(cfg, data)
    from ..data import make_split

    fine = getattr(data, "fine_train", None) is not None
    if cfg.scenario == "subclass" and not fine:
        with_fine = [n for n in DATASETS.list() if DATASETS.get(n).tags.get("fine_labels")]
        raise ConfigError(f"scenario=subclass needs a data set with fine labels; dataset='{cfg.dataset}' has none "
                          f"(data sets with fine labels: {', '.join(with_fine)})")
    classes, subclasses = [], []
    if cfg.scenario == "class":
        classes = resolve_classes(cfg.forget_classes, getattr(data, "class_names", ()), data.num_classes,
                                  "forget_classes")
    if cfg.scenario == "subclass":
        subclasses = resolve_classes(cfg.forget_subclasses, getattr(data, "fine_names", ()),
                                     int(data.fine_train.max()) + 1, "forget_subclasses")
    splits, methods, gold = {}, {}, {}
    for seed in cfg.seeds:
        try:
            splits[seed] = make_split(data.y_train, data.y_test, scenario=cfg.scenario, seed=seed,
                                      data_hash=data.hash, forget_size=cfg.forget_size, forget_classes=classes,
                                      forget_subclasses=subclasses, train_fine=getattr(data, "fine_train", None),
                                      test_fine=getattr(data, "fine_test", None))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        recipe = {**to_dict(cfg.train), "seed": seed}
        # A pretrained model's gold standard is the builder's fresh (pretrained) model trained on D_r, not a random one.
        fresh = {"reinitialize": False} if cfg.model_args.get("pretrained") else {}
        gold[seed] = METHODS.create("retrain", **recipe, init_seed=seed, **fresh)
        methods[seed] = []
        for name in cfg.methods:
            overrides = cfg.method.get(name, {})
            base = {**recipe, "init_seed": seed, **fresh} if name == "retrain" else {"seed": seed}
            methods[seed].append((name, METHODS.create(name, **{**base, **overrides})))
    return Plan(cfg, data, splits, methods, gold)


def load_dataset(name: str, args: dict[str, Any]) -> Any:
    """The registered data set `name` loaded with `args` (root, download, ...); a bad argument is a ConfigError."""
    import inspect

    loader = DATASETS.get(name).obj
    accepted = inspect.signature(getattr(loader, "__wrapped__", loader)).parameters
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ConfigError(f"dataset_args {unknown} not accepted by data set '{name}'; it takes: "
                          f"{', '.join(accepted) or 'no arguments'}")
    try:
        return loader(**args)
    except (FileNotFoundError, ValueError) as err:  # missing or malformed files: one line, before any training
        raise ConfigError(str(err)) from None


def check_model(cfg: ClassificationConfig, data: Any) -> None:
    """Build the model once, so that an input size or a class count it cannot take fails before any training."""
    from ..models import build_model

    args = {**cfg.model_args, **({"pretrained": False} if "pretrained" in cfg.model_args else {})}  # no download
    try:
        build_model(cfg.model, seed=0, input_shape=data.input_shape, num_classes=data.num_classes, **args)
    except (TypeError, ValueError, ImportError) as err:
        raise ConfigError(f"model='{cfg.model}' on dataset '{cfg.dataset}' (input {data.input_shape}, "
                          f"{data.num_classes} classes): {err}") from None


def resolve_classes(wanted: list[int | str], names: tuple[str, ...], count: int, key: str) -> list[int]:
    """Class indices from indices or names; an index outside [0, count) or an unknown name is a ConfigError."""
    out = []
    for c in wanted:
        if isinstance(c, str):
            if c not in names:
                raise ConfigError(f"{key}: unknown class name '{c}'; " + (f"names: {', '.join(names)}" if names else
                                  "this data set has no class names, give indices"))
            c = names.index(c)
        if not 0 <= c < count:
            raise ConfigError(f"{key}={wanted}: class index {c} is out of range; allowed: 0..{count - 1}")
        out.append(int(c))
    return out


@dataclass
class Trained:
    """A model of the run with where it came from."""

    name: str  # "original" or the registered method name
    label: str
    method: Any  # None for the original
    model: Any
    meta: dict
    hit: bool  # loaded from the cache
    key: str


def warm_up_imports() -> None:
    """Build one throw-away optimiser: the first in a process imports torch._dynamo (about 1.5 s), which would
    otherwise land inside whichever method is timed first and distort its RTE."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def train_set(data: Any, indices: Any, augment: bool, seed: int) -> Any:
    """The training view of `indices` (augmented only when asked: original training and the gold retrain)."""
    if augment:
        return data.subset("train", indices, augment=True, augment_seed=seed)
    return data.subset("train", indices)


def original_spec(cfg: Any, data: Any, seed: int) -> dict:
    """The cache spec of the original model of seed `seed` (every benchmark training on this data set with this model
    and recipe shares it, e.g. the RUM pipeline reuses a model trained by `unlearnkit run digits`)."""
    return versioned({"kind": "original", "dataset": cfg.dataset, "data_hash": data.hash, "model": cfg.model,
                      "model_args": cfg.model_args, "recipe": to_dict(replace(cfg.train, seed=seed)), "seed": seed,
                      **({"augment": True} if cfg.train_augment else {})})


class _Runner:
    """Cached training and unlearning for one benchmark run."""

    def __init__(self, plan: Plan, cache: Any, say: Callable[[str], None]) -> None:
        from ..tasks import get_task

        self.plan, self.cache, self.say = plan, cache, say
        self.task = get_task("classifier")

    def original(self, seed: int) -> Trained:
        from ..cache import spec_key
        from ..methods.retrain import fit
        from ..models import build_model

        cfg, data = self.plan.config, self.plan.data
        recipe = replace(cfg.train, seed=seed)
        spec = original_spec(cfg, data, seed)
        model = build_model(cfg.model, seed=seed, input_shape=data.input_shape, num_classes=data.num_classes,
                            **cfg.model_args)

        def train(m):
            result = fit(m, train_set(data, range(len(data.y_train)), cfg.train_augment, seed), self.task, recipe,
                         desc="original")
            return {"train_time_s": result.seconds}

        key = spec_key(spec)
        model, meta, hit = self.cache.get_or_build(key, model, train, spec=spec)
        self.say(f"[seed {seed}] original: {'loaded from cache' if hit else 'trained'} "
                 f"({meta['train_time_s']:.1f}s, cache key {key})")
        return Trained("original", "original", None, model.eval(), meta, hit, key)

    def incompetent(self, seed: int) -> Any:
        """A randomly initialised model of the same architecture (the ZRF metric's reference), seed 10_000 + seed."""
        from ..models import build_model

        cfg, data = self.plan.config, self.plan.data
        return build_model(cfg.model, seed=10_000 + seed, input_shape=data.input_shape, num_classes=data.num_classes,
                           **cfg.model_args).eval()

    def spec(self, seed: int, method: Any, base: Trained) -> dict:
        return versioned({"kind": "unlearned", "base": base.key, "method": method.registry_name,
                          "params": to_dict(method), "split": self.plan.splits[seed].hash})

    def unlearned(self, seed: int, label: str, method: Any, base: Trained, udata: Any) -> Trained:
        enabled = self.plan.config.cache_unlearned or method.registry_name == "retrain"
        start = base.model
        if method.registry_name == "retrain" and not method.reinitialize:  # a fresh model from the builder
            cfg, data = self.plan.config, self.plan.data
            from ..models import build_model

            start = build_model(cfg.model, seed=method.init_seed, input_shape=data.input_shape,
                                num_classes=data.num_classes, **cfg.model_args)
        model, meta, hit, key = unlearn_cached(self.cache, self.spec(seed, method, base), start, method, udata,
                                               self.task, enabled=enabled)
        self.say(f"[seed {seed}] {label}: {'loaded from cache' if hit else 'done'} ({meta['unlearn_time_s']:.2f}s)")
        return Trained(method.registry_name, label, method, model, meta, hit, key)


def run_classification(cfg: ClassificationConfig, *, cache: Any = None,
                       say: Callable[[str], None] = print) -> RunResult:
    """Run the benchmark described by `cfg` (see the module docstring); returns the rows and the report path."""
    from ..cache import ModelCache, spec_key
    from ..metrics.evaluate import collect_outputs, evaluate, with_requirements
    from ..report import build_report

    the_plan = plan(cfg)
    warm_up_imports()
    cache = cache or ModelCache()
    out_dir = Path(cfg.output_dir)
    config = to_dict(cfg)
    run_id, versions = start_run(out_dir, config, cache,
                                 splits={s: sp.describe() for s, sp in the_plan.splits.items()})
    common = {"run_id": run_id, "benchmark": cfg.benchmark, "scenario": cfg.scenario, "model": cfg.model,
              "data_hash": the_plan.data.hash, "versions": versions, "config": config}
    runner = _Runner(the_plan, cache, say)
    result = RunResult(out_dir)
    per_model = [m for m in with_requirements(cfg.metrics) if not METRICS.get(m).tags.get("needs_reference")]
    for seed in cfg.seeds:
        split = the_plan.splits[seed]
        udata = the_plan.data.unlearn_data(split)
        say(f"[seed {seed}] split {split.hash}: {len(split.forget)} forget / {len(split.retain)} retain / "
            f"{len(split.test)} test ({cfg.scenario})")
        original = runner.original(seed)
        gold_data = replace(udata, retain=train_set(the_plan.data, split.retain, True, seed)) \
            if cfg.train_augment else udata
        gold = runner.unlearned(seed, "retrain (gold standard)", the_plan.gold[seed], original, gold_data)
        gold.label = "retrain"
        trained = [original, gold]
        for label, method in the_plan.methods[seed]:
            if spec_key(runner.spec(seed, method, original)) != gold.key:  # `retrain` as configured IS the gold
                trained.append(runner.unlearned(seed, label, method, original, udata))
        # Evaluation after all unlearning: the attacks' BLAS threads stay busy for a while after sklearn returns and
        # slowed the next timed method (millisecond one-shot methods by 2-10x on 2 cores).
        incompetent = runner.incompetent(seed)
        ref = collect_outputs(gold.model, udata, runner.task, batch_size=cfg.eval_batch_size, incompetent=incompetent)
        evaluate(ref, per_model)
        retrain_s = gold.meta["unlearn_time_s"]
        for t in trained:
            ev = ref if t is gold else collect_outputs(t.model, udata, runner.task, batch_size=cfg.eval_batch_size,
                                                       incompetent=incompetent)
            values = evaluate(ev, cfg.metrics, ref=ref)
            if t is original:
                times, params = {"train_s": t.meta["train_time_s"]}, to_dict(replace(cfg.train, seed=seed))
            else:
                times = {"unlearn_s": t.meta["unlearn_time_s"], "retrain_s": retrain_s,
                         "rte": t.meta["unlearn_time_s"] / retrain_s}
                params = to_dict(t.method)
            row = {**common, "variant": variant(cfg, params), "created": now(), "method": t.name, "label": t.label,
                   "params": params, "seed": seed, "seeds": {"train": seed, "unlearn": params["seed"], "eval": 0},
                   "metrics": values, "times": times, "cached": t.hit, "cache_key": t.key, "split_hash": split.hash}
            append_jsonl(out_dir / "results.jsonl", row)
            result.rows.append(row)
            result.cache_hits[f"{seed}/{t.label}"] = t.hit
    result.report = build_report(out_dir)
    return result


def report_columns(scenario: str) -> tuple[str, ...]:
    """Table columns: RUM's (forget / retain / test accuracy, MIA, ToW, Avg.Gap, cost), plus SSD/JiT's test accuracy
    on the forgotten (Df) and the other (Dr) (sub-)classes when whole (sub-)classes are forgotten, their entropy MIA
    and ZRF."""
    accs = ("forget_acc", "retain_acc", "test_acc") if scenario == "random" else \
        ("forget_acc", "retain_acc", "test_forget_acc", "test_retain_acc")
    return (*accs, "mia_svc", "mia_entropy_lr", "zrf", "tow", "tow_mia", "avg_gap", "unlearn_s", "rte")


@BENCHMARKS.register("digits", config=ClassificationConfig, validate=plan, columns=report_columns,
                     paper="sklearn digits (Alpaydin & Kaynak 1998)")
def digits_benchmark(cfg: ClassificationConfig, **kwargs: Any) -> RunResult:
    """Embedded quick-start benchmark: sklearn's 8x8 handwritten digits, small MLP/CNN, no download."""
    return run_classification(cfg, **kwargs)


@BENCHMARKS.register("vision", config=ClassificationConfig, validate=plan, columns=report_columns,
                     paper="RUM (arXiv 2406.01257), SSD (arXiv 2308.07707), JiT (arXiv 2402.01401) settings")
def vision_benchmark(cfg: ClassificationConfig, **kwargs: Any) -> RunResult:
    """Image-classifier unlearning on the torchvision data sets (MNIST, FashionMNIST, CIFAR-10/100/20, SVHN) with
    the vision models (ResNet-18/50, VGG, ViT-B/16): random, full-class and sub-class forgetting."""
    return run_classification(cfg, **kwargs)


__all__ = ["ClassificationConfig", "RunResult", "TrainRecipe", "plan", "run_classification", "variant"]
