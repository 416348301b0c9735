"""Pool workloads: serentak against the stdlib, public API only.

Run: ``python benchmarks/bench_pool.py [--quick] [--start-method M]``.

Every figure is measured for both libraries in the same run, alternating round
by round, median of the rounds, with the ratio to the stdlib (above 1: better
than the stdlib). Absolute numbers on a shared 2-core machine mean little;
ratios hold. ``serentak bench`` has the tiny map and the round trip.

Workloads:
  map-list      pool.map(f, a list of 200,000 ints), f tiny
  map-one-tiny  pool.map(f, range(4_000), chunksize=1), f tiny: cost per task
  map-one-30us  the same with tasks of 30 us of CPU each
  slow-50       50 tasks of 20 ms on 2 workers, against the ideal 0.5 s
  cpu-2-cores   8 CPU-bound tasks on 2 workers, speed-up over serial
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import serentak

NUMBERS = list(range(200_000))


def tiny(x: int) -> int:
    return x


def sleep_20ms(_: int) -> None:
    time.sleep(0.02)


def cpu_bound(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def busy_30us(x: int) -> int:
    end = time.perf_counter() + 30e-6
    while time.perf_counter() < end:
        pass
    return x


def map_list(pool: Any) -> float:
    """Items per second."""
    started = time.perf_counter()
    assert pool.map(tiny, NUMBERS) == NUMBERS
    return len(NUMBERS) / (time.perf_counter() - started)


def per_task_us(pool: Any, func: Callable[[int], int]) -> float:
    """Microseconds per task of a map of 4,000 tasks sent one by one (chunksize=1)."""
    count = 4_000
    started = time.perf_counter()
    assert pool.map(func, range(count), chunksize=1) == list(range(count))
    return (time.perf_counter() - started) / count * 1e6


def slow_50(pool: Any) -> float:
    """Seconds."""
    started = time.perf_counter()
    pool.map(sleep_20ms, range(50))
    return time.perf_counter() - started


def cpu_speedup(pool: Any) -> float:
    """Speed-up over serial."""
    size = 1_000_000
    started = time.perf_counter()
    pool.map(cpu_bound, [size] * 8, chunksize=1)
    parallel = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(8):
        cpu_bound(size)
    return (time.perf_counter() - started) / parallel


# name, what, unit, higher is better, measure
WORKLOADS: list[tuple[str, str, str, bool, Callable[[Any], float]]] = [
    ("map-list", "Pool.map list of 200,000 ints", "items/s", True, map_list),
    ("map-one-tiny", "chunksize=1, tiny tasks", "us/task", False, lambda p: per_task_us(p, tiny)),
    (
        "map-one-30us",
        "chunksize=1, 30 us tasks",
        "us/task",
        False,
        lambda p: per_task_us(p, busy_30us),
    ),
    ("slow-50", "50 tasks of 20 ms (ideal 0.50 s)", "s", False, slow_50),
    ("cpu-2-cores", "8 CPU-bound tasks", "x serial", True, cpu_speedup),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument(
        "--start-method", default="forkserver", choices=["fork", "spawn", "forkserver"]
    )
    options = parser.parse_args()
    rounds = 1 if options.quick else 3
    libraries = {
        "serentak": serentak.get_context(options.start_method),
        "stdlib": multiprocessing.get_context(options.start_method),
    }
    pools = {name: ctx.Pool(2) for name, ctx in libraries.items()}
    try:
        print(f"{'workload':<36} {'serentak':>12} {'stdlib':>12} {'ratio':>7}  unit")
        for _, what, unit, higher, measure in WORKLOADS:
            samples: dict[str, list[float]] = {name: [] for name in pools}
            for _ in range(rounds):
                for name, pool in pools.items():
                    samples[name].append(measure(pool))
            ours, theirs = (statistics.median(samples[name]) for name in pools)
            ratio = ours / theirs if higher else theirs / ours
            print(f"{what:<36} {ours:>12,.2f} {theirs:>12,.2f} {ratio:>6.2f}x  {unit}")
    finally:
        for pool in pools.values():
            pool.terminate()
            pool.join()


if __name__ == "__main__":
    main()
