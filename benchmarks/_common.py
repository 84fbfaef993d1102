"""Small timing, memory and table helpers shared by the benchmark scripts.

Benchmarks here are scripts (``python -m benchmarks.<name>``), not timed tests: they
measure every candidate and its baselines in the same run, interleaving rounds so
drift (CPU frequency, other load) hits all of them alike, and report medians and
ratios rather than absolute numbers.
"""

from __future__ import annotations

import gc
import itertools
import random
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "format_table",
    "interleaved_rounds",
    "median",
    "ns_per_op",
    "ns_per_op_threaded",
    "traced_bytes",
    "uniform_keys",
    "zipf_keys",
]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ns_per_op(fn: Callable[[T], object], keys: Sequence[T]) -> float:
    """Nanoseconds per ``fn(key)`` call over ``keys`` (loop overhead included).

    GC is disabled while timing so a collection does not land on one candidate.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for key in keys:
            fn(key)
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / len(keys)


def ns_per_op_threaded(fn: Callable[[T], object], key_sets: Sequence[Sequence[T]]) -> float:
    """Wall-clock nanoseconds per call with one thread per key set, all started together.

    This measures throughput under contention (with the GIL, ``len(key_sets)``
    threads share one core's worth of Python execution plus lock hand-offs).
    """
    barrier = threading.Barrier(len(key_sets) + 1)

    def worker(keys: Sequence[T]) -> None:
        barrier.wait()
        for key in keys:
            fn(key)

    threads = [threading.Thread(target=worker, args=(keys,)) for keys in key_sets]
    for thread in threads:
        thread.start()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        barrier.wait()
        start = time.perf_counter_ns()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / sum(len(keys) for keys in key_sets)


def interleaved_rounds(
    cases: dict[str, Callable[[], float]], rounds: int, *, seed: int = 0
) -> dict[str, float]:
    """Run every case once per round, in a shuffled order each round; median per case."""
    rng = random.Random(seed)
    results: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            results[name].append(cases[name]())
    return {name: median(values) for name, values in results.items()}


def traced_bytes(build: Callable[[], Any]) -> tuple[int, Any]:
    """Bytes still allocated (per :mod:`tracemalloc`) by what ``build()`` returns.

    Returns ``(bytes, result)``; the caller keeps ``result`` alive only as long as
    it needs it. Temporary allocations freed before ``build`` returns do not count.
    """
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, result


def uniform_keys(keys: Sequence[T], count: int, rng: random.Random) -> list[T]:
    return rng.choices(keys, k=count)


def zipf_keys(keys: Sequence[T], count: int, rng: random.Random, s: float = 1.1) -> list[T]:
    """``count`` draws where the key of rank r has weight ``1 / r**s`` (ranks shuffled)."""
    ranked = list(keys)
    rng.shuffle(ranked)
    cum_weights = list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, len(ranked) + 1)))
    return rng.choices(ranked, cum_weights=cum_weights, k=count)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table, columns right-aligned except the first."""
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=False)]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        aligned = [c.rjust(w) for c, w in zip(rest, widths[1:], strict=False)]
        parts = [first.ljust(widths[0]), *aligned]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in text_rows)
    return "\n".join(out)
