"""Membership-attack feature extraction: batched forward passes vs. one example at a time, measured in one run.

    python benchmarks/mia_features.py [--n 5000] [--batch-size 512] [--quick]

The SSD/JiT reference extracts the entropy-MIA features with a DataLoader of batch size 1 (about 60k forward passes
on CIFAR; specs/vision.md §6, §8 V13). unlearnkit's `collect_outputs` runs one batched pass per split. This script
times both on the same model and examples (the CIFAR-sized CNN on 3x32x32 inputs, and the digits MLP), checks that
both give the same features (entropy, and the attack's score), and prints the time ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import TensorDataset

from unlearnkit.metrics.classifier import prediction_entropy
from unlearnkit.metrics.evaluate import predict
from unlearnkit.metrics.mia import mia_entropy_lr
from unlearnkit.models import build_model
from unlearnkit.tasks import get_task


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def one_setting(name: str, input_shape: tuple[int, ...], n: int, batch_size: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *input_shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    model = build_model(name, seed=0, input_shape=input_shape, num_classes=10).eval()
    task, data = get_task("classifier"), TensorDataset(x, y)
    predict(model, TensorDataset(x[:8], y[:8]), task, batch_size)  # warm-up (allocator, first-call overheads)
    (batched, _), t_batched = _timed(lambda: predict(model, data, task, batch_size))
    (single, _), t_single = _timed(lambda: predict(model, data, task, 1))
    h_b, h_s = prediction_entropy(batched), prediction_entropy(single)
    half = n // 2  # the attack itself on both: members = first half, non-members = second half, target = first 100
    score_b = mia_entropy_lr(batched[:half], batched[half:], batched[:100])
    score_s = mia_entropy_lr(single[:half], single[half:], single[:100])
    return {"model": name, "input": "x".join(map(str, input_shape)), "n": n, "batched_s": t_batched,
            "single_s": t_single, "speedup": t_single / t_batched, "max_entropy_diff": float(np.abs(h_b - h_s).max()),
            "same_attack_score": score_b == score_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="examples per setting")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run (n=300)")
    args = parser.parse_args()
    n = 300 if args.quick else args.n
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"feature extraction for the membership attacks, {n} examples, batch {args.batch_size} vs 1, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | input | batched (s) | one at a time (s) | speedup | max |entropy diff| | same attack score |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, shape in (("cnn", (3, 32, 32)), ("mlp", (1, 8, 8))):
        r = one_setting(name, shape, n, args.batch_size)
        print(f"| {r['model']} | {r['input']} | {r['batched_s']:.3f} | {r['single_s']:.3f} | {r['speedup']:.1f}x | "
              f"{r['max_entropy_diff']:.1e} | {r['same_attack_score']} |")


if __name__ == "__main__":
    main()
