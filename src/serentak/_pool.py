"""``Pool``: the stdlib's API on an engine that never hangs.

::

    caller threads                 feeder thread                 manager thread (_manager.py)
    --------------                 -------------                 --------------
    apply_async: pickle args  ---------------------------------> Submit(task)
    map / imap / starmap:
      a MapJob  ---------------->  pull chunks from the input,
                                   pickle them, at most `window`
                                   ahead of what was consumed ->  Submit(tasks)
    close()  ------------------->  after the last job  -------->  Close
    terminate()  ----------------------------------------------> Terminate
    get() / next(): unpickle results  <--------------------------  outcomes

Pickling happens in the caller's thread or the feeder's, never in the manager
thread, and so do the user's iterables: a slow generator never stalls the
movement of results. Input is consumed with bounded look-ahead, so
``imap(f, itertools.count())`` runs in constant memory.
"""

from __future__ import annotations

import collections
import itertools
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

from ._exceptions import PoolTerminatedError
from ._manager import Close, Function, Manager, PoolState, Submit, Task, Terminate
from ._process import BaseProcess
from ._results import (
    ApplyResult,
    CallbackRunner,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
    Outcome,
    ResultSink,
)
from ._serialize import dumps
from ._tasks import Kind

_T = TypeVar("_T")
_P = TypeVar("_P", bound="Pool")
# Registered callables a pool keeps pickled (by identity); a program that makes
# a new lambda per call does not grow the cache past this.
FUNCTION_CACHE: Final = 256


class _FunctionRegistry:
    """Callables pickled once per pool. Shared by the submitting threads (its own lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(func) -> (func, Function): the strong reference keeps the id valid.
        self._entries: collections.OrderedDict[int, tuple[Any, Function]] = (
            collections.OrderedDict()
        )
        self._ids = itertools.count(1)

    def register(self, func: Callable[..., Any]) -> Function:
        key = id(func)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is func:
                self._entries.move_to_end(key)
                return entry[1]
        function = Function(next(self._ids), dumps(func))  # outside the lock: may be slow
        with self._lock:
            self._entries[key] = (func, function)
            if len(self._entries) > FUNCTION_CACHE:
                self._entries.popitem(last=False)
        return function


class _MapJob:
    """One map-family call being fed: its input, chunked, and how far ahead it may go.

    Look-ahead is counted in chunks submitted and not yet released. A map
    releases a chunk when its result arrives; an imap when the caller consumes
    it, so an unread imap stops pulling its input (until the pool is closed:
    then, as in the stdlib, everything is computed so that join() returns).
    An imap whose iterator the caller dropped is abandoned.
    """

    def __init__(
        self,
        feeder: _Feeder,
        kind: Kind,
        function: Function,
        chunks: Iterator[list[Any]],
        sink: ResultSink,
        timeout: float | None,
        window: int,
        *,
        lazy: bool,
    ) -> None:
        self.feeder = feeder
        self.kind = kind
        self.function = function
        self.chunks = chunks
        self.timeout = timeout
        self.window = window
        self.lazy = lazy
        self.submitted = 0
        self.released = 0
        self.completed = 0
        self._strong_sink: ResultSink | None = None
        self._weak_sink: weakref.ref[Any] | None = None
        if lazy:
            self._weak_sink = weakref.ref(sink, lambda _: feeder.wake())
        else:
            self._strong_sink = sink

    @property
    def sink(self) -> ResultSink | None:
        """Where outcomes go; None once the caller dropped its imap iterator."""
        if self._weak_sink is not None:
            sink: ResultSink | None = self._weak_sink()
            return sink
        return self._strong_sink

    def consumed(self) -> None:
        """The caller consumed a chunk's result (imap)."""
        self.feeder.release(self, consumed=True)

    def _complete_chunk(self, index: int, outcome: Outcome) -> None:
        sink = self.sink
        if sink is not None:
            sink._complete_chunk(index, outcome)
        self.feeder.release(self, consumed=False)


class _Feeder:
    """The thread that turns map inputs into pickled tasks, round-robin across calls."""

    def __init__(self, manager: Manager, next_task_id: Callable[[], int]) -> None:
        self._manager = manager
        self._next_task_id = next_task_id
        self._condition = threading.Condition()
        self._jobs: collections.deque[_MapJob] = collections.deque()
        self._closing = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="serentak-pool-feeder", daemon=True)
        self._thread.start()

    def add(self, job: _MapJob) -> None:
        with self._condition:
            self._jobs.append(job)
            self._condition.notify()

    def release(self, job: _MapJob, *, consumed: bool) -> None:
        """A chunk of ``job`` completed (consumed=False) or was consumed (True)."""
        with self._condition:
            if consumed:
                job.released += 1
            else:
                job.completed += 1
            self._condition.notify()

    def wake(self) -> None:
        with self._condition:
            self._condition.notify()

    def _may_feed(self, job: _MapJob) -> bool:
        # A map releases on completion; an imap on consumption, or on
        # completion once the pool is closing (nobody may read before join()).
        released = job.released if job.lazy and not self._closing else job.completed
        return job.sink is None or job.submitted - released < job.window

    def close(self) -> None:
        """Feed what was added, then tell the manager no more tasks will come."""
        with self._condition:
            self._closing = True
            self._condition.notify()

    def stop(self) -> None:
        """Abandon the jobs (terminate): their unsent chunks fail."""
        with self._condition:
            self._stopped = True
            self._condition.notify()

    def join(self) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _next_job(self) -> _MapJob | None:
        """The next job allowed to feed a chunk; None when the feeder should exit."""
        with self._condition:
            while True:
                if self._stopped:
                    return None
                for _ in range(len(self._jobs)):
                    job = self._jobs[0]
                    self._jobs.rotate(-1)
                    if self._may_feed(job):
                        return job
                if not self._jobs and self._closing:
                    return None
                self._condition.wait()

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            self._feed_one(job)
        with self._condition:
            abandoned = list(self._jobs)
            self._jobs.clear()
        reason = PoolTerminatedError("the pool was terminated before the task was sent")
        for job in abandoned:
            self._finish(job, failure=reason)
        if not self._stopped:
            self._manager.send(Close())

    def _feed_one(self, job: _MapJob) -> None:
        sink = job.sink
        if sink is None:
            self._finish(job)  # the caller dropped its imap iterator
            return
        index = job.submitted
        try:
            chunk = next(job.chunks)
        except StopIteration:
            self._finish(job)
            return
        except BaseException as exc:  # the user's iterable raised: that position fails
            job.submitted += 1
            sink._complete_chunk(index, Outcome.of_exception(exc))
            self._finish(job)
            return
        job.submitted += 1
        try:
            payload = dumps(chunk)
        except BaseException as exc:
            job._complete_chunk(index, Outcome.of_exception(exc))
            return
        task = Task(self._next_task_id(), job.kind, job.function, payload, job, index, job.timeout)
        self._manager.send(Submit((task,)))

    def _finish(self, job: _MapJob, failure: BaseException | None = None) -> None:
        with self._condition:
            if job in self._jobs:
                self._jobs.remove(job)
        sink = job.sink
        if sink is None:
            return
        if failure is not None:
            sink._complete_chunk(job.submitted, Outcome.of_exception(failure))
            job.submitted += 1
        if isinstance(sink, IMapIterator):
            sink._set_length(job.submitted)


def _chunks(iterable: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _default_chunksize(length: int, processes: int) -> int:
    """The stdlib's rule for map(): about four chunks per worker."""
    chunksize, extra = divmod(length, processes * 4)
    return chunksize + 1 if extra else max(chunksize, 1)


class Pool:
    """A pool of worker processes: the stdlib's ``multiprocessing.Pool`` API.

    Args:
        processes: number of workers; by default ``os.cpu_count()``.
        initializer: called with ``initargs`` in each worker when it starts.
        initargs: arguments for ``initializer``.
        maxtasksperchild: tasks (chunks) a worker runs before it is replaced.
        context: the context (start method) to start workers with.

    Raises:
        ValueError: ``processes`` < 1 or ``maxtasksperchild`` < 1.
        TypeError: ``initializer`` is not callable.

    Beyond the stdlib: a worker that dies fails only the task it was running
    (:class:`serentak.WorkerLostError`), is replaced, and every other result
    arrives; ``timeout=`` on the submitting methods bounds how long one task
    may run (for chunked maps, one chunk), after which its worker is killed
    and the task fails with :class:`serentak.TimeoutError`.
    """

    _Process: Callable[..., BaseProcess] | None = None

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
    ) -> None:
        from ._context import default_context

        ctx = context if context is not None else default_context.get_context()
        if processes is None:
            processes = ctx.cpu_count()
        if not isinstance(processes, int) or processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or maxtasksperchild < 1
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        self._ctx = ctx
        self._task_ids = itertools.count(1)
        self._functions = _FunctionRegistry()
        self._callbacks = CallbackRunner()
        self._state = PoolState.RUN
        self._state_lock = threading.Lock()
        process_class = ctx.Process
        worker_names = itertools.count(1)

        def make_process(target: Callable[..., object], args: tuple[Any, ...]) -> BaseProcess:
            process: BaseProcess = process_class(target=target, args=args, daemon=True)
            process.name = process.name.rsplit("-", 1)[0].replace("Process", "PoolWorker")
            process.name += f"-{next(worker_names)}"
            return process

        self._manager = Manager(make_process, processes, initializer, initargs, maxtasksperchild)
        self._manager.start()
        self._feeder = _Feeder(self._manager, self._next_task_id)
        # A pool dropped while running is terminated, not leaked.
        self._finalizer = weakref.finalize(self, _terminate, self._manager, self._feeder)

    # ---- lifecycle ------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state is not PoolState.RUN:
            raise ValueError("Pool not running")

    def close(self) -> None:
        """Accept no more tasks; the workers exit once the queued ones are done."""
        with self._state_lock:
            if self._state is PoolState.RUN:
                self._state = PoolState.CLOSE
                self._feeder.close()

    def terminate(self) -> None:
        """Stop the workers now; unfinished tasks fail with PoolTerminatedError."""
        with self._state_lock:
            self._state = PoolState.TERMINATE
        self._finalizer()
        self._callbacks.drain()

    def join(self) -> None:
        """Wait for the workers to exit (after close() or terminate()).

        Raises:
            ValueError: the pool is still running.
        """
        if self._state is PoolState.RUN:
            raise ValueError("Pool is still running")
        self._feeder.join()
        self._manager.join()
        self._callbacks.drain()
        self._callbacks.stop()

    def __enter__(self: _P) -> _P:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        name = f"{type(self).__module__}.{type(self).__qualname__}"
        return f"<{name} state={self._state.value} pool_size={self._processes}>"

    def _next_task_id(self) -> int:
        return next(self._task_ids)

    # ---- apply ------------------------------------------------------------------------

    def apply(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> _T:
        """Call ``func(*args, **kwds)`` in a worker and return its result."""
        result: _T = self.apply_async(func, args, kwds, timeout=timeout).get()
        return result

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
    ) -> ApplyResult:
        """Call ``func(*args, **kwds)`` in a worker; return an AsyncResult at once.

        Args:
            func: the callable (lambdas and ``__main__`` functions go by value).
            args: positional arguments.
            kwds: keyword arguments.
            callback: called with the result, in a pool thread, once it succeeds.
            error_callback: called with the exception if the task fails.
            timeout: seconds the task may run before its worker is killed.
        """
        self._check_running()
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        result = ApplyResult(callback, error_callback, self._callbacks)
        try:
            function = self._functions.register(func)
            payload = dumps((tuple(args), dict(kwds or {})))
        except BaseException as exc:  # this task alone fails, as the stdlib reports it
            result._complete_chunk(0, Outcome.of_exception(exc))
            return result
        task = Task(self._next_task_id(), Kind.APPLY, function, payload, result, 0, timeout)
        self._manager.send(Submit((task,)))
        return result

    # ---- map family --------------------------------------------------------------------

    def map(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
    ) -> list[_T]:
        """``list(map(func, iterable))``, computed by the workers."""
        result: list[_T] = self._map_async(Kind.MAP, func, iterable, chunksize, timeout).get()
        return result

    def starmap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
    ) -> list[_T]:
        """Like map(), with each item unpacked as the arguments: ``func(*item)``."""
        result: list[_T] = self._map_async(Kind.STARMAP, func, iterable, chunksize, timeout).get()
        return result

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
    ) -> MapResult:
        """Like map(), returning an AsyncResult at once."""
        return self._map_async(
            Kind.MAP, func, iterable, chunksize, timeout, callback, error_callback
        )

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
    ) -> MapResult:
        """Like starmap(), returning an AsyncResult at once."""
        return self._map_async(
            Kind.STARMAP, func, iterable, chunksize, timeout, callback, error_callback
        )

    def imap(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any],
        chunksize: int = 1,
        *,
        timeout: float | None = None,
    ) -> IMapIterator:
        """A lazy map(): results in order as they come, the input read with bounded look-ahead."""
        return self._imap(IMapIterator, func, iterable, chunksize, timeout)

    def imap_unordered(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any],
        chunksize: int = 1,
        *,
        timeout: float | None = None,
    ) -> IMapIterator:
        """Like imap(), results in the order they complete."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, timeout)

    def _map_async(
        self,
        kind: Kind,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult:
        self._check_running()
        function = self._register(func)
        items = iterable if isinstance(iterable, Sequence) else list(iterable)
        if chunksize is None:
            chunksize = _default_chunksize(len(items), self._processes)
        elif not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        count = (len(items) + chunksize - 1) // chunksize
        result = MapResult(count, callback, error_callback, self._callbacks)
        if count:
            self._add_job(kind, function, _chunks(items, chunksize), result, timeout, lazy=False)
        return result

    def _imap(
        self,
        iterator_class: type[IMapIterator],
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int,
        timeout: float | None,
    ) -> IMapIterator:
        self._check_running()
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        function = self._register(func)
        result = iterator_class(self._callbacks)
        result._job = self._add_job(
            Kind.MAP, function, _chunks(iterable, chunksize), result, timeout, lazy=True
        )
        return result

    def _register(self, func: Callable[..., Any]) -> Function:
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        return self._functions.register(func)

    def _add_job(
        self,
        kind: Kind,
        function: Function,
        chunks: Iterator[list[Any]],
        sink: ResultSink,
        timeout: float | None,
        *,
        lazy: bool,
    ) -> _MapJob:
        # Enough chunks ahead to keep every worker busy with some to spare.
        window = 4 * self._processes + 4
        job = _MapJob(self._feeder, kind, function, chunks, sink, timeout, window, lazy=lazy)
        self._feeder.add(job)
        return job


def _terminate(manager: Manager, feeder: _Feeder) -> None:
    feeder.stop()
    manager.send(Terminate())
    feeder.join()
    manager.join()
