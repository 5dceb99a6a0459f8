"""MIMU: the edge-list-free rook's-graph aggregation against an explicit edge list, on the MLP's masked layer.

    python benchmarks/mimu_aggregation.py [--quick] [--batch 4] [--repeats 5] [--threads 1] [--json PATH]

Set-up (shared/specs/mimu.md §2–§4): the spec's bias-free MLP (Flatten → Linear(784→128)+ReLU → Linear(128→64)+ReLU
→ Linear(64→10), random weights, seed 0) on B random 28×28 inputs with random labels. The masked layer is the
128→64 Linear: W is 64 × 128, N = 8 192 nodes, E = mn(m+n−2) = 1 556 480 directed edges. Its per-sample input a,
output o and ∂L/∂o are captured once by hooks (one batched backward), then ∂L/∂W = (∂L/∂o)·aᵀ.

Stages, each run both ways from the same inputs and the same GCN weights:
- (a) features + aggregation: `node_features` (the z-scored [B, 64, 128, 4] tensor) and one mean aggregation of it.
- (b) one GCN epoch over the B samples: `MaskGCN` (defaults: F 4 → hidden 32, 3 rounds, sigmoid, 4 385 parameters)
  forward, a fixed linear function of the logits as loss, backward to the GCN's parameters.
Edge-list references (`edge_list_aggregate`): "index_add" gathers the [E, d] messages h[src] and scatter-adds them on
the targets, which is what the reference's PyG MessagePassing(aggr="mean") does; "sparse" is one torch.sparse COO
[N, N] × [N, B·d] product (E indices and values, no message tensor). The edge list ([2, E] int64) is built once
before the timed runs and is not in their peaks; its own build is the first row.

Time: best wall clock of --repeats runs after a warm-up, both ways in this run, so the ratios hold on a noisy
machine. Peak memory: `unlearnkit.testing.memory.cpu_peak_bytes` (torch profiler allocation events, above the level
at the start) in a separate, untimed run. Ratios are edge list / edge-list-free. Max abs diff: the aggregation output
(a) or the GCN logits and parameter gradients (b), edge list vs edge-list-free (float32).
--quick: B = 1, one repeat (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU profiler's start-up chatter on stderr

import torch
import torch.nn.functional as F
from torch import nn

from unlearnkit.methods._mimu_graph import (
    MaskGCN,
    edge_list,
    edge_list_aggregate,
    node_features,
    rook_mean_aggregate,
    weight_gradient,
)
from unlearnkit.testing.memory import cpu_peak_bytes

MODES = ("index_add", "sparse")


def mlp_signals(batch: int) -> tuple[torch.Tensor, ...]:
    """(a [B, 128], o [B, 64], W [64, 128], ∂L/∂W [B, 64, 128]) of the spec's MLP's masked layer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128, bias=False), nn.ReLU(), nn.Linear(128, 64, bias=False),
                          nn.ReLU(), nn.Linear(64, 10, bias=False)).eval()
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    seen = {}

    def hook(_mod, inp, out):
        out.retain_grad()
        seen.update(a=inp[0].detach(), o=out)

    handle = model[3].register_forward_hook(hook)
    F.cross_entropy(model(x), y, reduction="sum").backward()   # per-sample ∂L_b/∂o_b: the samples do not interact
    handle.remove()
    return seen["a"], seen["o"].detach(), model[3].weight.detach(), weight_gradient(seen["o"].grad, seen["a"])


def best_time(run, repeats: int) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few-second smoke run (B = 1, one repeat)")
    parser.add_argument("--batch", type=int, default=4, help="samples B per feature tensor / GCN epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch, repeats = (1, 1) if args.quick else (args.batch, args.repeats)

    a, o, w, g = mlp_signals(batch)
    m, n = w.shape
    edges = edge_list(m, n)
    torch.manual_seed(0)
    gcn = MaskGCN()
    params = list(gcn.parameters())
    r = torch.randn(batch, m * n, generator=torch.Generator().manual_seed(1))   # the loss Σ r·z of stage (b)

    def features(aggregate):
        return aggregate(node_features(a, o, w, g))

    def epoch(aggregate):
        z = gcn(node_features(a, o, w, g), aggregate)
        return z.detach(), torch.autograd.grad((r * z).sum(), params)

    ways = {"free": rook_mean_aggregate} | {
        mode: partial(edge_list_aggregate, edges=edges, mode=mode) for mode in MODES}
    build_edges = partial(edge_list, m, n)
    build = {"time_s": best_time(build_edges, repeats), "peak_bytes": cpu_peak_bytes(build_edges),
             "edge_list_bytes": edges.numel() * edges.element_size()}
    results: dict[str, dict] = {"features_aggregation": {}, "gcn_epoch": {}}
    outputs = {"features_aggregation": {}, "gcn_epoch": {}}
    for way, aggregate in ways.items():
        for stage, fn in (("features_aggregation", features), ("gcn_epoch", epoch)):
            outputs[stage][way] = fn(aggregate)
            results[stage][way] = {"time_s": best_time(partial(fn, aggregate), repeats),
                                   "peak_bytes": cpu_peak_bytes(partial(fn, aggregate))}
    for mode in MODES:
        diff = (outputs["features_aggregation"][mode] - outputs["features_aggregation"]["free"]).abs().max().item()
        results["features_aggregation"][mode]["max_abs_diff"] = diff
        (z_edge, g_edge), (z_free, g_free) = outputs["gcn_epoch"][mode], outputs["gcn_epoch"]["free"]
        results["gcn_epoch"][mode]["max_abs_diff"] = (z_edge - z_free).abs().max().item()
        results["gcn_epoch"][mode]["grad_max_abs_diff"] = max((u - v).abs().max().item()
                                                              for u, v in zip(g_edge, g_free, strict=True))
        results["gcn_epoch"][mode]["grad_max_rel_diff"] = max(((u - v).abs().max() / v.abs().max()).item()
                                                              for u, v in zip(g_edge, g_free, strict=True))

    mib = 2**20
    print(f"MLP masked layer W {m} x {n}: N = {m * n} nodes, E = {edges.shape[1]} directed edges (edge list "
          f"{build['edge_list_bytes'] / mib:.1f} MiB); B = {batch} sample(s); MaskGCN {sum(p.numel() for p in params)}"
          f" parameters; CPU, {args.threads} thread(s), best of {repeats}; ratios = edge list / edge-list-free\n")
    print("| stage | edge-list way | free (ms) | edge list (ms) | time ratio | free peak (MiB) | edge list peak (MiB) "
          "| memory ratio | max abs diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| build the edge list (once) | cartesian_prod | – | {1e3 * build['time_s']:.1f} | – | 0 | "
          f"{build['peak_bytes'] / mib:.1f} | – | – |")
    stages = {"features_aggregation": "(a) features + aggregation", "gcn_epoch": "(b) GCN epoch, fwd+bwd"}
    for stage, label in stages.items():
        free = results[stage]["free"]
        for mode in MODES:
            e = results[stage][mode]
            diff = f"{e['max_abs_diff']:.1e}"
            if stage == "gcn_epoch":
                diff += f" (grads {e['grad_max_abs_diff']:.1e}, rel {e['grad_max_rel_diff']:.1e})"
            print(f"| {label} | {mode} | {1e3 * free['time_s']:.1f} | {1e3 * e['time_s']:.1f} | "
                  f"{e['time_s'] / free['time_s']:.1f}x | {free['peak_bytes'] / mib:.1f} | "
                  f"{e['peak_bytes'] / mib:.1f} | {e['peak_bytes'] / free['peak_bytes']:.1f}x | {diff} |")
    worst = max(results[s][mode]["max_abs_diff"] for s in results for mode in MODES)
    print(f"\nedge-list-free == edge list to 1e-5 (aggregation outputs and logits): {'yes' if worst <= 1e-5 else 'NO'} "
          f"(worst {worst:.1e}). The edge-list-free way holds no [2, E] index and no [E, d] messages: its peak is "
          "the O(mn·d) activations.")
    if args.json:
        config = {"m": m, "n": n, "nodes": m * n, "edges": edges.shape[1], "batch": batch, "repeats": repeats,
                  "threads": args.threads, "quick": args.quick, "gcn_parameters": sum(p.numel() for p in params)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": config, "edge_list_build": build, **results}, indent=2))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
