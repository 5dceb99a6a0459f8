"""End to end through the real CLI on the embedded digits data (small epochs so the suite stays fast)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unlearnkit._io import read_jsonl
from unlearnkit.cli import main

FAST = ["train.epochs=4", "method.finetune.epochs=2", "method.neggrad_plus.epochs=1", "method.grad_ascent.epochs=2",
        "method.grad_diff.epochs=1", "method.npo.epochs=1", "method.simnpo.epochs=1", "method.imu.epochs=1",
        "method.l1_sparse.epochs=2", "method.salun.epochs=2", "method.random_label.epochs=2",
        "method.amnesiac.epochs=1", "method.scrub.epochs=2", "method.scrub.msteps=1"]
METHODS = ["retrain", "finetune", "grad_ascent", "neggrad_plus", "grad_diff", "npo", "simnpo", "imu", "l1_sparse",
           "salun", "random_label", "amnesiac", "bad_teacher", "scrub", "influence", "fisher", "unsir", "ssd", "lfssd",
           "jit"]  # the digits preset's list: every registered classifier method


def run_cli(*args):
    return main(["run", "digits", *FAST, *args])


def test_quick_start_table_cache_reuse_and_report(home, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(f"output_dir={out}") == 0
    first = capsys.readouterr().out
    rows = read_jsonl(out / "results.jsonl")
    assert [r["label"] for r in rows] == ["original", *METHODS]
    by = {r["label"]: r for r in rows}
    assert by["retrain"]["metrics"]["tow"] == 1.0 and by["retrain"]["metrics"]["avg_gap"] == 0.0
    assert max(r["metrics"]["tow"] for r in rows if r["label"] not in ("retrain", "original")) > 0.9
    assert by["finetune"]["times"]["rte"] == pytest.approx(
        by["finetune"]["times"]["unlearn_s"] / by["retrain"]["times"]["unlearn_s"])
    for r in rows:
        assert r["versions"]["torch"] and r["split_hash"] and r["data_hash"] and r["seeds"]["train"] == 0
    assert "| retrain | 1 |" in first and "models: 0 of 21 loaded from the cache, 21 trained in this run" in first
    assert (out / "report.md").is_file() and list(out.glob("report-*.png"))
    assert len(list((out / "runs").glob("*.json"))) == 1

    assert run_cli(f"output_dir={out}") == 0  # warm: everything from the cache, same numbers
    second = capsys.readouterr().out
    assert "original: loaded from cache" in second and "retrain (gold standard): loaded from cache" in second
    assert "models: 21 of 21 loaded from the cache, 0 trained in this run" in second
    again = read_jsonl(out / "results.jsonl")[21:]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in rows]
    assert all(r["cached"] for r in again)

    report = (out / "report.md").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report


def test_every_classifier_method_is_in_the_preset_and_reports_every_metric_in_the_class_scenario(home, tmp_path):
    from unlearnkit._registry import METHODS as REGISTRY

    classifier_methods = {n for n in REGISTRY.list() if "classifier" in REGISTRY.get(n).tags["tasks"]}
    variants_of_others = {"grad_descent", "kl", "grad_diff_kl_forget", "npo_kl", "npo_rt", "simnpo_kl", "simnpo_rt"}
    # methods that need another architecture than the preset's (MIMU's bias-free head) declare their `toy_model`
    own_model = {n for n in classifier_methods if getattr(REGISTRY.get(n).obj, "toy_model", None)}
    assert own_model == {"mimu", "random_mask", "sft_randomize"}
    assert classifier_methods - variants_of_others - own_model == set(METHODS)
    out = tmp_path / "class"
    assert run_cli("scenario=class", "forget_classes=[3]", f"output_dir={out}") == 0
    rows = read_jsonl(out / "results.jsonl")
    assert [r["label"] for r in rows] == ["original", *METHODS]
    keys = {"forget_acc", "retain_acc", "test_forget_acc", "test_retain_acc", "mia_svc", "mia_entropy_lr", "zrf",
            "tow", "tow_mia", "avg_gap"}
    for r in rows:
        assert keys <= set(r["metrics"]), r["label"]
    report = (out / "report.md").read_text()
    assert all(f"| {m} | 1 |" in report for m in METHODS)


def test_rerun_with_other_hyperparameters_is_never_averaged_with_the_first(home, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("methods=[finetune]", f"output_dir={out}") == 0
    assert run_cli("methods=[finetune]", "method.finetune.lr=0.05", f"output_dir={out}") == 0
    rows = read_jsonl(out / "results.jsonl")
    variants = {r["variant"] for r in rows if r["label"] == "finetune"}
    assert len(variants) == 2
    assert len({r["variant"] for r in rows if r["label"] == "original"}) == 1  # same recipe, same original
    report = (out / "report.md").read_text()
    assert all(f"| finetune#{v} | 1 |" in report for v in variants)
    assert "| original | 1 |" in report


def test_retrain_with_other_hyperparameters_is_its_own_row_beside_the_gold_standard(home, tmp_path):
    out = tmp_path / "run"
    assert run_cli("methods=[retrain]", "method.retrain.epochs=1", f"output_dir={out}") == 0
    rows = read_jsonl(out / "results.jsonl")
    assert [r["label"] for r in rows] == ["original", "retrain", "retrain"]
    gold, custom = rows[1], rows[2]
    assert gold["params"]["epochs"] == 4 and custom["params"]["epochs"] == 1
    assert gold["metrics"]["tow"] == 1.0 and gold["variant"] != custom["variant"]


def test_cnn_model_runs_end_to_end(home, tmp_path):
    out = tmp_path / "cnn"
    assert run_cli("model=cnn", "train.epochs=3", "methods=[finetune]", f"output_dir={out}") == 0
    rows = read_jsonl(out / "results.jsonl")
    assert [r["model"] for r in rows] == ["cnn"] * 3
    assert rows[0]["metrics"]["test_acc"] > 80  # three epochs of the real CNN on real digits


def test_class_scenario_and_seeds_give_intervals(home, tmp_path, capsys):
    out = tmp_path / "cls"
    assert run_cli("scenario=class", "forget_classes=[3]", "seeds=[0,1]", "methods=[retrain,finetune]",
                   f"output_dir={out}") == 0
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 2 * 3
    retrain = [r for r in rows if r["label"] == "retrain"]
    assert all(r["metrics"]["forget_acc"] < 5.0 for r in retrain)  # a class never seen is not predicted
    assert all(r["metrics"]["test_forget_acc"] < 5.0 for r in retrain)
    assert "±" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["methods=[retrain,unlearn_everything]"], "unknown method 'unlearn_everything'"),
    (["scenaro=class"], "unknown key 'scenaro'; valid keys: benchmark,"),
    (["scenaro=class"], "(did you mean 'scenario'?)"),
    (["method.finetune.lr=-0.1"], "method.finetune.lr = -0.1: must be > 0"),
    (["train.lr=-1"], "train.lr = -1: must be > 0"),
    (["forget_size=5000"], "forget_size=5000 is not smaller than the training set (1347 examples)"),
    (["scenario=class", "forget_classes=[12]"], "class index 12 is out of range; allowed: 0..9"),
    (["scenario=class", "forget_classes=[-1]"], "class index -1 is out of range; allowed: 0..9"),
    (["scenario=class", "forget_classes=[zero]"], "unknown class name 'zero'"),
    (["scenario=subclass", "forget_subclasses=[0]"], "scenario=subclass needs a data set with fine labels; "
                                                      "dataset='digits' has none"),
    (["dataset_args={root: /tmp}"], "dataset_args ['root'] not accepted by data set 'digits'"),
    (["method.salun.mask_fraction=0"], "method.salun.mask_fraction = 0: must be > 0 (allowed: (0, 1])"),
    (["method.salun.mask_fraction=1.5"], "method.salun.mask_fraction = 1.5: must be <= 1 (allowed: (0, 1])"),
    (["model=resnet9000"], "model='resnet9000' is not registered"),
    (["train.seed=3"], "train.seed=3: each run's training seed comes from seeds=[...]"),
    (["metrics=[accuracy,no_such_metric]"], "unknown metric 'no_such_metric'"),
    (["method.finetun.lr=0.1"], "unknown method 'finetun' (did you mean 'finetune'?)"),
])
def test_bad_input_is_one_line_before_any_work(home, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["run", "digits", *args, f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unlearnkit: error: ") and message in err and "\n" not in err
    assert not out.exists() and not home.exists()  # nothing trained, nothing written


def test_missing_config_file_and_unknown_preset(home, tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    assert main(["run", "no_such_preset"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'no_such_preset'; available: " in err and ", digits, digits_class, " in err


def test_tampered_cache_entry_is_detected_and_rebuilt(home, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("methods=[finetune]", f"output_dir={out}") == 0
    first = read_jsonl(out / "results.jsonl")
    capsys.readouterr()
    original = next(d for d in (home / "models").iterdir()
                    if json.loads((d / "meta.json").read_text())["spec"]["kind"] == "original")
    weights = original / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=f"cache entry {original.name} is corrupt"):
        assert run_cli("methods=[finetune]", f"output_dir={out}") == 0
    assert "original: trained" in capsys.readouterr().out
    second = read_jsonl(out / "results.jsonl")[len(first):]
    assert [r["metrics"] for r in second] == [r["metrics"] for r in first]  # deterministic rebuild


def test_truncated_cache_entry_is_rebuilt(home, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("methods=[finetune]", f"output_dir={out}") == 0
    for entry in (home / "models").iterdir():
        w = entry / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.warns(UserWarning, match="is corrupt"):
        assert run_cli("methods=[finetune]", f"output_dir={out}") == 0
    assert "models: 0 of 3 loaded from the cache, 3 trained in this run" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_run_resumes_from_the_cache(home, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "unlearnkit", "run", "digits", "train.epochs=4", "methods=[finetune]",
            "method.finetune.epochs=400", f"output_dir={out}"]
    env = {**os.environ, "UNLEARNKIT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    models = home / "models"
    deadline = time.time() + 120
    while time.time() < deadline and len([d for d in models.glob("*") if not d.name.startswith(".")]) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way through finetune: original and gold standard are cached
    proc.wait()
    finished = {d.name for d in models.iterdir() if not d.name.startswith(".")}
    assert len(finished) == 2 and not (out / "results.jsonl").exists()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    assert "original: loaded from cache" in done and "retrain (gold standard): loaded from cache" in done
    assert "finetune: done" in done
    assert len(read_jsonl(out / "results.jsonl")) == 3
    assert finished < {d.name for d in models.iterdir()}


def test_list_show_validate_and_cache_commands(home, tmp_path, capsys):
    assert main(["list", "methods"]) == 0
    listing = capsys.readouterr().out
    for name in ("retrain", "finetune", "grad_ascent", "neggrad_plus"):
        assert name in listing
    assert "Kurmanji et al. 2023" in listing
    assert main(["list", "metrics", "mia_*"]) == 0
    assert capsys.readouterr().out.split() [0] == "mia_entropy_lr"
    assert main(["list", "benchmarks"]) == 0 and "digits" in capsys.readouterr().out
    assert main(["show", "method", "neggrad_plus"]) == 0 and "alpha" in capsys.readouterr().out
    assert main(["validate", "digits", "scenario=class"]) == 0
    assert "scenario: class" in capsys.readouterr().out
    assert run_cli("methods=[finetune]", f"output_dir={tmp_path / 'r'}") == 0
    capsys.readouterr()
    assert main(["cache", "ls"]) == 0
    assert "3 entries" in capsys.readouterr().out
    key = next((home / "models").iterdir()).name
    assert main(["cache", "rm", key[:8]]) == 0 and f"removed {key}" in capsys.readouterr().out
    assert main(["cache", "rm", "zzzzzzzz"]) == 2
    assert main(["cache", "clear"]) == 0 and "removed 2 entries" in capsys.readouterr().out
    assert not [p for p in Path(home / "models").iterdir()]
