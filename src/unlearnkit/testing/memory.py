"""Peak memory of a piece of work on the CPU, where torch's allocator keeps no high-water mark of its own (on CUDA use
torch.cuda.max_memory_allocated). Used by benchmarks/llm_step.py and the memory tests."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any


def cpu_peak_bytes(run: Callable[[], Any]) -> int:
    """Peak of the bytes held by torch's CPU allocator while `run()` runs, above the level at its start: the running
    sum of the allocation (+) and free (−) events that torch.profiler(profile_memory=True) records, in time order.
    Every tensor torch allocates is counted, views are not. RuntimeError when this torch's profiler keeps no raw
    memory events."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    results = getattr(prof.profiler, "kineto_results", None)  # the raw events, allocations and frees included
    if results is None:
        raise RuntimeError("this torch's profiler keeps no raw memory events")
    events = sorted((e for e in results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU),
                    key=lambda e: e.start_ns())
    level = peak = 0
    for e in events:
        level += e.nbytes()
        peak = max(peak, level)
    return peak


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start / stop lines); Python exceptions still propagate."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
