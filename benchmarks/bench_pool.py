"""Pool workloads: serentak against the stdlib.

Run: ``python benchmarks/bench_pool.py [--quick] [--start-method M]``.

Every figure is measured for both libraries in the same run, alternating round
by round, median of the rounds, with the ratio to the stdlib (above 1: better
than the stdlib). Absolute numbers on a shared 2-core machine mean little;
ratios hold. The runner, the table and the first two workloads are those of
``serentak bench`` (src/serentak/_bench.py).

Workloads:
  map-tiny      pool.map(f, range(200_000)), f tiny, default chunksize
  apply-rtt     apply_async(f, (1,)).get() round trip, median
  map-list      the same map over a list of 200,000 ints
  map-one-tiny  pool.map(f, range(4_000), chunksize=1), f tiny: cost per task
  map-one-30us  the same with tasks of 30 us of CPU each
  slow-50       50 tasks of 20 ms on 2 workers, against the ideal 0.5 s
  cpu-2-cores   8 CPU-bound tasks on 2 workers, speed-up over serial
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from serentak._cli import bench as _bench

SECONDS = _bench.Unit("s", ",.2f", higher_is_better=False)
SPEED_UP = _bench.Unit("x serial", ",.2f", higher_is_better=True)
NUMBERS = list(range(_bench.FULL.tiny_tasks))


def sleep_20ms(_: int) -> None:
    time.sleep(0.02)


def cpu_bound(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def map_list(pool: _bench.PoolUnderTest) -> float:
    started = time.perf_counter()
    pool.map(_bench.tiny, NUMBERS)
    return len(NUMBERS) / (time.perf_counter() - started)


def busy_30us(x: int) -> int:
    end = time.perf_counter() + 30e-6
    while time.perf_counter() < end:
        pass
    return x


def per_task_us(pool: _bench.PoolUnderTest, func: Callable[[int], int]) -> float:
    """Microseconds per task of a map of 4,000 tasks sent one by one (chunksize=1)."""
    count = 4_000
    started = time.perf_counter()
    pool.map(func, range(count), chunksize=1)
    return (time.perf_counter() - started) / count * 1e6


def slow_50(pool: _bench.PoolUnderTest) -> float:
    started = time.perf_counter()
    pool.map(sleep_20ms, range(50))
    return time.perf_counter() - started


def cpu_speedup(pool: _bench.PoolUnderTest) -> float:
    size = 1_000_000
    started = time.perf_counter()
    pool.map(cpu_bound, [size] * 8, chunksize=1)
    parallel = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(8):
        cpu_bound(size)
    return (time.perf_counter() - started) / parallel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument(
        "--start-method", default="forkserver", choices=["fork", "spawn", "forkserver"]
    )
    options = parser.parse_args()
    shared = {workload.name: workload for workload in _bench.workloads(_bench.FULL)}
    pool = _bench.WorkloadKind.POOL
    workloads = [
        shared["map-tiny"],
        shared["apply-rtt"],
        _bench.Workload(
            "map-list", "Pool.map list of 200,000 ints", _bench.ITEMS_PER_S, pool, map_list
        ),
        _bench.Workload(
            "map-one-tiny",
            "map, chunksize=1, tiny tasks",
            _bench.MICROSECONDS,
            pool,
            lambda p: per_task_us(p, _bench.tiny),
        ),
        _bench.Workload(
            "map-one-30us",
            "map, chunksize=1, 30 us tasks",
            _bench.MICROSECONDS,
            pool,
            lambda p: per_task_us(p, busy_30us),
        ),
        _bench.Workload("slow-50", "50 tasks of 20 ms (ideal 0.50 s)", SECONDS, pool, slow_50),
        _bench.Workload("cpu-2-cores", "8 CPU-bound tasks", SPEED_UP, pool, cpu_speedup),
    ]
    results = _bench.run(
        workloads,
        options.start_method,
        rounds=3 if options.quick else 7,
        among=(_bench.SERENTAK, _bench.STDLIB),
    )
    print(f"{os.cpu_count()} CPUs")
    print(_bench.format_table(results))


if __name__ == "__main__":
    main()
