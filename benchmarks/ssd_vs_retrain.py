"""SSD and JiT unlearning time against retraining from scratch, on digits class forgetting (class 0).

    python benchmarks/ssd_vs_retrain.py [--quick] [--repeats 5] [--threads 1] [--seeds 0 1 2]

For each seed, the digits benchmark's split (class scenario, class 0) and recipe (TrainRecipe: SGD lr 0.1, momentum 0.9,
30 epochs, batch 64, cosine): the original MLP is trained on D, the gold standard retrained on D_r with the same
recipe, both timed here. Then each method runs on a copy of the original (best of --repeats, after one warm-up run
that pays one-time imports), and the table gives speed-up = retrain time / unlearn time (RTE = its inverse) with the
forget / retain / test accuracy. "I_D cached": the original's training-set importances are in the model cache
(data.train_hash set), as for every SSD run on a model after its first. The tuned rows use the hyperparameters of
the `digits_class` preset, and every method gets the run's seed, as in the pipeline (JiT's noise depends on it).
Every number comes from this one run. --quick: 3 training epochs, one repeat, seed 0.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import tempfile
import time

import torch

from unlearnkit.config import build, to_dict
from unlearnkit.methods import create_method
from unlearnkit.methods.retrain import fit
from unlearnkit.models import build_model
from unlearnkit.pipelines import load_run_config
from unlearnkit.pipelines.classification import ClassificationConfig, TrainRecipe, plan
from unlearnkit.tasks import get_task

TUNED = load_run_config("digits_class")[1].method  # the preset's per-method hyperparameters


def _show(params: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items())


@torch.no_grad()
def accuracy(model, dataset) -> float:
    x, y = dataset.tensors
    return 100.0 * (model.eval()(x).argmax(1) == y).float().mean().item()


def timed(run, repeats: int):
    """(best seconds of `repeats` calls of run(), the last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    seeds = [0] if args.quick else args.seeds
    recipe = build(TrainRecipe, {"epochs": 3} if args.quick else {})
    cfg = build(ClassificationConfig, {"scenario": "class", "forget_classes": [0], "methods": ["ssd"], "seeds": seeds})
    the_plan, task = plan(cfg), get_task("classifier")
    settings = (("SSD defaults (α 10)", "ssd", {"cache_importances": False}),
                (f"SSD preset ({_show(TUNED['ssd'])})", "ssd", {**TUNED["ssd"], "cache_importances": False}),
                ("SSD preset, I_D cached", "ssd", TUNED["ssd"]),
                ("SSD faithful (batch importance), α 50", "ssd",
                 {"faithful": True, "selection_weighting": 50.0, "cache_importances": False}),
                (f"LFSSD preset ({_show(TUNED['lfssd'])})", "lfssd", {**TUNED["lfssd"], "cache_importances": False}),
                ("JiT defaults", "jit", {}),
                (f"JiT preset ({_show(TUNED['jit'])})", "jit", TUNED["jit"]))
    print(f"digits class 0, MLP, recipe lr {recipe.lr}, {recipe.epochs} epochs, batch {recipe.batch_size}, "
          f"{recipe.schedule}; {args.threads} thread(s); best of {repeats} after a warm-up run\n")
    print("| seed | model | time (s) | speed-up vs retrain | RTE | forget acc | retain acc | test acc |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for seed in seeds:
        data = the_plan.data.unlearn_data(the_plan.splits[seed])
        original = build_model("mlp", seed=seed, input_shape=the_plan.data.input_shape, num_classes=10)
        fit(original, the_plan.data.subset("train", range(len(the_plan.data.y_train))), task,
            dataclasses.replace(recipe, seed=seed), progress=False)
        retrain = create_method("retrain", **{**to_dict(recipe), "seed": seed}, init_seed=seed)
        t_retrain, gold = timed(lambda r=retrain, o=original, d=data: r.unlearn(copy.deepcopy(o), d, task), 1)
        rows = [("original", None, original), ("retrain", t_retrain, gold)]
        with tempfile.TemporaryDirectory() as home:
            os.environ["UNLEARNKIT_HOME"] = home
            for label, name, params in settings:
                method = create_method(name, **{**params, "seed": seed})  # as the pipeline: the run's seed
                method.unlearn(copy.deepcopy(original), data, task)  # warm-up (and, when cached, fills the cache)
                seconds, model = timed(lambda m=method, o=original, d=data: m.unlearn(copy.deepcopy(o), d, task),
                                       repeats)
                rows.append((label, seconds, model))
        for label, seconds, model in rows:
            speed = "–" if seconds is None else f"{t_retrain / seconds:.0f}x"
            rte = "–" if seconds is None else f"{seconds / t_retrain:.4f}"
            time_cell = "–" if seconds is None else f"{seconds:.4f}"
            print(f"| {seed} | {label} | {time_cell} | {speed} | {rte} | {accuracy(model, data.forget):.1f} "
                  f"| {accuracy(model, data.retain):.1f} | {accuracy(model, data.test):.1f} |")
    print("\nAcceptance (issue): forget acc < 10 %, retain acc within 10 points of the original's, RTE < 0.05.")


if __name__ == "__main__":
    main()
