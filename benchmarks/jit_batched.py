"""JiT: the batched loss (the N noise draws of a mini-batch in ONE forward pass) against the per-draw loop (N passes).

    python benchmarks/jit_batched.py [--quick] [--draws 25 100] [--repeats 5] [--threads 1]

On the embedded digits data (forget set: the 133 training images of class 0), for the digits MLP and the small CNN
(each trained briefly from seed 0), runs the same JiT update twice from the same weights and the same noise: with
`jit_loss` and with `jit_loss_loop`. Prints the largest weight difference (the two must be the same update, up to
float rounding) and the time ratio loop / batched (best of --repeats, both measured in this run, so the ratio holds on
a noisy machine). --quick: one repeat, N = 25, one training epoch (a few seconds).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from unlearnkit.config import build, to_dict
from unlearnkit.methods import create_method
from unlearnkit.methods.jit import jit_loss, jit_loss_loop, run_jit
from unlearnkit.methods.retrain import fit
from unlearnkit.models import build_model
from unlearnkit.pipelines.classification import ClassificationConfig, TrainRecipe, plan
from unlearnkit.tasks import get_task


def trained(name: str, data, epochs: int):
    """A digits model (seed 0) trained for `epochs` with the digits recipe's other settings."""
    model = build_model(name, seed=0, input_shape=data.input_shape, num_classes=data.num_classes)
    recipe = build(TrainRecipe, {**to_dict(TrainRecipe()), "epochs": epochs})
    fit(model, data.subset("train", range(len(data.y_train))), get_task("classifier"), recipe, progress=False)
    return model.eval()


def timed_update(method, model, forget, loss, repeats: int) -> tuple[float, torch.nn.Module]:
    """(best wall-clock seconds of `repeats` JiT updates from `model`, the updated model)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        out = copy.deepcopy(model)
        start = time.perf_counter()
        run_jit(method, out, get_task("classifier"), forget, loss=loss)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run")
    parser.add_argument("--draws", type=int, nargs="+", default=[25, 100], help="noise draws N")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    draws, repeats, epochs = ([25], 1, 1) if args.quick else (args.draws, args.repeats, 5)

    the_plan = plan(build(ClassificationConfig, {"scenario": "class", "forget_classes": [0], "methods": ["jit"]}))
    forget = the_plan.data.unlearn_data(the_plan.splits[0]).forget
    print(f"digits class 0: |D_f| = {len(forget)}, JiT defaults (σ 0.5, η 3e-4, batch 128, 1 epoch), "
          f"{args.threads} thread(s), best of {repeats}\n")
    print("| model | params | N | batched (s) | per-draw loop (s) | loop / batched | max abs weight diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("mlp", "cnn"):
        model = trained(name, the_plan.data, epochs)
        size = sum(p.numel() for p in model.parameters())
        for n in draws:
            method = create_method("jit", n_noise=n, seed=0)
            timed_update(method, model, forget, jit_loss, 1)  # warm-up: one-time imports and allocations
            t_batched, a = timed_update(method, model, forget, jit_loss, repeats)
            t_loop, b = timed_update(method, model, forget, jit_loss_loop, repeats)
            diff = max((u - v).abs().max().item() for u, v in zip(a.parameters(), b.parameters(), strict=True))
            moved = max((u - v).abs().max().item() for u, v in zip(a.parameters(), model.parameters(), strict=True))
            print(f"| {name} | {size} | {n} | {t_batched:.4f} | {t_loop:.4f} | {t_loop / t_batched:.1f}x | "
                  f"{diff:.1e} (update {moved:.1e}) |")
    print("\nSame weights before, same noise: the two formulations give the same update up to float rounding; the "
          "ratio is the speed-up of one batched forward pass over N passes.")


if __name__ == "__main__":
    main()
