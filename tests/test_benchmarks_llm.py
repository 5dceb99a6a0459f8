"""benchmarks/llm_step.py runs end to end (--quick) and writes every method's throughput, relative time and memory,
and the TOFU suite's timings, as JSON."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("finetune", "grad_ascent", "grad_diff", "grad_diff (KL, token)", "npo", "simnpo", "dpo", "rmu", "undial",
           "ce_u", "satimp", "wga", "pdu", "imu")
SUITE_KEYS = ("prepare_s", "collect_s", "score_s", "generate_s", "metrics_s", "total_s", "vs_finetune_step")


@pytest.mark.slow
def test_llm_step_benchmark_quick(tmp_path, home):
    out = tmp_path / "llm_step.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "llm_step.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| finetune | retain |" in done.stdout and "TOFU metric suite" in done.stdout

    result = json.loads(out.read_text())
    assert result["config"]["quick"] is True
    methods = result["methods"]
    assert set(methods) == set(METHODS)
    for label, row in methods.items():
        assert row["tokens_per_s"] > 0 and row["steps_per_s"] > 0, label
        assert math.isfinite(row["relative_time"]) and row["relative_time"] > 0, label
        assert row["peak_mem_mb"] > 0 and math.isfinite(row["relative_mem"]), label
    assert methods["finetune"]["relative_time"] == 1.0 and methods["finetune"]["relative_mem"] == 1.0
    # a step that also reads the retain set feeds twice the sequences of a forget-only step
    assert methods["grad_diff"]["tokens_per_step"] > 1.5 * methods["grad_ascent"]["tokens_per_step"]
    suite = result["suite"]
    for key in SUITE_KEYS:
        assert suite[key] > 0, key
    assert suite["total_s"] >= suite["collect_s"] >= suite["generate_s"]
