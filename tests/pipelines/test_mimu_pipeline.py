"""The MIMU benchmark (pipelines/mimu.py, report/mimu.py) on real tiny models: the staged run end to end on digits
(the §8 JSONs checked against metrics computed directly, the random mask's budget, SFT trained once, every stage
cached on a re-run, the report with its Markdown and LaTeX tables and κ figures, tracking through accelerate),
set_difference, every bad input rejected before any training, the reader of the reference's `maked_layer`, and the
GPU presets validated on tiny files in the real formats."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

from unlearnkit.cache import ModelCache
from unlearnkit.cli import main
from unlearnkit.config import ConfigError
from unlearnkit.metrics.classifier import accuracy, cross_entropy, true_class_prob
from unlearnkit.pipelines import PRESET_DIR, list_presets, load_run_config, run
from unlearnkit.pipelines import mimu as P

# mlp_mimu with W [12, 16] (N = 192); two K, two κ; a few GCN and SFT steps
TINY = ["model_args={hidden: [16, 12]}", "train.epochs=30", "seeds=[0]", "graph_samples=64", "top_k=[150, 0.9]",
        "kappa=[20, 60]", "method.mimu={steps: 3, batch_size: 8, n_representatives: 2}",
        "method.sft_randomize={max_steps: 3}"]
SECTION_KEYS = {"before_masking_loss", "before_masking_score", "after_masking_loss", "after_masking_score",
                "before_mask_probability", "after_mask_probability", "random_masking_loss", "random_masking_score",
                "random_masking_probability", "sft_baseline_loss", "sft_baseline_score", "sft_baseline_probability"}
TOP_KEYS = {"id", "model", "dataset", "num_classes", "forget_class", "seed", "masked_layer", "num_graph_vertices",
            "num_graph_edges", "top_k_value", "kappa", "strategy", "num_forget_specific", "unlearning_metrics",
            "performance_degradation_metrics", "mask_efficacy_metrics", "provenance"}


def _quiet(_: str) -> None:
    pass


def _entries(home, kind):
    """Cache entries (spec dicts) of one kind: mimu_gcn, mimu_class_logits, unlearned, original."""
    return [e.meta["spec"] for e in ModelCache(home).entries() if (e.meta.get("spec") or {}).get("kind") == kind]


def _direct(model, data, forget_class):
    """The five §8 metrics of a model computed here from its test logits, CE summed per sample then divided."""
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(data.x_test)).double()
    y = torch.from_numpy(data.y_test)
    out = {}
    for part, rows in (("forget", y == forget_class), ("retain", y != forget_class)):
        z, t = logits[rows], y[rows]
        ce = torch.nn.functional.cross_entropy(z, t, reduction="sum") / len(t)
        out[part] = {"loss": float(ce), "score": accuracy(z.numpy(), t.numpy()),
                     "probability": float(z.softmax(-1)[:, forget_class].mean())}
    return out


class MemoryTracker:
    """An accelerate tracker that keeps what it is given (registered by name, as a user's own tracker would be)."""

    name = "unlearnkit_test_memory"
    requires_logging_directory = False
    logged: list[tuple[dict, int]] = []
    config: dict = {}

    def __init__(self, run_name, **kwargs):
        from accelerate.tracking import GeneralTracker

        GeneralTracker.__init__(self, _blank=True)
        MemoryTracker.logged, MemoryTracker.config = [], {}

    @property
    def tracker(self):
        return self

    def start(self):
        pass

    def store_init_configuration(self, values):
        MemoryTracker.config = dict(values)

    def log(self, values, step=None, **kwargs):
        MemoryTracker.logged.append((dict(values), step))

    def finish(self):
        pass


def _register_memory_tracker():
    from accelerate.tracking import GeneralTracker, register_tracker_class

    cls = type("MemoryTrackerImpl", (MemoryTracker, GeneralTracker), {})
    register_tracker_class(cls)


def test_end_to_end_json_report_and_resume(home, tmp_path):
    out = tmp_path / "run"
    result = run("mimu_digits", [*TINY, f"output_dir={out}"], say=_quiet)
    _, cfg = load_run_config("mimu_digits", [*TINY, f"output_dir={out}"])
    the_plan = P.plan(cfg)
    data = the_plan.data
    assert (the_plan.layer, the_plan.shape, the_plan.top_ks, the_plan.kappas) == ("features.fc2", (12, 16),
                                                                                  [150, 173], [20, 60])

    # one JSON per (model, dataset, class, K, κ, seed) with exactly the §8 fields
    records = P.read_experiments(out / "json")
    assert sorted(r["id"] for r in records) == sorted(
        f"mlp_mimu-digits-class0-top{k}-kappa{kappa}-seed0" for k in (150, 173) for kappa in (20, 60))
    for r in records:
        assert set(r) == TOP_KEYS
        assert (r["num_graph_vertices"], r["num_graph_edges"], r["num_classes"]) == (192, 12 * 16 * 26, 10)
        assert r["masked_layer"] == "features.fc2" and r["strategy"] == "rank" and r["forget_class"] == 0
        for section in ("unlearning_metrics", "performance_degradation_metrics", "mask_efficacy_metrics"):
            assert set(r[section]) == SECTION_KEYS and all(isinstance(v, float) for v in r[section].values())
        assert set(r["provenance"]) == {"config", "versions", "data_hash", "git_sha"}
        assert r["provenance"]["data_hash"] == data.hash and r["provenance"]["config"]["top_k"] == [150, 0.9]

    # "before" = the classifier's own metrics, computed here on the test split
    original = next(row for row in result.rows if row["method"] == "original")
    from unlearnkit.models import build_model

    clf = build_model("mlp_mimu", seed=0, input_shape=data.input_shape, num_classes=10, hidden=[16, 12])
    assert ModelCache(home).load(original["cache_key"], clf) is not None
    direct = _direct(clf, data, 0)
    logits = clf(torch.from_numpy(data.x_test)).detach().numpy()
    forget = data.y_test == 0
    assert direct["forget"]["loss"] == pytest.approx(cross_entropy(logits[forget], data.y_test[forget]), rel=1e-5)
    assert direct["forget"]["probability"] == pytest.approx(true_class_prob(logits[forget], data.y_test[forget]),
                                                            rel=1e-5)
    for r in records:
        for part, section in (("forget", "unlearning_metrics"), ("retain", "performance_degradation_metrics")):
            got = r[section]
            assert got["before_masking_loss"] == pytest.approx(direct[part]["loss"], rel=1e-4)
            assert got["before_masking_score"] == pytest.approx(direct[part]["score"])
            assert got["before_mask_probability"] == pytest.approx(direct[part]["probability"], rel=1e-4)

    # MIMU's "after" = the classifier with forget_mask(z̄_K) applied; random = exactly κ weights zeroed
    from unlearnkit.methods.mimu import apply_mask, forget_mask

    runner = P._Runner(the_plan, ModelCache(home), _quiet)
    stage = runner.classifier(0)
    assert stage.hit
    graph, reps = runner.graph_samples(0), runner.representatives(0)
    weight = clf.features.fc2.weight.detach()
    for top_k in (150, 173):
        gcn, gcn_stage = runner.gcn(0, stage, top_k, graph)
        z, logits_stage = runner.class_logits(0, stage, gcn, gcn_stage, reps)
        assert gcn_stage.hit and logits_stage.hit and z.shape == (10, 192)
        for kappa in (20, 60):
            r = next(x for x in records if x["top_k_value"] == top_k and x["kappa"] == kappa)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # κ above the forget-specific count
                keep, info = forget_mask(z, 0, top_k=top_k, kappa=kappa)
            assert r["num_forget_specific"] == info["num_forget_specific"]
            mine = _direct(apply_mask(copy.deepcopy(clf), "features.fc2", keep), data, 0)
            assert r["unlearning_metrics"]["after_masking_score"] == pytest.approx(mine["forget"]["score"])
            assert r["performance_degradation_metrics"]["after_masking_loss"] == pytest.approx(
                mine["retain"]["loss"], rel=1e-4)
            from unlearnkit.methods import create_method

            rand = create_method("random_mask", kappa=kappa, seed=0).unlearn(copy.deepcopy(clf), None, None)
            zeroed = int((rand.features.fc2.weight == 0).sum()) - int((weight == 0).sum())
            assert zeroed == kappa
            mine = _direct(rand, data, 0)
            assert r["unlearning_metrics"]["random_masking_score"] == pytest.approx(mine["forget"]["score"])
            assert r["performance_degradation_metrics"]["random_masking_loss"] == pytest.approx(
                mine["retain"]["loss"], rel=1e-4)
    assert {row["metrics"]["kappa_used"] for row in result.rows if row["method"] == "random_mask"} == {20, 60}

    # SFT: one cache entry per (classifier, class, seed), the same model behind every κ (M7)
    sft = _entries(home, "unlearned")
    assert len(sft) == 1 and sft[0]["method"] == "sft_randomize"
    assert len({json.dumps(r["unlearning_metrics"]["sft_baseline_score"]) for r in records}) == 1
    assert sum(row["method"] == "sft_randomize" for row in result.rows) == 1
    # the graph samples: training images, hashed in the run's metadata and in each GCN's cache key
    (meta,) = (out / "runs").glob("*.json")
    recorded = json.loads(meta.read_text())["graph_samples"]["0"]
    assert recorded == {"split": "train", "count": 64, "hash": graph[1]}
    assert {g["graph_samples"] for g in _entries(home, "mimu_gcn")} == {graph[1]}
    assert len(_entries(home, "mimu_gcn")) == 2 and len(_entries(home, "mimu_class_logits")) == 2

    # rows: original and SFT once, the pure mask per K, MIMU and random per (K, κ)
    methods = [row["method"] for row in result.rows]
    assert {m: methods.count(m) for m in set(methods)} == {"original": 1, "sft_randomize": 1, "pure_class_mask": 2,
                                                          "mimu": 4, "random_mask": 4}
    # the report: the generic table, the comparison table (Markdown + LaTeX) and a figure per (class, K)
    report = (out / "report.md").read_text()
    assert "**MIMU vs. baselines**" in report
    assert "| class | K | κ | metric | MIMU | SFT | Random | Original |" in report
    assert "| 0 | 150 | 20 | forget score (%) |" in report and "mimu (class 0, K 173, κ 60)" in report
    tex = (out / "report_digits_mlp-mimu.tex").read_text()
    assert r"\toprule" in tex and r"$\kappa$ & metric & MIMU & SFT & Random & Original \\" in tex
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["report-mimu-digits-mlp_mimu-class0-top150.png", "report-mimu-digits-mlp_mimu-class0-top173.png"]
    assert all(f"]({name})" in report for name in pngs)

    # a re-run (with tracking on) trains nothing: every stage is a cache hit; the same numbers
    _register_memory_tracker()
    again = run("mimu_digits", [*TINY, f"output_dir={out}", f"tracking.logger={MemoryTracker.name}"], say=_quiet)
    assert again.cache_hits and all(again.cache_hits.values()), again.cache_hits
    assert [r["metrics"] for r in again.rows] == [r["metrics"] for r in result.rows]
    def strip(rs):
        return [{k: v for k, v in r.items() if k != "provenance"} for r in rs]

    assert strip(P.read_experiments(out / "json")) == strip(records)  # the config differs: tracking
    steps = [step for _, step in MemoryTracker.logged]
    assert steps == [20, 60, 20, 60]  # per κ, for each K
    logged = MemoryTracker.logged[0][0]
    assert logged["seed0/class0/top150/mimu/forget_score"] == records[0]["unlearning_metrics"]["after_masking_score"]
    assert MemoryTracker.config["top_k"] == "[150, 0.9]"
    # `unlearnkit report DIR` rebuilds the same report from results.jsonl
    written = (out / "report.md").read_text()
    (out / "report.md").unlink()
    (out / "report_digits_mlp-mimu.tex").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == written and (out / "report_digits_mlp-mimu.tex").read_text() == tex


def test_set_difference_zeroes_the_set_and_random_matches_its_size(home, tmp_path):
    out = tmp_path / "setdiff"
    result = run("mimu_digits", [*TINY, "top_k=[30]", "method.mimu.strategy=set_difference",
                                 "baselines=[random_mask]", f"output_dir={out}"], say=_quiet)
    (record,) = P.read_experiments(out / "json")
    assert record["id"] == "mlp_mimu-digits-class0-top30-kappasetdiff-seed0"
    assert record["strategy"] == "set_difference" and record["unlearning_metrics"]["sft_baseline_score"] is None
    mimu = next(r for r in result.rows if r["method"] == "mimu")
    rand = next(r for r in result.rows if r["method"] == "random_mask")
    assert record["kappa"] == mimu["metrics"]["kappa_used"] == rand["metrics"]["kappa_used"]
    assert 0 < record["kappa"] <= 30  # M_f ∧ ¬(∨_{c≠f} M_c) lies inside M_f


def _plan(*overrides):
    entry, cfg = load_run_config("mimu_digits", [*TINY, *overrides])
    return entry.tags["validate"](cfg)


BAD = [
    (["kappa=[20, 300]"], "kappa[1]=300 gives 300 weights, outside [0, N] = [0, 192]"),
    (["kappa=[20, 0.104]"], "kappa=[20, 0.104]: 0.104 gives 20 weights, as an earlier value does"),
    (["top_k=[0]"], "top_k[0]=0 gives 0 weights, outside (0, N] = [1, 192]"),
    (["top_k=[1.5]"], "a float is a fraction of the N = 192 weights and must be in [0, 1]"),
    (["model=mlp", "model_args={}"], "does not fit MIMU's head contract"),
    (["forget_classes=[10]"], "class index 10 is out of range; allowed: 0..9"),
    (["forget_classes=[zero]"], "unknown class name 'zero'"),
    (["baselines=[retrain]"], "unknown baseline 'retrain'; allowed: random_mask, sft_randomize"),
    (["method.ssd.alpha=1"], "method.ssd: 'ssd' is not a method of this benchmark; allowed: mimu, random_mask"),
    (["method.mimu.stepz=3"], "unknown key 'method.mimu.stepz'"),
    (["method.mimu.top_k=5"], "method.mimu.top_k is set by the pipeline; use top_k=[...]"),
    (["method.mimu.masked_layer=features.fc1"], "masked_layer='features.fc1' is not the masked layer"),
    (["method.sft_randomize.lr=-1"], "method.sft_randomize.lr = -1"),
    (["graph_sample=32"], "unknown key 'graph_sample'"),
    (["tracking.logger=nope"], "tracking.logger='nope' is not an accelerate tracker; allowed: none, "),
    (["seeds=[0, 0]"], "seeds=[0, 0] repeats a value"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_bad_input_fails_before_any_work(home, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        _plan(*overrides, f"output_dir={tmp_path / 'never'}")
    assert message in str(err.value)
    assert len(str(err.value).splitlines()) == 1
    assert not (home / "models").exists() and not (tmp_path / "never").exists()  # nothing trained or written


def test_an_uninstalled_tracker_is_named_before_any_work(home):
    from accelerate.tracking import get_available_trackers

    if "tensorboard" in {str(t) for t in get_available_trackers()}:
        pytest.skip("tensorboard is installed")
    with pytest.raises(ConfigError, match=r"tracking.logger='tensorboard': its package is not installed"):
        _plan("tracking.logger=tensorboard")
    assert not (home / "models").exists()


def test_tensorboard_tracking(home, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    run("mimu_digits", [*TINY, "top_k=[150]", "kappa=[20]", "baselines=[]", "tracking.logger=tensorboard",
                        f"output_dir={out}"], say=_quiet)
    assert list((out / "tracking").rglob("events.out.tfevents.*"))


def test_set_metrics_are_sample_weighted_for_any_number_of_classes():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(300, 100)) * 3, rng.integers(0, 100, 300)
    labels[:7] = 42
    got = P.set_metrics(logits, labels, 42)
    rows = labels == 42
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    assert got["forget"]["loss"] == pytest.approx(-lp[rows, 42].mean())
    assert got["forget"]["score"] == pytest.approx(accuracy(logits[rows], labels[rows]))
    assert got["forget"]["probability"] == pytest.approx(np.exp(lp[rows, 42]).mean())
    assert got["retain"]["probability"] == pytest.approx(np.exp(lp[~rows, 42]).mean())
    assert got["retain"]["loss"] == pytest.approx(-lp[~rows][np.arange((~rows).sum()), labels[~rows]].mean())


def test_reader_accepts_the_reference_spelling(tmp_path):
    ours = {"id": "a", "masked_layer": "features.fc2", "kappa": 1000}
    reference = [{"id": f"b{i}", "maked_layer": "hooked_layer", "kappa": 4900} for i in range(2)]
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "a.json").write_text(json.dumps(ours, indent=2))
    (tmp_path / "json" / "top-8000-kappa-4900.json").write_text("".join(json.dumps(r) + "\n" for r in reference))
    got = P.read_experiments(tmp_path / "json")
    assert [r["id"] for r in got] == ["a", "b0", "b1"]
    assert all("maked_layer" not in r for r in got)
    assert [r["masked_layer"] for r in got] == ["features.fc2", "hooked_layer", "hooked_layer"]
    assert P.read_experiments(tmp_path / "json" / "top-8000-kappa-4900.json")[1]["masked_layer"] == "hooked_layer"


GPU_PRESETS = [p for p in list_presets() if p.startswith("mimu_") and p != "mimu_digits"]


def test_every_dataset_and_model_has_a_gpu_preset():
    assert sorted(GPU_PRESETS) == sorted(f"mimu_{d}_{m}" for d in ("mnist", "cifar10", "cifar100", "svhn")
                                         for m in ("mlp", "resnet18"))


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_presets_validate_on_real_format_files(home, tmp_path, capsys, preset):
    """Names, budgets (K, κ against N of the built model), the head contract and the classes, on tiny files in the
    real formats: nothing is downloaded or trained."""
    from unlearnkit.testing import vision_files as V

    root = tmp_path / "data"
    dataset = load_run_config(preset)[1].dataset
    {"mnist": lambda: V.write_mnist(root, n_train=30, n_test=10), "svhn": lambda: V.write_svhn(root, 30, 10),
     "cifar10": lambda: V.write_cifar10(root, n_train=30, n_test=10),
     "cifar100": lambda: V.write_cifar100(root, n_train=200, n_test=100)}[dataset]()
    assert (PRESET_DIR / f"{preset}.yaml").read_text().splitlines()[0] == f"# unlearnkit run {preset}"
    code = main(["validate", preset, f"dataset_args={{root: {root}, download: false}}"])
    assert code == 0, capsys.readouterr().err
    assert not (home / "models").exists()
