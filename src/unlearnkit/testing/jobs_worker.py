"""Tiny real jobs for testing :mod:`unlearnkit.jobs`, and a command that runs them (the kill-and-resume test).

    python -m unlearnkit.testing.jobs_worker LOG_DIR SEED[:SLEEP_S] ...

runs one :func:`train_subset` job per seed with the serial backend into ``ModelCache()`` (``$UNLEARNKIT_HOME``),
sleeping ``SLEEP_S`` after each job's training (before its result is returned and cached).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cache import spec_key
from ..jobs import Job, run_jobs

N_EXAMPLES, N_FEATURES = 64, 8


def train_subset(subset_seed: int, steps: int = 30, log_dir: str | None = None,
                 sleep_s: float = 0.0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train a 2-layer MLP, full batch, on the half of a fixed random dataset drawn by ``subset_seed``.

    Returns its state_dict (``model.*``), the subset mask ``in_subset [N]`` and the per-example correctness
    ``correct [N]`` on the whole dataset, plus the training accuracy. Appends its pid to
    ``<log_dir>/runs-<subset_seed>.txt`` (to count runs) before sleeping ``sleep_s`` seconds.
    """
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(N_EXAMPLES, N_FEATURES, generator=g)  # [N, F]
    y = (x[:, 0] + 0.5 * torch.randn(N_EXAMPLES, generator=g) > 0).long()  # [N], noisy labels
    in_subset = torch.rand(N_EXAMPLES, generator=torch.Generator().manual_seed(subset_seed)) < 0.5  # [N]
    torch.manual_seed(subset_seed)
    model = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[in_subset]), y[in_subset]).backward()
        opt.step()
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y  # [N] bool
    if log_dir is not None:
        with open(Path(log_dir) / f"runs-{subset_seed}.txt", "a") as fh:
            fh.write(f"{os.getpid()}\n")
    if sleep_s:
        time.sleep(sleep_s)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(in_subset=in_subset, correct=correct)
    return tensors, {"subset_seed": subset_seed, "train_acc": correct[in_subset].float().mean().item()}


def failing_job(message: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A job that raises ``ValueError(message)``."""
    raise ValueError(message)


def subset_jobs(seeds: list[int], log_dir: str | None = None,
                sleep_s: dict[int, float] | None = None) -> list[Job]:
    """One :func:`train_subset` job per seed; the sleep and log directory are kwargs, not part of the key."""
    jobs = []
    for seed in seeds:
        spec = {"job": "train_subset", "subset_seed": seed, "steps": 30}
        kwargs = {"subset_seed": seed, "steps": 30, "log_dir": log_dir, "sleep_s": (sleep_s or {}).get(seed, 0.0)}
        jobs.append(Job(spec_key(spec), spec, train_subset, kwargs))
    return jobs


def run_count(log_dir: str | os.PathLike[str], seed: int) -> int:
    """How many times :func:`train_subset` ran for ``seed`` with this log directory."""
    path = Path(log_dir) / f"runs-{seed}.txt"
    return len(path.read_text().split()) if path.exists() else 0


def main(argv: list[str]) -> None:
    log_dir, *items = argv
    seeds, sleeps = [], {}
    for item in items:
        seed, _, sleep = item.partition(":")
        seeds.append(int(seed))
        sleeps[int(seed)] = float(sleep or 0)
    run_jobs(subset_jobs(seeds, log_dir, sleeps), backend="serial")


if __name__ == "__main__":
    # Run the importable copy of this module, so that the jobs' fn is recorded as unlearnkit.testing.jobs_worker.
    from unlearnkit.testing.jobs_worker import main as _main

    _main(sys.argv[1:])
