"""Timing helpers shared by the benchmarks: interleaved rounds, best-of, so that noise on a
shared machine hits veriml and its baseline alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_rate(fn: Callable[[], object], *, iterations: int, rounds: int = 5) -> float:
    """Calls per second of ``fn``: the best of ``rounds`` batches of ``iterations`` calls."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, time.perf_counter() - t0)
    return iterations / best


def compare_rates(
    candidate: Callable[[], object],
    baseline: Callable[[], object],
    *,
    iterations: int,
    rounds: int = 5,
) -> tuple[float, float]:
    """(candidate rate, baseline rate), measured in alternating rounds; best round of each."""
    best_c = best_b = float("inf")
    for _ in range(rounds):
        for fn, is_candidate in ((baseline, False), (candidate, True)):
            t0 = time.perf_counter()
            for _ in range(iterations):
                fn()
            elapsed = time.perf_counter() - t0
            if is_candidate:
                best_c = min(best_c, elapsed)
            else:
                best_b = min(best_b, elapsed)
    return iterations / best_c, iterations / best_b
