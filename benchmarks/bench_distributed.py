"""Per-task overhead of serentak.distributed.Pool (Dask) against serentak.Pool, in one run.

Run: ``python benchmarks/bench_distributed.py [--quick]`` (needs ``serentak[dask]``).

The three pools have two single-threaded worker processes on this machine:
the stdlib's ``multiprocessing.Pool`` (forkserver), ``serentak.Pool``, and
``serentak.distributed.Pool`` on a ``LocalCluster`` (no address), so what is
measured is what Dask adds (scheduler, client, TCP), not a network. Rounds
alternate between the pools; each figure is the median of the rounds, in
milliseconds per task, with the ratios distributed / serentak.Pool and
distributed / stdlib (how many times their cost).

Workloads:
  apply-rtt          apply_async(f, (1,)).get(), one task at a time: latency
  tiny, chunksize=1  map of a tiny function, one item per task: overhead per task
  tiny, adaptive     map of 20,000 tiny items, default chunks: cost per item
  8 MiB in           map over distinct 8 MiB arrays, one per task, a float back
  8 MiB in and out   the same, the array back (doubled)
  8 MiB shared       starmap of (one 8 MiB array, i): scattered once by the
                     distributed pool, sent with every task by the others
"""

from __future__ import annotations

import argparse
import multiprocessing
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


def started(make: Callable[[], Any]) -> tuple[Any, float]:
    """A pool from ``make``, once its workers have run a first task each; seconds it took."""
    began = time.perf_counter()
    pool = make()
    pool.map(tiny, range(WORKERS * 4), chunksize=1)
    return pool, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer tasks and rounds")
    options = parser.parse_args()
    rounds = 3 if options.quick else 5

    # The stdlib's pool first: its fork server starts before Dask's threads exist.
    stdlib, stdlib_start = started(lambda: multiprocessing.get_context("forkserver").Pool(WORKERS))
    local, local_start = started(lambda: serentak.Pool(WORKERS))
    distributed, distributed_start = started(lambda: DistributedPool(processes=WORKERS))
    print(
        f"pool start (2 workers, first results): multiprocessing.Pool {stdlib_start * 1e3:.0f} ms, "
        f"serentak.Pool {local_start * 1e3:.0f} ms, "
        f"serentak.distributed.Pool (LocalCluster) {distributed_start * 1e3:.0f} ms\n"
    )
    try:
        pools = [stdlib, local, distributed]
        runs = [workloads(pool, options.quick) for pool in pools]
        print(
            f"{'ms per task (median)':24s} {'stdlib':>9s} {'serentak':>9s} {'distributed':>12s}"
            f"  {'/serentak':>9s} {'/stdlib':>8s}"
        )
        for name in runs[0]:
            times: list[list[float]] = [[] for _ in pools]
            for _ in range(rounds):
                for run, samples in zip(runs, times, strict=True):
                    samples.append(run[name]())
            a, b, c = (statistics.median(samples) for samples in times)
            print(
                f"{name:24s} {a * 1e3:9.3f} {b * 1e3:9.3f} {c * 1e3:12.3f}"
                f"  {c / b:8.1f}x {c / a:7.1f}x"
            )
        print(f"\nscattered by the distributed pool: {distributed.scattered} inputs")
    finally:
        stdlib.terminate()
        local.terminate()
        distributed.terminate()


if __name__ == "__main__":
    main()
