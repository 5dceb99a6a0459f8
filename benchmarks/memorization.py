"""Memorisation scores on digits: the cost of the exact Feldman-Zhang estimate and of each proxy as multiples of
training the original once, their peak memory, and how well each proxy ranks the training examples like the exact
estimate (Spearman), all measured in one run.

    python benchmarks/memorization.py [--quick] [--k 128] [--fraction 0.7] [--seed 0] [--repeats 3] [--h 0.01]
                                      [--cache [DIR]] [--json PATH]

Set-up (vision.md §5.1-5.2): the embedded `digits` data (1347 training images of 8×8), the `mlp` model, and the
original recipe of the `digits` preset's `train:` block (SGD lr 0.1, momentum 0.9, wd 5e-4, batch 64, 30 epochs,
cosine), seed --seed. One torch thread; every cost is measured in this run on this machine.

Time (wall clock), as ratios to plain `methods.retrain.fit` of the original (median of --repeats runs, each on a
fresh model, after a one-epoch warm-up that pays the one-time imports):
- event proxies (confidence, max_conf, neg_entropy, binary_acc; one shared record): `record_training` instead of
  `fit` (the same training, bit for bit, plus the per-batch softmax bookkeeping); extra = record − fit.
- curvature: `record_training(curvature_h=h)` (the loss curvature of all N examples after every epoch) − fit.
- holdout: `compute_score("holdout")` on the trained original: fine-tuning a copy on the test set (early stopping)
  and two predictions over the training set. All of it is extra.
- exact: `compute_score("exact", k=K, fraction, backend="serial")`: K subset models trained one after another in this
  process, each followed by a prediction over all N. All of it is extra (the original is not needed).
Every scored value is computed, not loaded: the cache is a fresh temporary directory unless --cache is given, and
`hit_` (and exact's `job_hits_`) are checked to be False.

Peak memory of one unit of work (model built inside it), in separate untimed runs: torch's CPU allocator peak
(`unlearnkit.testing.memory.cpu_peak_bytes`: torch.profiler allocation events, above the level at the start: every
tensor, incl. weights, optimiser state, activations, batches) and, apart, the tracemalloc peak (Python objects and
numpy arrays, e.g. the record's per-example accumulators, which torch's allocator does not see). Not the process RSS.
The exact estimate's unit is one `train_subset_job` (load the data, build, train on the fraction-subset, predict on
all N); the process backend holds max_workers of them at once, each in its own Python + torch worker process.

Correlation: Spearman ρ (two-sided p) of each proxy with the exact estimate over the N training examples
(`metrics.memorization.rank_correlations`; NaNs dropped pairwise). Every score is oriented higher = more memorised,
so a proxy that agrees with memorisation has ρ > 0; "raw ρ" is that of the quantity before orientation (the mean
over epochs of p(y), max_k p_k, Σ p log p, 1[argmax = y]: minus ours; holdout and curvature are not flipped). The
noise ceiling: ρ between two independent K-model estimates (subset seeds --seed and --seed + 1); with
estimate = truth + independent noise, a proxy cannot exceed about sqrt(that ρ) against one estimate (printed too).
"pooled 2K" is the estimate from both sets of subset models together (a less noisy reference).
--quick: K = 16, 5 epochs, one repeat, holdout max 5 epochs (about 15 s on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU profiler's start-up chatter on stderr

import numpy as np
import torch

import unlearnkit
from unlearnkit.cache import ModelCache, spec_key
from unlearnkit.config import build, load_yaml
from unlearnkit.methods.retrain import fit
from unlearnkit.metrics.memorization import feldman_zhang, rank_correlations, subset_masks
from unlearnkit.metrics.scores import (
    SCORES,
    ScoreContext,
    compute_score,
    job_seed,
    record_training,
    train_subset_job,
)
from unlearnkit.models import build_model
from unlearnkit.pipelines.classification import TrainRecipe, load_dataset, original_spec, warm_up_imports
from unlearnkit.tasks import get_task
from unlearnkit.testing.memory import cpu_peak_bytes, quiet_stderr

DATASET, MODEL = "digits", "mlp"
EVENTS = ("confidence", "max_conf", "neg_entropy", "binary_acc")
PROXIES = (*EVENTS, "holdout", "curvature")
RAW = {"confidence": "mean p(y)", "max_conf": "mean max_k p_k", "neg_entropy": "mean Σ p log p",
       "binary_acc": "mean 1[argmax = y]", "holdout": "KL/2 (not flipped)", "curvature": "mean curvature (not flipped)"}


def say(text: str) -> None:
    print(text, file=sys.stderr)


def tracemalloc_peak(run) -> int:
    """Peak bytes of Python objects and numpy arrays allocated while `run()` runs, above the level at its start."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def wall(run) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (K = 16, 5 epochs, one repeat)")
    parser.add_argument("--k", type=int, default=128, help="subset models K of each exact estimate")
    parser.add_argument("--fraction", type=float, default=0.7, help="fraction of the training set in each subset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the original; subset seeds --seed and --seed+1")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of fit / record_training (median)")
    parser.add_argument("--h", type=float, default=0.01, help="curvature finite-difference step")
    parser.add_argument("--cache", nargs="?", const="", default=None, metavar="DIR",
                        help="use this model cache (no DIR: UNLEARNKIT_HOME) instead of a fresh temporary one; "
                             "cached scores then report their stored compute time")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    k, repeats = (16, 1) if args.quick else (args.k, args.repeats)
    if k < 2 or repeats < 1:
        parser.error("--k must be >= 2 and --repeats >= 1")

    with contextlib.ExitStack() as stack:
        if args.cache is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="unlearnkit-memorization-"))
            cache = ModelCache(root)
        else:
            cache = ModelCache(args.cache or None)
        results = run(args, k, repeats, cache)
    report(results, args, k, repeats)


def run(args, k: int, repeats: int, cache: ModelCache) -> dict:
    preset = load_yaml(Path(unlearnkit.__file__).parent / "configs" / "digits.yaml")
    train = {**preset["train"], "seed": args.seed, **({"epochs": 5} if args.quick else {})}
    recipe = build(TrainRecipe, train, where="train")
    data = load_dataset(DATASET, {})
    n = len(data.y_train)
    task = get_task("classifier")
    train_view = data.subset("train", np.arange(n))

    def fresh():
        return build_model(MODEL, seed=args.seed, input_shape=data.input_shape, num_classes=data.num_classes)

    def do_fit():
        model = fresh()
        fit(model, train_view, task, recipe, desc="original", progress=False)
        return model

    def do_record(h: float | None = None):
        model = fresh()
        _, record = record_training(model, train_view, task, recipe, curvature_h=h)
        return model, record

    # warm-up: one epoch of each pays the one-time imports and allocations
    warm_up_imports()
    short = build(TrainRecipe, {**train, "epochs": 1}, where="train")
    fit(fresh(), train_view, task, short, progress=False)
    record_training(fresh(), train_view, task, short, curvature_h=args.h)

    # ---- time: fit, record_training, record_training with curvature (round-robin, median)
    times: dict[str, list[float]] = {"fit": [], "record": [], "record_curvature": []}
    for _ in range(repeats):
        t, original = wall(do_fit)
        times["fit"].append(t)
        t, (recorded, record) = wall(do_record)
        times["record"].append(t)
        t, (_, record_curv) = wall(lambda: do_record(args.h))
        times["record_curvature"].append(t)
    seconds = {name: statistics.median(v) for name, v in times.items()}
    bit_for_bit = same_weights(original, recorded)

    cfg = SimpleNamespace(dataset=DATASET, model=MODEL, model_args={}, train=recipe, train_augment=False)
    ctx = ScoreContext(data=data, dataset=DATASET, dataset_args={}, model=MODEL, model_args={}, recipe=recipe,
                       seed=args.seed, cache=cache, original=original.eval(),
                       original_key=spec_key(original_spec(cfg, data, args.seed)), record=record, say=say)
    scores: dict[str, np.ndarray] = {}
    hits: dict[str, bool] = {}
    for name in EVENTS:
        scores[name] = compute_score(score := SCORES.create(name), ctx)
        hits[name] = score.hit_
    ctx.record = record_curv
    scores["curvature"] = compute_score(score := SCORES.create("curvature", h=args.h), ctx)
    hits["curvature"] = score.hit_
    holdout = SCORES.create("holdout", **({"max_epochs": 5} if args.quick else {}))
    seconds["holdout"], scores["holdout"] = wall(lambda: compute_score(holdout, ctx))
    hits["holdout"] = holdout.hit_
    if not holdout.hit_:
        seconds["holdout"] = holdout.seconds_  # the score's own compute time (cache bookkeeping left out)

    # ---- exact: two independent estimates (the first timed, serial), and both pooled
    exact = {}
    for label, subset_seed in (("a", args.seed), ("b", args.seed + 1)):
        score = SCORES.create("exact", k=k, fraction=args.fraction, subset_seed=subset_seed, backend="serial")
        with np.errstate(invalid="ignore"), _no_missing_warning():
            values = compute_score(score, ctx)
        masks = subset_masks(n, k, args.fraction, subset_seed)  # [K, N], the score's own
        exact[label] = {"values": values, "masks": masks, "keys": [job.key for job in score.jobs(ctx, masks)],
                        "recipe": score.estimator_recipe(ctx),
                        "subset_seed": subset_seed, "hit": score.hit_ or any(getattr(score, "job_hits_", ())),
                        "seconds": score.seconds_, "nan": int(np.isnan(values).sum())}
    seconds["exact"] = exact["a"]["seconds"]
    hits["exact"] = exact["a"]["hit"]
    pooled = pooled_estimate(exact, cache)

    # ---- peak memory of one unit of work (untimed runs)
    subset_job = {"dataset": DATASET, "dataset_args": {}, "model": MODEL, "model_args": {},
                  "recipe": exact["a"]["recipe"], "train_indices": np.flatnonzero(exact["a"]["masks"][0]).tolist(),
                  "seed": job_seed(args.seed, 0)}
    units = {"fit": do_fit, "record": do_record, "record_curvature": lambda: do_record(args.h),
             "subset": lambda: train_subset_job(**subset_job)}
    memory = {}
    for name, unit in units.items():
        with quiet_stderr():
            torch_peak = cpu_peak_bytes(unit)
        memory[name] = {"torch_bytes": torch_peak, "tracemalloc_bytes": tracemalloc_peak(unit)}

    # ---- correlations
    ref = exact["a"]["values"]
    corr = rank_correlations(scores, ref)
    corr_b = rank_correlations(scores, exact["b"]["values"])
    corr_pooled = rank_correlations(scores, pooled)
    ceiling = rank_correlations({"b": exact["b"]["values"]}, ref)["b"]
    return {"n": n, "recipe": train, "seconds": seconds, "times": times, "hits": hits, "bit_for_bit": bit_for_bit,
            "holdout_epochs": holdout.epochs_ if not holdout.hit_ else None, "memory": memory,
            "exact": {lab: {kk: v for kk, v in e.items() if kk not in ("values", "masks", "keys")}
                      for lab, e in exact.items()},
            "corr": corr, "corr_b": corr_b, "corr_pooled": corr_pooled, "ceiling": ceiling,
            "pooled_nan": int(np.isnan(pooled).sum()), "n_test": len(data.y_test), "spread": spread(ref)}


def spread(mem: np.ndarray) -> dict[str, float]:
    """How the exact estimate is spread: its mean and the fractions near 0 (ties at the bottom of the ranking), above
    0.25 and above 0.5."""
    mem = mem[~np.isnan(mem)]
    return {"mean": float(mem.mean()), "near_0": float((np.abs(mem) < 0.05).mean()),
            "above_0.25": float((mem > 0.25).mean()), "above_0.5": float((mem > 0.5).mean())}


@contextlib.contextmanager
def _no_missing_warning():
    """The exact estimate warns about examples in all subsets or none (NaN); they are counted in the report."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="score.exact", category=RuntimeWarning)
        yield


def pooled_estimate(exact: dict, cache: ModelCache) -> np.ndarray:
    """The Feldman-Zhang estimate from the 2K subset models of both estimates (their cached correctness vectors)."""
    correct = [cache.load_tensors(key)[0]["correct"].numpy().astype(bool) for e in exact.values() for key in e["keys"]]
    masks = np.concatenate([e["masks"] for e in exact.values()])  # [2K, N]
    return feldman_zhang(masks, np.stack(correct), on_missing="nan")


def pvalue(p: float) -> str:
    return "< 1e-300" if p == 0 else f"{p:.1e}"


def report(r: dict, args, k: int, repeats: int) -> None:
    s, fit_s = r["seconds"], r["seconds"]["fit"]
    train = r["recipe"]
    print(f"digits: N = {r['n']} training images, mlp, original recipe {train['optimizer']} lr {train['lr']}, "
          f"{train['epochs']} epochs, batch {train['batch_size']}, momentum {train['momentum']}, wd "
          f"{train['weight_decay']}, {train['schedule']}; seed {args.seed}; CPU, 1 torch thread; exact: K = {k} "
          f"subset models on {args.fraction:.0%} subsets; wall clock, median of {repeats} for fit / record\n")
    uncached = not any(r["hits"].values())
    print("| cost | seconds | × fit | extra × fit |")
    print("|---|---:|---:|---:|")
    print(f"| original: plain `fit` | {fit_s:.2f} | 1.00x | – |")
    rows = (("event proxies (confidence, max_conf, neg_entropy, binary_acc): `record_training`", s["record"], True),
            (f"curvature: `record_training(curvature_h={args.h})`", s["record_curvature"], True),
            (f"holdout: fine-tune on the {r['n_test']} test images ({r['holdout_epochs']} epochs) + 2 predictions",
             s["holdout"], False),
            (f"exact: K = {k} subset models, serial ({s['exact'] / k:.2f} s each, {s['exact'] / k / fit_s:.2f}x fit)",
             s["exact"], False))
    for label, t, replaces_fit in rows:
        total = f"{t / fit_s:.2f}x" if replaces_fit else "–"
        extra = (t - fit_s if replaces_fit else t) / fit_s
        print(f"| {label} | {t:.2f} | {total} | {extra:.2f}x |")
    print(f"\nrecord_training reproduces fit's weights bit for bit: {'yes' if r['bit_for_bit'] else 'NO'}; "
          f"scores computed, not cache hits: {'yes' if uncached else 'NO (cached: ' + str(r['hits']) + ')'}\n")

    mem, kib = r["memory"], 2**10
    base = mem["fit"]["torch_bytes"]
    print("| peak memory of one unit of work | torch allocator (KiB) | × fit | tracemalloc: Python + numpy (KiB) |")
    print("|---|---:|---:|---:|")
    labels = {"fit": "original: plain `fit`", "record": "original: `record_training`",
              "record_curvature": f"original: `record_training(curvature_h={args.h})`",
              "subset": f"exact: one subset model (`train_subset_job`, {args.fraction:.0%} subset + predict on N)"}
    for name, label in labels.items():
        m = mem[name]
        print(f"| {label} | {m['torch_bytes'] / kib:.0f} | {m['torch_bytes'] / base:.2f}x | "
              f"{m['tracemalloc_bytes'] / kib:.0f} |")
    print(f"\nexact: K = {k} such units; the serial backend runs them one at a time (peak = one unit), the process "
          "backend holds max_workers of them at once, each in its own Python + torch worker process (whose resident "
          "runtime, not counted here, dwarfs these tensors for a digits MLP).\n")

    a, b = r["exact"]["a"], r["exact"]["b"]
    rho_c, p_c = r["ceiling"]
    print(f"Spearman ρ with the exact estimate (subset seed {a['subset_seed']}, K = {k}; NaN for {a['nan']} examples, "
          f"dropped pairwise); higher = more memorised for every score, so agreement is ρ > 0\n")
    d = r["spread"]
    print(f"The estimate: mean {d['mean']:.3f}; |mem| < 0.05 for {d['near_0']:.0%} of the examples, mem > 0.25 for "
          f"{d['above_0.25']:.0%}, > 0.5 for {d['above_0.5']:.0%}.\n")
    print(f"| proxy | ρ | p | raw quantity | raw ρ | ρ vs estimate 2 (seed {b['subset_seed']}) | ρ vs pooled 2K |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name in PROXIES:
        rho, p = r["corr"][name]
        raw = -rho if name in EVENTS else rho
        print(f"| {name} | {rho:+.3f} | {pvalue(p)} | {RAW[name]} | {raw:+.3f} | {r['corr_b'][name][0]:+.3f} | "
              f"{r['corr_pooled'][name][0]:+.3f} |")
    print(f"| noise ceiling: exact (seed {b['subset_seed']}) vs exact (seed {a['subset_seed']}), K = {k} each | "
          f"{rho_c:+.3f} | {pvalue(p_c)} | – | – | – | – |")
    bound = f"{math.sqrt(rho_c):.3f}" if rho_c > 0 else "0 (the two estimates do not agree: K is too small)"
    print(f"\nA proxy's ρ against one K = {k} estimate is bounded by about sqrt({rho_c:.3f}) = {bound} (each "
          f"estimate = truth + independent noise); NaN in estimate 2: {b['nan']}, pooled: {r['pooled_nan']}.")
    if args.json:
        out = {"config": {"k": k, "fraction": args.fraction, "seed": args.seed, "repeats": repeats, "h": args.h,
                          "quick": args.quick, "recipe": train, "threads": 1,
                          "memory": "torch allocator (cpu_peak_bytes) + tracemalloc"},
               **{key: r[key] for key in ("seconds", "times", "hits", "bit_for_bit", "holdout_epochs", "memory",
                                          "exact", "ceiling", "spread")},
               "ratios": {"record": s["record"] / fit_s, "record_curvature": s["record_curvature"] / fit_s,
                          "holdout": s["holdout"] / fit_s, "exact": s["exact"] / fit_s},
               "spearman": {name: {"rho": r["corr"][name][0], "p": r["corr"][name][1],
                                   "raw_rho": -r["corr"][name][0] if name in EVENTS else r["corr"][name][0],
                                   "rho_estimate_2": r["corr_b"][name][0], "rho_pooled": r["corr_pooled"][name][0]}
                            for name in PROXIES}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
