"""Timing and memory measurement: CUDA events on a GPU, perf_counter on the CPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def timings_ms(run: Callable[[int], Any], repeats: int, device: torch.device, warmup: int = 3):
    """The time of each of `repeats` calls of run(i), in ms, after `warmup` untimed ones."""
    for i in range(warmup):
        run(i)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repeats)
        ]
        for i, (start, end) in enumerate(events):
            start.record()
            run(warmup + i)
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for i in range(repeats):
            start = time.perf_counter()
            run(warmup + i)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def peak_extra_bytes(run: Callable[[int], Any], device: torch.device) -> int | None:
    """Device memory allocated by one call beyond what was allocated before it, at its peak
    (outputs included). None on the CPU, where torch keeps no such statistic."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = run(0)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak
