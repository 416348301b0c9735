"""``ThreadPool``: the Pool API on threads of this process.

::

    callers / feeder  --dispatch(task)-->  queue  -->  worker threads: run, complete the sink

Nothing is pickled: arguments and results are shared objects, as with the
stdlib's ``multiprocessing.pool.ThreadPool``. A thread cannot be stopped from
outside, so ``timeout=`` is refused and terminate() lets running tasks finish.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from serentak._exceptions import PoolTerminatedError
from serentak._os import waiting as _waiting
from serentak._pool.api import BasePool, check_pool_arguments
from serentak._pool.results import Outcome
from serentak._pool.tasks import Function, Task, run_task

from .process import PoolStats, WorkerStats


class _ThreadEngine:
    """Worker threads taking tasks from one queue."""

    kills_overdue_tasks = False
    retries_tasks = False  # a thread neither dies alone nor can be stopped
    limits_memory = False

    def __init__(
        self,
        threads: int,
        initializer: Callable[..., object] | None,
        initargs: Sequence[Any],
    ) -> None:
        self._queue: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self._terminated = threading.Event()
        self._stats_lock = threading.Lock()
        self._counts: dict[int, tuple[int, int, float]] = {}  # thread ident -> done, failed, busy
        self._threads = [
            threading.Thread(
                target=self._work,
                args=(initializer, tuple(initargs)),
                name=f"serentak-threadpool-{n}",
                daemon=True,
            )
            for n in range(1, threads + 1)
        ]
        for thread in self._threads:
            thread.start()

    def function(self, func: Callable[..., Any]) -> Function:
        return Function(next(self._ids), func)

    def encode(self, obj: Any) -> Any:
        return obj

    def dispatch(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            if self._terminated.is_set():
                self._fail(task)
            else:
                self._queue.put(task)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def terminate(self) -> None:
        self._terminated.set()
        self.close()
        self.join()

    def stats(self) -> PoolStats:
        with self._stats_lock:
            counts = dict(self._counts)
        workers = tuple(
            WorkerStats(t.ident or 0, t.is_alive(), *counts.get(t.ident or 0, (0, 0, 0.0)), None)
            for t in self._threads
        )
        return PoolStats(workers, restarts=0, tasks_lost=0, tasks_timed_out=0)

    def join(self) -> None:
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                _waiting.join(thread)

    @staticmethod
    def _fail(task: Task) -> None:
        reason = PoolTerminatedError("the pool was terminated before the task ran")
        task.sink.complete_chunk(task.index, Outcome.of_exception(reason))

    def _work(self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
        failed: BaseException | None = None
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as exc:
                failed = exc  # every task this thread takes fails with it
        while (task := self._queue.get()) is not None:
            if self._terminated.is_set():
                self._fail(task)
                continue
            if not task.sink.claim():
                continue
            started = time.perf_counter()
            if failed is not None:
                outcome = Outcome.of_exception(failed)
            else:
                try:
                    outcome = Outcome.of_value(
                        run_task(task.kind, task.function.payload, task.payload)
                    )
                except BaseException as exc:
                    outcome = Outcome.of_exception(exc)
            busy = time.perf_counter() - started
            self._count(outcome.ok, busy)
            task.sink.complete_chunk(task.index, outcome, int(busy * 1e6))

    def _count(self, ok: bool, busy: float) -> None:
        ident = threading.get_ident()
        with self._stats_lock:
            done, failed, total = self._counts.get(ident, (0, 0, 0.0))
            self._counts[ident] = (done + 1, failed + (not ok), total + busy)


class ThreadPool(BasePool):
    """A pool of threads with the Pool API: the stdlib's ``multiprocessing.pool.ThreadPool``.

    Args:
        processes: number of threads; by default ``os.cpu_count()``.
        initializer: called with ``initargs`` in each thread when it starts.
        initargs: arguments for ``initializer``.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
    ) -> None:
        from serentak._context import default_context

        processes = check_pool_arguments(processes, initializer, None, default_context.cpu_count)
        super().__init__(_ThreadEngine(processes, initializer, initargs), processes)
