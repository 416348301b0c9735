"""Locks: serentak against the stdlib's multiprocessing, measured in the same run.

    python benchmarks/bench_sync.py [--increments N] [--repeat R]

Two measurements, best of R runs each:

* acquire + release per second in one process, uncontended
  (``lock.acquire(); lock.release()`` and ``with lock: pass``);
* two processes each adding 1 to a shared counter N times under the lock
  (``with lock: counter.value += 1``), in increments per second for both
  together. The stdlib runs it twice: with its ``Value('i')`` and that
  Value's own lock, as the docs teach, and with a plain Lock around a
  ``RawValue('i')``, which is what the serentak side does (a ctypes int in a
  shared block under a serentak Lock).

Processes are started with ``os.fork`` on both sides so the start method
does not enter the figures.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.sharedctypes
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, Protocol

import serentak


class _Counter(Protocol):
    value: int


class _Lock(Protocol):
    def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...
    def release(self) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *args: Any) -> Any: ...


def _best(repeat: int, run: Callable[[], float]) -> float:
    return max(run() for _ in range(repeat))


def uncontended(lock: _Lock, count: int) -> float:
    """acquire() + release() pairs per second."""
    acquire, release = lock.acquire, lock.release
    start = time.perf_counter()
    for _ in range(count):
        acquire()
        release()
    return count / (time.perf_counter() - start)


def uncontended_with(lock: AbstractContextManager[Any], count: int) -> float:
    """``with lock: pass`` per second."""
    start = time.perf_counter()
    for _ in range(count):
        with lock:
            pass
    return count / (time.perf_counter() - start)


def _in_children(processes: int, work: Callable[[], None]) -> float:
    """Seconds for ``processes`` forked children to each run ``work``."""
    start = time.perf_counter()
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                work()
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"benchmark child {pid} failed with status {status}")
    return time.perf_counter() - start


def contended(lock: AbstractContextManager[Any], counter: _Counter, increments: int) -> float:
    """Increments per second of two processes sharing ``counter`` under ``lock``."""
    counter.value = 0

    def work() -> None:
        for _ in range(increments):
            with lock:
                counter.value += 1

    seconds = _in_children(2, work)
    if counter.value != 2 * increments:
        raise RuntimeError(f"lost increments: {counter.value} != {2 * increments}")
    return 2 * increments / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--increments", type=int, default=200_000, help="per process")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    n, repeat = args.increments, args.repeat
    context = multiprocessing.get_context("fork")
    ours_context = serentak.get_context("fork")

    def row(what: str, ours: float, theirs: float) -> None:
        print(f"{what:<44} {ours / 1e6:8.3f} {theirs / 1e6:8.3f} {ours / theirs:7.2f}x")

    print(f"{'M/s':<44} {'serentak':>8} {'stdlib':>8} {'ratio':>8}")
    for name, ours_lock, their_lock in (
        ("Lock", ours_context.Lock(), context.Lock()),
        ("RLock", ours_context.RLock(), context.RLock()),
    ):
        row(
            f"{name} acquire()+release(), 1 process",
            _best(repeat, partial(uncontended, ours_lock, 1_000_000)),
            _best(repeat, partial(uncontended, their_lock, 1_000_000)),
        )
        row(
            f"with {name}: pass, 1 process",
            _best(repeat, partial(uncontended_with, ours_lock, 1_000_000)),
            _best(repeat, partial(uncontended_with, their_lock, 1_000_000)),
        )

    ours_counter = ours_context.RawValue("i", 0)
    ours_lock = ours_context.Lock()
    raw = multiprocessing.sharedctypes.RawValue("i", 0)
    their_lock = context.Lock()
    value = context.Value("i", 0)
    ours = _best(repeat, partial(contended, ours_lock, ours_counter, n))
    row(
        "2 procs, Lock + raw int (same work)",
        ours,
        _best(repeat, partial(contended, their_lock, raw, n)),
    )
    row(
        "2 procs, vs stdlib Value('i') with get_lock()",
        ours,
        _best(repeat, partial(contended, value.get_lock(), value, n)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
