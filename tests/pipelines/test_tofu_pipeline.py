"""The TOFU pipeline end to end on a tiny Llama and the embedded authors: rows, the retain model's self-reference,
the cache, OpenUnlearning-style overrides and the early errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from unlearnkit.cli import main
from unlearnkit.config import ConfigError
from unlearnkit.pipelines import load_run_config

TINY = ["data.n_authors=8", "data.n_holdout=2",
        "model.args={hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2, max_positions: 64}",
        "finetune.epochs=3", "finetune.batch_size=32", "methods=[grad_ascent,npo]",
        "unlearn={lr: 1.0e-3, epochs: 1, batch_size: 8}", "eval.max_new_tokens=6", "eval.batch_size=64",
        "method.rmu.layer=model.layers.0"]


def _rows(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tofu_tiny_end_to_end_and_resume(home, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "tofu_tiny", *TINY, f"output_dir={out}"]) == 0
    rows = _rows(out)
    assert [r["method"] for r in rows] == ["original", "retain", "grad_ascent", "npo"]
    by = {r["method"]: r["metrics"] for r in rows}
    assert by["retain"]["forget_quality"] == 1.0  # the retain model against its own truth ratios
    assert by["retain"]["privleak"] == 0.0
    for r in rows:
        m = r["metrics"]
        assert 0 <= m["model_utility"] <= 1 and 0 <= m["forget_Q_A_ROUGE"] <= 1
        assert 0 < m["forget_quality"] <= 1
        assert r["reference"].startswith("retain model")
    assert by["grad_ascent"]["forget_Q_A_Prob"] < by["original"]["forget_Q_A_Prob"]
    assert (out / "report.md").is_file() and list(out.glob("retain_logs_forget10_seed0.json"))
    assert [p.name.rsplit("-", 2)[1:] for p in out.glob("*-tofu-*.png")] == [["tofu", "tradeoff.png"]]
    printed = capsys.readouterr().out
    assert "forget quality" in printed.lower() or "forget_quality" in printed
    # a second run trains and unlearns nothing, and gives the same numbers
    out2 = tmp_path / "run2"
    assert main(["run", "tofu_tiny", *TINY, f"output_dir={out2}"]) == 0
    rows2 = _rows(out2)
    assert all(r["cached"] for r in rows2)
    assert [r["metrics"]["forget_quality"] for r in rows2] == [r["metrics"]["forget_quality"] for r in rows]
    assert rows[2]["setup"]["world_size"] == 1 and rows[2]["setup"]["per_device_batch"] == 8
    # the same rows read from local files in the TOFU layout: the same data hash, so the same cached models
    from unlearnkit.data.tofu_synth import generate_authors, write_json

    write_json(generate_authors(n_authors=8, n_holdout=2, seed=0), tmp_path / "tofu_files")
    out3 = tmp_path / "run3"
    assert main(["run", "tofu_tiny", *TINY, f"data.source={tmp_path / 'tofu_files'}", f"output_dir={out3}"]) == 0
    rows3 = _rows(out3)
    assert rows3[0]["data_hash"] == rows[0]["data_hash"] and all(r["cached"] for r in rows3)
    assert rows3[3]["metrics"] == rows[3]["metrics"]


def test_openunlearning_style_overrides():
    _, cfg = load_run_config("tofu_tiny", ["method=npo", "method.beta=0.5", "forget_split=forget05"])
    assert cfg.methods == ["npo"] and cfg.method["npo"]["beta"] == 0.5 and cfg.forget_split == "forget05"
    _, cfg = load_run_config("tofu_tiny", ["method.simnpo.delta=0.5"])
    assert cfg.method["simnpo"]["delta"] == 0.5
    with pytest.raises(ConfigError, match="name the method first"):
        load_run_config("tofu_tiny", ["method.beta=0.5"])


@pytest.mark.parametrize("args, message", [
    (["forget_split=forget20"], "forget_split"),
    (["retain_split=retain95"], "does not pair with forget_split='forget10'"),
    (["method=no_such_method"], "no_such_method"),
    (["method.npo.beta=-1"], "beta"),
    (["format.template=chat"], "no chat template"),
    (["methods=[rmu]", "method.rmu.layer=model.layers.9"], "model.layers.9"),
    (["model.retain_logs=x.json"], "given model.original"),
    (["eval.metrics=[accuracy]"], "not a TOFU"),
    (["methods=[npo]", "unlearn.lora_r=4", "unlearn.lora_targets=[q_proj,nope]"],
     "method.npo: LoRA target 'nope' matches no"),
    (["data.source=/no/such/dir"], "'/no/such/dir' is neither a directory nor a hub dataset id"),
])
def test_bad_input_fails_before_any_training(home, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["run", "tofu_tiny", *TINY, *args, f"output_dir={out}"]) == 2
    assert message in capsys.readouterr().err
    assert not (home / "models").exists() or not any((home / "models").iterdir())
    assert not (out / "results.jsonl").exists()


def test_best_step_is_kept_by_the_chosen_metric(home, tmp_path):
    from unlearnkit.pipelines import run

    result = run("tofu_tiny", [*TINY, "methods=[grad_ascent]", "unlearn={lr: 3.0e-3, epochs: 2, batch_size: 8}",
                               "eval.every=1", "eval.select=model_utility", f"output_dir={tmp_path / 'o'}"])
    row = result.rows[-1]
    curve = row["curve"]
    assert [p["step"] for p in curve] == list(range(1, len(curve) + 1)) and len(curve) == 6
    best = max(curve, key=lambda p: p["model_utility"])
    assert sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "o").glob("*-tofu-*.png")) == [
        "curves.png", "tradeoff.png"]
    assert row["best_step"] == best["step"]
    assert row["metrics"]["model_utility"] == pytest.approx(best["model_utility"], rel=1e-6)
    assert row["metrics"]["forget_quality"] == pytest.approx(best["forget_quality"], rel=1e-6)


def test_an_evaluation_only_run_writes_the_retain_log(home, tmp_path):
    from unlearnkit.metrics.tofu_eval import load_outputs
    from unlearnkit.pipelines import run

    result = run("tofu_tiny", [*TINY, "methods=[]", f"output_dir={tmp_path / 'o'}"])
    assert [r["method"] for r in result.rows] == ["original", "retain"]
    log = load_outputs(tmp_path / "o" / "retain_logs_forget10_seed0.json", model_id="tiny_llama")
    assert log.identity["forget_split"] == "forget10" and len(log.avg_loss["forget/answer"]) == 20


def test_early_stopping_on_a_retain_metric(home, tmp_path):
    from unlearnkit.pipelines import run

    args = [*TINY, "methods=[grad_ascent]", "unlearn={lr: 3.0e-2, epochs: 3, batch_size: 8}", "eval.every=1",
            f"output_dir={tmp_path / 'o'}"]
    full = run("tofu_tiny", args).rows[-1]
    utility = [p["retain_Q_A_Prob"] for p in full["curve"]]
    assert full["steps"] == 9 and len(utility) == 9 and utility[-1] < utility[0]
    floor = (utility[0] + utility[-1]) / 2  # the run is deterministic: it must stop at the first step below
    first = next(i for i, u in enumerate(utility, start=1) if u < floor)
    stopped = run("tofu_tiny", [*args, f"eval.stop_below={{retain_Q_A_Prob: {floor}}}"]).rows[-1]
    assert stopped["steps"] == first < 9 and [p["step"] for p in stopped["curve"]] == list(range(1, first + 1))
    with pytest.raises(ConfigError, match="no_such_key"):
        run("tofu_tiny", [*args, "eval.stop_below={no_such_key: 1}"])
    with pytest.raises(ConfigError, match="eval.every > 0"):
        run("tofu_tiny", [*TINY, "eval.select=model_utility"])


def test_a_lora_run_returns_the_merged_model(home, tmp_path):
    from unlearnkit.pipelines import run

    result = run("tofu_tiny", [*TINY, "methods=[npo]", "unlearn={lr: 1.0e-2, epochs: 2, batch_size: 8, lora_r: 4, "
                               "lora_targets: [q_proj, v_proj]}", "save_models=true", f"output_dir={tmp_path / 'o'}"])
    original, _, npo = result.rows
    assert npo["setup"]["lora_r"] == 4 and npo["params"]["lora_targets"] == ["q_proj", "v_proj"]
    assert npo["metrics"]["forget_Q_A_Prob"] < original["metrics"]["forget_Q_A_Prob"]
    # the merged model, saved as a plain Hugging Face checkpoint, scores as the row says
    from unlearnkit.metrics.tofu_eval import collect_tofu_outputs
    from unlearnkit.models.llm import hf_causal_lm
    from unlearnkit.pipelines.tofu import TofuRunner

    saved = tmp_path / "o" / "models" / "npo-seed0"
    model = hf_causal_lm(str(saved), local_files_only=True)
    assert not any("lora" in n for n, _ in model.named_parameters())
    _, cfg = load_run_config("tofu_tiny", TINY)
    prepared = TofuRunner(cfg, say=lambda s: None).prepared()
    out = collect_tofu_outputs(model, prepared, batch_size=64, max_new_tokens=6)
    assert float(np.exp(-out.avg_loss["forget/answer"]).mean()) == pytest.approx(
        npo["metrics"]["forget_Q_A_Prob"], rel=1e-5)
    assert not list((tmp_path / "o" / "models").glob(".*"))  # no temporary directory left behind


def test_given_checkpoints_and_their_cache_keys(home, tmp_path):
    """model.original / model.retain as local checkpoints (the real-model presets' path); the unlearned model's cache
    entry is keyed by the checkpoint files, so rewriting them invalidates it (P12)."""
    from unlearnkit.config import dump_yaml, load_yaml
    from unlearnkit.pipelines import resolve_preset, run
    from unlearnkit.pipelines.tofu import TofuRunner

    _, cfg = load_run_config("tofu_tiny", TINY)
    runner = TofuRunner(cfg, say=lambda s: None)
    for name, seed in (("target_full", 0), ("target_retain90", 1)):
        runner.fresh(seed).save_pretrained(tmp_path / name)
        runner.tokenizer.save_pretrained(tmp_path / name)
    preset = load_yaml(resolve_preset("tofu_tiny"))
    preset["model"] = {"name": "hf_causal_lm", "original": str(tmp_path / "target_full"),
                       "retain": str(tmp_path / "target_{retain_split}"), "tokenizer": str(tmp_path / "target_full")}
    (tmp_path / "given.yaml").write_text(dump_yaml(preset))
    args = [a for a in TINY if not a.startswith("model.")] + ["methods=[grad_ascent]", f"output_dir={tmp_path / 'o'}"]
    first = run(str(tmp_path / "given.yaml"), args).rows
    assert [r["method"] for r in first] == ["original", "retain", "grad_ascent"]
    assert first[1]["metrics"]["forget_quality"] == 1.0 and not first[2]["cached"]
    assert run(str(tmp_path / "given.yaml"), args).rows[2]["cached"]
    runner.fresh(2).save_pretrained(tmp_path / "target_full")  # new weights under the same name
    again = run(str(tmp_path / "given.yaml"), args).rows
    assert not again[2]["cached"] and again[0]["cache_key"] != first[0]["cache_key"]
    # without a retain model: refused, unless the caller opts in; then no referenced metric is reported
    del preset["model"]["retain"]
    (tmp_path / "given.yaml").write_text(dump_yaml(preset))
    with pytest.raises(ConfigError, match="eval.no_reference=true"):
        run(str(tmp_path / "given.yaml"), args)
    alone = run(str(tmp_path / "given.yaml"), [*args, "eval.no_reference=true"]).rows
    assert [r["method"] for r in alone] == ["original", "grad_ascent"]
    assert "model_utility" in alone[0]["metrics"] and "forget_quality" not in alone[0]["metrics"]
    assert alone[0]["metrics"]["model_utility"] == again[0]["metrics"]["model_utility"]
    assert alone[1]["reference"].startswith("none")


def test_retain_logs_of_another_model_are_refused(home, tmp_path, capsys):
    from unlearnkit.pipelines.tofu import TofuRunner

    _, cfg = load_run_config("tofu_tiny", TINY)
    runner = TofuRunner(cfg, say=lambda s: None)
    model = runner.fresh(0)
    model.save_pretrained(tmp_path / "target_full")
    runner.tokenizer.save_pretrained(tmp_path / "target_full")
    from unlearnkit.metrics.tofu_eval import collect_tofu_outputs, save_outputs

    log = save_outputs(tmp_path / "other.json", collect_tofu_outputs(model, runner.prepared(), max_new_tokens=2),
                       "some-other-model")
    from unlearnkit.config import dump_yaml, load_yaml
    from unlearnkit.pipelines import resolve_preset

    preset = load_yaml(resolve_preset("tofu_tiny"))
    preset["model"] = {"name": "hf_causal_lm", "original": str(tmp_path / "target_full"),
                       "tokenizer": str(tmp_path / "target_full"), "retain_logs": str(log)}
    (tmp_path / "given.yaml").write_text(dump_yaml(preset))
    args = [a for a in TINY if not a.startswith("model.")]
    assert main(["run", str(tmp_path / "given.yaml"), *args, f"output_dir={tmp_path / 'o'}"]) == 2
    assert "comes from model 'some-other-model'" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["tofu_tiny", "tofu", "tofu_llama31_8b", "tofu_qwen25_1p5b"])
def test_presets_validate_without_downloading(preset):
    from unlearnkit.pipelines.tofu import create_methods, validate

    entry, cfg = load_run_config(preset, ["forget_split=forget05"])
    validate(cfg)
    methods = dict(create_methods(cfg, 0))
    assert {"grad_ascent", "grad_diff", "npo", "simnpo", "rmu", "imu"} <= set(methods)
    assert methods["npo"].retain_loss == "nll" and methods["pdu"].epsilon == 0.3
    if preset != "tofu_tiny":  # the spec's recipe (llm.md §1, §2.12)
        assert cfg.model.retain.format(retain_split="retain95").endswith("_retain95")
        assert methods["npo"].lr == 1e-5 and methods["undial"].lr == 1e-4 and methods["wga"].epochs == 5
        assert methods["simnpo"].gamma == 0.125 and methods["npo"].grad_accum == 4


LAUNCH = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "--main_process_port", "0"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate CLI is not installed")
def test_tofu_two_processes(tmp_path):
    env = {**os.environ, "UNLEARNKIT_HOME": str(tmp_path / "home"), "ACCELERATE_USE_CPU": "true",
           "OMP_NUM_THREADS": "1"}
    args = ["run", "tofu_tiny", *TINY, "methods=[grad_diff]"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "unlearnkit", *args, f"output_dir={one}"], env=env, check=True,
                   timeout=300, capture_output=True)
    done = subprocess.run([shutil.which("accelerate"), "launch", *LAUNCH, "-m", "unlearnkit", *args,
                           "method.grad_diff.lr=2e-3", f"output_dir={two}"], env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows1, rows2 = _rows(one), _rows(two)
    assert [r["method"] for r in rows2] == ["original", "retain", "grad_diff"]  # written once, by the main process
    assert all(r["world_size"] == 2 for r in rows2) and rows2[2]["setup"]["world_size"] == 2
    for a, b in zip(rows1[:2], rows2[:2], strict=True):  # the same cached models, evaluated in two shards
        assert b["cached"]
        for key, value in a["metrics"].items():
            assert b["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key
    assert not rows2[2]["cached"] and rows2[2]["metrics"]["forget_Q_A_Prob"] < rows2[0]["metrics"]["forget_Q_A_Prob"]


def test_one_original_model_serves_every_forget_split(home, tmp_path):
    from unlearnkit.pipelines import run

    ten = run("tofu_tiny", [*TINY, "methods=[]", f"output_dir={tmp_path / 'a'}"]).rows
    five = run("tofu_tiny", [*TINY, "methods=[]", "forget_split=forget05", f"output_dir={tmp_path / 'b'}"]).rows
    assert five[0]["cache_key"] == ten[0]["cache_key"] and five[0]["cached"]  # the same original, from the cache
    assert five[1]["cache_key"] != ten[1]["cache_key"]  # retain95 is another model than retain90
    assert five[0]["metrics"]["model_utility"] == ten[0]["metrics"]["model_utility"]
