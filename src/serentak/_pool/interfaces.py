"""The interfaces between the pool's parts, next to the picture of a ``Pool.map`` call.

::

    caller thread            feeder thread         supervisor thread        worker process
    (api.Pool.map)           (feeder.Feeder)       (engines/process)        (tasks._WorkerLoop)
    -------------            ---------------       -----------------        -------------------
    MapJob(func, items) ---> takes items with
    MapResult (a MapSink)    bounded look-ahead,
                             cuts chunks, pickles
                             them (Task) -------> Engine.dispatch(tasks)
                                                  ResultSink.claim()
                                                  writes the frame  ------> reads, unpickles,
                                                                            runs the chunk,
                                                  reads the result  <------ pickles the result
                                                  ResultSink.complete_chunk(index, outcome)
    MapResult.get()  <--------------------------- (a MapSink: outcomes by chunk index)
    unpickles, in order      MapSink.set_length(chunks) once the items run out

Results flow one way: a part calls the named methods of the next part's
interface below, never another module's private methods. The thread and Dask
engines implement :class:`Engine` too and deliver to the same sinks, so
``ThreadPool`` and ``serentak.distributed.Pool`` share the API, the feeder and
the results with ``Pool``. The front ends built over a ``Pool`` (``AsyncPool``,
``ProcessPoolExecutor``) submit their calls through ``api.Submitter``.

A dead worker: the supervisor sees its sentinel, fails the tasks it held
through ``complete_chunk`` with ``WorkerLostError``, and starts another.

An apply takes a shorter path while tasks are short: the caller's thread
dispatches its task itself when the supervisor thread is asleep, and in
``get()`` reads the worker's reply itself (``Supervisor.collect``: the same
``complete_chunk``, in the caller's thread), so no thread is woken up::

    caller thread (apply_async, then get)                worker process
    -------------------------------------                --------------
    dispatch(task): writes the frame  ---------------->  runs it
    collect(): polls the worker's connection
    (muted in the supervisor's selector), reads  <-----  the result
    ApplyResult.complete_chunk(0, outcome); get() returns
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from serentak._pool.engines.process import PoolStats
    from serentak._pool.results import Outcome
    from serentak._pool.tasks import Function, Task


class Engine(Protocol):
    """What runs a pool's tasks. Holds no reference to the pool, so that a pool
    dropped while running can be collected and its finalizer stop the engine."""

    @property
    def kills_overdue_tasks(self) -> bool:
        """Whether ``timeout=`` can be enforced (a thread cannot be stopped)."""

    @property
    def retries_tasks(self) -> bool:
        """Whether ``retries=`` can be honoured."""

    @property
    def limits_memory(self) -> bool:
        """Whether ``memory_limit=`` can be enforced on a running task."""

    def function(self, func: Callable[..., Any]) -> Function:
        """``func`` as workers receive it."""

    def encode(self, obj: Any) -> Any:
        """A task's arguments as workers receive them."""

    def dispatch(self, tasks: Sequence[Task]) -> None:
        """Run ``tasks``, started in this order (thread-safe; returns at once)."""

    def close(self) -> None:
        """No more tasks: stop the workers once the queued ones are done."""

    def terminate(self) -> None:
        """Fail every unfinished task and stop the workers, now; return when stopped."""

    def join(self) -> None:
        """Wait until the workers have stopped."""

    def stats(self) -> PoolStats:
        """What the workers did so far."""


class ResultSink(Protocol):
    """Where a task's outcome goes: a result object, a map job, a future."""

    def claim(self) -> bool:
        """Called just before the task is handed to a worker; False drops it (cancelled)."""

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        """The task at position ``index`` ended with ``outcome`` after ``busy_us`` of work."""


class MapSink(ResultSink, Protocol):
    """What a map's chunks are delivered to: it learns the count when feeding ends."""

    def set_length(self, chunks: int) -> None:
        """The map had ``chunks`` chunks in all (known once the input is exhausted)."""
