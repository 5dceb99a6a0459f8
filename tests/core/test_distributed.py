"""The one loop under a real multi-process launch (DDP over gloo on CPU): the launch is a command-line choice,
the code is the same. Runs in subprocesses, as distributed tests must."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnkit.testing import memorized


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(tmp_path, *args):
    out = tmp_path / "result"
    worker = Path(__file__).with_name("_ddp_worker.py")
    # torchrun sets RANK/WORLD_SIZE; ACCELERATE_USE_CPU makes accelerate pick multi-CPU DDP (gloo)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(worker), str(out), *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_ddp_run_shards_data_and_keeps_replicas_identical(tmp_path):
    ranks = _launch(tmp_path)
    assert [r["world"] for r in ranks] == [2, 2] and all(r["finite"] for r in ranks)
    _, data = memorized("classifier")
    # NegGrad+: one epoch = one pass over the retain set, sharded over 2 processes (batch 8 per process)
    assert ranks[0]["steps"] == ranks[1]["steps"] == math.ceil(math.ceil(len(data.retain) / 2) / 8)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # DDP keeps the replicas identical


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    ranks = _launch(tmp_path, "diverge")  # a hang here would hit the 300 s timeout
    assert [r["diverged"] for r in ranks] == [True, True]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3
    assert ranks[0]["checksum"] == ranks[1]["checksum"] and all(r["finite"] for r in ranks)
