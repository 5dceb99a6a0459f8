"""Markov-chain benchmark timings, measured in one run from an empty temporary cache:

1. wall time of each stage (data, original, retrain, every method's unlearning, one evaluation) on this machine;
2. each method's unlearning time as a fraction of the retraining time (RTE);
3. IMU's per-example-gradient step on the original model and the forget set: batched (closed form; torch.func
   vmap) vs. a loop over examples, with the largest difference of the resulting IMU weights (must be <= 1e-5).

    python benchmarks/markov.py            # the seed's defaults (several minutes on 2 cores)
    python benchmarks/markov.py --small    # a reduced configuration (seconds)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="reduced data and model")
    args = parser.parse_args()
    small = ["data.num_retain_sequences=1000", "data.num_forget_sequences1=500", "data.num_forget_sequences2=500",
             "model.n_embd=32", "model.n_layer=2", "pretrain.epochs=4"] if args.small else []

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["UNLEARNKIT_HOME"] = os.path.join(tmp, "home")
        import torch

        from unlearnkit.methods._influence import (
            head_grads_closed_form,
            influence_weights,
            per_example_grads,
            per_example_grads_loop,
            select_parameters,
        )
        from unlearnkit.pipelines import load_run_config
        from unlearnkit.pipelines.markov import MarkovRunner, create_methods

        _, cfg = load_run_config("markov", [*small, f"output_dir={tmp}/out"])
        seed = cfg.seeds[0]
        runner = MarkovRunner(cfg, say=lambda _m: None)
        times = {"data (generate)": runner.data_s}
        original = runner.trained(seed, "pretrain")
        gold = runner.trained(seed, "retain")
        times["original (pretrain)"] = original.meta["train_time_s"]
        times["retrain (gold standard)"] = retrain = gold.meta["train_time_s"]
        t0 = time.perf_counter()
        ref = runner.outputs(gold.model)
        runner.metrics(original.model, ref)
        times["one evaluation (all metrics, 4 splits)"] = time.perf_counter() - t0
        unlearn = {}
        for name, method in create_methods(cfg, seed):
            stage = runner.unlearned(seed, name, method, original, ref)
            unlearn[name] = stage.meta["unlearn_time_s"]

        print(f"Markov benchmark ({'reduced' if args.small else 'seed defaults'}), {torch.get_num_threads()} threads\n")
        print("| stage | wall time (s) |\n|---|---:|")
        for stage, seconds in times.items():
            print(f"| {stage} | {seconds:.2f} |")
        print("\n| method | unlearning time (s, evaluation excluded) | / retraining time |\n|---|---:|---:|")
        for name, seconds in unlearn.items():
            print(f"| {name} | {seconds:.2f} | {seconds / retrain:.3f} |")

        forget = runner.unlearn_data().forget
        names = select_parameters(original.model, [])
        head = names[0].rsplit(".", 1)[0]
        results = {}
        for label, fn in (("closed form (one batched forward)",
                           lambda: head_grads_closed_form(original.model, runner.task, forget, head)),
                          ("torch.func vmap", lambda: per_example_grads(original.model, runner.task, forget, names)),
                          ("loop over examples", lambda: per_example_grads_loop(original.model, runner.task, forget,
                                                                                names))):
            t0 = time.perf_counter()
            grads = fn()
            results[label] = (time.perf_counter() - t0, influence_weights(grads, lam=0.01)[1])
        loop_s, loop_w = results["loop over examples"]
        print(f"\nIMU per-example head gradients of {len(forget)} forget sequences:\n")
        print("| computation | time (s) | loop time / this | max |weight − loop weight| |\n|---|---:|---:|---:|")
        for label, (seconds, weights) in results.items():
            diff = float((weights - loop_w).abs().max())
            print(f"| {label} | {seconds:.3f} | {loop_s / seconds:.1f} | {diff:.2e} |")
            assert diff <= 1e-5, f"{label}: IMU weights differ from the loop by {diff}"


if __name__ == "__main__":
    main()
