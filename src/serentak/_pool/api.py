"""``Pool``: the stdlib's API on an engine that never hangs.

::

    caller threads                 feeder thread (_feeder.py)       engine
    --------------                 -------------                    ------
    apply_async: encode args  -------------------------------->    dispatch(task)
    map / imap / starmap:
      a MapJob  ---------------->  chunks, encoded, with
                                   bounded look-ahead  --------->    dispatch(task)
    close()  ------------------->  after the last job  --------->    close()
    terminate()  --------------------------------------------->    terminate()
    get() / next(): decode results  <-----------------------------   outcomes

:class:`BasePool` is the API; an engine runs the tasks. :class:`Pool`'s engine
is the supervisor thread of ``engines/process.py`` and worker processes (tasks pickled
in the caller's or the feeder's thread, never in the supervisor's);
``ThreadPool``'s is a set of threads (nothing pickled).
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import Any, ClassVar, Final, TypeVar

from serentak._ipc.buffers import Packed, pack
from serentak._ipc.serialize import dumps
from serentak._os import waiting as _waiting
from serentak._process.process import BaseProcess, register_before_exit

from .engines.process import (
    AskStats,
    CancelRunning,
    Close,
    PoolState,
    PoolStats,
    StopWorkers,
    Submit,
    Supervisor,
    Terminate,
    _Worker,
)
from .feeder import Chunker, ChunkTimes, Feeder, MapJob, progress_bar
from .interfaces import Engine, MapSink, ResultSink
from .journal import Journal, JournalSink, item_digest
from .options import CallOptions, Errors
from .results import (
    ApplyResult,
    CallbackRunner,
    Cancel,
    Collect,
    IMapIterator,
    IMapUnorderedIterator,
    ItemError,
    MapResult,
    Outcome,
)
from .seeding import Indexed, IndexedCall
from .tasks import Function, ItemFailed, Kind, Task, WorkerOptions

_T = TypeVar("_T")
ProgressOption = bool | Mapping[str, Any] | None
_P = TypeVar("_P", bound="BasePool")
# Callables a pool keeps pickled (by identity); a program that makes a new
# lambda per call does not grow the cache past this.
FUNCTION_CACHE: Final = 256


class FunctionRegistry:
    """Callables pickled once per pool. Shared by the submitting threads (its own lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(func) -> (func, Function): the strong reference keeps the id valid.
        self._entries: collections.OrderedDict[int, tuple[Any, Function]] = (
            collections.OrderedDict()
        )
        self._ids = itertools.count(1)

    def register(self, func: Callable[..., Any]) -> Function:
        """``func`` pickled, once per pool for as long as it stays in the cache."""
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


class ProcessEngine:
    """Worker processes behind a supervisor thread: see ``engines/process.py``."""

    kills_overdue_tasks = True
    retries_tasks = True
    limits_memory = True

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._functions = FunctionRegistry()

    def function(self, func: Callable[..., Any]) -> Function:
        return self._functions.register(func)

    def encode(self, obj: Any) -> Packed:
        return pack(obj)

    def dispatch(self, tasks: Sequence[Task]) -> None:
        self._supervisor.send(Submit(tuple(tasks)))

    def close(self) -> None:
        self._supervisor.send(Close())

    def terminate(self) -> None:
        self._supervisor.send(Terminate())
        self._supervisor.join()

    def join(self) -> None:
        _waiting.join(self._supervisor)

    def cancel_running(self, sink: object) -> None:
        """Kill the workers running ``sink``'s tasks (their caller gave up); they are replaced."""
        self._supervisor.send(CancelRunning(sink))

    def stop_workers(self, *, kill: bool) -> None:
        """SIGTERM (SIGKILL with ``kill``) the current workers; they are replaced."""
        reply: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._supervisor.send(StopWorkers(kill, reply))
        reply.get()

    def stats(self) -> PoolStats:
        reply: queue.SimpleQueue[PoolStats] = queue.SimpleQueue()
        self._supervisor.send(AskStats(reply))
        return reply.get()


def _shutdown(engine: Engine, feeder: Feeder) -> None:
    feeder.stop()
    engine.terminate()
    feeder.join()


def _complete(result: ApplyResult | IMapIterator) -> bool:
    if isinstance(result, IMapIterator):
        return result.all_arrived()
    return result.ready()


class PoolWorker:
    """One of a Pool's worker processes, as the stdlib's ``pool._pool`` lists them.

    Read-only: the pool's supervisor thread owns the process (it reaps and
    replaces it), so this tells only its name and pid, and whether it is
    alive: until the pool has seen it end.
    """

    __slots__ = ("_worker", "name", "pid")

    def __init__(self, worker: _Worker) -> None:
        self._worker = worker
        self.name: str = worker.process.name
        self.pid: int = worker.pid

    def is_alive(self) -> bool:
        """Whether the worker runs (False once the pool has seen it end)."""
        return not self._worker.gone

    def __repr__(self) -> str:
        state = "started" if self.is_alive() else "stopped"
        return f"<PoolWorker name={self.name!r} pid={self.pid} {state}>"


class BasePool:
    """The stdlib's Pool API over an engine.

    Args:
        engine: what runs the tasks.
        processes: how many workers the engine has.
    """

    # Called with a result object whose caller a Ctrl-C interrupted, where the
    # engine can cancel that call's tasks and the pool lives on (Dask's). The
    # process pool's workers ignore SIGINT; its caller's ``with`` terminates them.
    _cancel_hook: Cancel | None = None
    # Reads an apply's reply in the thread that waits for it (engines that can).
    _collector: Collect | None = None

    def __init__(self, engine: Engine, processes: int, defaults: CallOptions | None = None) -> None:
        self._engine = engine
        self._processes = processes
        self._defaults = defaults or CallOptions()
        self._check_options(self._defaults)
        # What _options gives a call that sets none of them: computed once, as
        # apply_async() on the hot path of a round trip asks for it every time.
        self._plain_options = CallOptions.of(self._defaults)
        self._task_ids = itertools.count(1)
        self._callbacks = CallbackRunner()
        self._state = PoolState.RUN
        self._state_lock = threading.Lock()
        self._feeder = Feeder(engine.dispatch, engine.encode, self._task_ids.__next__, engine.close)
        # How long the last map of each function took per chunk: the next map of it
        # starts with chunks of the right size.
        self._chunk_times = ChunkTimes()
        # Every result handed out, weakly (a task in flight holds its result), for _cache.
        self._results: weakref.WeakValueDictionary[int, ApplyResult | IMapIterator] = (
            weakref.WeakValueDictionary()
        )
        self._results_lock = threading.Lock()
        self._result_ids = itertools.count(1)
        # A pool dropped while running is stopped, not leaked.
        self._finalizer = weakref.finalize(self, _shutdown, engine, self._feeder)

    # ---- lifecycle ------------------------------------------------------------------

    def _check_running(self, timeout: float | None = None) -> None:
        if self._state is not PoolState.RUN:
            raise ValueError("Pool not running")
        if timeout is not None:
            if not self._engine.kills_overdue_tasks:
                raise ValueError(f"{type(self).__name__} cannot stop a running task: no timeout=")
            if timeout <= 0:
                raise ValueError(f"timeout must be positive, got {timeout!r}")

    def _check_options(self, options: CallOptions) -> None:
        what = type(self).__name__
        if options.retry is not None and not self._engine.retries_tasks:
            raise ValueError(f"{what} cannot run tasks again: no retries= (see the README)")
        if options.memory_limit is not None and not self._engine.limits_memory:
            raise ValueError(
                f"{what} cannot stop a task at a memory limit: no memory_limit= (see the README)"
            )

    def _options(self, **given: Any) -> CallOptions:
        """A call's long-job options, checked, over the pool's defaults."""
        if "errors" not in given and all(value is None for value in given.values()):
            return self._plain_options
        options = CallOptions.of(self._defaults, **given)
        self._check_options(options)
        return options

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
        # The engine stops only once the feeder has closed it (or it was terminated),
        # so the engine's join does the waiting, in spans in the main thread (see
        # _waiting), and the feeder's then returns at once.
        self._engine.join()
        self._feeder.join()
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

    @property
    def _cache(self) -> dict[int, ApplyResult | IMapIterator]:
        """The results not yet complete, by submission number: a snapshot, falsy once
        every result handed out has completed (the stdlib's ``pool._cache``, read by
        programs written for it, its own documentation's example among them)."""
        with self._results_lock:
            results = list(self._results.items())
            for key, result in results:
                if _complete(result):
                    del self._results[key]
            return {key: result for key, result in results if key in self._results}

    def _track(self, result: ApplyResult | IMapIterator) -> None:
        with self._results_lock:
            self._results[next(self._result_ids)] = result

    # ---- apply ------------------------------------------------------------------------

    def apply(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        retry_on: Any = None,
        backoff: float | None = None,
        memory_limit: int | str | None = None,
    ) -> _T:
        """Call ``func(*args, **kwds)`` in a worker and return its result."""
        result: _T = self.apply_async(
            func,
            args,
            kwds,
            timeout=timeout,
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            memory_limit=memory_limit,
        ).get()
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
        retries: int | None = None,
        retry_on: Any = None,
        backoff: float | None = None,
        memory_limit: int | str | None = None,
    ) -> ApplyResult:
        """Call ``func(*args, **kwds)`` in a worker; return an AsyncResult at once.

        Args:
            func: the callable (lambdas and ``__main__`` functions go by value).
            args: positional arguments.
            kwds: keyword arguments.
            callback: called with the result, in a pool thread, once it succeeds.
            error_callback: called with the exception if the task fails.
            timeout: seconds the task may run before its worker is killed.
            retries: times the task runs again if it fails with one of
                ``retry_on`` (by default: its worker died, or it timed out).
            retry_on: exception classes worth running the task again for.
            backoff: seconds before the first retry, doubling for each next one.
            memory_limit: resident memory its worker may reach while it runs
                ("1GiB", or bytes), not counting the warm segments it keeps for
                reuse; past it the task fails with MemoryLimitError.
        """
        self._check_running(timeout)
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        options = self._options(
            retries=retries, retry_on=retry_on, backoff=backoff, memory_limit=memory_limit
        )
        result = ApplyResult(callback, error_callback, self._callbacks)
        result.cancel_hook = self._cancel_hook
        result.collector = self._collector
        self._track(result)
        self._apply_to(result, func, args, kwds, timeout, options)
        return result

    def _apply_to(
        self,
        sink: ResultSink,
        func: Callable[..., Any],
        args: Iterable[Any],
        kwds: Mapping[str, Any] | None,
        timeout: float | None,
        options: CallOptions | None = None,
    ) -> None:
        """Run ``func(*args, **kwds)``; its outcome goes to ``sink``."""
        options = options or self._defaults
        try:
            function = self._engine.function(func)
            payload = self._engine.encode((tuple(args), dict(kwds or {})))
        except BaseException as exc:  # this task alone fails, as the stdlib reports it
            sink.complete_chunk(0, Outcome.of_exception(exc))
            return
        task_id = next(self._task_ids)
        task = Task.encoded(
            task_id,
            Kind.APPLY,
            function,
            payload,
            sink,
            0,
            timeout,
            retry=options.retry,
            memory_limit=options.memory_limit,
        )
        self._engine.dispatch((task,))

    # ---- map family --------------------------------------------------------------------

    def map(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        retries: int | None = None,
        retry_on: Any = None,
        backoff: float | None = None,
        memory_limit: int | str | None = None,
        seed: int | None = None,
        errors: str = "raise",
        journal: str | os.PathLike[str] | None = None,
    ) -> list[_T]:
        """``list(map(func, iterable))``, computed by the workers.

        Args:
            func: the callable, given each item.
            iterable: the items.
            chunksize: items per task; by default sized from measured task
                time (tens of milliseconds of work per chunk).
            timeout: seconds one task may run (one chunk, if chunksize is
                given; without one, items then go one per task).
            progress: True, or a dict of tqdm options, for a progress bar.
            retries: times a task (a chunk) runs again if it fails with one of
                ``retry_on`` (by default: its worker died, or it timed out).
            retry_on: exception classes worth running a task again for.
            backoff: seconds before the first retry, doubling for each next one.
            memory_limit: resident memory a worker may reach while it runs a
                task ("1GiB", or bytes), not counting the warm segments it
                keeps for reuse; past it the task fails with
                :class:`serentak.MemoryLimitError` and the worker is replaced.
            seed: each item's ``serentak.task_rng()`` stream is derived from
                it and the item's index.
            errors: "raise" (the first failure raises) or "return" (each
                failed item's exception is returned in its place).
            journal: a file the results are appended to as they arrive; the
                same call with the same journal later runs only the items
                it does not hold.

        Raises:
            ValueError: a bad option, or a journal of another function or other inputs.
            TypeError: a bad option type.
        """
        values: list[_T] = self._map(
            Kind.MAP, func, iterable, chunksize, timeout, progress, journal,
            retries=retries, retry_on=retry_on, backoff=backoff,
            memory_limit=memory_limit, seed=seed, errors=errors,
        )  # fmt: skip
        return values

    def starmap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        retries: int | None = None,
        retry_on: Any = None,
        backoff: float | None = None,
        memory_limit: int | str | None = None,
        seed: int | None = None,
        errors: str = "raise",
        journal: str | os.PathLike[str] | None = None,
    ) -> list[_T]:
        """Like map(), with each item unpacked as the arguments: ``func(*item)``."""
        values: list[_T] = self._map(
            Kind.STARMAP, func, iterable, chunksize, timeout, progress, journal,
            retries=retries, retry_on=retry_on, backoff=backoff,
            memory_limit=memory_limit, seed=seed, errors=errors,
        )  # fmt: skip
        return values

    def map_async(
        self,
        func: Callable[[Any], Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        retries: int | None = None,
        retry_on: Any = None,
        backoff: float | None = None,
        memory_limit: int | str | None = None,
        seed: int | None = None,
    ) -> MapResult:
        """Like map(), returning an AsyncResult at once."""
        options = self._options(
            retries=retries, retry_on=retry_on, backoff=backoff,
            memory_limit=memory_limit, seed=seed,
        )  # fmt: skip
        return self._map_async(
            Kind.MAP, func, iterable, chunksize, timeout, progress, options,
            callback, error_callback,
        )  # fmt: skip

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        retries: int | None = None,
        retry_on: Any = None,
        backoff: float | None = None,
        memory_limit: int | str | None = None,
        seed: int | None = None,
    ) -> MapResult:
        """Like starmap(), returning an AsyncResult at once."""
        options = self._options(
            retries=retries, retry_on=retry_on, backoff=backoff,
            memory_limit=memory_limit, seed=seed,
        )  # fmt: skip
        return self._map_async(
            Kind.STARMAP, func, iterable, chunksize, timeout, progress, options,
            callback, error_callback,
        )  # fmt: skip

    def imap(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        buffersize: int | None = None,
        buffer_bytes: int | None = None,
        retries: int | None = None,
        retry_on: Any = None,
        backoff: float | None = None,
        memory_limit: int | str | None = None,
        seed: int | None = None,
        journal: str | os.PathLike[str] | None = None,
    ) -> IMapIterator:
        """A lazy map(): results in order as they come, the input read with bounded look-ahead.

        Args:
            func: the callable, given each item.
            iterable: the items; read only as far as the look-ahead allows.
            chunksize: items per task (with ``buffersize`` and no chunksize, 1).
            timeout: seconds one task may run.
            progress: True, or a dict of tqdm options, for a progress bar.
            buffersize: at most this many tasks submitted and not yet read
                (Python 3.15's ``buffersize``); by default a few per worker.
            buffer_bytes: at most about this many pickled input bytes
                submitted and not yet read (one task always goes, however big).
            retries, retry_on, backoff, memory_limit, seed: as for :meth:`map`.
            journal: as for :meth:`map`; the input is then read whole and the
                call returns once every result is in the journal (a journal
                holds whole runs, not streams).

        Raises:
            ValueError: ``buffersize`` or ``buffer_bytes`` is not positive, or a bad option.
        """
        options = self._options(
            retries=retries, retry_on=retry_on, backoff=backoff,
            memory_limit=memory_limit, seed=seed,
        )  # fmt: skip
        if journal is not None:
            return self._journaled_iterator(
                func, iterable, chunksize, timeout, progress, options, journal
            )
        return self._imap(
            IMapIterator,
            Kind.MAP,
            func,
            iterable,
            chunksize,
            timeout,
            progress,
            buffersize,
            buffer_bytes,
            options=options,
        )

    def imap_unordered(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        buffersize: int | None = None,
        buffer_bytes: int | None = None,
        retries: int | None = None,
        retry_on: Any = None,
        backoff: float | None = None,
        memory_limit: int | str | None = None,
        seed: int | None = None,
        journal: str | os.PathLike[str] | None = None,
    ) -> IMapIterator:
        """Like imap(), results in the order they complete (with ``journal=``, as imap())."""
        options = self._options(
            retries=retries, retry_on=retry_on, backoff=backoff,
            memory_limit=memory_limit, seed=seed,
        )  # fmt: skip
        if journal is not None:
            return self._journaled_iterator(
                func, iterable, chunksize, timeout, progress, options, journal
            )
        return self._imap(
            IMapUnorderedIterator,
            Kind.MAP,
            func,
            iterable,
            chunksize,
            timeout,
            progress,
            buffersize,
            buffer_bytes,
            options=options,
        )

    def _map(
        self,
        kind: Kind,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        progress: ProgressOption,
        journal: str | os.PathLike[str] | None,
        **given: Any,
    ) -> list[Any]:
        """map() and starmap(): the results, in input order."""
        options = self._options(**given)
        if journal is not None:
            done = self._journaled(
                kind, func, iterable, chunksize, timeout, progress, options, journal
            )
            errors = [value.error for value in done if type(value) is ItemError]
            if errors and options.errors is Errors.RAISE:
                raise errors[0]
            return [value.error if type(value) is ItemError else value for value in done]
        values: list[Any] = self._map_async(
            kind, func, iterable, chunksize, timeout, progress, options
        ).get()
        if options.errors is Errors.RETURN:
            return [_returned(value) for value in values]
        return values

    def _map_async(
        self,
        kind: Kind,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        progress: ProgressOption,
        options: CallOptions,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult:
        self._check_running(timeout)
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        items = iterable if isinstance(iterable, Sequence) else list(iterable)
        if options.seed is not None:
            func = IndexedCall(func, options.seed, kind is Kind.STARMAP)
            items = Indexed(items)
            kind = Kind.MAP
        if options.errors is Errors.RETURN:
            # Each item fails alone; a chunk that fails whole fails each of its items.
            kind = Kind.STARMAP_EACH if kind is Kind.STARMAP else Kind.MAP_EACH
        function = self._register(func)
        result = MapResult(callback, error_callback, self._callbacks)
        result.cancel_hook = self._cancel_hook
        self._track(result)
        self._add_job(
            kind, function, items, len(items), chunksize, result, timeout, progress, False,
            options=options, here=True,
        )  # fmt: skip
        return result

    def _journaled(
        self,
        kind: Kind,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        progress: ProgressOption,
        options: CallOptions,
        path: str | os.PathLike[str],
    ) -> list[Any]:
        """A map whose results go to a journal; the items it holds are not run again.
        The results in input order, an :class:`ItemError` in place of each item that failed."""
        self._check_running(timeout)
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        items = iterable if isinstance(iterable, Sequence) else list(iterable)
        star = kind is Kind.STARMAP
        journal = Journal.open(path, func, star)
        try:
            journal.check(items)
            missing = [i for i in range(len(items)) if i not in journal.done]
            digests = {i: item_digest(items[i]) for i in missing}
            function = self._register(IndexedCall(func, options.seed, star))
            result = MapResult(None, None, self._callbacks)
            result.cancel_hook = self._cancel_hook
            sink = JournalSink(journal, result, digests)
            self._add_job(
                Kind.MAP_EACH, function, Indexed(items, missing), len(missing), chunksize, sink,
                timeout, progress, False, options=options, on_chunk=sink.chunk_fed,
            )  # fmt: skip
            new = iter(result.get())
        finally:
            journal.close()
        return [journal.done[i][1] if i in journal.done else next(new) for i in range(len(items))]

    def _journaled_iterator(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        progress: ProgressOption,
        options: CallOptions,
        path: str | os.PathLike[str],
    ) -> IMapIterator:
        """imap() with a journal: every result, in order, once all are in the journal."""
        values = self._journaled(
            Kind.MAP, func, iterable, chunksize, timeout, progress, options, path
        )
        result = IMapIterator(self._callbacks)
        result.complete_chunk(0, Outcome.of_value(values))
        result.set_length(1)
        return result

    def _imap(
        self,
        iterator_class: type[IMapIterator],
        kind: Kind,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        progress: ProgressOption,
        buffersize: int | None = None,
        buffer_bytes: int | None = None,
        *,
        options: CallOptions | None = None,
    ) -> IMapIterator:
        options = options or self._defaults
        self._check_running(timeout)
        check_buffer_bounds(buffersize, buffer_bytes)
        length = len(iterable) if isinstance(iterable, Sized) else None
        if options.seed is not None:
            func = IndexedCall(func, options.seed, kind is Kind.STARMAP)
            iterable = Indexed(iterable) if isinstance(iterable, Sequence) else enumerate(iterable)
            kind = Kind.MAP
        function = self._register(func)
        if chunksize is None and buffersize is not None:
            chunksize = 1  # the bound counts tasks: as the stdlib's imap, one item each
        if chunksize is None or options.errors is Errors.RETURN:
            # The stdlib's imap sends each item alone: one that raises costs itself
            # only. With adaptive chunks the worker keeps going past it instead.
            kind = Kind.STARMAP_EACH if kind is Kind.STARMAP else Kind.MAP_EACH
        result = iterator_class(self._callbacks, return_errors=options.errors is Errors.RETURN)
        result.cancel_hook = self._cancel_hook
        self._track(result)
        result.job = self._add_job(
            kind,
            function,
            iterable,
            length,
            chunksize,
            result,
            timeout,
            progress,
            True,
            buffersize,
            buffer_bytes,
            options=options,
        )
        return result

    def _register(self, func: Callable[..., Any]) -> Function:
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        return self._engine.function(func)

    def _add_job(
        self,
        kind: Kind,
        function: Function,
        items: Iterable[Any],
        length: int | None,
        chunksize: int | None,
        sink: MapSink,
        timeout: float | None,
        progress: ProgressOption,
        lazy: bool,
        buffersize: int | None = None,
        buffer_bytes: int | None = None,
        *,
        options: CallOptions | None = None,
        on_chunk: Callable[[int, Sequence[Any]], None] | None = None,
        here: bool = False,
    ) -> MapJob:
        """Start feeding a map-family call; with ``here``, the caller's thread feeds
        the first batch (see :meth:`Feeder.add`)."""
        options = options or self._defaults
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"Chunksize must be 1+, not {chunksize!r}")
        if chunksize is None and timeout is not None:
            chunksize = 1  # a timeout then bounds each item, as the caller surely meant
        chunker = Chunker(
            items, chunksize, length, self._processes, self._chunk_times, (function.func_id, kind)
        )
        # Enough chunks ahead to keep every worker busy with some to spare.
        window = 4 * self._processes + 4
        job = MapJob(
            self._feeder,
            kind,
            function,
            chunker,
            sink,
            timeout,
            window,
            lazy=lazy,
            progress=progress_bar(progress, length),
            buffersize=buffersize,
            buffer_bytes=buffer_bytes,
            retry=options.retry,
            memory_limit=options.memory_limit,
            on_chunk=on_chunk,
        )
        self._feeder.add(job, here=here)
        return job

    def stats(self) -> PoolStats:
        """Tasks done and failed per worker, their busy time, restarts: where the time went."""
        return self._engine.stats()


def _returned(value: Any) -> Any:
    """An item of an ``errors="return"`` map: a failure as its exception."""
    if type(value) is ItemFailed:
        return value.failure.to_exception()
    if type(value) is ItemError:
        return value.error
    return value


class Pool(BasePool):
    """A pool of worker processes: the stdlib's ``multiprocessing.Pool`` API.

    Args:
        processes: number of workers; by default ``os.cpu_count()``.
        initializer: called with ``initargs`` in each worker when it starts.
        initargs: arguments for ``initializer``.
        maxtasksperchild: tasks (chunks) a worker runs before it is replaced.
        context: the context (start method) to start workers with.
        max_memory_per_child: MiB of resident memory past which a worker,
            having finished its task, is replaced (nothing lost or repeated);
            past it with the warm segments it keeps for reuse only, it gives
            those back instead.
        retries, retry_on, backoff, memory_limit, seed: defaults for every
            call's options of those names (see :meth:`map`).

    Raises:
        ValueError: ``processes`` < 1 or ``maxtasksperchild`` < 1.
        TypeError: ``initializer`` is not callable.

    Beyond the stdlib: a worker that dies fails only the task it was running
    (:class:`serentak.WorkerLostError`), is replaced, and every other result
    arrives; ``timeout=`` on the submitting methods bounds how long one task
    may run (for chunked maps, one chunk), after which its worker is killed
    and the task fails with :class:`serentak.TimeoutError`.
    """

    # Daemonic workers, as the stdlib's Pool has: a task cannot start processes.
    # The executor's are not (as the stdlib's executor's, since 3.9).
    _daemonic_workers: ClassVar[bool] = True

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        max_memory_per_child: float | None = None,
        retries: int = 0,
        retry_on: Any = None,
        backoff: float = 0.0,
        memory_limit: int | str | None = None,
        seed: int | None = None,
    ) -> None:
        from serentak._context import default_context

        defaults = CallOptions.of(
            CallOptions(),
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            memory_limit=memory_limit,
            seed=seed,
        )
        ctx = context if context is not None else default_context.get_context()
        processes = check_pool_arguments(processes, initializer, maxtasksperchild, ctx.cpu_count)
        if max_memory_per_child is not None and max_memory_per_child <= 0:
            raise ValueError("max_memory_per_child must be a positive number of MiB or None")
        process_class = ctx.Process
        worker_names = itertools.count(1)
        environ = thread_limits(ctx.cpu_count(), processes)

        daemonic = self._daemonic_workers

        def make_process(target: Callable[..., object], args: tuple[Any, ...]) -> BaseProcess:
            process: BaseProcess = process_class(target=target, args=args, daemon=daemonic)
            # Either way a worker dies with this process: it is never left running alone.
            process._machinery = True
            prefix = process.name.rsplit("-", 1)[0].replace("Process", "PoolWorker")
            process.name = f"{prefix}-{next(worker_names)}"
            process._environ = environ
            return process

        # Polling for a while before sleeping pays only where nobody waits for the CPU.
        spin = processes <= ctx.cpu_count()
        options = WorkerOptions(max_memory_mb=max_memory_per_child, spin=spin)
        supervisor = Supervisor(
            make_process, processes, initializer, initargs, maxtasksperchild, options
        )
        supervisor.start()
        self._process_engine = ProcessEngine(supervisor)
        super().__init__(self._process_engine, processes, defaults)
        self._supervisor = supervisor
        self._collector = supervisor.collect
        if not daemonic:
            # This process's exit joins its non-daemonic children: stop the pool
            # first (as its finalizer would), or the exit would wait for ever.
            register_before_exit(self._finalizer)

    @property
    def _pool(self) -> list[PoolWorker]:
        """The worker processes, a snapshot (the stdlib's ``pool._pool``, read by
        programs written for it, its own documentation's example among them); each
        says whether it is alive. Empty once the pool has stopped."""
        return [PoolWorker(worker) for worker in self._supervisor.workers()]

    def _stop_workers(self, *, kill: bool) -> None:
        """SIGTERM (SIGKILL with ``kill``) every worker: each fails the task it runs
        and is replaced. For the executor's terminate_workers() / kill_workers()."""
        self._check_running()
        self._process_engine.stop_workers(kill=kill)


class Submitter:
    """The entry points serentak's other front ends over a :class:`Pool` (AsyncPool,
    ProcessPoolExecutor) submit work through, below the pool's public API: they
    call these, never the pool's private methods. Each is the pool's own bound
    method, so its signature is the pool's.

    Attributes:
        callbacks: the pool's callback thread (sinks of the front ends run theirs there).
        check_running: raises ValueError unless the pool takes work (and ``timeout``
            is one it can enforce).
        options: a call's long-job options, checked, over the pool's defaults.
        register: a callable as the workers receive it (TypeError if not callable).
        apply_to: runs one call; its outcome goes to a :class:`ResultSink`.
        add_job: starts feeding a map-family call into a :class:`MapSink`.
        imap: an imap-family call whose results an IMapIterator (sub)class yields.
        stop_workers: SIGTERM (SIGKILL with ``kill``) every worker; each is replaced.
        cancel_running: stops the running tasks of a sink (their workers are killed).
    """

    __slots__ = (
        "add_job",
        "apply_to",
        "callbacks",
        "cancel_running",
        "check_running",
        "imap",
        "options",
        "register",
        "stop_workers",
    )

    def __init__(self, pool: Pool) -> None:
        self.callbacks = pool._callbacks
        self.check_running = pool._check_running
        self.options = pool._options
        self.register = pool._register
        self.apply_to = pool._apply_to
        self.add_job = pool._add_job
        self.imap = pool._imap
        self.stop_workers = pool._stop_workers
        self.cancel_running = pool._process_engine.cancel_running


# Thread pools of numerical libraries: each worker gets cores // workers threads
# unless the user chose, so N workers running numpy do not oversubscribe.
THREAD_LIMIT_VARIABLES: Final = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def thread_limits(cores: int, workers: int) -> dict[str, str]:
    """The thread-limit variables a worker gets: the user's value where one is set,
    else ``cores // workers``. The user's goes too, as a fork server started before
    it was set would not pass it on."""
    threads = str(max(1, cores // workers))
    return {name: os.environ.get(name, threads) for name in THREAD_LIMIT_VARIABLES}


def check_buffer_bounds(buffersize: int | None, buffer_bytes: int | None) -> None:
    """Validate imap's look-ahead bounds, as Python 3.14's Executor.map checks buffersize.

    Raises:
        TypeError: a bound is not an int.
        ValueError: a bound is not positive.
    """
    for name, value in (("buffersize", buffersize), ("buffer_bytes", buffer_bytes)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer or None, not {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be None or > 0, got {value!r}")


def check_pool_arguments(
    processes: int | None,
    initializer: Callable[..., object] | None,
    maxtasksperchild: int | None,
    cpu_count: Callable[[], int],
) -> int:
    """Validate the constructor's arguments as the stdlib does; the worker count."""
    if processes is None:
        processes = cpu_count()
    if not isinstance(processes, int) or processes < 1:
        raise ValueError("Number of processes must be at least 1")
    if maxtasksperchild is not None and (
        not isinstance(maxtasksperchild, int) or maxtasksperchild < 1
    ):
        raise ValueError("maxtasksperchild must be a positive int or None")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be a callable")
    return processes
