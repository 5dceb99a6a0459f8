"""Run by tests/core/test_distributed.py under torchrun (2 processes, gloo on CPU).

argv: OUT [diverge]. With `diverge`, rank 1's loss becomes NaN at step 3: both ranks must stop together."""

import json
import os
import sys
import warnings

import torch

from unlearnkit.methods import create_method
from unlearnkit.methods._loop import LoopParams, default_accelerator, run_loop
from unlearnkit.tasks import get_task
from unlearnkit.testing import memorized

torch.set_num_threads(1)
acc = default_accelerator()
task = get_task("classifier")
model, data = memorized("classifier")
if sys.argv[2:] == ["diverge"]:
    calls = []

    def loss_fn(m, f, r, frozen):
        calls.append(1)
        loss = task.loss(m, r)
        return loss * float("nan") if acc.process_index == 1 and len(calls) == 4 else loss

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = run_loop(model, loss_fn, LoopParams(epochs=3, batch_size=8), retain=data.retain, pairing="retain",
                          progress=False)
    out, steps, diverged = result.model, result.steps, result.diverged
else:
    method = create_method("neggrad_plus", epochs=1, batch_size=8)
    out = method.unlearn(model, data, task)
    steps, diverged = method.steps_, method.diverged_
flat = torch.cat([p.detach().flatten() for p in out.parameters()])
result = {"rank": acc.process_index, "world": acc.num_processes, "steps": steps, "diverged": diverged,
          "checksum": float(flat.double().sum()), "finite": bool(torch.isfinite(flat).all())}
with open(sys.argv[1] + f".{acc.process_index}", "w") as fh:
    json.dump(result, fh)
acc.end_training()  # shut the process group down before exit (an exit without it can abort the process)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # no interpreter teardown: a gloo thread still joinable there can abort a finished rank (SIGABRT)
