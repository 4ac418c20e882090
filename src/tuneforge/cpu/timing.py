"""One-off speed measurements that choose a code path for this machine (MKL packs, bf16 training)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(first: Callable[[], object], second: Callable[[], object], rounds: int = 5) -> tuple[float, float]:
    """The median seconds of `first()` and of `second()`, timed in turns without autograd (so a slow spell of a shared
    machine falls on both), after one untimed call of each."""
    times: tuple[list[float], list[float]] = ([], [])
    with torch.no_grad():
        first(), second()
        for _ in range(rounds):
            for run, spent in zip((first, second), times, strict=True):
                start = time.perf_counter()
                run()
                spent.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])
