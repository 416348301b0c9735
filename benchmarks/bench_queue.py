"""Queues: serentak against the stdlib's multiprocessing.Queue, measured in the same run.

    python benchmarks/bench_queue.py [--small N] [--big N] [--repeat R]

One producer process puts, the parent gets; R rounds, each measuring every
queue once in turn; the table shows the median rate and the median of the
per-round ratios:

* small messages (an int, and 100 bytes), in messages per second;
* the same with serentak's put_many/get_many (batches of 100);
* 1 MiB ``bytes`` messages, in GB/s, beside one in-process ``memcpy`` of
  1 MiB (``bytes(bytearray)``), the bound a copy-through queue approaches.

faster_fifo's Queue joins the table when it is importable. Producers are
started with ``os.fork`` on every side so the start method does not enter
the figures; the clock runs from before the fork until the last get.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import serentak


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


class _Batched:
    """serentak's Queue through put_many/get_many, batches of ``_BATCH``."""

    def __init__(self) -> None:
        self.queue = serentak.get_context("fork").Queue()
        self.pending: list[Any] = []

    def put(self, obj: Any) -> None:
        self.pending.append(obj)
        if len(self.pending) == _BATCH:
            self.queue.put_many(self.pending)
            self.pending.clear()

    def get(self) -> Any:
        if not self.pending:
            self.pending = self.queue.get_many(_BATCH)[::-1]
        return self.pending.pop()

    def close(self) -> None:
        self.queue.put_many(self.pending)
        self.queue.close()

    def join_thread(self) -> None:
        self.queue.join_thread()


_BATCH = 100


def _memcpy_rate(size: int, count: int) -> float:
    """Bytes per second of one in-process copy of ``size`` bytes."""
    source = bytearray(size)
    start = time.perf_counter()
    for _ in range(count):
        bytes(source)
    return size * count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", type=int, default=200_000, help="small messages per run")
    parser.add_argument("--big", type=int, default=2_000, help="1 MiB messages per run")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("fork")
    makers: dict[str, Callable[[], _Queue]] = {
        "serentak": serentak.get_context("fork").Queue,
        "stdlib": context.Queue,
    }
    faster_fifo = _faster_fifo()
    if faster_fifo is not None:
        makers["faster_fifo"] = faster_fifo
    else:
        print("faster_fifo is not importable: compared with the stdlib only")
    names = list(makers)
    header = f"{'':<30}" + "".join(f"{name:>13}" for name in names)
    header += "".join(f"{'vs ' + name:>15}" for name in names[1:])
    print(header)
    mib = b"x" * (1 << 20)
    rows: list[tuple[str, object, int, float, float, dict[str, Callable[[], _Queue]]]] = [
        ("int, k msg/s", 12345, args.small, 1e3, 1.0, makers),
        ("100 bytes, k msg/s", b"x" * 100, args.small, 1e3, 1.0, makers),
        ("int, put_many, k msg/s", 12345, args.small, 1e3, 1.0, {**makers, "serentak": _Batched}),
        ("1 MiB bytes, GB/s", mib, args.big, 1e9, float(len(mib)), makers),
    ]
    for label, message, count, unit, scale, row_makers in rows:
        rounds = [
            [count * scale / _transfer(row_makers[name], message, count) for name in names]
            for _ in range(args.repeat)
        ]
        rates = [statistics.median(r[i] for r in rounds) for i in range(len(names))]
        ratios = [statistics.median(r[0] / r[i] for r in rounds) for i in range(1, len(names))]
        row = f"{label:<30}" + "".join(f"{rate / unit:13.2f}" for rate in rates)
        row += "".join(f"{ratio:14.2f}x" for ratio in ratios)
        print(row, flush=True)
    memcpy = _memcpy_rate(len(mib), args.big)
    print(f"{'1 MiB memcpy, GB/s':<30}{memcpy / 1e9:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
