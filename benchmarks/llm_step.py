"""LLM unlearning cost on the tiny TOFU model: time per step, tokens/s and peak memory of each method relative to
plain fine-tuning, and the time of the TOFU metric suite, all measured in one run.

    python benchmarks/llm_step.py [--quick] [--steps 20] [--repeats 5] [--size tiny|small] [--threads 1]
                                  [--device cpu|cuda] [--clock auto|cpu|wall] [--methods npo ...] [--json PATH]

Set-up (all from the package): the embedded TOFU generator (`generate_authors(40 authors, 4 holdout, seed 0)`), a
word-level tokenizer trained on every question / answer / paraphrase / perturbed answer, forget = forget10 (with
the IDK alternates IdkDPO reads), retain = retain90, and a random `tiny_llama` (seed 0; tiny: hidden 64, MLP 128, 2
layers, 4 heads; small: hidden 256, MLP 512, 4 layers, 4 heads). Every method runs from the registry with
max_steps S, batch 16, lr 1e-4 and AdamW (the same optimiser for all, so only the losses differ), on a copy of
the model; finetune (NLL on the retain set only) is the baseline.

Clock: on --device cpu the process's CPU time (user + system, all threads), which other processes on a shared
machine do not inflate (with one thread it is the wall time of an idle machine); on cuda the wall time, the device
synchronised at every mark. --clock overrides; the JSON has both.

Time per step: each method runs --repeats times in round-robin order (all methods once, then all again, ...) after
one warm-up run each. A step is the interval between consecutive `after_step` calls of the loop (forward, backward
and optimiser step of one batch; the first step of a run, which also allocates the optimiser state, is left out).
The table gives the median over the S − 1 steps of all rounds, steps/s = its inverse, and its ratio to finetune's
median from the same rounds, so the ratio holds on a noisy machine. The JSON also has `loop_mean_step_s`, the median
over rounds of `method.seconds_ / method.steps_` (wall, first step included). "set-up" is the rest of `unlearn()`'s
wall time (the frozen reference copy, accelerate's prepare, IMU's per-example influence gradients), once per run.

Tokens per step = batch size × mean number of real (non-pad) tokens per example of every sequence set the step
feeds the model: the forget answers, plus the IDK alternates (dpo), plus the retain answers when the method reads
the retain set (`method.uses`); finetune reads the retain set only. Forward passes of the frozen reference model
are not counted as tokens (they are in the time). tokens/s = tokens per step / time per step.

Peak memory: bytes allocated by torch during one `unlearn()` call with 2 steps (set-up included: the reference
copy, optimiser state, activations, gradients), above what was allocated before it. On CUDA:
`torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; on CPU: the running sum of the allocation and
free events of torch's CPU allocator recorded by `torch.profiler` (profile_memory=True), in a separate, untimed run
(the profiler slows the run). Deterministic for a given set-up; not the process RSS.

TOFU metric suite: `prepare_tofu_eval` (tokenise the evaluation splits), `collect_tofu_outputs` (batch 64, 32 new
tokens; split into teacher-forced scoring and greedy generation by timing the `greedy_generate` calls inside it)
and `evaluate` with TofuEval's default metrics, against the outputs of another model (seed 1) as reference; same
clock, medians of --repeats evaluations after a warm-up one; "metrics, first call" is the first `evaluate` of the
process, which pays its metrics' one-time imports. "total / finetune step" = suite total / finetune's step time.
--quick: S = 8, 3 rounds (about 30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU profiler's start-up chatter on stderr

import torch

from unlearnkit import create_method
from unlearnkit.data import UnlearnData
from unlearnkit.data.qa import IDK_ANSWERS, QADataset, QAFormat, pad_token_id, qa_pairs, train_word_tokenizer
from unlearnkit.data.tofu_synth import generate_authors
from unlearnkit.metrics import tofu_eval
from unlearnkit.metrics.evaluate import evaluate
from unlearnkit.models import build_model
from unlearnkit.pipelines.tofu import TofuEval
from unlearnkit.tasks import get_task

SIZES = {"tiny": {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4},
         "small": {"hidden_size": 256, "intermediate_size": 512, "num_layers": 4, "num_heads": 4}}
# (label, registered name, overrides beyond the common ones)
METHODS = (("finetune", "finetune", {}),
           ("grad_ascent", "grad_ascent", {}),
           ("grad_diff", "grad_diff", {}),
           ("grad_diff (KL, token)", "grad_diff", {"retain_loss": "kl", "kl_reduction": "token"}),
           ("npo", "npo", {}),
           ("simnpo", "simnpo", {}),
           ("dpo", "dpo", {}),
           ("rmu", "rmu", {"layer": "model.layers.1"}),
           ("undial", "undial", {}),
           ("ce_u", "ce_u", {}),
           ("satimp", "satimp", {}),
           ("wga", "wga", {}),
           ("pdu", "pdu", {"epsilon": 0.3}),
           ("imu", "imu", {}))
READS_ALTERNATES = ("dpo",)  # methods whose forget step also feeds the IDK alternate answers to the model
BATCH, LR, MEMORY_STEPS = 16, 1e-4, 2


def setup(size: str, device: torch.device):
    """(synthetic TOFU, tokenizer, unlearning data, model on `device`)."""
    synth = generate_authors(n_authors=40, n_holdout=4, seed=0)
    fmt = QAFormat()
    texts = [r[k] if isinstance(r[k], str) else " ".join(r[k]) for rows in synth.splits.values() for r in rows
             for k in ("question", "answer", "paraphrased_answer", "perturbed_answer") if k in r]
    tok = train_word_tokenizer(texts + [fmt.question_start, fmt.question_end, fmt.answer_start])
    forget = QADataset(qa_pairs(synth.splits["forget10"], "answer"), tok, fmt, alternates=IDK_ANSWERS)
    retain = QADataset(qa_pairs(synth.splits["retain90"], "answer"), tok, fmt)
    return synth, tok, UnlearnData(forget=forget, retain=retain), tiny_llama(tok, size, seed=0).to(device).eval()


def tiny_llama(tok, size: str, seed: int):
    return build_model("tiny_llama", seed=seed, vocab_size=len(tok), max_positions=64, pad_token_id=pad_token_id(tok),
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SIZES[size])


def make(name: str, overrides: dict, steps: int):
    return create_method(name, **{"max_steps": steps, "batch_size": BATCH, "lr": LR, "optimizer": "adamw",
                                  **overrides})


def tokens_per_step(method, data) -> float:
    """batch × mean real tokens per example of the sequence sets one step feeds the model (see the docstring)."""
    mean = statistics.fmean
    per_example = 0.0
    if "forget" in method.uses:
        per_example += mean(data.forget.lengths)
        if method.registry_name in READS_ALTERNATES:
            per_example += mean(data.forget.alt_lengths)
    if "retain" in method.uses:
        per_example += mean(data.retain.lengths)
    return BATCH * per_example


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(method, model, data, task, acc, device) -> tuple[dict[str, list[float]], float]:
    """({"wall": [...], "cpu": [...]} durations of optimiser steps 2..S, set-up wall seconds) of one unlearning run on
    a copy of `model`. A step's duration is the interval between the `after_step` calls that end it and the step
    before (the first step, which also creates the optimiser state, has no start mark and is left out); "cpu" is the
    process's CPU time (all threads, user + system)."""
    work, marks = copy.deepcopy(model), []

    def mark(_model, _step) -> None:
        sync(device)
        marks.append((time.perf_counter(), time.process_time()))

    sync(device)
    start = time.perf_counter()
    method.unlearn(work, data, task, accelerator=acc, after_step=mark)
    sync(device)
    wall = time.perf_counter() - start
    steps = {clock: [b[i] - a[i] for a, b in zip(marks, marks[1:], strict=False)]
             for i, clock in enumerate(("wall", "cpu"))}
    return steps, wall - method.seconds_


def cpu_peak_bytes(run) -> int:
    """Peak bytes of torch's CPU allocator during `run()` (unlearnkit.testing.memory), stderr silenced."""
    from unlearnkit.testing.memory import cpu_peak_bytes as peak
    from unlearnkit.testing.memory import quiet_stderr

    with quiet_stderr():
        try:
            return peak(run)
        except RuntimeError as err:
            raise RuntimeError(f"{err}; run with --no-memory") from None


def peak_bytes(name: str, overrides: dict, model, data, task, acc, device) -> int:
    method = make(name, overrides, MEMORY_STEPS)
    work = copy.deepcopy(model)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        method.unlearn(work, data, task, accelerator=acc)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    return cpu_peak_bytes(lambda: method.unlearn(work, data, task, accelerator=acc))


@contextlib.contextmanager
def timing_generation(clock: list[float], timer):
    """Add the `timer()` seconds spent in `tofu_eval.greedy_generate` (called by collect_tofu_outputs) to clock[0]."""
    original = tofu_eval.greedy_generate

    def timed(*args, **kwargs):
        start = timer()
        try:
            return original(*args, **kwargs)
        finally:
            clock[0] += timer() - start

    tofu_eval.greedy_generate = timed
    try:
        yield
    finally:
        tofu_eval.greedy_generate = original


def tofu_suite(synth, tok, model, ref_model, device, repeats: int, timer) -> dict[str, float]:
    """Seconds (by `timer`) of the TOFU evaluation of `model`, medians of `repeats` (see the docstring)."""
    fmt, metrics = QAFormat(), TofuEval().metrics
    prepared = tofu_eval.prepare_tofu_eval(synth.splits, "forget10", tok, fmt, data_hash="bench")
    # the reference's outputs; this also warms up both code paths, and the first `evaluate` pays the metrics'
    # one-time imports (scipy.stats, rouge_score), reported apart as metrics_first_s
    ref = tofu_eval.collect_tofu_outputs(ref_model, prepared, batch_size=64, max_new_tokens=32)
    start = timer()
    evaluate(copy.deepcopy(ref), metrics, ref=ref)
    first = timer() - start
    rounds: dict[str, list[float]] = {k: [] for k in ("prepare_s", "collect_s", "score_s", "generate_s", "metrics_s",
                                                      "total_wall_s")}
    for _ in range(repeats):
        wall = time.perf_counter()
        start = timer()
        prepared = tofu_eval.prepare_tofu_eval(synth.splits, "forget10", tok, fmt, data_hash="bench")
        rounds["prepare_s"].append(timer() - start)
        clock = [0.0]
        with timing_generation(clock, timer):
            sync(device)
            start = timer()
            out = tofu_eval.collect_tofu_outputs(model, prepared, batch_size=64, max_new_tokens=32)
            sync(device)
            rounds["collect_s"].append(timer() - start)
        rounds["generate_s"].append(clock[0])
        rounds["score_s"].append(rounds["collect_s"][-1] - clock[0])
        start = timer()
        values = evaluate(out, metrics, ref=ref)
        rounds["metrics_s"].append(timer() - start)
        rounds["total_wall_s"].append(time.perf_counter() - wall)
    suite = {k: statistics.median(v) for k, v in rounds.items()}
    suite["total_s"] = suite["prepare_s"] + suite["collect_s"] + suite["metrics_s"]
    suite.update(metrics_first_s=first, n_metrics=len(metrics), n_values=len(values),
                 n_generated=sum(len(g) for g in out.generations.values()))
    return suite


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (S = 8, 3 repeats)")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps S per unlearning run (>= 2)")
    parser.add_argument("--repeats", type=int, default=5, help="round-robin rounds; the median is reported")
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--methods", nargs="+", help="labels or names to run (finetune is always run)")
    parser.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                        help="step time: process CPU time or wall time (auto: cpu on --device cpu, wall on cuda)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps, repeats = (8, 3) if args.quick else (args.steps, args.repeats)
    if steps < 2 or repeats < 1:
        parser.error("--steps must be >= 2 (the first step is not timed) and --repeats >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    device = torch.device(args.device)
    clock = args.clock if args.clock != "auto" else "cpu" if device.type == "cpu" else "wall"
    chosen = [m for m in METHODS if m[0] == "finetune" or not args.methods
              or m[0] in args.methods or m[1] in args.methods]

    from accelerate import Accelerator

    acc = Accelerator(cpu=device.type == "cpu")
    task = get_task("causal_lm")
    synth, tok, data, model = setup(args.size, device)
    n_params = sum(p.numel() for p in model.parameters())

    # warm-up: one short run of each method pays one-time imports and allocations
    for _label, name, overrides in chosen:
        run_once(make(name, overrides, 2), model, data, task, acc, device)
    times = {label: {"wall": [], "cpu": []} for label, _, _ in chosen}  # every timed step of every round
    loop_means: dict[str, list[float]] = {label: [] for label, _, _ in chosen}
    setups: dict[str, list[float]] = {label: [] for label, _, _ in chosen}
    tokens: dict[str, float] = {}
    for _ in range(repeats):
        for label, name, overrides in chosen:
            method = make(name, overrides, steps)
            step_times, set_up = run_once(method, model, data, task, acc, device)
            for kind, values in step_times.items():
                times[label][kind] += values
            loop_means[label].append(method.seconds_ / method.steps_)
            setups[label].append(set_up)
            tokens[label] = tokens_per_step(method, data)
    memory = {} if args.no_memory else {label: peak_bytes(name, overrides, model, data, task, acc, device)
                                        for label, name, overrides in chosen}
    timer = time.process_time if clock == "cpu" else time.perf_counter
    suite = tofu_suite(synth, tok, model, tiny_llama(tok, args.size, seed=1).to(device).eval(), device, repeats,
                       timer)

    median = {label: {kind: statistics.median(v) for kind, v in t.items()} for label, t in times.items()}
    base_time = median["finetune"][clock]
    base_mem = memory.get("finetune")
    results = {}
    for label, name, _ in chosen:
        t = median[label][clock]
        row = {"name": name, "step_s": t, "steps_per_s": 1 / t, "tokens_per_step": tokens[label],
               "tokens_per_s": tokens[label] / t, "relative_time": t / base_time,
               "step_wall_s": median[label]["wall"], "step_cpu_s": median[label]["cpu"],
               "setup_s": statistics.median(setups[label]), "loop_mean_step_s": statistics.median(loop_means[label]),
               "n_timed_steps": len(times[label][clock])}
        if memory:
            row.update(peak_mem_mb=memory[label] / 2**20,
                       relative_mem=memory[label] / base_mem if base_mem else float("nan"))
        results[label] = row
    suite["vs_finetune_step"] = suite["total_s"] / base_time

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    shape = SIZES[args.size]
    print(f"tiny_llama {args.size} (hidden {shape['hidden_size']}, MLP {shape['intermediate_size']}, "
          f"{shape['num_layers']} layers, {shape['num_heads']} heads; {n_params / 1e6:.2f} M parameters, vocab "
          f"{len(tok)}); forget10 |D_f| = {len(data.forget)}, retain90 |D_r| = {len(data.retain)}; S = {steps} steps, "
          f"batch {BATCH}, AdamW lr {LR}; {device_name}; step times: {clock} clock, median of {steps - 1} steps × "
          f"{repeats} round-robin rounds after a warm-up\n")
    print("| method | reads | ms / step | × finetune time | steps/s | tokens/step | tokens/s | set-up (ms) | "
          "peak mem (MiB) | × finetune mem |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, _name, overrides in chosen:
        r = results[label]
        reads = "+".join(make(_name, overrides, 1).uses) + (" (+idk)" if _name in READS_ALTERNATES else "")
        mem = (f"{r['peak_mem_mb']:.1f} | {r['relative_mem']:.2f}x" if memory else "– | –")
        print(f"| {label} | {reads} | {1e3 * r['step_s']:.2f} | {r['relative_time']:.2f}x | {r['steps_per_s']:.1f} | "
              f"{r['tokens_per_step']:.0f} | {r['tokens_per_s']:.0f} | {1e3 * r['setup_s']:.0f} | {mem} |")
    print(f"\nTOFU metric suite on forget10 ({suite['n_metrics']} metrics -> {suite['n_values']} values; batch 64, "
          f"greedy answers to {suite['n_generated']} questions, 32 new tokens; median of {repeats}):\n")
    print("| prepare (s) | collect: scoring (s) | collect: generation (s) | metrics (s) | total (s) | "
          "total / finetune step | metrics, first call (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {suite['prepare_s']:.3f} | {suite['score_s']:.3f} | {suite['generate_s']:.3f} | "
          f"{suite['metrics_s']:.3f} | {suite['total_s']:.3f} | {suite['vs_finetune_step']:.0f}x | "
          f"{suite['metrics_first_s']:.3f} |")
    print("\nmetrics, first call: the first `evaluate` of the process, with the one-time imports of its metrics "
          "(not in the total).")
    if args.json:
        config = {"size": args.size, "model": SIZES[args.size], "n_params": n_params, "vocab": len(tok),
                  "steps": steps, "repeats": repeats, "batch_size": BATCH, "lr": LR, "threads": args.threads,
                  "device": device_name, "quick": args.quick, "clock": clock,
                  "memory": None if not memory else "cuda_max_allocated" if device.type == "cuda" else "cpu_profiler"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": config, "methods": results, "suite": suite}, indent=2))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
