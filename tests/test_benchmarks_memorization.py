"""benchmarks/memorization.py runs end to end (--quick): the exact estimate's and every proxy's cost relative to
training the original, their peak memory and their Spearman correlation with the exact estimate, as JSON."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROXIES = ("confidence", "max_conf", "neg_entropy", "binary_acc", "holdout", "curvature")


@pytest.mark.slow
def test_memorization_benchmark_quick(tmp_path, home):
    out = tmp_path / "memorization.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memorization.py"), "--quick", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| original: plain `fit` |" in done.stdout and "| noise ceiling:" in done.stdout

    result = json.loads(out.read_text())
    assert result["config"]["quick"] is True and result["config"]["k"] == 16
    assert not any(result["hits"].values())  # timed on a fresh temporary cache, not on the test's home
    assert not home.exists() or not any(home.rglob("*"))
    assert result["bit_for_bit"] is True  # record_training trains exactly like fit
    for name, ratio in result["ratios"].items():
        assert math.isfinite(ratio) and ratio > 0, name
    assert result["ratios"]["exact"] > 1  # K subset models cost more than one original
    for name, peaks in result["memory"].items():
        assert peaks["torch_bytes"] > 0 and peaks["tracemalloc_bytes"] > 0, name
    assert set(result["spearman"]) == set(PROXIES)
    for name, row in result["spearman"].items():
        assert -1 <= row["rho"] <= 1 and 0 <= row["p"] <= 1, name
        flipped = name in PROXIES[:4]
        assert row["raw_rho"] == pytest.approx(-row["rho"] if flipped else row["rho"]), name
    assert -1 <= result["ceiling"][0] <= 1
