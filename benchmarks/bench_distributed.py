"""Per-task overhead of serentak.distributed.Pool (Dask) against serentak.Pool, in one run.

Run: ``python benchmarks/bench_distributed.py [--quick]`` (needs ``serentak[dask]``).

Both pools have two single-threaded worker processes on this machine: the
distributed one a ``LocalCluster`` (no address), so what is measured is what
Dask adds (scheduler, client, TCP), not a network. Rounds alternate between
the two pools; each figure is the median of the rounds, in milliseconds per
task, with the ratio distributed / local (how many times the local pool's cost).

Workloads:
  apply-rtt          apply_async(f, (1,)).get(), one task at a time: latency
  tiny, chunksize=1  map of a tiny function, one item per task: overhead per task
  tiny, adaptive     map of 20,000 tiny items, default chunks: cost per item
  8 MiB in           map over distinct 8 MiB arrays, one per task, a float back
  8 MiB in and out   the same, the array back (doubled)
  8 MiB shared       starmap of (one 8 MiB array, i): scattered once by the
                     distributed pool, sent with every task by the local one
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import serentak
from serentak.distributed import Pool as DistributedPool

WORKERS = 2
MiB = 1 << 20


def tiny(x: int) -> int:
    return x + 1


def checksum(array: Any) -> float:
    return float(array[0])


def doubled(array: Any) -> Any:
    return array * 2


def shared_checksum(array: Any, i: int) -> float:
    return float(array[i])


def per_task(run: Callable[[], int]) -> float:
    """Seconds per task of one call of ``run``, which returns how many tasks it ran."""
    started = time.perf_counter()
    tasks = run()
    return (time.perf_counter() - started) / tasks


def workloads(pool: Any, quick: bool) -> dict[str, Callable[[], float]]:
    scale = 1 if quick else 4
    arrays = [np.full(MiB, float(i)) for i in range(4 * scale)]  # 8 MiB each
    shared = np.arange(MiB, dtype=np.float64)

    def apply_rtt() -> float:
        samples = []
        for _ in range(20 * scale):
            started = time.perf_counter()
            pool.apply_async(tiny, (1,)).get()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    def tiny_single() -> int:
        count = 100 * scale
        pool.map(tiny, range(count), chunksize=1)
        return count

    def tiny_adaptive() -> int:
        count = 5_000 * scale
        pool.map(tiny, range(count))
        return count

    def big_in() -> int:
        pool.map(checksum, arrays, chunksize=1)
        return len(arrays)

    def big_in_out() -> int:
        pool.map(doubled, arrays, chunksize=1)
        return len(arrays)

    def big_shared() -> int:
        count = 8 * scale
        pool.starmap(shared_checksum, [(shared, i) for i in range(count)], chunksize=1)
        return count

    return {
        "apply-rtt": apply_rtt,
        "tiny, chunksize=1": lambda: per_task(tiny_single),
        "tiny, adaptive chunks": lambda: per_task(tiny_adaptive),
        "8 MiB in": lambda: per_task(big_in),
        "8 MiB in and out": lambda: per_task(big_in_out),
        "8 MiB shared by all": lambda: per_task(big_shared),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer tasks and rounds")
    options = parser.parse_args()
    rounds = 3 if options.quick else 5

    started = time.perf_counter()
    local = serentak.Pool(WORKERS)
    local.map(tiny, range(WORKERS * 4), chunksize=1)  # workers up
    local_start = time.perf_counter() - started
    started = time.perf_counter()
    distributed = DistributedPool(processes=WORKERS)
    distributed.map(tiny, range(WORKERS * 4), chunksize=1)
    distributed_start = time.perf_counter() - started
    print(
        f"pool start (2 workers, first results): serentak.Pool {local_start * 1e3:.0f} ms, "
        f"serentak.distributed.Pool (LocalCluster) {distributed_start * 1e3:.0f} ms\n"
    )
    try:
        ours, theirs = workloads(local, options.quick), workloads(distributed, options.quick)
        print(f"{'ms per task (median)':24s} {'serentak.Pool':>14s} {'distributed':>12s}  ratio")
        for name in ours:
            local_times, distributed_times = [], []
            for _ in range(rounds):
                local_times.append(ours[name]())
                distributed_times.append(theirs[name]())
            a, b = statistics.median(local_times), statistics.median(distributed_times)
            print(f"{name:24s} {a * 1e3:14.3f} {b * 1e3:12.3f}  {b / a:6.1f}x")
        print(f"\nscattered by the distributed pool: {distributed.scattered} inputs")
    finally:
        local.terminate()
        distributed.terminate()


if __name__ == "__main__":
    main()
