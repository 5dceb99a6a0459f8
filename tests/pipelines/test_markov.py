"""The Markov-chain benchmark end to end on a reduced configuration (same code path as the seed's defaults)."""

import math

import numpy as np
import pytest

from unlearnkit._io import read_jsonl
from unlearnkit.cli import main
from unlearnkit.config import build
from unlearnkit.pipelines.markov import MarkovConfig, reach, run_markov

DATA = ["data.num_retain_sequences=1000", "data.num_forget_sequences1=500", "data.num_forget_sequences2=500"]
SMALL = [*DATA, "model.n_embd=32", "model.n_layer=2", "pretrain.epochs=4", "unlearn.max_iterations=5"]
SEED_DATA = ["--num_retain_sequences", "1000", "--num_forget_sequences1", "500", "--num_forget_sequences2", "500"]
SEED_MODEL = ["--n_embd", "32", "--n_layer", "2", "--only_forget1"]


def run(*args):
    return main(["run", "markov", *SMALL, *args])


def rows_by_label(path):
    return {r["label"]: r for r in read_jsonl(path)}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """One reduced run of the benchmark with three methods, shared by the sanity tests."""
    root = tmp_path_factory.mktemp("markov")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNLEARNKIT_HOME", str(root / "home"))
    assert run("methods=[grad_ascent,npo,imu]", f"output_dir={root / 'out'}") == 0
    yield root, rows_by_label(root / "out" / "results.jsonl")
    mp.undo()


def test_sanity_of_the_reference_points(small_run):
    _, rows = small_run
    retrain, original = rows["retrain"]["metrics"], rows["original"]["metrics"]
    assert all(retrain[f"kl_retrain_{s}"] == 0.0 for s in ("retain", "forget", "forget1", "forget2"))
    # the original has seen forget1, the retrained model has not: forget1 is where they differ
    assert original["kl_retrain_forget1"] > 3 * original["kl_retrain_retain"]
    assert original["kl_true_forget1"] < retrain["kl_true_forget1"]


def test_gradient_ascent_lowers_the_forget1_likelihood_and_curves_are_recorded(small_run):
    _, rows = small_run
    ga, original = rows["grad_ascent"], rows["original"]["metrics"]
    assert ga["metrics"]["loss_forget1"] > original["loss_forget1"]
    assert [p["step"] for p in ga["curve"]] == list(range(6))  # before unlearning + every iteration
    assert ga["curve"][0]["loss_forget1"] == original["loss_forget1"]
    assert ga["curve"][-1]["loss_forget1"] == ga["metrics"]["loss_forget1"]
    assert ga["forget_set"] == "both" and ga["params"]["max_steps"] == 5
    assert ga["times"]["rte"] == pytest.approx(ga["times"]["unlearn_s"] / ga["times"]["retrain_s"])


def test_report_has_table_and_curves(small_run):
    root, _ = small_run
    report = (root / "out" / "report.md").read_text()
    assert "KL→retrain forget1" in report and "| imu | 1 |" in report
    for family in ("kl_retrain", "kl_true", "loss"):
        assert (root / "out" / f"report-markov-forget_set-both-markov_gpt-curve-{family}.png").is_file()
    assert (root / "out" / "report-markov-forget_set-both-markov_gpt-tradeoff.png").is_file()


def test_reach_is_the_first_step_at_the_target():
    curve = [{"step": 0, "kl_true_forget1": 0.1, "kl_true_retain": 0.2},
             {"step": 1, "kl_true_forget1": 0.5, "kl_true_retain": 0.3},
             {"step": 2, "kl_true_forget1": 0.9, "kl_true_retain": 0.4}]
    assert reach(curve, 0.5) == (1.0, 0.3)
    assert all(math.isnan(v) for v in reach(curve, 1.0))


def test_several_seeds_are_averaged_with_intervals(home, tmp_path):
    assert run("methods=[grad_ascent]", "seeds=[1,2]", "unlearn.max_iterations=2", f"output_dir={tmp_path / 's'}") == 0
    report = (tmp_path / "s" / "report.md").read_text()
    for label in ("original", "retrain", "grad_ascent"):
        assert f"| {label} | 2 |" in report  # one row per label, n = 2 seeds, not one row per seed
    assert "±" in report


def test_forget_set_choice_is_recorded_and_changes_the_forget_data(home, tmp_path):
    assert run("methods=[grad_ascent]", "forget_set=forget1", f"output_dir={tmp_path / 'f1'}") == 0
    rows = rows_by_label(tmp_path / "f1" / "results.jsonl")
    assert rows["grad_ascent"]["forget_set"] == "forget1" and rows["grad_ascent"]["scenario"] == "forget_set=forget1"
    assert rows["grad_ascent"]["config"]["forget_set"] == "forget1"


def test_seed_commands_give_the_same_numbers_as_run_markov(home, tmp_path, capsys):
    seed_out, run_out = tmp_path / "seed", tmp_path / "run"
    assert main(["markov", "generate-data", *SEED_DATA, "--data_dir", str(tmp_path / "data")]) == 0
    for model_type in ("pretrain", "retain"):
        assert main(["markov", "train", *SEED_DATA, *SEED_MODEL, "--epochs", "4", "--model_type", model_type]) == 0
    common = [*SEED_DATA, *SEED_MODEL, "--pretraining_epochs", "4", "--max_iterations", "5", "--use_retrain_eval",
              "--output_dir", str(seed_out)]
    assert main(["markov", "unlearn-imu", *common, "--alpha", "0.002"]) == 0
    assert main(["markov", "unlearn", *common, "--loss_type", "SimNPO_KL", "--beta", "1"]) == 0
    assert list((tmp_path / "data").glob("markov-*.npz"))
    capsys.readouterr()
    assert run("methods=[imu,simnpo_kl]", "method.imu.alpha=0.002", "method.simnpo_kl.beta=1",
               f"output_dir={run_out}") == 0
    assert "pretrain (retain+forget1): loaded from cache" in capsys.readouterr().out
    seed_rows, run_rows = rows_by_label(seed_out / "results.jsonl"), rows_by_label(run_out / "results.jsonl")
    for name in ("imu", "simnpo_kl"):
        assert seed_rows[name]["metrics"] == run_rows[name]["metrics"]
        assert seed_rows[name]["curve"] == run_rows[name]["curve"]


@pytest.mark.parametrize("args, message", [
    (["data.state_size=2"], "data.state_size = 2: must be >= 3"),
    (["data.leakage=1.0"], "data.leakage = 1.0: must be < 1"),
    (["data.test_size=0"], "data.test_size = 0: must be > 0"),
    (["data.test_size=1.0"], "data.test_size = 1.0: must be < 1"),
    (["method.npo.beta=0"], "method.npo.beta = 0: must be > 0"),
    (["method.simnpo.beta=0"], "method.simnpo.beta = 0: must be > 0"),
    (["methods=[imu,unlearn_everything]"], "unknown method 'unlearn_everything'"),
    (["forget_set=forget3"], "forget_set = 'forget3': expected one of: forget1, forget2, both"),
])
def test_bad_input_is_one_line_before_any_work(home, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert run(*args, f"output_dir={out}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unlearnkit: error: ") and message in err and "\n" not in err
    assert not out.exists() and not home.exists()


@pytest.mark.parametrize("argv, message", [
    (["unlearn", "--loss_type", "forgetify"], "unknown loss type 'forgetify'; valid (case-insensitive): grad_ascent"),
    (["unlearn", "--loss_type", "NPO"], "--beta 0.0 with --loss_type NPO: NPO and SimNPO divide by beta"),
    (["unlearn-imu", "--state_size", "2"], "data.state_size = 2: must be >= 3"),
    (["generate-data", "--leakage", "1.5"], "data.leakage = 1.5: must be < 1"),
    (["generate-data", "--test_size", "0"], "data.test_size = 0.0: must be > 0"),
])
def test_seed_command_bad_input(home, capsys, argv, message):
    assert main(["markov", *argv]) == 2
    assert message in capsys.readouterr().err


def test_unlearn_before_the_original_exists_names_the_command(home, capsys):
    assert main(["markov", "unlearn-imu", *SEED_DATA, *SEED_MODEL, "--pretraining_epochs", "4"]) == 2
    err = capsys.readouterr().err
    assert "no pretrain model for these settings" in err
    assert "unlearnkit markov train --model_type pretrain --only_forget1" in err


def test_seed_loss_type_spellings():
    from unlearnkit.pipelines.markov_cli import loss_name

    assert loss_name("NPO") == "npo" and loss_name("SimNPO_KL") == "simnpo_kl" and loss_name("IMU") == "imu"
    assert loss_name("grad_diff_KL_forget") == "grad_diff_kl_forget" and loss_name("GA") == "grad_ascent"
    assert loss_name("GradDiff") == "grad_diff"


def test_alpha_for_a_loss_without_weights_is_accepted_with_a_warning(home, tmp_path):
    from unlearnkit.pipelines.markov_cli import _parse, config_from_flags

    args = _parse(["unlearn", "--loss_type", "grad_ascent", "--alpha", "0.002"])
    with pytest.warns(UserWarning, match="--alpha 0.002 has no effect with --loss_type grad_ascent"):
        cfg = config_from_flags(args)
    assert cfg.method == {"grad_ascent": {}}


def test_shipped_seed_command_presets_match_the_defaults_of_run_markov():
    from unlearnkit.pipelines import load_run_config
    from unlearnkit.pipelines.markov_cli import _parse, config_from_flags

    _, preset = load_run_config("markov")
    imu = config_from_flags(_parse(["unlearn-imu", "--config", "unlearn_imu"]))
    assert imu.data == preset.data and imu.model == preset.model and imu.pretrain == preset.pretrain
    assert imu.unlearn.lr == preset.unlearn.lr and imu.method["imu"] == {"alpha": 0.002, "top_data": 1.0}
    with pytest.warns(UserWarning, match="--alpha 0.002 has no effect"):  # the seed README passes it to unlearn.py
        npo = config_from_flags(_parse(["unlearn", "--config", "unlearn", "--loss_type", "NPO"]))
    assert npo.method["npo"] == preset.method["npo"] and npo.only_forget1 == preset.only_forget1
    train = config_from_flags(_parse(["train", "--config", "train_pretrain"]))
    assert train.pretrain == preset.pretrain and train.seeds == preset.seeds


def test_markov_config_defaults_are_the_seeds():
    cfg = build(MarkovConfig, {})
    assert (cfg.data.state_size, cfg.data.num_retain_sequences, cfg.data.leakage) == (10, 10000, 0.2)
    assert (cfg.unlearn.batch_size, cfg.unlearn.max_iterations, cfg.pretrain.batch_size) == (4, 50, 128)
    assert cfg.only_forget1 and cfg.forget_set == "both" and np.isclose(cfg.unlearn.lr, 5e-4)
    assert callable(run_markov)
