"""What the long-job options cost: ``journal=`` per item, ``seed=``, and how soon a
``memory_limit`` breach is caught, in one run.

Run: ``python benchmarks/bench_long_jobs.py [--quick]``.

A ``serentak.Pool`` of two workers (forkserver) maps a tiny function over
200,000 items with default chunks: plain, with ``seed=``, and with a fresh
``journal=`` (the file in a temporary directory). Rounds alternate; each figure
is the median, in items per second, with the ratio to the plain map. Then a
task filling memory at full speed under ``memory_limit="256MiB"``: the time
from its start until ``MemoryLimitError`` is raised in the caller, and the
resident size the worker had reached.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import serentak


def tiny(x: int) -> int:
    return x + 1


def hog(size: int) -> int:
    block = b"\x01" * size
    return len(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and rounds")
    args = parser.parse_args()
    items = 50_000 if args.quick else 200_000
    rounds = 3 if args.quick else 5
    timings: dict[str, list[float]] = {"plain": [], "seed=": [], "journal=": []}
    with tempfile.TemporaryDirectory() as directory, serentak.Pool(2) as pool:
        pool.map(tiny, range(1000))  # the workers are up
        for round_ in range(rounds):
            for name, seconds in timings.items():
                options: dict[str, object] = {}
                if name == "seed=":
                    options["seed"] = 1
                elif name == "journal=":
                    options["journal"] = os.path.join(directory, f"j{round_}")
                started = time.perf_counter()
                pool.map(tiny, range(items), **options)  # type: ignore[arg-type]
                seconds.append(time.perf_counter() - started)
        print(f"tiny map of {items:,} items, 2 workers, median of {rounds} rounds")
        plain = statistics.median(timings["plain"])
        for name, measured in timings.items():
            median = statistics.median(measured)
            per_item_us = (median - plain) / items * 1e6
            print(
                f"  {name:<10} {items / median:>12,.0f} items/s   x{median / plain:5.2f}"
                f"   +{per_item_us:5.2f} us/item"
            )
        caught = []
        for _ in range(rounds):
            started = time.perf_counter()
            try:
                pool.apply(hog, (2 << 30,), memory_limit="256MiB")
            except serentak.MemoryLimitError as exc:
                caught.append((time.perf_counter() - started, str(exc)))
        print(f"memory_limit 256 MiB, a task filling 2 GiB: caught after (median of {rounds})")
        print(f"  {statistics.median(t for t, _ in caught) * 1000:.0f} ms; {caught[-1][1]}")


if __name__ == "__main__":
    main()
