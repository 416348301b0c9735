"""Process start + join, and Pipe round trips: serentak against the stdlib, in one run.

Run: ``python benchmarks/bench_process.py`` (``--quick`` for fewer rounds).
Prints medians and the ratio stdlib time / serentak time (above 1: serentak is faster).
Both libraries are measured interleaved, round by round, so machine noise hits both.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import serentak


def noop() -> None:
    """The child's whole work."""


def start_join(ctx: Any) -> float:
    started = time.perf_counter()
    process = ctx.Process(target=noop)
    process.start()
    process.join()
    return time.perf_counter() - started


def echo(conn: Any, count: int) -> None:
    for _ in range(count):
        conn.send(conn.recv())


def pipe_round_trips(
    pipe: Callable[[], tuple[Any, Any]], count: int, ctx: Any | None = None
) -> float:
    """Median seconds per send+recv round trip of a small object, over a thread
    echo, or over a child process of ``ctx`` (the library's own Process) if given."""
    left, right = pipe()
    echoer: Any
    if ctx is None:
        echoer = threading.Thread(target=echo, args=(right, count + 100))
    else:
        echoer = ctx.Process(target=echo, args=(right, count + 100))
    echoer.start()
    message = (1, "x" * 100)
    for _ in range(100):
        left.send(message)
        left.recv()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        left.send(message)
        left.recv()
        samples.append(time.perf_counter() - started)
    echoer.join()
    left.close()
    right.close()
    return statistics.median(samples)


def compare(
    label: str, ours: Callable[[], float], theirs: Callable[[], float], rounds: int
) -> None:
    ours_times, theirs_times = [], []
    for _ in range(rounds):
        ours_times.append(ours())
        theirs_times.append(theirs())
    a, b = statistics.median(ours_times), statistics.median(theirs_times)
    print(
        f"{label:34s} serentak {a * 1e3:8.3f} ms   stdlib {b * 1e3:8.3f} ms   ratio {b / a:5.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    options = parser.parse_args()
    scale = 1 if options.quick else 3
    print("Process start + join of a no-op target (median)")
    for method, rounds in (("fork", 40), ("forkserver", 20), ("spawn", 8)):
        ours, theirs = serentak.get_context(method), multiprocessing.get_context(method)
        start_join(ours)  # start the fork servers outside the measurement
        start_join(theirs)
        compare(
            f"  {method}",
            lambda ours=ours: start_join(ours),  # type: ignore[misc]
            lambda theirs=theirs: start_join(theirs),  # type: ignore[misc]
            rounds * scale,
        )
    print("Pipe round trip of (1, 'x' * 100), thread echo (median)")
    compare(
        "  Pipe() send+recv",
        lambda: pipe_round_trips(serentak.Pipe, 2000),
        lambda: pipe_round_trips(multiprocessing.Pipe, 2000),
        3 * scale,
    )
    print("Pipe round trip of (1, 'x' * 100), echo in a forked child process (median)")
    ours, theirs = serentak.get_context("fork"), multiprocessing.get_context("fork")
    compare(
        "  Pipe() send+recv",
        lambda: pipe_round_trips(serentak.Pipe, 1000, ours),
        lambda: pipe_round_trips(multiprocessing.Pipe, 1000, theirs),
        5 * scale,
    )


if __name__ == "__main__":
    main()
