"""The registry of memorisation scores RUM refines a forget set by (vision.md §5.1-5.2; RUM, Zhao et al. 2024,
arXiv 2406.01257).

    score = SCORES.create("confidence")                        # a dataclass of hyperparameters
    values = compute_score(score, ctx)                         # float64 [N] over ctx.data.x_train, cached

One sign convention: every score is a float64 array over ALL N training examples (data.x_train order), **higher =
more memorised**; the formulas are those of memorization.py (never re-implemented here).

| name        | what                                                          | reads                   | mid group |
|-------------|---------------------------------------------------------------|-------------------------|-----------|
| exact       | Feldman-Zhang estimate from K models on random subsets (§5.1) | nothing (retrains)      | 0.5       |
| confidence  | −mean over epochs of p(y_i), recorded during training         | the training record     | median    |
| max_conf    | −mean over epochs of max_k p_k                                | the training record     | median    |
| neg_entropy | mean over epochs of the prediction entropy                    | the training record     | median    |
| binary_acc  | −fraction of epochs with argmax = y                           | the training record     | median    |
| holdout     | KL/2 between θ_o and θ_o fine-tuned on the test set           | the original model      | median    |
| curvature   | mean over epochs of the input-space loss curvature            | the training record (h) | median    |
| file        | a published array (.npy/.npz), e.g. Feldman-Zhang's tr_mem    | the file                | field mid |

A score is a registered `@dataclass` with `record_options()` (None, or what the original's training must record:
{} or {"curvature_h": h}; see `original_with_record`), `uses_original`, `mid_target()` (what `rum_mix_split` takes
for its mid group) and `compute(ctx)`. `compute_score` validates the score, caches its result as a tensor entry
keyed by the score's name and hyperparameters, the data hash and what it reads (the original's key, the model and
estimator recipe, the file's content), and checks its shape. Diagnostics land in attributes ending in `_`
(`key_`, `hit_`, `seconds_`; exact: `job_hits_`, `job_keys_`, `recipe_`; holdout: `epochs_`, `losses_`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from .._registry import SCORES
from ..config import param, to_dict, validate
from ._score_record import EVENT_PROXIES, TrainingRecord, original_with_record, record_training
from .memorization import feldman_zhang, holdout_kl_score, load_score_file, subset_masks

__all__ = ["SCORES", "ScoreContext", "TrainingRecord", "compute_score", "original_with_record", "record_training",
           "train_subset_job"]


@dataclass
class ScoreContext:
    """Everything a score may read. Scores cover `data.x_train` / `data.y_train` (N examples, in that order)."""

    data: Any  # ArrayData
    dataset: str  # registered data set and its loader kwargs, so that worker processes can reload it
    dataset_args: dict
    model: str  # registered model builder and its kwargs
    model_args: dict
    recipe: Any  # the original model's TrainRecipe (a LoopParams), seed = the run seed
    seed: int
    cache: Any  # ModelCache
    original: nn.Module | None  # the trained original (eval mode); None for scores that do not read it
    original_key: str  # its cache key
    record: TrainingRecord | None  # what was recorded during the original's training (original_with_record)
    eval_batch_size: int = 512
    say: Callable[[str], None] = print


def compute_score(score: Any, ctx: ScoreContext) -> np.ndarray:
    """The score's values, float64 [N] (higher = more memorised): loaded from `ctx.cache`, or computed and stored.
    Sets `score.key_`, `score.hit_` (loaded from the cache) and `score.seconds_` (compute time, also when loaded)."""
    name = getattr(type(score), "registry_name", None)
    if name is None or name not in SCORES or SCORES.get(name).obj is not type(score):
        raise TypeError(f"compute_score needs a registered score (SCORES.create(name)); got {score!r}")
    validate(score, where=f"score.{name}")
    n = len(ctx.data.y_train)
    options = score.record_options()
    if options is not None:
        _need_record(name, ctx, options)
    if score.uses_original and ctx.original is None:
        raise ValueError(f"score '{name}' reads the original model, but the context has none (ctx.original is None)")
    from ..cache import spec_key
    from ..pipelines._stages import versioned

    skip = getattr(score, "runtime_fields", ())
    spec = {"kind": "memorization_score", "score": name,
            "params": {k: v for k, v in to_dict(score).items() if k not in skip}, "data_hash": ctx.data.hash}
    if score.uses_original or options is not None:
        spec["original"] = ctx.original_key
    spec = versioned({**spec, **(score.cache_spec(ctx) if hasattr(score, "cache_spec") else {})})
    key = spec_key(spec)
    tensors, meta = ctx.cache.load_tensors(key)
    hit = tensors is not None and meta is not None
    if hit:
        values = tensors["score"].double().numpy()
        seconds = float(meta.get("compute_time_s", math.nan))
    else:
        start = time.perf_counter()
        values = np.asarray(score.compute(ctx), dtype=np.float64)
        seconds = time.perf_counter() - start
    if values.shape != (n,):
        raise ValueError(f"score '{name}' gave shape {values.shape}; expected [{n}] (one value per training example)")
    nan = np.isnan(values)
    if nan.any() and not getattr(score, "allows_nan", False):
        raise ValueError(f"score '{name}' is NaN for {int(nan.sum())} of {n} training examples "
                         f"(first: {np.flatnonzero(nan)[:5].tolist()})")
    if not hit:
        ctx.cache.save_tensors(key, {"score": torch.from_numpy(values.copy())},
                               {"spec": spec, "compute_time_s": seconds})
    score.key_, score.hit_, score.seconds_ = key, hit, seconds
    ctx.say(f"score {name}: {'loaded from cache' if hit else f'computed in {seconds:.1f}s'} (cache key {key})"
            + (f"; NaN for {int(nan.sum())} examples" if nan.any() else ""))
    return values


def _need_record(name: str, ctx: ScoreContext, options: dict) -> TrainingRecord:
    record = ctx.record
    if record is None:
        raise ValueError(f"score '{name}' reads what the original's training recorded, but the context has no record "
                         f"(ctx.record is None): get it with original_with_record(..., record_options={options})")
    if record.n != len(ctx.data.y_train):
        raise ValueError(f"score '{name}': the training record covers {record.n} examples; the training set has "
                         f"{len(ctx.data.y_train)}")
    h = options.get("curvature_h")
    if h is not None and record.curvature_h != h:
        raise ValueError(f"score '{name}' needs the curvature recorded with h={h}; the record has "
                         f"{'none' if record.curvature_h is None else f'h={record.curvature_h}'}: get it with "
                         f"original_with_record(..., record_options={options})")
    return record


# ---------------------------------------------------------------------------------------------- exact (§5.1)


def train_subset_job(dataset: str, dataset_args: dict, model: str, model_args: dict, recipe: dict,
                     train_indices: list[int], seed: int, *, data_hash: str | None = None,
                     eval_batch_size: int = 512) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """One subset model of the exact estimate (a jobs.run_jobs job): a fresh `model` (initial weights from `seed`)
    trained with `recipe` (data order from `seed`) on the training examples `train_indices`, then its correctness
    on ALL N training examples: `({"correct": uint8 [N]}, {"train_time_s", "n_train"})`."""
    from ..config import build
    from ..methods._loop import LoopParams
    from ..methods.retrain import fit
    from ..models import build_model
    from ..pipelines.classification import load_dataset
    from ..tasks import get_task
    from .evaluate import predict

    data = load_dataset(dataset, dataset_args)
    if data_hash is not None and data.hash != data_hash:
        raise ValueError(f"data set '{dataset}' {dataset_args} now has hash {data.hash}, not {data_hash}: the data "
                         "changed since the estimate was planned")
    task = get_task("classifier")
    net = build_model(model, seed=seed, input_shape=data.input_shape, num_classes=data.num_classes, **model_args)
    params = build(LoopParams, {**recipe, "seed": seed}, where="score.exact recipe")
    result = fit(net, data.subset("train", train_indices), task, params, desc="subset", progress=False)
    logits, labels = predict(net, data.subset("train", np.arange(len(data.y_train))), task, eval_batch_size)
    correct = torch.from_numpy((logits.argmax(axis=1) == labels).astype(np.uint8))  # [N]
    return {"correct": correct}, {"train_time_s": result.seconds, "n_train": len(train_indices)}


def job_seed(subset_seed: int, run: int) -> int:
    """The seed of subset model `run` (its initial weights and data order): SeedSequence([subset_seed, run])."""
    return int(np.random.SeedSequence([int(subset_seed), int(run)]).generate_state(1)[0])


@SCORES.register("exact", paper="Feldman & Zhang 2020, arXiv 2008.03703", reads="subset retraining")
@dataclass
class Exact:
    """Feldman-Zhang memorisation: mean correctness of the K subset models that trained on i minus that of those
    that did not (memorization.feldman_zhang), from K models trained on random `fraction`-subsets.

    The estimate does not depend on the run seed: the subsets come from `subset_seed` and model r's seed from
    (subset_seed, r), so one estimate serves every seed of a run (as the reference's one 400-run estimate does).
    Each subset model is its own cache entry (keyed by the data, model, estimator recipe, subset indices and seed,
    not by k): an interrupted estimate resumes with the finished models, and raising k reuses the first k models.
    The estimator recipe (vision.md §5.1: it differs from the original's, and is recorded in every entry) is the
    original recipe with epochs/lr/batch_size/schedule replaced where set.

    An example in all K subsets, or in none, has no estimate (probability fraction^K, resp. (1 − fraction)^K per
    example: at K=32, fraction 0.7, about one example of CIFAR's 45k). on_missing="nan" (default) leaves NaN there
    and warns (rum_mix_split takes nan_policy="omit"); "raise" makes it an error. Either way, raise k to fix it.
    """

    k: int = param(32, ge=2, help="number of subset models K")
    fraction: float = param(0.7, gt=0, lt=1, help="fraction of the training set in each subset")
    subset_seed: int = param(0, ge=0, help="seed of the subsets and of the subset models")
    epochs: int | None = param(None, ge=1, help="estimator epochs (None: the original recipe's)")
    lr: float | None = param(None, gt=0, help="estimator learning rate (None: the original recipe's)")
    batch_size: int | None = param(None, gt=0, help="estimator batch size (None: the original recipe's)")
    schedule: Literal["constant", "cosine", "linear"] | None = param(None, help="estimator schedule (None: the "
                                                                                 "original recipe's)")
    model: str | None = param(None, help="estimator architecture, a registered model builder (None: the run's "
                                         "model); the CIFAR-10 reference estimate used resnet18 with the ImageNet stem")
    model_args: dict[str, Any] | None = param(None, help="its builder's keyword arguments (None: the run's "
                                                         "model_args when model is None, else {})")
    on_missing: Literal["nan", "raise"] = param("nan", help="an example in all subsets or in none: NaN (and a "
                                                            "warning) or an error")
    backend: Literal["process", "serial", "ray"] = param("process", help="where the subset models train (jobs.py)")
    max_workers: int | None = param(None, ge=1, help="parallel subset trainings (None: usable CPUs)")
    threads_per_worker: int | None = param(1, ge=1, help="torch threads per worker process")

    uses_original: ClassVar[bool] = False
    runtime_fields: ClassVar[tuple[str, ...]] = ("backend", "max_workers", "threads_per_worker")

    @property
    def allows_nan(self) -> bool:
        return self.on_missing == "nan"

    def record_options(self) -> dict | None:
        return None

    def mid_target(self) -> float | str:
        return 0.5

    def estimator_recipe(self, ctx: ScoreContext) -> dict[str, Any]:
        """The LoopParams of every subset model except its seed: the original recipe with this score's overrides."""
        from ..methods._loop import LoopParams

        base = to_dict(ctx.recipe)
        recipe = {f.name: base[f.name] for f in fields(LoopParams) if f.init and f.name != "seed"}
        recipe.update({k: getattr(self, k) for k in ("epochs", "lr", "batch_size", "schedule")
                       if getattr(self, k) is not None})
        return recipe

    def estimator_model(self, ctx: ScoreContext) -> tuple[str, dict[str, Any]]:
        """(builder name, kwargs) of the subset models."""
        if self.model is None:
            return ctx.model, dict(ctx.model_args if self.model_args is None else self.model_args)
        return self.model, dict(self.model_args or {})

    def cache_spec(self, ctx: ScoreContext) -> dict[str, Any]:
        model, model_args = self.estimator_model(ctx)
        return {"model": model, "model_args": model_args, "recipe": self.estimator_recipe(ctx)}

    def jobs(self, ctx: ScoreContext, masks: np.ndarray) -> list:
        """One job per subset (row of `masks` [K, N])."""
        from .._io import content_hash
        from ..cache import spec_key
        from ..jobs import Job
        from ..pipelines._stages import versioned

        recipe = self.estimator_recipe(ctx)
        model, model_args = self.estimator_model(ctx)
        out = []
        for r, mask in enumerate(masks):
            indices = np.flatnonzero(mask).tolist()
            seed = job_seed(self.subset_seed, r)
            spec = versioned({"kind": "memorization_subset", "dataset": ctx.dataset, "data_hash": ctx.data.hash,
                              "model": model, "model_args": model_args, "recipe": recipe,
                              "subset": content_hash(indices)[:24], "n": len(mask), "subset_seed": self.subset_seed,
                              "run": r, "seed": seed})
            kwargs = {"dataset": ctx.dataset, "dataset_args": ctx.dataset_args, "model": model,
                      "model_args": model_args, "recipe": recipe, "train_indices": indices, "seed": seed,
                      "data_hash": ctx.data.hash, "eval_batch_size": ctx.eval_batch_size}
            out.append(Job(spec_key(spec), spec, train_subset_job, kwargs))
        return out

    def compute(self, ctx: ScoreContext) -> np.ndarray:
        from ..jobs import run_jobs

        n = len(ctx.data.y_train)
        masks = subset_masks(n, self.k, self.fraction, self.subset_seed)  # [K, N]
        self.recipe_ = self.estimator_recipe(ctx)
        results = run_jobs(self.jobs(ctx, masks), cache=ctx.cache, backend=self.backend,
                           max_workers=self.max_workers, threads_per_worker=self.threads_per_worker, say=ctx.say)
        self.job_hits_ = [r.hit for r in results]
        self.job_keys_ = [r.key for r in results]
        correct = np.stack([r.tensors["correct"].numpy() for r in results]).astype(bool)  # [K, N]
        try:
            mem = feldman_zhang(masks, correct, on_missing=self.on_missing)
        except ValueError as err:
            raise ValueError(f"score.exact (k={self.k}, fraction={self.fraction}): {err}; raise k") from None
        missing = int(np.isnan(mem).sum())
        if missing:
            text = (f"score.exact (k={self.k}, fraction={self.fraction}): {missing} of {n} examples were in all "
                    "subsets or in none and have no estimate (NaN); raise k")
            warnings.warn(text, RuntimeWarning, stacklevel=2)
        return mem


# ---------------------------------------------------------------------------------------------- proxies (§5.2)


def _event_score(name: str, paper: str, raw: str) -> type:
    """A learning-event proxy read from the training record (the four differ only in the per-epoch quantity)."""

    @dataclass
    class EventProxy:
        uses_original: ClassVar[bool] = False
        allows_nan: ClassVar[bool] = True  # an example with no finite softmax row in any epoch (diverged training)

        def record_options(self) -> dict | None:
            return {}

        def mid_target(self) -> float | str:
            return "median"

        def compute(self, ctx: ScoreContext) -> np.ndarray:
            return _need_record(name, ctx, {}).proxy(name)

    EventProxy.__name__ = EventProxy.__qualname__ = "".join(p.title() for p in name.split("_")) + "Proxy"
    EventProxy.__doc__ = (f"{raw}, from the pre-update, train-mode softmax recorded during the original's training "
                          "(memorization.py); higher = more memorised.")
    return SCORES.register(name, paper=paper, reads="training record")(EventProxy)


_RUM = "RUM, Zhao et al. 2024, arXiv 2406.01257 (§5.2)"
ConfidenceProxy = _event_score("confidence", _RUM, "C-proxy: −mean over epochs of p(y_i | x_i)")
MaxConfProxy = _event_score("max_conf", _RUM, "−mean over epochs of max_k p_k")
NegEntropyProxy = _event_score("neg_entropy", _RUM, "mean over epochs of the prediction entropy (−Σ p log p)")
BinaryAccProxy = _event_score("binary_acc", _RUM, "−fraction of epochs at which argmax = y")
assert set(EVENT_PROXIES) == {"confidence", "max_conf", "neg_entropy", "binary_acc"}


@SCORES.register("holdout", paper=_RUM, reads="original model")
@dataclass
class Holdout:
    """Holdout retraining: fine-tune a copy of θ_o on the TEST set, score = (KL(p‖q) + KL(q‖p))/2 between the
    original's and the fine-tuned softmax on each training example (memorization.holdout_kl_score).

    Fine-tuning: `lr`, the original recipe's optimiser, momentum, weight decay and batch size, a constant schedule,
    at most `max_epochs` epochs. Early stopping (ours): after each epoch, the mean cross-entropy of the fine-tuned
    model on the whole fine-tuning set in eval mode; stop once it has not improved on its best value for `patience`
    epochs in a row; the final weights are used. (The reference monitors the running training loss of the epoch,
    summed over its batches in train mode, with patience 4 and the final weights; its loss mixes weights from the
    whole epoch, ours is one quantity of the weights being scored.)
    """

    lr: float = param(0.1, gt=0, help="fine-tuning learning rate")
    max_epochs: int = param(30, ge=1, help="at most this many fine-tuning epochs")
    patience: int = param(4, ge=1, help="stop after this many epochs without a lower test-set loss")

    uses_original: ClassVar[bool] = True

    def record_options(self) -> dict | None:
        return None

    def mid_target(self) -> float | str:
        return "median"

    def finetune_params(self, ctx: ScoreContext) -> Any:
        from ..methods._loop import LoopParams

        r = ctx.recipe
        return LoopParams(lr=self.lr, epochs=self.max_epochs, batch_size=r.batch_size, optimizer=r.optimizer,
                          momentum=r.momentum, weight_decay=r.weight_decay, schedule="constant", seed=ctx.seed)

    def cache_spec(self, ctx: ScoreContext) -> dict[str, Any]:
        return {"finetune": to_dict(self.finetune_params(ctx))}

    def compute(self, ctx: ScoreContext) -> np.ndarray:
        from ..methods._loop import run_loop
        from ..tasks import get_task
        from .classifier import cross_entropy, softmax
        from .evaluate import predict

        assert ctx.original is not None
        task, data = get_task("classifier"), ctx.data
        test = data.subset("test", np.arange(len(data.y_test)))
        train = data.subset("train", np.arange(len(data.y_train)))
        params = self.finetune_params(ctx)
        world = torch.distributed.get_world_size() if torch.distributed.is_available() and \
            torch.distributed.is_initialized() else 1
        per_epoch = math.ceil(math.ceil(len(test) / params.batch_size) / world)  # run_loop's optimiser steps
        losses: list[float] = []
        state = {"best": math.inf, "bad": 0}

        def on_epoch(e: int) -> None:  # guards the step count the stopping rule relies on
            if e != len(losses):
                raise RuntimeError(f"holdout: epoch {e} started after {len(losses)} evaluated epochs")

        def after_step(m: nn.Module, steps: int) -> bool:
            if steps % per_epoch:
                return False
            losses.append(cross_entropy(*predict(m, test, task, ctx.eval_batch_size)))  # eval mode
            if losses[-1] < state["best"]:
                state.update(best=losses[-1], bad=0)
            else:
                state["bad"] += 1
            return state["bad"] >= self.patience

        model = copy.deepcopy(ctx.original)
        run_loop(model, lambda m, _f, batch, _refs: task.loss(m, batch), params, retain=test, pairing="retain",
                 after_step=after_step, on_epoch=on_epoch, desc="holdout")
        self.epochs_, self.losses_ = len(losses), losses
        p = softmax(predict(ctx.original, train, task, ctx.eval_batch_size)[0])  # [N, C] float64
        q = softmax(predict(model, train, task, ctx.eval_batch_size)[0])
        return holdout_kl_score(p, q)


@SCORES.register("curvature", paper="Garg et al. 2024, arXiv 2307.05831; CURE, arXiv 1811.09716",
                 reads="training record")
@dataclass
class Curvature:
    """Mean over the epochs of the original's training of the input-space loss curvature ‖∇L(x+z) − ∇L(x)‖ with
    z = h·sign(∇L)/‖·‖ (memorization.loss_curvature), measured after each epoch in eval mode."""

    h: float = param(0.01, gt=0, help="finite-difference step")

    uses_original: ClassVar[bool] = False

    def record_options(self) -> dict | None:
        return {"curvature_h": self.h}

    def mid_target(self) -> float | str:
        return "median"

    def compute(self, ctx: ScoreContext) -> np.ndarray:
        return _need_record("curvature", ctx, self.record_options()).proxy("curvature")


@SCORES.register("file", paper="a published score array, e.g. Feldman & Zhang's CIFAR-100 tr_mem", reads="file")
@dataclass
class File:
    """A score read from a .npy / .npz file (memorization.load_score_file), one value per training example, already
    oriented higher = more memorised (Feldman-Zhang's tr_mem is)."""

    path: str = param(help="the .npy or .npz file")
    key: str | None = param(None, help="the array's name in an .npz (None: its only array)")
    labels_key: str | None = param(None, help="an .npz array of the labels the scores were computed for (Feldman & "
                                              "Zhang's tr_labels): they must equal the loaded training labels, so a "
                                              "file in another example order is an error, not a wrong score")
    mid: float = param(0.5, help="mid_target() for rum_mix_split: the value the mid group is closest to (0.5 for a "
                                 "memorisation estimate)")

    uses_original: ClassVar[bool] = False

    def record_options(self) -> dict | None:
        return None

    def mid_target(self) -> float | str:
        return self.mid

    def check(self) -> None:
        """Before any training (the pipelines call it while validating): the file must exist."""
        from pathlib import Path

        if not Path(self.path).is_file():
            raise FileNotFoundError(f"score.file: path {self.path!r} is not a file")

    def cache_spec(self, ctx: ScoreContext) -> dict[str, Any]:
        from .._io import sha256_file

        self.check()
        return {"file_sha256": sha256_file(self.path)}

    def compute(self, ctx: ScoreContext) -> np.ndarray:
        values = load_score_file(self.path, self.key)
        n = len(ctx.data.y_train)
        if values.shape[0] != n:
            raise ValueError(f"score file {self.path!r}{'' if self.key is None else f'[{self.key!r}]'} holds "
                             f"{values.shape[0]} values; the training set of '{ctx.dataset}' has {n} examples")
        if self.labels_key is not None:
            labels = load_score_file(self.path, self.labels_key)
            differ = np.flatnonzero(labels != ctx.data.y_train) if labels.shape == (n,) else np.arange(n)
            if differ.size:
                raise ValueError(f"score file {self.path!r}[{self.labels_key!r}]: the labels differ from the training "
                                 f"labels of '{ctx.dataset}' at {differ.size} of {n} examples (first: "
                                 f"{differ[:5].tolist()}): the file orders the examples differently; reorder it first")
        return values
