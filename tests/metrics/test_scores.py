"""The memorisation-score registry (metrics/scores.py): the training record against memorization.py on outputs gathered
another way, exact against subset models trained by hand (and its kill-and-resume), holdout against a by-hand
fine-tune, caching and errors. Real tiny models on the embedded digits data set (1347 train / 450 test)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from unlearnkit._registry import SCORES, RegistryError
from unlearnkit.cache import ModelCache
from unlearnkit.config import ConfigError, to_dict
from unlearnkit.data.arrays import ImageSubset
from unlearnkit.methods._loop import LoopParams, run_loop
from unlearnkit.methods.retrain import fit
from unlearnkit.metrics import memorization as mem
from unlearnkit.metrics.scores import ScoreContext, compute_score, original_with_record, record_training
from unlearnkit.models import build_model
from unlearnkit.pipelines._stages import versioned
from unlearnkit.pipelines.classification import TrainRecipe, load_dataset
from unlearnkit.tasks import get_task
from unlearnkit.testing.scores_worker import exact_context

NAMES = ["binary_acc", "confidence", "curvature", "exact", "file", "holdout", "max_conf", "neg_entropy"]
EVENTS = ["confidence", "max_conf", "neg_entropy", "binary_acc"]
RECIPE = TrainRecipe(epochs=3, batch_size=64, seed=0)
DATA = load_dataset("digits", {})
N = len(DATA.y_train)
TASK = get_task("classifier")


def fresh(seed: int = 0) -> torch.nn.Module:
    return build_model("mlp", seed=seed, input_shape=DATA.input_shape, num_classes=DATA.num_classes)


def train_set():
    return DATA.subset("train", np.arange(N))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def original_spec(recipe: TrainRecipe = RECIPE) -> dict:
    """The classification pipeline's spec of its original model (pipelines/classification.py, _Runner.original)."""
    return versioned({"kind": "original", "dataset": "digits", "data_hash": DATA.hash, "model": "mlp",
                      "model_args": {}, "recipe": to_dict(recipe), "seed": recipe.seed})


def context(cache: ModelCache, record_options: dict | None = None) -> ScoreContext:
    """The original (trained with its record when asked) and everything a score reads."""
    model, _, _, key, record = original_with_record(cache, original_spec(), fresh(), train_set(), TASK, RECIPE,
                                                    record_options, say=lambda _: None)
    return ScoreContext(DATA, "digits", {}, "mlp", {}, RECIPE, RECIPE.seed, cache, model, key, record,
                        say=lambda _: None)


def nan_equal(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_array_equal(a[~np.isnan(a)], b[~np.isnan(b)])


# ---------------------------------------------------------------------------------------------- registry


def test_every_score_is_registered_with_its_contract_and_unknown_names_list_them(capsys):
    assert SCORES.list() == NAMES
    with pytest.raises(RegistryError, match="unknown score 'exakt' \\(did you mean 'exact'\\?\\); available: "
                                            + ", ".join(NAMES)):
        SCORES.get("exakt")
    for name in NAMES:
        score = SCORES.create(name, **({"path": "x.npy"} if name == "file" else {}))
        assert isinstance(score.uses_original, bool) and callable(score.compute)
        assert score.mid_target() == (0.5 if name in ("exact", "file") else "median")
        options = score.record_options()
        assert options == ({} if name in EVENTS else {"curvature_h": 0.01} if name == "curvature" else None)
    assert SCORES.create("file", path="x.npy", mid=0.2).mid_target() == 0.2
    from unlearnkit.cli import main

    assert main(["list", "scores"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES) and "arXiv 2008.03703" in out


# ---------------------------------------------------------------------------------------------- the training record


def test_record_training_trains_bit_identically_to_fit_and_its_proxies_match_memorization():
    reference = fresh()
    fit(reference, train_set(), TASK, RECIPE)
    recorded = fresh()
    result, record = record_training(recorded, train_set(), TASK, RECIPE)
    assert same_weights(recorded, reference) and result.steps == 3 * 22 and record.epochs == 3
    np.testing.assert_array_equal(record.count, np.full(N, 3.0))

    # the reference outputs: every example's pre-update, train-mode softmax, gathered by a test-local loss on a data
    # set that carries its indices as a third tensor
    probs = np.full((3, N, DATA.num_classes), np.nan)
    epoch = [0]

    def loss(m, _f, batch, _refs):
        x, y, idx = batch
        logits = m(x)
        probs[epoch[0], idx.numpy()] = torch.softmax(logits.detach().double(), dim=-1).numpy()
        return F.cross_entropy(logits, y, reduction="none").mean()

    gathered = fresh()
    indexed = TensorDataset(torch.from_numpy(DATA.x_train), torch.from_numpy(DATA.y_train), torch.arange(N))
    run_loop(gathered, loss, RECIPE, retain=indexed, pairing="retain", on_epoch=lambda e: epoch.__setitem__(0, e))
    assert same_weights(gathered, reference) and not np.isnan(probs).any()
    for name in EVENTS:
        expected = getattr(mem, f"{name}_proxy")(probs, DATA.y_train)
        np.testing.assert_allclose(record.proxy(name), expected, rtol=1e-12, atol=0)
    # orientation: a worse-learned example scores higher
    assert np.corrcoef(record.proxy("confidence"), probs[-1, np.arange(N), DATA.y_train])[0, 1] < -0.5
    # the cache round trip
    back = type(record).from_tensors(record.to_tensors())
    assert all(np.array_equal(back.proxy(n), record.proxy(n)) for n in EVENTS) and back.epochs == 3


def test_record_training_keeps_a_batch_augmenting_data_set_bit_identical_and_asks_for_curvature_data():
    def augmented():
        return ImageSubset(DATA.x_train, DATA.y_train, np.arange(N), augment=True, augment_seed=3)

    recipe = TrainRecipe(epochs=2, batch_size=64, seed=0)
    reference = fresh()
    fit(reference, augmented(), TASK, recipe)
    recorded = fresh()
    record_training(recorded, augmented(), TASK, recipe)
    assert same_weights(recorded, reference)  # the wrapper used the data set's batch __getitems__ (its RNG)
    with pytest.raises(ValueError, match="pass curvature_data"):
        record_training(fresh(), augmented(), TASK, recipe, curvature_h=0.01)


def test_curvature_leaves_the_training_unchanged_and_is_the_mean_of_loss_curvature_after_each_epoch():
    plain, measured = fresh(), fresh()
    record_training(plain, train_set(), TASK, RECIPE)
    result, record = record_training(measured, train_set(), TASK, RECIPE, curvature_h=0.01)
    assert same_weights(measured, plain) and result.seconds > 0

    # reference: loss_curvature of the whole training set after each epoch of a plain run
    per_epoch = []
    model = fresh()
    x, y = torch.from_numpy(DATA.x_train), torch.from_numpy(DATA.y_train)
    run_loop(model, lambda m, _f, b, _r: TASK.loss(m, b), RECIPE, retain=train_set(), pairing="retain",
             on_epoch=lambda e: per_epoch.append(mem.loss_curvature(model, x, y, 0.01)) if e else None)
    per_epoch.append(mem.loss_curvature(model, x, y, 0.01))
    curvature = record.proxy("curvature")
    np.testing.assert_allclose(curvature, np.mean(per_epoch, axis=0), rtol=1e-6)
    back = type(record).from_tensors(record.to_tensors())  # the cache round trip
    assert back.curvature_h == 0.01 and np.array_equal(back.proxy("curvature"), curvature)
    assert curvature.shape == (N,) and np.isfinite(curvature).all() and (curvature > 0).all()


def test_original_with_record_reuses_the_pipelines_original_and_caches_the_record(home):
    from unlearnkit.pipelines.classification import ClassificationConfig, _Runner, plan

    cache = ModelCache()
    cfg = ClassificationConfig(train=TrainRecipe(epochs=3, batch_size=64), methods=["finetune"])
    pipeline_original = _Runner(plan(cfg), cache, lambda _: None).original(0)  # what `unlearnkit run` caches
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the retrained twin must equal the cached weights
        model, meta, hit, key, record = original_with_record(cache, original_spec(), fresh(), train_set(), TASK,
                                                             RECIPE, {}, say=lambda _: None)
    assert key == pipeline_original.key and same_weights(model, pipeline_original.model)
    assert not hit and meta["train_time_s"] > 0 and meta == pipeline_original.meta

    again = original_with_record(cache, original_spec(), fresh(), train_set(), TASK, RECIPE, {}, say=lambda _: None)
    assert again[2] and again[3] == key and same_weights(again[0], model)  # both loaded, nothing trained
    np.testing.assert_array_equal(again[4].proxy("confidence"), record.proxy("confidence"))
    curv = original_with_record(cache, original_spec(), fresh(), train_set(), TASK, RECIPE, {"curvature_h": 0.01},
                                say=lambda _: None)
    assert not curv[2] and curv[4].curvature_h == 0.01  # another record, the same model
    with pytest.raises(ValueError, match="unknown record option"):
        original_with_record(cache, original_spec(), fresh(), train_set(), TASK, RECIPE, {"h": 1})


def test_original_with_record_trains_both_when_nothing_is_cached_and_warns_when_cached_weights_differ(home):
    reference = fresh()
    fit(reference, train_set(), TASK, RECIPE)
    cache = ModelCache()
    model, meta, hit, key, record = original_with_record(cache, original_spec(), fresh(), train_set(), TASK, RECIPE,
                                                         {}, say=lambda _: None)
    assert not hit and same_weights(model, reference) and meta["train_time_s"] > 0 and record.epochs == 3
    assert cache.load(key, fresh()) is not None
    # a score that reads no record (record_options None): the original alone, as the classification pipeline trains it
    plain = ModelCache(home / "plain")
    for cached in (False, True):
        model, meta, hit, _, record = original_with_record(plain, original_spec(), fresh(), train_set(), TASK, RECIPE,
                                                           None, say=lambda _: None)
        assert record is None and hit == cached and same_weights(model, reference) and meta["train_time_s"] > 0

    other = ModelCache(home / "other")
    other.save(key, fresh(7), {"spec": original_spec(), "train_time_s": 1.0})  # not what the recipe trains
    with pytest.warns(RuntimeWarning, match="did not reproduce the cached weights"):
        kept, *_ = original_with_record(other, original_spec(), fresh(), train_set(), TASK, RECIPE, {},
                                        say=lambda _: None)
    assert same_weights(kept, fresh(7))


# ---------------------------------------------------------------------------------------------- scores


def test_event_proxies_through_compute_score_are_cached_and_keyed_by_their_fields(home):
    ctx = context(ModelCache(), {})
    for name in EVENTS:
        score = SCORES.create(name)
        values = compute_score(score, ctx)
        assert values.dtype == np.float64 and values.shape == (N,) and not score.hit_
        np.testing.assert_array_equal(values, ctx.record.proxy(name))
        again = SCORES.create(name)
        np.testing.assert_array_equal(compute_score(again, ctx), values)
        assert again.hit_ and again.key_ == score.key_
    holdout_a, holdout_b = SCORES.create("holdout", patience=1), SCORES.create("holdout", patience=2)
    compute_score(holdout_a, ctx), compute_score(holdout_b, ctx)
    assert holdout_a.key_ != holdout_b.key_ and not holdout_b.hit_


def test_scores_that_read_a_record_or_the_original_say_so_when_it_is_missing(home):
    ctx = context(ModelCache(), None)
    with pytest.raises(ValueError, match="score 'confidence' reads what the original's training recorded.*"
                                         "original_with_record"):
        compute_score(SCORES.create("confidence"), ctx)
    ctx.record = original_with_record(ctx.cache, original_spec(), fresh(), train_set(), TASK, RECIPE, {},
                                      say=lambda _: None)[4]
    with pytest.raises(ValueError, match="needs the curvature recorded with h=0.01; the record has none"):
        compute_score(SCORES.create("curvature"), ctx)
    ctx.original = None
    with pytest.raises(ValueError, match="score 'holdout' reads the original model"):
        compute_score(SCORES.create("holdout"), ctx)


def test_curvature_score_is_finite_positive_over_the_training_set(home):
    ctx = context(ModelCache(), {"curvature_h": 0.01})
    values = compute_score(SCORES.create("curvature"), ctx)
    assert values.shape == (N,) and np.isfinite(values).all() and (values > 0).all()


def test_holdout_stops_early_and_equals_the_kl_of_a_by_hand_fine_tune(home):
    ctx = context(ModelCache(), None)
    score = SCORES.create("holdout", patience=1)
    values = compute_score(score, ctx)
    losses = score.losses_
    assert score.epochs_ == len(losses) < score.max_epochs  # stopped early...
    assert losses[-1] >= min(losses[:-1]) and all(b < a for a, b in zip(losses[:-2], losses[1:-1], strict=True))
    assert values.shape == (N,) and np.isfinite(values).all() and (values >= 0).all()

    # by hand: the same fine-tune for exactly the epochs it ran (it stops at an epoch's end), then the KL
    tuned = copy.deepcopy(ctx.original)
    params = LoopParams(lr=0.1, epochs=score.epochs_, batch_size=RECIPE.batch_size, momentum=RECIPE.momentum,
                        weight_decay=RECIPE.weight_decay, schedule="constant", seed=RECIPE.seed)
    fit(tuned, DATA.subset("test", np.arange(len(DATA.y_test))), TASK, params)
    x = torch.from_numpy(DATA.x_train)
    with torch.no_grad():
        p = torch.softmax(ctx.original.eval()(x).double(), dim=1).numpy()
        q = torch.softmax(tuned.eval()(x).double(), dim=1).numpy()
    np.testing.assert_allclose(values, mem.holdout_kl_score(p, q), rtol=1e-5, atol=1e-7)
    moved = np.abs(p - q).sum(axis=1)
    assert values[moved > np.quantile(moved, 0.9)].mean() > 5 * values[moved < np.quantile(moved, 0.1)].mean()


def test_exact_equals_feldman_zhang_of_subset_models_trained_by_hand(home):
    cache = ModelCache()
    ctx = exact_context(cache, epochs=2, say=lambda _: None)
    score = SCORES.create("exact", k=4, fraction=0.5, backend="serial")
    with pytest.warns(RuntimeWarning, match="examples were in all subsets or in none .*raise k"):
        values = compute_score(score, ctx)
    assert score.job_hits_ == [False] * 4 and score.recipe_["epochs"] == 2 and score.recipe_["lr"] == RECIPE.lr

    masks = mem.subset_masks(N, 4, 0.5, 0)
    correct = []
    for r, mask in enumerate(masks):  # the documented seeds: SeedSequence([subset_seed, r])
        seed = int(np.random.SeedSequence([0, r]).generate_state(1)[0])
        model = fresh(seed)
        fit(model, DATA.subset("train", np.flatnonzero(mask)), TASK,
            LoopParams(**{**to_dict(TrainRecipe(epochs=2, batch_size=64)), "seed": seed}))
        with torch.no_grad():
            correct.append(model.eval()(torch.from_numpy(DATA.x_train)).argmax(1).numpy() == DATA.y_train)
    expected = mem.feldman_zhang(masks, np.stack(correct))
    nan_equal(values, expected)
    assert 0 < np.isnan(values).sum() < N // 4  # 2·0.5^4 of the examples are in all 4 subsets or in none

    # every subset model is its own cache entry, recording the estimator recipe
    for key in score.job_keys_:
        tensors, meta = cache.load_tensors(key)
        assert tensors["correct"].shape == (N,) and meta["spec"]["recipe"]["epochs"] == 2
    same = SCORES.create("exact", k=4, fraction=0.5, backend="process")  # where it runs is not part of the key
    nan_equal(compute_score(same, ctx), values)
    assert same.hit_ and same.key_ == score.key_
    strict = SCORES.create("exact", k=4, fraction=0.5, backend="serial", on_missing="raise")
    with pytest.raises(ValueError, match="score.exact \\(k=4, fraction=0.5\\): .* in all runs or in none.*raise k"):
        compute_score(strict, ctx)
    assert strict.job_hits_ == [True] * 4  # the subset models were reused


def test_exact_killed_half_way_resumes_with_the_finished_subset_models(home, tmp_path):
    cache = ModelCache()
    ctx = exact_context(cache, epochs=2, say=lambda _: None)
    score = SCORES.create("exact", k=4, fraction=0.5, backend="serial")
    keys = [job.key for job in score.jobs(ctx, mem.subset_masks(N, 4, 0.5, 0))]
    cmd = [sys.executable, "-m", "unlearnkit.testing.scores_worker", "4", "0.5", "2", "2"]  # pauses after 2 jobs
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while sum(os.path.isdir(cache.path(k)) for k in keys) < 2:
            assert proc.poll() is None, f"worker exited early:\n{proc.communicate()[0]}"
            assert time.monotonic() < deadline, "the worker did not finish two subset models within 60 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert [os.path.isdir(cache.path(k)) for k in keys] == [True, True, False, False]

    with pytest.warns(RuntimeWarning, match="raise k"):
        resumed = compute_score(score, ctx)
    assert score.job_hits_ == [True, True, False, False] and not score.hit_
    uninterrupted = SCORES.create("exact", k=4, fraction=0.5, backend="process", max_workers=2)
    with pytest.warns(RuntimeWarning, match="raise k"):
        nan_equal(compute_score(uninterrupted, exact_context(ModelCache(tmp_path / "fresh"), 2, lambda _: None)),
                  resumed)
    assert uninterrupted.job_hits_ == [False] * 4


def test_file_score_reads_npz_by_key_and_rejects_a_wrong_length(home, tmp_path):
    ctx = context(ModelCache(), None)
    path = tmp_path / "mem.npz"
    values = np.linspace(-1, 1, N)
    np.savez(path, tr_mem=values, tr_labels=DATA.y_train)
    score = SCORES.create("file", path=str(path), key="tr_mem")
    np.testing.assert_array_equal(compute_score(score, ctx), values)
    with pytest.raises(ValueError, match="holds 2 arrays; pass key= one of \\['tr_labels', 'tr_mem'\\]"):
        compute_score(SCORES.create("file", path=str(path)), ctx)
    np.savez(path, tr_mem=values[:100])
    with pytest.raises(ValueError, match=f"score file '{path}'\\['tr_mem'\\] holds 100 values; the training set of "
                                         f"'digits' has {N} examples"):
        compute_score(SCORES.create("file", path=str(path), key="tr_mem"), ctx)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        compute_score(SCORES.create("file", path=str(tmp_path / "missing.npy")), ctx)


def test_file_score_checks_the_labels_it_was_computed_for(home, tmp_path):
    ctx = context(ModelCache(), None)
    path = tmp_path / "mem.npz"
    values = np.linspace(-1, 1, N)
    np.savez(path, tr_mem=values, tr_labels=DATA.y_train)
    np.testing.assert_array_equal(
        compute_score(SCORES.create("file", path=str(path), key="tr_mem", labels_key="tr_labels"), ctx), values)
    other = DATA.y_train.copy()
    other[[0, 5]] = (other[[0, 5]] + 1) % 10  # as if the file listed the examples in another order
    np.savez(path, tr_mem=values, tr_labels=other)
    with pytest.raises(ValueError, match=r"\['tr_labels'\]: the labels differ from the training labels of 'digits' "
                                         r"at 2 of \d+ examples \(first: \[0, 5\]\)"):
        compute_score(SCORES.create("file", path=str(path), key="tr_mem", labels_key="tr_labels"), ctx)


def test_exact_can_estimate_with_another_architecture(home):
    from unlearnkit.metrics.scores import Exact

    ctx = exact_context(ModelCache(), epochs=2, say=lambda _: None)
    same = Exact(k=2, model=None)
    other = Exact(k=2, model="cnn", model_args={})
    assert same.estimator_model(ctx) == (ctx.model, ctx.model_args)
    assert other.estimator_model(ctx) == ("cnn", {})
    jobs = other.jobs(ctx, mem.subset_masks(N, 2, 0.7, 0))
    assert {j.kwargs["model"] for j in jobs} == {"cnn"} and {j.spec["model"] for j in jobs} == {"cnn"}
    assert {j.key for j in jobs}.isdisjoint(j.key for j in same.jobs(ctx, mem.subset_masks(N, 2, 0.7, 0)))


def test_exact_rejects_bad_k_and_fraction_naming_the_value(home):
    from unlearnkit.metrics.scores import Exact

    with pytest.raises(ConfigError, match="score.exact.k = 1: must be >= 2"):
        SCORES.create("exact", k=1)
    with pytest.raises(ConfigError, match="score.exact.fraction = 1.0: must be < 1 \\(allowed: \\(0, 1\\)\\)"):
        SCORES.create("exact", fraction=1.0)
    ctx = exact_context(ModelCache(), say=lambda _: None)
    for bad, match in (({"k": 1}, "score.exact.k = 1"), ({"fraction": 0.0}, "score.exact.fraction = 0.0"),
                       ({"backend": "slurm"}, "score.exact.backend = 'slurm'")):
        with pytest.raises(ConfigError, match=match):
            compute_score(Exact(**bad), ctx)  # built directly: compute_score validates
