"""The tutorial's section 10, measured: processes against threads on CPU-bound work.

The same batch of pure-Python work runs three ways on this machine: one after
the other, on threads, and on processes. Threads take turns holding the GIL, so
CPU-bound work gains nothing from them; processes each have their own
interpreter and use every core.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable

from serentak._context import default_context


def cpu_work(size: int) -> int:
    """Pure-Python arithmetic: a sum of squares, with no I/O and no C fast path."""
    total = 0
    for value in range(size):
        total += value * value % 7
    return total


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Seconds taken by the same batch of work, three ways.

    Attributes:
        tasks: how many pieces of work.
        size: the size of each piece (iterations of :func:`cpu_work`).
        workers: threads or processes used.
        serial: seconds, one after the other in this process.
        threads: seconds on ``workers`` threads.
        processes: seconds on ``workers`` processes.
    """

    tasks: int
    size: int
    workers: int
    serial: float
    threads: float
    processes: float


def _timed(run: Callable[[], list[int]], expected: list[int]) -> float:
    started = time.perf_counter()
    results = run()
    elapsed = time.perf_counter() - started
    if results != expected:
        raise RuntimeError("the parallel run computed something else than the serial one")
    return elapsed


def _on_threads(tasks: int, size: int, workers: int) -> list[int]:
    results = [0] * tasks

    def work(indexes: range) -> None:
        for index in indexes:
            results[index] = cpu_work(size)

    threads = [
        threading.Thread(target=work, args=(range(w, tasks, workers),)) for w in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _on_processes(tasks: int, size: int, workers: int) -> list[int]:
    with default_context.Pool(workers) as pool:
        return pool.map(cpu_work, [size] * tasks, chunksize=1)


def compare(tasks: int | None = None, size: int = 5_000_000) -> Comparison:
    """Time ``tasks`` pieces of :func:`cpu_work` serially, on threads and on processes.

    Args:
        tasks: how many pieces; by default twice the usable cores.
        size: iterations per piece (5,000,000 is about 0.2 to 0.5 s of work: enough
            that starting and stopping the pool, which the processes' time
            includes, is a small part of it).
    """
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    workers = max(1, workers)
    tasks = tasks or 2 * workers
    started = time.perf_counter()
    expected = [cpu_work(size) for _ in range(tasks)]
    serial = time.perf_counter() - started
    threads = _timed(lambda: _on_threads(tasks, size, workers), expected)
    processes = _timed(lambda: _on_processes(tasks, size, workers), expected)
    return Comparison(tasks, size, workers, serial, threads, processes)
