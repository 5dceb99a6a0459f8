"""Independent, cached jobs (e.g. the K subset models of exact memorization) run serially, on local processes or on Ray.

    jobs = [Job(spec_key(spec), spec, train_subset, {"subset_seed": s}) for s, spec in ...]
    results = run_jobs(jobs, backend="process")      # list[JobResult], in job order

Result contract: ``job.fn(**job.kwargs)`` returns ``(tensors, meta)``: ``tensors`` a dict ``str -> Tensor`` (a model's
state_dict, per-example correctness vectors, ...) and ``meta`` a JSON-serializable dict. It is stored as the
tensor entry ``job.key`` of :class:`~unlearnkit.cache.ModelCache` (``tensors.safetensors`` + ``meta.json``: atomic
publish, SHA-256 checked on load, shared with every other user of the cache), with ``meta.json`` holding::

    {"spec": job.spec, "result": meta,
     "job": {"fn": "module:qualname", "seconds": fn wall time, "pid": worker pid, "host": ..., "backend": ...,
             "torch_threads": ...},
     "key": ..., "weights_sha256": ..., "created": ..., "versions": package versions}

``job.spec`` only identifies and records the job; ``job.kwargs`` (data, a log directory, ...) is not hashed, so the key
must determine the result (normally ``key = spec_key(spec)``, with ``spec`` holding everything that affects it).

Resuming: :func:`run_jobs` first loads every finished job from the cache, then runs only the missing ones, and each
worker stores its result itself as soon as ``fn`` returns. Killing a run loses at most the jobs that were running;
the next call with the same jobs reuses the others (``JobResult.hit``).

Failures: a job that raises does not stop the others; once every job has finished, :class:`JobError` is raised with
the key and the worker's traceback of each failed job. The finished jobs are cached, so calling again retries only
the failed ones.

Backends:

* ``"serial"``: in this process, in order; the caller's torch thread setting is left alone.
* ``"process"`` (default): :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (safe with
  torch), ``max_workers`` defaulting to ``min(usable CPUs, missing jobs)``. ``fn`` must be a top-level function of an
  importable module (not of a ``python -c`` script) and ``kwargs`` picklable. On Ctrl-C, jobs not yet started are
  cancelled; running ones finish (and are cached) before the interpreter exits.
* ``"ray"``: one Ray task per job (``ray.init()`` unless Ray is already initialized, so ``RAY_ADDRESS`` picks the
  cluster); needs ``pip install unlearnkit[ray]``. Workers write to the same cache root path, so put the cache on a
  filesystem every node sees (``UNLEARNKIT_HOME``); results are also sent back, and the driver stores any that its
  own cache does not show. ``max_workers`` caps the tasks in flight.

In ``process`` and ``ray`` workers torch uses ``threads_per_worker`` intra-op threads (default 1: several small
trainings on one machine are faster side by side than each with every core); ``None`` leaves torch's default.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .cache import ModelCache, _check_key

if TYPE_CHECKING:
    import torch

__all__ = ["BACKENDS", "Job", "JobError", "JobResult", "run_jobs"]

BACKENDS = ("serial", "process", "ray")
_MAX_TRACEBACK_CHARS = 6000  # per failed job in a JobError message


@dataclass
class Job:
    """One independent job: ``fn(**kwargs) -> (tensors, meta)`` stored as cache entry ``key`` (see the module doc).

    ``spec`` is recorded in the entry (JSON); ``key`` is normally ``cache.spec_key(spec)``.
    """

    key: str
    spec: Mapping[str, Any]
    fn: Callable[..., tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]]
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_key(self.key)  # ValueError for a key that is not a plain directory name
        if not isinstance(self.spec, Mapping):
            raise TypeError(f"job {self.key}: spec must be a dict, got {type(self.spec).__name__}")
        try:
            json.dumps(self.spec)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"job {self.key}: spec must be JSON-serializable: {exc}") from None
        if not callable(self.fn):
            raise TypeError(f"job {self.key}: fn must be callable, got {self.fn!r}")
        if not isinstance(self.kwargs, Mapping):
            raise TypeError(f"job {self.key}: kwargs must be a dict, got {type(self.kwargs).__name__}")


@dataclass
class JobResult:
    """A finished job: ``tensors`` and ``meta`` as ``fn`` returned them (read back from the cache), ``hit`` = True when
    ``fn`` did not run in this call (the entry was already cached), and ``record`` the entry's whole ``meta.json``
    (spec, job timing and worker, versions, ...)."""

    key: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    hit: bool
    record: dict[str, Any]


class JobError(RuntimeError):
    """Raised by :func:`run_jobs` after all jobs ended when some failed; ``failures`` maps key -> traceback text."""

    def __init__(self, message: str, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = failures


def run_jobs(
    jobs: Sequence[Job],
    *,
    cache: ModelCache | None = None,
    backend: Literal["serial", "process", "ray"] = "process",
    max_workers: int | None = None,
    threads_per_worker: int | None = 1,
    say: Callable[[str], Any] = print,
) -> list[JobResult]:
    """Run the jobs not yet in ``cache`` (default: ``ModelCache()``) and return every job's result, in job order.

    Raises ValueError for duplicate keys, an unknown backend or ``max_workers < 1``; ImportError for ``"ray"`` without
    Ray installed; :class:`JobError` (after the other jobs finished and were cached) if any job failed.
    """
    jobs = list(jobs)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(map(repr, BACKENDS))}")
    for job in jobs:
        if not isinstance(job, Job):
            raise TypeError(f"run_jobs takes Job objects, got {type(job).__name__}")
    duplicates = sorted(key for key, n in Counter(job.key for job in jobs).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate job keys: {', '.join(duplicates)} (each job needs its own cache key)")
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be >= 1 or None, got {threads_per_worker}")
    if backend == "ray":
        _import_ray()
    cache = cache if cache is not None else ModelCache()

    results: list[JobResult | None] = [None] * len(jobs)
    for i, job in enumerate(jobs):
        tensors, record = cache.load_tensors(job.key)
        if tensors is not None and record is not None:
            results[i] = _result(job.key, tensors, record, hit=True)
    todo = [(i, job) for i, job in enumerate(jobs) if results[i] is None]
    if not todo:
        say(f"[jobs] all {len(jobs)} jobs cached")
        return results  # type: ignore[return-value]
    if backend != "serial":
        for _, job in todo:
            _check_sendable(job, backend)

    workers = 1 if backend == "serial" else min(max_workers or _usable_cpus(), len(todo))
    say(f"[jobs] {len(jobs) - len(todo)} of {len(jobs)} jobs cached; running {len(todo)} "
        f"(backend={backend!r}, {workers} worker{'s' if workers > 1 else ''})")
    root = str(cache.root)
    if backend == "serial":
        outcomes = ((i, _execute(job, root, None, True, backend)) for i, job in todo)
    elif backend == "process":
        outcomes = _run_processes(todo, root, workers, threads_per_worker)
    else:
        outcomes = _run_ray(todo, root, workers, threads_per_worker)

    failures: dict[str, str] = {}
    for done, (i, outcome) in enumerate(outcomes, start=1):
        job = jobs[i]
        if outcome["ok"]:
            try:
                results[i] = _collect(job, outcome, cache)
            except Exception:
                outcome = {"ok": False, "error": traceback.format_exc(), "pid": os.getpid()}
        if not outcome["ok"]:
            failures[job.key] = outcome["error"]
            last = outcome["error"].strip().splitlines()[-1:] or ["?"]
            say(f"[jobs] {done}/{len(todo)} {job.key} FAILED (worker pid {outcome['pid'] or '?'}): {last[0]}")
            continue
        res = results[i]
        assert res is not None
        how = "was cached meanwhile" if res.hit else f"done in {res.record['job']['seconds']:.1f}s"
        say(f"[jobs] {done}/{len(todo)} {job.key} {how}")
    if failures:
        raise JobError(_failure_message(jobs, failures), failures)
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- in the worker


def _execute(job: Job, root: str, threads: int | None, ship: bool, backend: str) -> dict[str, Any]:
    """Run one job where it is scheduled and store its result in the cache at ``root``. Never raises (except
    BaseException such as KeyboardInterrupt): failures come back as ``{"ok": False, "error": traceback text}``.
    ``ship``: include the tensors in the outcome (in-process and Ray); the process backend reads them from the cache.
    """
    try:
        if threads is not None:
            _set_threads(threads)
        cache = ModelCache(root)
        if os.path.lexists(cache.path(job.key)):  # finished by someone else since the driver looked
            tensors, record = cache.load_tensors(job.key)
            if tensors is not None and record is not None:
                return _outcome(True, record, tensors if ship else None)
        import torch

        start = time.perf_counter()
        out = job.fn(**job.kwargs)
        seconds = time.perf_counter() - start
        tensors, meta = _check_result(job, out)
        record = {
            "spec": dict(job.spec),
            "result": meta,
            "job": {"fn": _fn_name(job.fn), "seconds": seconds, "pid": os.getpid(), "host": socket.gethostname(),
                    "backend": backend, "torch_threads": torch.get_num_threads()},
        }
        record, won = cache.save_tensors(job.key, tensors, record)
        if not won:  # another process published this key first: use its values so that everyone agrees
            tensors, record = cache.load_tensors(job.key)
            if tensors is None or record is None:
                raise OSError(f"cache entry {job.key} was published by another process but cannot be read")
        return _outcome(False, record, tensors if ship else None)
    except Exception:
        return {"ok": False, "error": traceback.format_exc(), "pid": os.getpid()}


def _outcome(hit: bool, record: dict[str, Any], tensors: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    return {"ok": True, "hit": hit, "record": record, "tensors": tensors, "pid": os.getpid()}


def _check_result(job: Job, out: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Validate ``fn``'s ``(tensors, meta)`` and return CPU tensors safetensors can store (no shared storage)."""
    import torch

    where = f"job {job.key}: {_fn_name(job.fn)}"
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{where} must return (tensors: dict[str, Tensor], meta: dict), got {type(out).__name__}")
    tensors, meta = out
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{where} returned tensors of type {type(tensors).__name__}; expected dict[str, Tensor]")
    if not isinstance(meta, Mapping):
        raise TypeError(f"{where} returned meta of type {type(meta).__name__}; expected a JSON-serializable dict")
    try:
        meta = json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} returned meta that is not JSON-serializable: {exc}") from None
    out_tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(f"{where} returned {name!r}: {type(t).__name__}; tensors must map str -> Tensor")
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        # Tied tensors (one storage, several names) get their own copy: safetensors refuses shared storage.
        t = t.clone(memory_format=torch.contiguous_format) if ptr and ptr in storages else t.contiguous()
        storages.add(t.untyped_storage().data_ptr())
        out_tensors[name] = t
    return out_tensors, meta


def _set_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # for libraries initialized after this point
        os.environ[var] = str(threads)
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- backends


def _run_processes(todo: list[tuple[int, Job]], root: str, workers: int,
                   threads: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(_execute, job, root, threads, False, "process"): i for i, job in todo}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except Exception as exc:  # the worker died (killed, out of memory) or could not unpickle the job
                text = "".join(traceback.format_exception(exc))
                outcome = {"ok": False, "error": text, "pid": None}
            yield futures[future], outcome
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("backend='ray' needs Ray, which is not installed: pip install unlearnkit[ray] "
                          "(or use backend='process' on one machine)") from exc
    return ray


def _run_ray(todo: list[tuple[int, Job]], root: str, workers: int,
             threads: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init()
    task = ray.remote(num_cpus=threads or 1)(_execute)
    queue = list(todo)
    running: dict[Any, int] = {}
    while queue or running:
        while queue and len(running) < workers:
            i, job = queue.pop(0)
            running[task.remote(job, root, threads, True, "ray")] = i
        (ref,), _ = ray.wait(list(running), num_returns=1)
        i = running.pop(ref)
        try:
            outcome = ray.get(ref)
        except Exception as exc:  # the task or its worker crashed
            outcome = {"ok": False, "error": "".join(traceback.format_exception(exc)), "pid": None}
        yield i, outcome


# ---------------------------------------------------------------------------------------------- in the driver


def _collect(job: Job, outcome: dict[str, Any], cache: ModelCache) -> JobResult:
    """The JobResult of a successful outcome: shipped tensors, else read back from the cache (verified)."""
    record, tensors = outcome["record"], outcome["tensors"]
    if tensors is None:
        tensors, record = cache.load_tensors(job.key)
        if tensors is None or record is None:
            raise OSError(f"job {job.key} finished but its cache entry under {cache.root} is missing or corrupt")
    elif not os.path.lexists(cache.path(job.key)):  # a Ray worker on a node that does not share our cache
        record, _ = cache.save_tensors(job.key, tensors, record)
    return _result(job.key, tensors, record, hit=outcome["hit"])


def _result(key: str, tensors: dict[str, torch.Tensor], record: dict[str, Any], *, hit: bool) -> JobResult:
    meta = record.get("result")
    return JobResult(key, tensors, dict(meta) if isinstance(meta, Mapping) else {}, hit, record)


def _check_sendable(job: Job, backend: str) -> None:
    """Fail early, naming the job, when ``fn`` cannot be run by another process."""
    hint = "use a top-level function of an importable module, or backend='serial'"
    module = getattr(job.fn, "__module__", None)
    if module == "__main__" and getattr(sys.modules.get("__main__"), "__file__", None) is None:
        raise TypeError(f"job {job.key}: fn {_fn_name(job.fn)} is defined in an interactive or -c session, which "
                        f"backend={backend!r} workers cannot import; {hint}")
    if backend == "process":
        try:
            pickle.dumps(job.fn)
        except Exception as exc:
            raise TypeError(f"job {job.key}: fn {_fn_name(job.fn)} cannot be sent to a worker process "
                            f"({type(exc).__name__}: {exc}); {hint}") from None


def _fn_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _failure_message(jobs: list[Job], failures: dict[str, str]) -> str:
    by_key = {job.key: job for job in jobs}
    parts = [f"{len(failures)} of {len(jobs)} jobs failed (the others are cached: running again retries only "
             f"the failed ones): {', '.join(failures)}"]
    for key, text in failures.items():
        text = text.rstrip()
        if len(text) > _MAX_TRACEBACK_CHARS:
            text = "..." + text[-_MAX_TRACEBACK_CHARS:]
        parts.append(f"--- job {key} ({_fn_name(by_key[key].fn)}) failed; worker traceback:\n{text}")
    return "\n".join(parts)
