"""serentak where users already are: asyncio and joblib, against what they use today, in one run.

Run: ``python benchmarks/bench_ecosystem.py [--quick]`` (needs ``serentak[joblib]``, numpy).

asyncio, one worker process each, one await at a time (latency of a round trip):
  AsyncPool.apply             ``await pool.apply(noop)``
  run_in_executor             ``await loop.run_in_executor(serentak.ProcessPoolExecutor(1), noop)``
  Pool.apply (sync)           ``pool.apply(noop)``, no event loop

joblib, ``Parallel(n_jobs=2)`` on the ``serentak`` backend against joblib's own
``loky`` backend (both warmed up, workers kept between calls):
  10,000 tiny tasks           ``delayed(abs)(i)``, joblib's auto-batching
  16 x 8 MiB arrays           ``delayed(np.sum)(a)``, distinct arrays (loky memmaps them,
                              serentak sends them through shared memory)

Each figure is the median of the rounds (rounds alternate between the contenders).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import joblib
import numpy as np

import serentak
import serentak.joblib


def noop() -> None:
    return None


def median_of(rounds: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(rounds))


async def async_round_trips(calls: int, rounds: int) -> tuple[float, float]:
    """Microseconds per await: AsyncPool.apply, then run_in_executor."""
    loop = asyncio.get_running_loop()
    executor = serentak.ProcessPoolExecutor(1)
    async with serentak.AsyncPool(1) as pool:
        await pool.apply(noop)
        await loop.run_in_executor(executor, noop)
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(calls):
                await pool.apply(noop)
            ours.append((time.perf_counter() - start) / calls * 1e6)
            start = time.perf_counter()
            for _ in range(calls):
                await loop.run_in_executor(executor, noop)
            theirs.append((time.perf_counter() - start) / calls * 1e6)
    executor.shutdown()
    return statistics.median(ours), statistics.median(theirs)


def sync_round_trip(calls: int, rounds: int) -> float:
    with serentak.Pool(1) as pool:
        pool.apply(noop)

        def measure() -> float:
            start = time.perf_counter()
            for _ in range(calls):
                pool.apply(noop)
            return (time.perf_counter() - start) / calls * 1e6

        return median_of(rounds, measure)


def joblib_seconds(backend: str, calls: Callable[[], list[Any]], rounds: int) -> float:
    with joblib.parallel_config(backend=backend, n_jobs=2):
        joblib.Parallel()(joblib.delayed(abs)(i) for i in range(100))  # warm the workers

        def measure() -> float:
            start = time.perf_counter()
            calls()
            return time.perf_counter() - start

        return median_of(rounds, measure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    args = parser.parse_args()
    calls, rounds = (200, 3) if args.quick else (2000, 5)

    ours, executor = asyncio.run(async_round_trips(calls, rounds))
    sync = sync_round_trip(calls, rounds)
    print(f"asyncio round trip of a no-op, one worker ({calls} awaits x {rounds} rounds), us/call")
    print(f"  AsyncPool.apply         {ours:8.1f}")
    print(f"  run_in_executor         {executor:8.1f}   ({executor / ours:.2f}x AsyncPool)")
    print(f"  Pool.apply (sync)       {sync:8.1f}   ({sync / ours:.2f}x AsyncPool)")

    tiny = 2000 if args.quick else 10_000
    arrays = [np.full(1 << 20, float(i)) for i in range(16)]  # 16 x 8 MiB

    def tiny_tasks() -> list[Any]:
        return list(joblib.Parallel()(joblib.delayed(abs)(i) for i in range(tiny)))

    def big_arrays() -> list[Any]:
        return list(joblib.Parallel()(joblib.delayed(np.sum)(a) for a in arrays))

    print(f"joblib Parallel(n_jobs=2), median of {rounds} rounds, ms")
    for name, work in ((f"{tiny:,} tiny tasks", tiny_tasks), ("16 x 8 MiB arrays", big_arrays)):
        on_serentak = joblib_seconds("serentak", work, rounds)
        on_loky = joblib_seconds("loky", work, rounds)
        print(
            f"  {name:20} serentak {on_serentak * 1e3:8.1f}   loky {on_loky * 1e3:8.1f}"
            f"   (loky / serentak {on_loky / on_serentak:.2f}x)"
        )
    serentak.joblib.shutdown()


if __name__ == "__main__":
    main()
