"""A program in the style of the stdlib documentation's Pool examples: every method
of a Pool, errors, timeouts and callbacks, then close, terminate and collection."""

from __future__ import annotations

import multiprocessing
import sys
import time


def describe(func_and_args: tuple[str, tuple[int, int]]) -> str:
    name, (a, b) = func_and_args
    value = a * b if name == "mul" else a + b
    return f"{name}{(a, b)} = {value}"


def inverse_offset(x: int) -> float:
    return 1.0 / (x - 5.0)


def cube(x: int) -> int:
    return x**3


def main() -> None:
    tasks = [("mul", (i, 7)) for i in range(10)] + [("plus", (i, 8)) for i in range(10)]
    with multiprocessing.Pool(4) as pool:
        pending = [pool.apply_async(describe, (t,)) for t in tasks]
        ordered = pool.imap(describe, tasks)
        unordered = pool.imap_unordered(describe, tasks)
        print("apply_async:", [r.get() for r in pending] == [describe(t) for t in tasks])
        print("imap:", list(ordered) == [describe(t) for t in tasks])
        print("imap_unordered:", sorted(unordered) == sorted(describe(t) for t in tasks))
        print("map:", pool.map(describe, tasks) == [describe(t) for t in tasks])
        print("big map:", pool.map(cube, range(100_000)) == [x**3 for x in range(100_000)])
        chunked = list(pool.imap(cube, range(100_000), chunksize=12_500))
        print("chunked imap:", chunked == [x**3 for x in range(100_000)])
        for label, call in (
            ("apply", lambda: pool.apply(inverse_offset, (5,))),
            ("map", lambda: pool.map(inverse_offset, range(10))),
            ("imap", lambda: list(pool.imap(inverse_offset, range(10)))),
        ):
            try:
                call()
            except ZeroDivisionError:
                print(f"ZeroDivisionError from {label}")
        it = pool.imap(inverse_offset, range(10))
        outcomes = []
        for _ in range(10):
            try:
                next(it)
                outcomes.append("ok")
            except ZeroDivisionError:
                outcomes.append("error")
        print("imap next:", outcomes.index("error"), outcomes.count("ok"))
        slow = pool.apply_async(time.sleep, (0.3,))
        try:
            slow.get(0.01)
        except multiprocessing.TimeoutError:
            print("TimeoutError while waiting")
        print("then:", slow.get())
        collected: list[int] = []
        pool.apply_async(cube, (4,), callback=collected.append).wait()
        pool.map_async(cube, range(5), callback=collected.extend).wait()
        print("callbacks:", collected)
        # What the documentation's own example reads: outstanding results, workers.
        print("no outstanding results:", not pool._cache)  # type: ignore[attr-defined]
        workers = pool._pool  # type: ignore[attr-defined]
        print("workers alive:", all(worker.is_alive() for worker in workers))
        late = pool.apply_async(time.sleep, (0.2,))
        pool.close()
        pool.join()
        print("after close:", late.get())
        print("workers alive after join:", any(worker.is_alive() for worker in workers))
    with multiprocessing.Pool(2) as pool:
        # Tasks still pending at terminate() never complete in the stdlib; serentak
        # fails them with PoolTerminatedError: only what both do is printed.
        for _ in range(50):
            pool.apply_async(time.sleep, (0.1,))
        workers = pool._pool  # type: ignore[attr-defined]
        pool.terminate()
        pool.join()
        print("terminated; workers alive:", any(worker.is_alive() for worker in workers))
    dropped = multiprocessing.Pool(2)
    workers = dropped._pool  # type: ignore[attr-defined]
    dropped.apply(cube, (2,))
    sleeping = [dropped.apply_async(time.sleep, (0.1,)) for _ in range(20)]
    del sleeping, dropped
    deadline = time.monotonic() + 10  # the stdlib's workers end a little later
    while any(worker.is_alive() for worker in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("collected; workers alive:", any(worker.is_alive() for worker in workers))
    sys.stdout.flush()


if __name__ == "__main__":
    multiprocessing.freeze_support()
    main()
