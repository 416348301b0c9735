"""Queues: serentak against the stdlib's multiprocessing.Queue, measured in the same run.

    python benchmarks/bench_queue.py [--small N] [--big N] [--repeat R]

One producer process puts, the parent gets, best of R runs each:

* small messages (an int, and 100 bytes), in messages per second;
* 1 MiB ``bytes`` messages, in GB/s.

faster_fifo's Queue joins the table when it is importable. Producers are
started with ``os.fork`` on every side so the start method does not enter
the figures; the clock runs from before the fork until the last get.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from serentak import _queues


class _Queue(Protocol):
    def put(self, obj: Any) -> None: ...
    def get(self) -> Any: ...


def _faster_fifo() -> Callable[[], _Queue] | None:
    try:
        import faster_fifo

        # Makes its Queue picklable, as its documentation asks.
        importlib.import_module("faster_fifo_reduction")
    except ImportError:
        return None

    def make() -> _Queue:
        queue: _Queue = faster_fifo.Queue(max_size_bytes=64 * 1024 * 1024)
        return queue

    return make


def _transfer(make: Callable[[], _Queue], message: object, count: int) -> float:
    """Seconds for a forked producer to put ``count`` messages and the parent to get them."""
    queue = make()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for _ in range(count):
                queue.put(message)
            code = 0
        finally:
            join_thread = getattr(queue, "join_thread", None)
            if code == 0 and join_thread is not None:
                getattr(queue, "close")()  # noqa: B009 (not every queue type has it)
                join_thread()  # flush, as a Process's exit would
            os._exit(code)
    for _ in range(count):
        queue.get()
    seconds = time.perf_counter() - start
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"benchmark producer {pid} failed with status {status}")
    return seconds


def _best(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", type=int, default=200_000, help="small messages per run")
    parser.add_argument("--big", type=int, default=2_000, help="1 MiB messages per run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("fork")
    makers: dict[str, Callable[[], _Queue]] = {
        "serentak": _queues.Queue,
        "stdlib": context.Queue,
    }
    faster_fifo = _faster_fifo()
    if faster_fifo is not None:
        makers["faster_fifo"] = faster_fifo
    names = list(makers)
    header = f"{'':<28}" + "".join(f"{name:>13}" for name in names)
    header += "".join(f"{'vs ' + name:>13}" for name in names[1:])
    print(header)
    mib = b"x" * (1 << 20)
    for label, message, count, unit, scale in (
        ("int, k msg/s", 12345, args.small, 1e3, 1.0),
        ("100 bytes, k msg/s", b"x" * 100, args.small, 1e3, 1.0),
        ("1 MiB bytes, GB/s", mib, args.big, 1e9, float(len(mib))),
    ):
        rates = [
            count * scale / _best(args.repeat, partial(_transfer, makers[name], message, count))
            for name in names
        ]
        row = f"{label:<28}" + "".join(f"{rate / unit:13.2f}" for rate in rates)
        row += "".join(f"{rates[0] / rate:12.2f}x" for rate in rates[1:])
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
