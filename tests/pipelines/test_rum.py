"""The RUM benchmark (pipelines/rum.py): validation before training, the refine and separate studies end to end on
digits, per-group metrics checked against the pure formulas, resuming from the cache, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unlearnkit.config import ConfigError
from unlearnkit.pipelines import load_run_config, run
from unlearnkit.pipelines import rum as R

FAST = ["train.epochs=4", "seeds=[0,1]", "score=confidence", "n_per_group=20",
        "methods=[neggrad_plus,finetune]", "method.neggrad_plus.epochs=1", "method.finetune.epochs=1",
        "plans={full_rum: [none, finetune, {neggrad_plus: {epochs: 1, lr: 0.001}}]}"]


def _plan(*overrides: str) -> R.Plan:
    entry, cfg = load_run_config("rum_digits", [*FAST, *overrides])
    return entry.tags["validate"](cfg)


@pytest.mark.parametrize(("overrides", "message"), [
    (["score=memo"], "score='memo' is not registered; available: "),
    (["score=exact", "score_args.exact.k=1"], "k"),
    (["score_args.exakt.k=4"], "score_args.exakt: 'exakt' is not a registered score"),
    (["plans={p: [none, finetune, frobnicate]}"], "plans.p step 3 names unknown method 'frobnicate'"),
    (["plans={p: [none, finetune]}"], "plans.p has 2 steps; it needs one per group (3: low, mid, high)"),
    (["plans={p: [none, {finetune: {lr: -1}}, finetune]}"], "plans.p step 2"),
    (["methods=[neggrad]"], "method 'neggrad' is not registered"),
    (["forget=random", "forget_size=5", "groups=6"], "groups=6: cannot refine a forget set of 5 examples into more "
                                                     "subsets than it has examples"),
    (["n_per_group=500"], "n_per_group=500"),
    (["forget=es", "es_groups=[3,15]"], "chunk(s) [15] out of range; allowed 0..14"),
    (["study=separate"], "plans run on the refined groups"),
])
def test_bad_input_fails_before_training(home, overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        _plan(*overrides)
    assert message in str(err.value)
    assert not (home / "models").exists() or not any((home / "models").iterdir())  # nothing was trained


def test_plan_steps_take_method_overrides_then_their_own():
    p = _plan("method.finetune.lr=0.05", "plans={p: [none, finetune, {finetune: {lr: 0.2}}]}")
    plan_variant = next(v for v in p.variants if v.label == "p")
    assert plan_variant.steps[0].method is None
    assert plan_variant.steps[1].method.lr == 0.05 and plan_variant.steps[2].method.lr == 0.2
    kinds = [(v.label, len(v.steps)) for v in p.variants]
    assert ("neggrad_plus/vanilla", 1) in kinds and ("neggrad_plus/shuffle", 3) in kinds
    assert ("finetune/rum", 3) in kinds


def test_group_metrics_match_the_formulas():
    from unlearnkit.metrics.classifier import accuracy, tow

    rng = np.random.default_rng(0)

    class Data:
        y_train = rng.integers(0, 3, 60)
        y_test = rng.integers(0, 3, 30)

    out = R.Outputs(rng.normal(size=(60, 3)), rng.normal(size=(30, 3)))
    ref = R.Outputs(rng.normal(size=(60, 3)), rng.normal(size=(30, 3)))
    low, high = np.arange(0, 10), np.arange(10, 20)
    retain = np.arange(20, 60)
    views = {"low": low, "high": high, "all": np.arange(20)}
    got = R.group_metrics(out, R.reference_evaluations(ref, Data, views, retain), Data, views, retain)

    def accs(o, forget):
        return {"forget": accuracy(o.train[forget], Data.y_train[forget]),
                "retain": accuracy(o.train[retain], Data.y_train[retain]),
                "test": accuracy(o.test, Data.y_test)}

    for name, forget in (("_low", low), ("_high", high), ("", np.arange(20))):
        assert got[f"forget_acc{name}"] == pytest.approx(accs(out, forget)["forget"])
        assert got[f"tow{name}"] == pytest.approx(tow(accs(out, forget), accs(ref, forget)))
        assert 0.0 <= got[f"tow_mia{name}"] <= 1.0
    assert got["retain_acc"] == pytest.approx(accs(out, low)["retain"])


def test_refine_study_end_to_end_and_resume(home, tmp_path):
    out = tmp_path / "rum"
    result = run("rum_digits", [*FAST, f"output_dir={out}"], say=lambda _: None)
    labels = {r["label"] for r in result.rows}
    assert labels == {"original", "retrain", "full_rum", *(f"{m}/{v}" for m in ("neggrad_plus", "finetune")
                                                           for v in ("vanilla", "shuffle", "rum"))}
    assert len(result.rows) == 2 * len(labels)
    for row in result.rows:
        m = row["metrics"]
        for g in ("low", "mid", "high"):
            assert 0.0 <= m[f"tow_{g}"] <= 1.0 and 0.0 <= m[f"tow_mia_{g}"] <= 1.0
        assert set(row["groups"]) == {"low", "mid", "high"} and row["group_order"] == ["low", "mid", "high"]
        if row["label"] == "retrain":
            assert m["tow"] == 1.0 and m["tow_low"] == 1.0 and m["disagreement"] == 0.0
    # groups: 20 each, ordered by the confidence score (higher = more memorised), ES recorded
    groups = result.rows[0]["groups"]
    assert [groups[g]["size"] for g in ("low", "mid", "high")] == [20, 20, 20]
    assert groups["low"]["score_mean"] < groups["mid"]["score_mean"] < groups["high"]["score_mean"]
    assert all(np.isfinite(groups[g]["es"]) for g in groups)
    # the table has per-group ToW with a t-interval over the two seeds, and the plot exists
    report = (out / "report.md").read_text()
    assert "ToW low ↑" in report and "ToW-MIA high ↑" in report and "± " in report
    assert list(out.glob("*-rum-groups.png"))
    # a second run trains and unlearns nothing
    again = run("rum_digits", [*FAST, f"output_dir={out}"], say=lambda _: None)
    assert all(again.cache_hits.values()), again.cache_hits
    assert [r["metrics"] for r in again.rows] == [r["metrics"] for r in result.rows]


def test_cumulative_retain_changes_only_the_sequential_variants(home, tmp_path):
    base = [*FAST, "seeds=[0]", "methods=[finetune]", "plans.full_rum=null"]
    a = run("rum_digits", [*base, f"output_dir={tmp_path / 'a'}"], say=lambda _: None)
    b = run("rum_digits", [*base, "cumulative_retain=true", f"output_dir={tmp_path / 'b'}"], say=lambda _: None)
    keys = {r["label"]: r["cache_key"] for r in a.rows}
    keys_b = {r["label"]: r["cache_key"] for r in b.rows}
    assert keys["finetune/vanilla"] == keys_b["finetune/vanilla"]  # one step: its retain set is D \ S either way
    assert keys["finetune/rum"] != keys_b["finetune/rum"]
    assert keys["finetune/shuffle"] != keys_b["finetune/shuffle"]


def test_separate_study_on_es_groups(home, tmp_path):
    out = tmp_path / "es"
    result = run("rum_digits", [*FAST, "seeds=[0]", "forget=es", "study=separate", "plans.full_rum=null",
                                f"output_dir={out}"], say=lambda _: None)
    labels = [r["label"] for r in result.rows]
    assert labels == ["original", "retrain", "neggrad_plus/vanilla", "finetune/vanilla"]
    size = 1347 // 15
    groups = result.rows[0]["groups"]
    assert [groups[g]["size"] for g in ("low", "mid", "high")] == [size] * 3
    assert groups["low"]["es"] < groups["mid"]["es"] < groups["high"]["es"]  # chunks ordered by their ES
    for row in result.rows:
        assert {f"tow_{g}" for g in ("low", "mid", "high")} <= set(row["metrics"])
        assert "tow" not in row["metrics"]
    assert list(out.glob("*-rum-groups.png"))
    (run_json,) = (out / "runs").glob("*.json")
    assert json.loads(run_json.read_text())["groups"] == ["low", "mid", "high"]
