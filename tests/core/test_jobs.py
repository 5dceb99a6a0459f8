"""Tests of unlearnkit.jobs: cached independent jobs on the serial and process backends, resumed after a kill -9."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from unlearnkit.cache import CacheCorruptionWarning, ModelCache, spec_key
from unlearnkit.jobs import Job, JobError, run_jobs
from unlearnkit.testing.jobs_worker import failing_job, run_count, subset_jobs, train_subset


def assert_same_results(a, b):
    assert [r.key for r in a] == [r.key for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra.meta == rb.meta
        assert ra.tensors.keys() == rb.tensors.keys()
        for name in ra.tensors:
            assert torch.equal(ra.tensors[name], rb.tensors[name]), (ra.key, name)


def published(cache, jobs):
    """Keys whose entry directory exists (an entry appears by one atomic rename)."""
    return [job.key for job in jobs if cache.path(job.key).is_dir()]


def test_serial_and_process_backends_give_identical_results_in_job_order(tmp_path):
    seeds = [3, 0, 2, 1]
    log = tmp_path / "log"
    log.mkdir()
    jobs = subset_jobs(seeds, str(log))
    serial = run_jobs(jobs, cache=ModelCache(tmp_path / "serial"), backend="serial", say=lambda _: None)
    process = run_jobs(jobs, cache=ModelCache(tmp_path / "process"), backend="process", max_workers=2,
                       say=lambda _: None)

    assert [r.meta["subset_seed"] for r in process] == seeds
    assert_same_results(serial, process)
    assert [run_count(log, s) for s in seeds] == [2, 2, 2, 2]  # once per backend
    assert not any(r.hit for r in serial + process)
    # process results were written by spawned workers with one torch thread each; serial ones by this process
    assert {r.record["job"]["pid"] for r in serial} == {os.getpid()}
    assert os.getpid() not in {r.record["job"]["pid"] for r in process}
    assert {(r.record["job"]["backend"], r.record["job"]["torch_threads"]) for r in process} == {("process", 1)}
    r = process[0]
    assert r.tensors["correct"].shape == r.tensors["in_subset"].shape == (64,)
    assert r.tensors["correct"].dtype == torch.bool and "model.0.weight" in r.tensors
    # the trained model fits its subset: the correctness vector is the memorization estimator's raw material
    assert r.meta["train_acc"] > 0.8


def test_a_second_call_loads_finished_jobs_from_the_cache_and_runs_only_the_missing(home, tmp_path):
    log = str(tmp_path)
    first = run_jobs(subset_jobs([0, 1], log), backend="serial", say=lambda _: None)  # default cache: $UNLEARNKIT_HOME
    said = []
    second = run_jobs(subset_jobs([0, 1, 2], log), backend="serial", say=said.append)
    assert [r.hit for r in second] == [True, True, False]
    assert [run_count(log, s) for s in (0, 1, 2)] == [1, 1, 1]
    assert_same_results(first, second[:2])
    assert "2 of 3 jobs cached; running 1" in said[0]

    said.clear()
    third = run_jobs(subset_jobs([0, 1, 2], log), backend="process", say=said.append)  # nothing to run: no pool
    assert [r.hit for r in third] == [True, True, True] and said == ["[jobs] all 3 jobs cached"]
    assert [run_count(log, s) for s in (0, 1, 2)] == [1, 1, 1]
    assert_same_results(second, third)

    # what the entry records
    record = third[2].record
    spec = {"job": "train_subset", "subset_seed": 2, "steps": 30}
    assert record["key"] == third[2].key == spec_key(spec) and record["spec"] == spec
    assert record["result"] == third[2].meta and record["job"]["seconds"] > 0
    assert record["job"]["fn"] == "unlearnkit.testing.jobs_worker:train_subset"
    assert record["versions"]["torch"] and record["created"]
    tensors, meta = ModelCache(home).load_tensors(third[2].key)  # an ordinary, verified tensor entry
    assert meta == record and torch.equal(tensors["correct"], third[2].tensors["correct"])


def test_killing_a_run_half_way_and_restarting_reuses_the_finished_jobs(home, tmp_path):
    seeds = [0, 1, 2, 3]
    log = tmp_path / "log"
    log.mkdir()
    jobs = subset_jobs(seeds, str(log))
    cache = ModelCache(home)
    # jobs 2 and 3 sleep long after training, so the kill lands while job 2 runs, after jobs 0 and 1 are cached
    cmd = [sys.executable, "-m", "unlearnkit.testing.jobs_worker", str(log), "0", "1", "2:60", "3:60"]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(published(cache, jobs)) < 2 or run_count(log, 2) == 0:
            assert proc.poll() is None, f"worker exited early:\n{proc.communicate()[0]}"
            assert time.monotonic() < deadline, "the worker did not finish two jobs within 60 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert published(cache, jobs) == [jobs[0].key, jobs[1].key]
    assert [run_count(log, s) for s in seeds] == [1, 1, 1, 0]  # job 2 was killed mid-run, job 3 never started
    # nothing partial or corrupt left behind: no .tmp-* dirs, and both entries pass the cache's own checks
    assert sorted(p.name for p in cache.models_dir.iterdir()) == sorted([jobs[0].key, jobs[1].key])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheCorruptionWarning)
        assert all(cache.load_tensors(job.key)[0] is not None for job in jobs[:2])

    resumed = run_jobs(jobs, backend="serial", say=lambda _: None)
    assert [r.hit for r in resumed] == [True, True, False, False]
    assert [run_count(log, s) for s in seeds] == [1, 1, 2, 1]  # exactly the two missing jobs ran
    uninterrupted = run_jobs(subset_jobs(seeds), cache=ModelCache(tmp_path / "fresh"), backend="serial",
                             say=lambda _: None)
    assert_same_results(resumed, uninterrupted)


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_a_failing_job_raises_after_the_others_finished_with_its_key_and_worker_traceback(tmp_path, backend):
    cache = ModelCache(tmp_path / "cache")
    ok_a, ok_b = subset_jobs([0, 1])
    bad = Job(spec_key({"job": "fail"}), {"job": "fail"}, failing_job, {"message": "boom-7f3a"})
    with pytest.raises(JobError) as info:
        run_jobs([ok_a, bad, ok_b], cache=cache, backend=backend, max_workers=2, say=lambda _: None)
    text = str(info.value)
    assert bad.key in text and "1 of 3 jobs failed" in text
    assert "ValueError: boom-7f3a" in text and "in failing_job" in text  # the worker's traceback
    assert list(info.value.failures) == [bad.key]
    assert published(cache, [ok_a, bad, ok_b]) == [ok_a.key, ok_b.key]  # the others finished and are cached


def tied_tensors():
    w = torch.arange(12.0).reshape(3, 4)
    return {"w": w, "w_again": w, "w_t": w.t(), "row": w[1]}, {"note": "tied"}


def test_tied_and_non_contiguous_tensors_are_stored_and_read_back(tmp_path):
    cache = ModelCache(tmp_path)
    job = Job("tied", {"job": "tied"}, tied_tensors)
    (fresh,) = run_jobs([job], cache=cache, backend="serial", say=lambda _: None)
    (again,) = run_jobs([job], cache=cache, backend="serial", say=lambda _: None)
    assert again.hit and again.meta == {"note": "tied"}
    expected, _ = tied_tensors()
    for res in (fresh, again):
        assert res.tensors.keys() == expected.keys()
        assert all(torch.equal(res.tensors[k], expected[k]) for k in expected)


def test_a_result_outside_the_contract_is_a_job_error(tmp_path):
    job = Job("bad-result", {"job": "bad"}, dict)  # returns {} instead of (tensors, meta)
    with pytest.raises(JobError, match=r"bad-result[\s\S]*must return \(tensors: dict\[str, Tensor\], meta: dict\)"):
        run_jobs([job], cache=ModelCache(tmp_path), backend="serial", say=lambda _: None)
    assert not ModelCache(tmp_path).path("bad-result").exists()


def test_invalid_jobs_and_arguments_are_rejected_before_any_work(tmp_path):
    cache = ModelCache(tmp_path)
    a, b = subset_jobs([0, 1])
    with pytest.raises(ValueError, match=f"duplicate job keys: {a.key}"):
        run_jobs([a, b, a], cache=cache, backend="serial")
    with pytest.raises(ValueError, match="unknown backend 'threads'; allowed: 'serial', 'process', 'ray'"):
        run_jobs([a], cache=cache, backend="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_workers must be >= 1, got 0"):
        run_jobs([a], cache=cache, max_workers=0)
    with pytest.raises(ValueError, match="invalid cache key '../x'"):
        Job("../x", {}, train_subset)
    with pytest.raises(TypeError, match="spec must be JSON-serializable"):
        Job("k", {"seed": {1, 2}}, train_subset)
    with pytest.raises(TypeError, match="cannot be sent to a worker process"):
        run_jobs([Job("k", {}, lambda: ({}, {}))], cache=cache, backend="process")
    assert not cache.models_dir.exists()  # nothing ran


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_the_ray_backend_without_ray_names_the_extra(tmp_path):
    with pytest.raises(ImportError, match=r"pip install unlearnkit\[ray\]"):
        run_jobs(subset_jobs([0]), cache=ModelCache(tmp_path), backend="ray")
