"""Pool workloads: serentak against the stdlib.

Run: ``python benchmarks/bench_pool.py [--quick] [--start-method M]``.

Every figure is measured for both libraries in the same run, alternating round
by round, median of the rounds, with the ratio to the stdlib (above 1: better
than the stdlib). Absolute numbers on a shared 2-core machine mean little;
ratios hold.

Workloads:
  map-range     pool.map(f, range(200_000)), f tiny, default chunksize
  map-list      the same over a list of 200,000 ints
  apply-rtt     apply_async(f, (1,)).get() round trip, median
  cpu-2-cores   8 CPU-bound tasks on 2 workers, speed-up over serial
  slow-50       50 tasks of 20 ms on 2 workers, against the ideal 0.5 s
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import serentak

TINY_TASKS = 200_000


def tiny(x: int) -> int:
    return x + 1


def sleep_20ms(_: int) -> None:
    time.sleep(0.02)


def cpu_bound(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _workloads(pool: Any, quick: bool) -> dict[str, Callable[[], float]]:
    numbers = list(range(TINY_TASKS))

    def map_range() -> float:
        started = time.perf_counter()
        pool.map(tiny, range(TINY_TASKS))
        return TINY_TASKS / (time.perf_counter() - started)

    def map_list() -> float:
        started = time.perf_counter()
        pool.map(tiny, numbers)
        return TINY_TASKS / (time.perf_counter() - started)

    def apply_rtt() -> float:
        samples = []
        for _ in range(200 if quick else 1000):
            started = time.perf_counter()
            pool.apply_async(tiny, (1,)).get()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    def slow_50() -> float:
        started = time.perf_counter()
        pool.map(sleep_20ms, range(50))
        return time.perf_counter() - started

    def cpu_speedup() -> float:
        size = 1_000_000
        started = time.perf_counter()
        pool.map(cpu_bound, [size] * 8, chunksize=1)
        parallel = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(8):
            cpu_bound(size)
        return (time.perf_counter() - started) / parallel

    return {
        "map-range items/s": map_range,
        "map-list items/s": map_list,
        "apply-rtt s": apply_rtt,
        "slow-50 s": slow_50,
        "cpu-2-cores speed-up": cpu_speedup,
    }


def _higher_is_better(metric: str) -> bool:
    return not metric.endswith(" s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument(
        "--start-method", default="forkserver", choices=["fork", "spawn", "forkserver"]
    )
    options = parser.parse_args()
    rounds = 3 if options.quick else 7
    contexts = {
        "serentak": serentak.get_context(options.start_method),
        "stdlib": multiprocessing.get_context(options.start_method),
    }
    pools = {name: ctx.Pool(2) for name, ctx in contexts.items()}
    try:
        for pool in pools.values():
            pool.map(tiny, range(1000))  # workers up and warm
        workloads = {name: _workloads(pool, options.quick) for name, pool in pools.items()}
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in pools}
        for metric in workloads["serentak"]:
            for _ in range(rounds):
                for name in pools:  # alternate, so noise hits both alike
                    samples[name].setdefault(metric, []).append(workloads[name][metric]())
    finally:
        for pool in pools.values():
            pool.terminate()
    print(f"Pool workloads, 2 workers, start method {options.start_method}, {os.cpu_count()} CPUs")
    print(f"{'metric':24s} {'serentak':>14s} {'stdlib':>14s} {'ratio':>8s}")
    for metric in samples["serentak"]:
        ours = statistics.median(samples["serentak"][metric])
        theirs = statistics.median(samples["stdlib"][metric])
        ratio = ours / theirs if _higher_is_better(metric) else theirs / ours
        scale = 1e6 if metric.endswith("rtt s") else 1.0
        unit = " us" if scale != 1.0 else ""
        print(
            f"{metric:24s} {ours * scale:14,.2f}{unit} {theirs * scale:14,.2f}{unit} {ratio:7.2f}x"
        )
    print("slow-50 ideal: 0.50 s (50 x 20 ms on 2 workers)")


if __name__ == "__main__":
    main()
