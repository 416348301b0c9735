"""Worker processes fed through a task queue, results through a done queue, stopped by a
sentinel: the documentation's queue-of-workers idiom."""

from __future__ import annotations

import multiprocessing
from multiprocessing import Process, Queue, current_process

Job = tuple[str, tuple[int, int]]


def worker(tasks: Queue[Job | str], done: Queue[tuple[str, int]]) -> None:
    for job in iter(tasks.get, "STOP"):
        assert not isinstance(job, str)
        name, (a, b) = job
        done.put((current_process().name.split("-")[0], a * b if name == "mul" else a + b))


def main() -> None:
    tasks: Queue[Job | str] = Queue()
    done: Queue[tuple[str, int]] = Queue()
    for i in range(20):
        tasks.put(("mul", (i, 7)))
    workers = [Process(target=worker, args=(tasks, done)) for _ in range(4)]
    for w in workers:
        w.start()
    first = sorted(done.get()[1] for _ in range(20))
    for i in range(10):
        tasks.put(("plus", (i, 8)))
    more = sorted(done.get()[1] for _ in range(10))
    for _ in workers:
        tasks.put("STOP")
    for w in workers:
        w.join()
    print("first:", first)
    print("more:", more)
    print("exit codes:", [w.exitcode for w in workers])


if __name__ == "__main__":
    multiprocessing.freeze_support()
    main()
