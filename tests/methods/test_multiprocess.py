"""A gradient method under a real two-process `accelerate launch` (DDP over gloo on CPU; specs/llm.md §6 P5, P10,
P18): each rank reads its own forget and retain items, accumulation skips the all-reduce between micro-batches
yet every rank ends with the same weights, and rank 0 evaluates the unwrapped model. Runs in subprocesses, as
distributed tests must; the script is unlearnkit/testing/multiprocess.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _accelerate_cli() -> str | None:
    beside = Path(sys.executable).with_name("accelerate")  # the CLI of this interpreter's accelerate
    return str(beside) if beside.exists() else shutil.which("accelerate")


def test_two_processes_read_different_items_and_end_with_identical_weights(tmp_path):
    cli = _accelerate_cli()
    if cli is None:
        pytest.skip("the accelerate CLI is not installed")
    out = tmp_path / "run.json"
    cmd = [cli, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0", "-m", "unlearnkit.testing.multiprocess", str(out),
           "--grad-accum", "2"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = json.loads(out.read_text())

    assert run["world_size"] == 2 and run["distributed_type"] == "MULTI_CPU" and run["backend"] == "gloo"
    assert run["setup"] == {**run["setup"], "world_size": 2, "per_device_batch": 2, "grad_accum": 2,
                            "effective_batch": 8, "deepspeed": False}
    r0, r1 = run["ranks"]
    # 8 forget items, batch 2 per rank: 2 batches per rank per epoch = 1 optimiser step (accumulation 2), 3 epochs
    assert r0["steps"] == r1["steps"] == 3 and len(r0["forget"]) == len(r1["forget"]) == 6
    for epoch in range(3):  # P5: per epoch the ranks split the forget set between them
        mine = [set(sum(r["forget"][2 * epoch:2 * epoch + 2], [])) for r in (r0, r1)]
        assert not mine[0] & mine[1] and mine[0] | mine[1] == set(range(8))
    # the retain set (32 items) is cycled beside: its first pass is split between the ranks, no item drawn twice
    retain = [sum(r["retain"], []) for r in (r0, r1)]
    assert all(len(set(items)) == len(items) == 12 for items in retain) and not set(retain[0]) & set(retain[1])
    assert run["identical_weights"] and r0["weights_sha256"] == r1["weights_sha256"] and r0["finite"]
    assert run["forget_loss_after"] > run["forget_loss_before"] + 1.0
