"""A two-process run of THE loop under a real `accelerate launch`, as a script (tests/methods/test_multiprocess.py
runs it; it also works by hand, by module or by file path):

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no --main_process_port 0 -m unlearnkit.testing.multiprocess OUT.json [--grad-accum K]

or `accelerate launch --config_file src/unlearnkit/configs/accelerate/cpu2.yaml -m unlearnkit.testing.multiprocess
OUT.json`. Why these flags, with accelerate 1.15 on a machine without GPUs:
- `--cpu --num_processes 2` starts ONE process: accelerate's multi-CPU launch goes through mpirun and needs
  `--mpirun_hostfile` (and an MPI or oneCCL install);
- `--multi_gpu` starts the processes with torch.distributed.run (torchrun: RANK, WORLD_SIZE, MASTER_ADDR, ...), and
  ACCELERATE_USE_CPU=true makes each process's Accelerator join them as multi-CPU DDP over the gloo backend (without
  it, and without a device, every process would run alone). `default_accelerator()` asks for the CPU by itself when
  it is launched on a machine without an accelerator device, so the variable matters only for your own Accelerator;
  on a GPU machine it keeps both processes off a single GPU;
- `--main_process_port 0` picks a free port (two runs at once do not collide); `--mixed_precision no --dynamo_backend
  no --num_machines 1` silence accelerate's warnings about defaults.

Each process unlearns the toy causal LM (`memorized("causal_lm")`, itself trained under the same launch) with
`grad_diff` (retain_loss nll) from the registry, recording the forget and retain item indices of every batch the
loss received. Rank 0 writes OUT.json: the world size and backend, each rank's indices (gathered with
accelerate's `gather_object`), its weights' SHA-256, the forget loss before and after (evaluated on rank 0 alone,
with the unwrapped model: specs/llm.md §6 P10), whether every rank ended with the same weights, and the run set-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any

import torch
from torch.utils.data import Dataset

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    # run by path: this file's folder heads sys.path, and this file would shadow the `multiprocess` package that
    # `datasets` (imported by accelerate's data loaders) needs
    del sys.path[0]


class Indexed(Dataset):
    """Items of a dict data set with their own index added as "index" (collated into the batch like any column)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "index": torch.tensor(int(i))}


def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, p in model.state_dict().items():
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="JSON file written by rank 0")
    parser.add_argument("--method", default="grad_diff")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-3)
    args = parser.parse_args(argv)

    from accelerate.utils import gather_object

    # absolute imports: the file also runs by path (`accelerate launch .../multiprocess.py OUT.json`)
    from unlearnkit.methods import create_method
    from unlearnkit.methods._loop import default_accelerator
    from unlearnkit.tasks import get_task
    from unlearnkit.testing import forget_loss, memorized

    torch.set_num_threads(1)
    acc = default_accelerator()
    task = get_task("causal_lm")
    model, data = memorized("causal_lm")  # trained under this launch (DDP): the same weights on every rank
    before = forget_loss(model, data, task) if acc.is_main_process else None
    seen: dict[str, list[list[int]]] = {"forget": [], "retain": []}

    extra = {"retain_loss": "nll"} if args.method == "grad_diff" else {}
    method = create_method(args.method, lr=args.lr, epochs=args.epochs, batch_size=2, grad_accum=args.grad_accum,
                           **extra)
    loss = method.loss

    def logged_loss(task, model, forget, retain, frozen):
        for which, batch in (("forget", forget), ("retain", retain)):
            if batch is not None:
                seen[which].append(batch["index"].tolist())
        return loss(task, model, forget, retain, frozen)

    method.loss = logged_loss  # the loop receives partial(method.loss, task): log the batches it is given
    indexed = dataclasses.replace(data, forget=Indexed(data.forget), retain=Indexed(data.retain))
    start = time.perf_counter()
    out = method.unlearn(model, indexed, task)
    seconds = time.perf_counter() - start

    mine = {"rank": acc.process_index, "steps": method.steps_, "forget": seen["forget"], "retain": seen["retain"],
            "weights_sha256": weights_sha256(out), "finite": all(bool(torch.isfinite(p).all())
                                                                  for p in out.parameters())}
    ranks = gather_object([mine])  # one entry per rank, in rank order
    result = None
    if acc.is_main_process:
        result = {
            "world_size": acc.num_processes, "distributed_type": str(acc.distributed_type.value),
            "backend": acc.state.backend, "method": args.method, "ranks": ranks,
            "forget_loss_before": before, "forget_loss_after": forget_loss(out, data, task),
            "identical_weights": len({r["weights_sha256"] for r in ranks}) == 1,
            "setup": method.setup_, "seconds": seconds,
        }
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    acc.wait_for_everyone()
    acc.end_training()  # destroy the process group: a gloo thread left running can abort the interpreter's exit
    return result


if __name__ == "__main__":
    main()
    # Leave without the interpreter's teardown: even after the process group is destroyed, a gloo worker thread still
    # joinable at the C++ static destructors can abort a rank ("terminate called without an active exception",
    # SIGABRT, seen about once in five CI runs under load) after all its work is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
