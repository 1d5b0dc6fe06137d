"""Small timing helpers shared by the bench scripts."""

from __future__ import annotations

import time
from collections.abc import Callable


def ops_per_second(
    operation: Callable[[int], object],
    *,
    seconds: float = 1.0,
    min_ops: int = 200,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Run `operation(i)` for about `seconds` of `clock` (after a short warm-up); return
    ops per second of that clock (`time.process_time`: per CPU-second of this process)."""
    for i in range(min(50, min_ops)):
        operation(i)
    count = 0
    start = clock()
    deadline = start + seconds
    while True:
        for _ in range(100):
            operation(count)
            count += 1
        now = clock()
        if now >= deadline and count >= min_ops:
            return count / (now - start)


def best_of(runs: int, measure: Callable[[], float]) -> float:
    """The best of `runs` measurements: the least disturbed by other load."""
    return max(measure() for _ in range(runs))
