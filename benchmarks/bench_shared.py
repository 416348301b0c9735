"""Shared Values: serentak against the stdlib's multiprocessing, measured in the same run.

    python benchmarks/bench_shared.py [--increments N] [--repeat R]

Two processes each add 1 to a shared ``Value('i')`` N times, the way the
documentation teaches::

    with counter.get_lock():
        counter.value += 1

Figures are increments per second for both processes together, best of R
runs, for the fork and forkserver start methods. A first table measures the
wrappers alone, in one process without contention: reading ``v.value``, an
increment under the lock, reading ``a[i]`` of an ``Array('i')``. Each child notes when it
starts counting (after a start Event) and when it is done, in a shared array
of doubles; the time of a run is from the first start to the last finish, so
starting and joining the processes do not enter the figures. A run that
loses an increment fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import serentak

START_METHODS = ("fork", "forkserver")


def count_with_lock(counter: Any, times: Any, slot: int, start: Any, increments: int) -> None:
    """A child: wait for ``start``, add 1 to ``counter`` ``increments`` times, note the times."""
    if not start.wait(60):
        raise RuntimeError("never told to start")
    began = time.monotonic()
    lock = counter.get_lock()
    for _ in range(increments):
        with lock:
            counter.value += 1
    times[2 * slot] = began
    times[2 * slot + 1] = time.monotonic()


def count_docs_style(counter: Any, times: Any, slot: int, start: Any, increments: int) -> None:
    """As :func:`count_with_lock`, taking ``get_lock()`` at every increment as the docs do."""
    if not start.wait(60):
        raise RuntimeError("never told to start")
    began = time.monotonic()
    for _ in range(increments):
        with counter.get_lock():
            counter.value += 1
    times[2 * slot] = began
    times[2 * slot + 1] = time.monotonic()


def wrapper_work(ctx: Any, count: int) -> dict[str, Callable[[], None]]:
    """In-process loops over the wrappers of ``ctx``, by name."""
    value = ctx.Value("i", 0)
    array = ctx.Array("i", 10)

    def read() -> None:
        for _ in range(count):
            value.value  # noqa: B018 (the read is what is measured)

    def increment() -> None:
        for _ in range(count):
            with value.get_lock():
                value.value += 1

    def item() -> None:
        for _ in range(count):
            array[3]

    return {"v.value": read, "with lock: v.value += 1": increment, "a[3]": item}


def per_second(work: Callable[[], None], count: int) -> float:
    start = time.perf_counter()
    work()
    return count / (time.perf_counter() - start)


def best_of_alternating(repeat: int, ours: Callable[[], float], theirs: Callable[[], float]) -> Row:
    """Best of ``repeat`` runs of each, taking turns: other load then weighs on both alike."""
    ours_best = theirs_best = 0.0
    for _ in range(repeat):
        ours_best = max(ours_best, ours())
        theirs_best = max(theirs_best, theirs())
    return Row(ours_best, theirs_best)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a table: operations per second of each side."""

    ours: float
    theirs: float

    def show(self, label: str) -> None:
        print(
            f"{label:<48} {self.ours / 1e6:8.3f} {self.theirs / 1e6:8.3f} "
            f"{self.ours / self.theirs:7.2f}x"
        )


def run(ctx: Any, target: Any, increments: int, processes: int = 2) -> float:
    """Increments per second of ``processes`` children sharing one Value of ``ctx``."""
    counter = ctx.Value("i", 0)
    times = ctx.RawArray("d", 2 * processes)
    start = ctx.Event()
    children = [
        ctx.Process(target=target, args=(counter, times, slot, start, increments))
        for slot in range(processes)
    ]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"benchmark child failed with exit code {child.exitcode}")
    if counter.value != processes * increments:
        raise RuntimeError(f"lost increments: {counter.value} != {processes * increments}")
    began: float = min(times[0::2])
    ended: float = max(times[1::2])
    return processes * increments / (ended - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--increments", type=int, default=200_000, help="per process")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    count = 500_000
    ours_work = wrapper_work(serentak.get_context("fork"), count)
    their_work = wrapper_work(multiprocessing.get_context("fork"), count)
    print(f"{'M operations/s, 1 process':<48} {'serentak':>8} {'stdlib':>8} {'ratio':>8}")
    for name, work in ours_work.items():
        best_of_alternating(
            args.repeat,
            partial(per_second, work, count),
            partial(per_second, their_work[name], count),
        ).show(name)
    print()
    print(f"{'M increments/s, 2 processes':<48} {'serentak':>8} {'stdlib':>8} {'ratio':>8}")
    for method in START_METHODS:
        for label, target in (
            ("lock = v.get_lock() once", count_with_lock),
            ("with v.get_lock() each time", count_docs_style),
        ):
            best_of_alternating(
                args.repeat,
                partial(run, serentak.get_context(method), target, args.increments),
                partial(run, multiprocessing.get_context(method), target, args.increments),
            ).show(f"{method}, {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
