"""Run by tests/core/test_distributed.py under `accelerate launch --cpu --num_processes 2`."""

import json
import sys

import torch

from unlearnkit.methods import create_method
from unlearnkit.methods._loop import default_accelerator
from unlearnkit.tasks import get_task
from unlearnkit.testing import memorized

torch.set_num_threads(1)
acc = default_accelerator()
model, data = memorized("classifier")
method = create_method("neggrad_plus", epochs=1, batch_size=8)
out = method.unlearn(model, data, get_task("classifier"))
flat = torch.cat([p.detach().flatten() for p in out.parameters()])
result = {"rank": acc.process_index, "world": acc.num_processes, "steps": method.steps_,
          "checksum": float(flat.double().sum()), "finite": bool(torch.isfinite(flat).all())}
with open(sys.argv[1] + f".{acc.process_index}", "w") as fh:
    json.dump(result, fh)
