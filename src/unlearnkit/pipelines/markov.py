"""Markov-chain benchmark of the IMU seed (specs/markov_imu.md; IMU arXiv 2508.01620, SimNPO arXiv 2410.07163).

    data     = markov data (3 chains, true matrices)                   # cached .npz, keyed by its parameters
    original = cache(train markov_gpt on retain + forget1 [+ forget2])   # the seed's `--model_type pretrain`
    gold     = cache(train a fresh markov_gpt on retain only)            # `--model_type retain`: the gold standard
    for each method: cache(method.unlearn(copy(original), forget set, retain set)), evaluated after every iteration
    one row per model (original, retrain, methods) with the final metrics and the curve -> report: table + curves

Every stage is a content-addressed cache entry, so `unlearnkit run markov` and the seed-style commands
(`unlearnkit markov train|unlearn|unlearn-imu`, markov_cli.py) share models and give the same numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .._io import append_jsonl
from .._registry import BENCHMARKS, METHODS
from ..config import ConfigError, param, to_dict
from ..data.markov import MarkovParams
from ..methods._loop import LoopParams
from ..metrics.markov import MARKOV_METRICS
from ._stages import RunResult, Stage, now, start_run, unlearn_cached, versioned

METHODS_OF_THE_SEED = ("grad_ascent", "grad_descent", "grad_diff", "grad_diff_kl_forget", "kl", "npo", "npo_kl",
                       "npo_rt", "simnpo", "simnpo_kl", "simnpo_rt", "imu")
FORGET_SETS = {"forget1": ("forget1",), "forget2": ("forget2",), "both": ("forget1", "forget2")}


@dataclass
class MarkovModel:
    """The seed's decoder (models/markov.py); n_head and activation are recorded, as in the seed."""

    n_embd: int = param(128, gt=0, help="embedding width d")
    n_layer: int = param(4, gt=0, help="number of blocks")
    n_head: int = param(4, gt=0, help="recorded; the seed's attention has one head (see attention)")
    dropout: float = param(0.0, ge=0, lt=1, help="dropout probability")
    activation: str = param("softmax", help="recorded, as in the seed")
    attention: Literal["seed", "multihead"] = param("seed", help="seed = one softmax head; multihead = n_head heads")


@dataclass
class PretrainRecipe(LoopParams):
    """The seed's train.py: AdamW, lr 5e-4, batch 128, 5 epochs, no weight decay (transformers' AdamW default)."""

    lr: float = param(5e-4, gt=0, help="learning rate")
    epochs: int = param(5, ge=1, help="training epochs")
    batch_size: int = param(128, gt=0, help="batch size")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adamw", help="optimiser")
    weight_decay: float = param(0.0, ge=0, help="weight decay")


@dataclass
class UnlearnRecipe:
    """The seed's unlearning loop, shared by every method (a method's own overrides win): AdamW lr 5e-4, batch 4,
    50 iterations of paired forget/retain batches, metrics after every iteration."""

    lr: float = param(5e-4, gt=0, help="learning rate")
    batch_size: int = param(4, gt=0, help="forget (and retain) batch size")
    max_iterations: int = param(50, gt=0, help="optimiser steps")
    epochs: int = param(1, ge=1, help="the seed's unlearning_epochs (max_iterations decides the length)")
    optimizer: Literal["sgd", "adam", "adamw"] = param("adamw", help="optimiser")
    weight_decay: float = param(0.0, ge=0, help="weight decay (the seed: transformers' AdamW, default 0)")
    seed: int | None = param(None, help="unlearning seed (the seed's unlearning_seed); None = the run's seed")

    def loop_params(self, seed: int) -> dict[str, Any]:
        return {"lr": self.lr, "batch_size": self.batch_size, "max_steps": self.max_iterations,
                "epochs": self.epochs, "optimizer": self.optimizer, "weight_decay": self.weight_decay,
                "seed": seed if self.seed is None else self.seed}


@dataclass
class MarkovConfig:
    """The seed experiment. Every key can be overridden as key=value (data.state_size=12, method.npo.beta=2, ...)."""

    benchmark: str = param("markov", help="benchmark name")
    data: MarkovParams = field(default_factory=MarkovParams)
    model: MarkovModel = field(default_factory=MarkovModel)
    pretrain: PretrainRecipe = field(default_factory=PretrainRecipe)
    only_forget1: bool = param(True, help="the original model is trained on retain + forget1 (the seed's setting)")
    forget_set: Literal["forget1", "forget2", "both"] = param("both", help="what is unlearned (the seed: both)")
    unlearn: UnlearnRecipe = field(default_factory=UnlearnRecipe)
    methods: list[str] = param(list(METHODS_OF_THE_SEED), help="registered methods to run")
    method: dict[str, dict[str, Any]] = param({}, help="hyperparameter overrides per method: method.NAME.KEY=VALUE")
    metrics: list[str] = param(list(MARKOV_METRICS), help="registered Markov metrics")
    eval_every: int = param(1, ge=0, help="evaluate every k iterations for the curves (0 = final values only)")
    eval_batch_size: int = param(1024, gt=0, help="batch size of the evaluation forward passes")
    seeds: list[int] = param([42], help="model-initialisation / training / unlearning seeds (data: data.seed)")
    output_dir: str = param("runs/markov", help="where results.jsonl and report.md go")

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds}: give one or more distinct seeds")
        if not self.methods:
            raise ValueError("methods is empty: name at least one method, e.g. methods=[imu]")
        if self.pretrain.seed != 0:
            raise ValueError(f"pretrain.seed={self.pretrain.seed}: the training seed comes from seeds=[...]")


def create_methods(cfg: MarkovConfig, seed: int) -> list[tuple[str, Any]]:
    """(name, validated method) for every method of the run: the shared unlearning recipe, then its overrides."""
    for name in [*cfg.methods, *cfg.method]:
        METHODS.get(name)
    return [(name, METHODS.create(name, **{**cfg.unlearn.loop_params(seed), **cfg.method.get(name, {})}))
            for name in cfg.methods]


def validate(cfg: MarkovConfig) -> None:
    """Every name and value, before any data is generated or any model trained."""
    for name in cfg.metrics:
        if name not in MARKOV_METRICS:
            raise ConfigError(f"metric '{name}' is not a Markov metric; available: {', '.join(MARKOV_METRICS)}")
    for seed in cfg.seeds:
        create_methods(cfg, seed)


class MarkovRunner:
    """The cached stages of the benchmark; markov_cli.py drives the same stages one seed command at a time."""

    def __init__(self, cfg: MarkovConfig, *, cache: Any = None, say: Callable[[str], None] = print) -> None:
        from ..cache import ModelCache
        from ..data.markov import load_or_generate
        from ..tasks import get_task

        self.cfg, self.say = cfg, say
        self.cache = cache or ModelCache()
        self.task = get_task("causal_lm")
        start = time.perf_counter()
        self.data, hit = load_or_generate(cfg.data, self.cache.root)
        self._eval = None  # the model-independent part of the evaluation, prepared on first use
        self.data_s = time.perf_counter() - start
        say(f"data {self.data.hash}: {'loaded from cache' if hit else 'generated'} ({self.data_s:.1f}s)")

    def build(self, seed: int):
        from ..models import build_model

        c, d = self.cfg.model, self.cfg.data
        max_len = max(d.seq_length_retain, d.seq_length_forget1, d.seq_length_forget2)
        return build_model("markov_gpt", seed=seed, state_size=d.state_size, max_len=max_len, n_embd=c.n_embd,
                           n_layer=c.n_layer, n_head=c.n_head, dropout=c.dropout, activation=c.activation,
                           attention=c.attention)

    def trained(self, seed: int, model_type: Literal["pretrain", "retain"], *, build: bool = True,
                required: bool = True) -> Stage | None:
        """The original (`pretrain`) or the retrained gold standard (`retain`). build=False: only from the cache
        (missing: an error naming the command that builds it, or None when not `required`)."""
        from ..cache import spec_key
        from ..methods.retrain import fit

        chains = ("retain",) if model_type == "retain" else \
            ("retain", "forget1") if self.cfg.only_forget1 else ("retain", "forget1", "forget2")
        recipe = replace(self.cfg.pretrain, seed=seed)
        spec = versioned({"kind": "markov_trained", "data": self.data.hash, "chains": list(chains),
                          "model": to_dict(self.cfg.model), "recipe": to_dict(recipe), "seed": seed})
        key = spec_key(spec)
        model = self.build(seed)
        if not build:
            meta = self.cache.load(key, model)
            if meta is None and not required:
                return None
            if meta is None:
                flag = " --only_forget1" if self.cfg.only_forget1 and model_type == "pretrain" else ""
                raise ConfigError(f"no {model_type} model for these settings in the cache ({self.cache.root}); "
                                  f"build it first: unlearnkit markov train --model_type {model_type}{flag} "
                                  "(with the same data, model and pretraining flags)")
            return Stage(model_type, model.eval(), meta, True, key)

        def train(m):
            result = fit(m, self.data.dataset("train", chains), self.task, recipe, desc=model_type)
            return {"train_time_s": result.seconds}

        model, meta, hit = self.cache.get_or_build(key, model, train, spec=spec)
        self.say(f"[seed {seed}] {model_type} ({'+'.join(chains)}): {'loaded from cache' if hit else 'trained'} "
                 f"({meta['train_time_s']:.1f}s)")
        return Stage(model_type, model.eval(), meta, hit, key)

    def unlearn_data(self):
        from ..data import UnlearnData

        return UnlearnData(forget=self.data.dataset("train", FORGET_SETS[self.cfg.forget_set]),
                           retain=self.data.dataset("train", ["retain"]))

    def outputs(self, model):
        from ..metrics.markov import collect_sequence_outputs, prepare_sequence_eval

        if self._eval is None:
            self._eval = prepare_sequence_eval(self.data)
        return collect_sequence_outputs(model, self._eval, batch_size=self.cfg.eval_batch_size)

    def metrics(self, model, ref) -> dict[str, float]:
        from ..metrics.evaluate import evaluate

        return evaluate(self.outputs(model), self.cfg.metrics, ref=ref)

    def unlearned(self, seed: int, name: str, method: Any, original: Stage, ref) -> Stage:
        """`method` on a copy of the original, with the metrics after every `eval_every` iterations (the curve)."""
        curve: list[dict[str, float]] = []

        def after_step(model, step: int) -> None:
            if self.cfg.eval_every and step % self.cfg.eval_every == 0:
                curve.append({"step": step, **self.metrics(model, ref)})

        spec = {"kind": "markov_unlearned", "base": original.key, "method": name, "params": to_dict(method),
                "forget_set": self.cfg.forget_set, "eval_every": self.cfg.eval_every, "metrics": self.cfg.metrics}
        model, meta, hit, key = unlearn_cached(self.cache, spec, original.model, method, self.unlearn_data(),
                                               self.task, after_step=after_step, extra=lambda: {"curve": curve})
        self.say(f"[seed {seed}] {name}: {'loaded from cache' if hit else 'done'} ({meta['unlearn_time_s']:.2f}s)")
        return Stage(name, model, meta, hit, key, method)


def final_point(stage: Stage) -> dict[str, float] | None:
    """The metrics of the unlearned model when its curve already holds them (a point after the run's last step,
    max_steps); None when the run stopped early, had no max_steps, or evaluated every k > 1 steps off the end."""
    curve = stage.meta.get("curve") or []
    last_step = getattr(stage.method, "max_steps", None)
    if curve and last_step and curve[-1]["step"] == last_step:
        return {k: v for k, v in curve[-1].items() if k != "step"}
    return None


def reach(curve: list[dict[str, float]], target: float) -> tuple[float, float]:
    """(first iteration whose forget1 forget quality kl_true_forget1 reaches the retrained model's value, the retain
    distance kl_true_retain there); (nan, nan) when never reached ("never" in the report)."""
    for point in curve:
        if point.get("kl_true_forget1", -math.inf) >= target:
            return float(point["step"]), float(point.get("kl_true_retain", math.nan))
    return math.nan, math.nan


def run_markov(cfg: MarkovConfig, *, cache: Any = None, say: Callable[[str], None] = print,
               build_models: bool = True) -> Any:
    """The whole seed experiment: data -> original -> retrain -> every method (with curves) -> rows -> report.
    build_models=False (the seed-style `unlearn` commands): the original and retrained models must be in the cache
    already; the error says which command builds them."""
    from ..report import build_report

    validate(cfg)
    needs_gold = build_models or "markov_kl_retrain" in cfg.metrics
    runner = MarkovRunner(cfg, cache=cache, say=say)
    out_dir = Path(cfg.output_dir)
    config = to_dict(cfg)
    run_id, versions = start_run(out_dir, config, runner.cache, data_hash=runner.data.hash)
    common = {"run_id": run_id, "benchmark": cfg.benchmark, "scenario": f"forget_set={cfg.forget_set}",
              "model": "markov_gpt", "data_hash": runner.data.hash, "split_hash": runner.data.hash,
              "versions": versions, "config": config, "forget_set": cfg.forget_set}
    result = RunResult(out_dir)
    for seed in cfg.seeds:
        original = runner.trained(seed, "pretrain", build=build_models)
        gold = runner.trained(seed, "retain", build=build_models, required=needs_gold)
        ref = runner.outputs(gold.model) if gold else None
        start_values = runner.metrics(original.model, ref)
        retrain_s = gold.meta["train_time_s"] if gold else math.nan
        stages = [(original, start_values)] + ([(gold, runner.metrics(gold.model, ref))] if gold else [])
        for name, method in create_methods(cfg, seed):
            stage = runner.unlearned(seed, name, method, original, ref)
            stages.append((stage, final_point(stage) or runner.metrics(stage.model, ref)))
        target = stages[1][1]["kl_true_forget1"] if gold else math.inf
        for stage, values in stages:
            label = {"pretrain": "original", "retain": "retrain"}.get(stage.name, stage.name)
            if stage.method is None:
                times = {"train_s": stage.meta["train_time_s"]}
                params, curve = to_dict(replace(cfg.pretrain, seed=seed)), []
            else:
                times = {"unlearn_s": stage.meta["unlearn_time_s"], "retrain_s": retrain_s,
                         "rte": stage.meta["unlearn_time_s"] / retrain_s}
                params = to_dict(stage.method)
                curve = [{"step": 0, **start_values}, *stage.meta.get("curve", [])]
                values = {**values, **dict(zip(("reach_step_forget1", "retain_kl_at_reach"),
                                               reach(curve, target), strict=True))}
            row = {**common, "created": now(), "method": label, "label": label, "params": params, "seed": seed,
                   "seeds": {"data": cfg.data.seed, "train": seed, "unlearn": params.get("seed", seed)},
                   "variant": _variant(cfg, params),
                   "metrics": values, "times": times, "cached": stage.hit, "cache_key": stage.key, "curve": curve}
            append_jsonl(out_dir / "results.jsonl", row)
            result.rows.append(row)
            result.cache_hits[f"{seed}/{label}"] = stage.hit
    result.report = build_report(out_dir)
    return result


def _variant(cfg: MarkovConfig, params: dict) -> str:
    """Everything that defines a row's experiment except the seeds: rows of one label and variant are averaged."""
    from .._io import content_hash

    setting = {k: to_dict(cfg)[k] for k in ("data", "model", "pretrain", "only_forget1", "forget_set")}
    return content_hash({**setting, "params": {k: v for k, v in params.items() if k != "seed"}})[:8]


MARKOV_COLUMNS = ("kl_retrain_forget1", "kl_retrain_forget2", "kl_retrain_retain", "kl_true_forget1",
                  "kl_true_forget2", "kl_true_retain", "loss_retain", "reach_step_forget1", "unlearn_s", "rte")


def _figures(rows: list[dict], out_dir: Path, stem: str) -> list[Path]:
    from ..report.curves import plot_curves

    return plot_curves(rows, out_dir, stem)


@BENCHMARKS.register("markov", config=MarkovConfig, validate=validate, columns=MARKOV_COLUMNS, figures=_figures,
                     paper="IMU (arXiv 2508.01620) / SimNPO (arXiv 2410.07163) synthetic Markov chains")
def markov_benchmark(cfg: MarkovConfig, **kwargs: Any) -> Any:
    """The IMU seed's synthetic benchmark: three Markov chains, a small decoder, twelve unlearning losses."""
    return run_markov(cfg, **kwargs)
