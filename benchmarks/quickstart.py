"""Quick-start benchmark: for each method, unlearning time / retraining time (RTE) and ToW, measured in one run.

    python benchmarks/quickstart.py [--seeds 0 1 2] [--model mlp] [--scenarios random class]

Runs the embedded `digits` benchmark (presets `digits` and `digits_class`) from an EMPTY temporary cache, so the
original model, the retrained gold standard and every method are trained in this process; then runs it again to
measure the warm (all cached) run. Only ratios measured within this one run are printed as results, so they hold on
a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from unlearnkit.metrics.stats import format_interval, t_interval

PRESETS = {"random": "digits", "class": "digits_class"}  # each scenario with its own preset's hyperparameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--scenarios", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UNLEARNKIT_HOME"] = os.path.join(tmp, "home")
        from unlearnkit.pipelines import run

        print(f"digits, model={args.model}, seeds={args.seeds}, cold cache in {tmp}\n")
        print("| scenario | method | n | unlearn time (s) | RTE = unlearn / retrain | ToW | ToW-MIA |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for scenario in args.scenarios:
            preset = PRESETS[scenario]
            overrides = [f"model={args.model}", f"seeds={args.seeds}".replace(" ", ""),
                         f"output_dir={os.path.join(tmp, scenario)}"]
            start = time.perf_counter()
            result = run(preset, overrides, say=lambda _msg: None)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            warm_result = run(preset, overrides, say=lambda _msg: None)
            warm = time.perf_counter() - start
            labels = dict.fromkeys(r["label"] for r in result.rows if r["label"] != "original")
            for label in labels:
                rows = [r for r in result.rows if r["label"] == label]
                cell = {k: format_interval(t_interval([r["times" if k.endswith("s") or k == "rte" else "metrics"][k]
                                                       for r in rows]))
                        for k in ("unlearn_s", "rte", "tow", "tow_mia")}
                print(f"| {scenario} | {label} | {len(rows)} | {cell['unlearn_s']} | {cell['rte']} | {cell['tow']} "
                      f"| {cell['tow_mia']} |")
            hits = sum(warm_result.cache_hits.values())
            print(f"| {scenario} | (pipeline) | | cold {cold:.1f}s, warm {warm:.1f}s | warm / cold = {warm / cold:.2f} "
                  f"| {hits}/{len(warm_result.cache_hits)} cached | |")
        print("\nRTE < 1 means cheaper than retraining; ToW = 1 means indistinguishable from the retrained model "
              "(forget, retain and test accuracy).")


if __name__ == "__main__":
    main()
