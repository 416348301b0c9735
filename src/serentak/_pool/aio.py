"""``AsyncPool``: the process pool's asyncio face, on the same engine.

::

    event loop (one task per await)       feeder / supervisor threads        workers
    -------------------------------       ---------------------------        -------
    await pool.apply(f, args)  --------->  dispatch(task)  --------------->  f(*args)
       (an asyncio future)   <-- loop.call_soon_threadsafe(settle) <-------  outcome
    await pool.map(f, xs)  ------------->  MapJob: chunks, bounded look-ahead
    async for r in pool.imap(f, xs)  --->  (an async iterable's items are
       next(): releases a chunk             fetched from the loop, one at a time)

No thread per call: outcomes arrive in the supervisor thread (the feeder's, for
an input that raised), which only schedules a callback on the caller's loop;
unpickling happens there, in the loop, as a sync caller unpickles in its own
thread. Cancelling the awaiting task withdraws its tasks that have not reached
a worker; running ones finish and their results are dropped, or, with
``cancel_running=True``, their workers are killed (and replaced) at once.

Withdrawal needs no message: the supervisor asks a task's sink (``claim``)
before it hands the task to a worker, and ``Task.cancel()`` cancels the future
the task awaits synchronously, so a task cancelled is seen as withdrawn by the
supervisor from that instant, before the cancelled coroutine even resumes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import (
    AsyncIterable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    Sized,
)
from typing import Any, Generic, TypeVar

from .api import Pool, ProgressOption, Submitter, check_buffer_bounds
from .feeder import MapJob
from .results import Outcome
from .tasks import ItemFailed, Kind

_T = TypeVar("_T")

# How often a feeder thread waiting for an async iterable's next item checks
# whether the pool is stopping (the loop may be blocked in terminate(), waiting
# for that very thread).
_POLL_SECONDS = 0.05


def _running_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            f"{what} needs a running asyncio event loop: call it from a coroutine "
            "(e.g. under asyncio.run()), not from a thread without one; "
            "from synchronous code, use serentak.Pool"
        ) from None


def _call_in(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """Schedule ``callback`` on ``loop`` from any thread; dropped if the loop is closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more


class _ApplySink:
    """One apply's outcome, delivered to an asyncio future on its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()

    def claim(self) -> bool:
        # Read by the supervisor thread: the future is cancelled the moment the
        # awaiting task is (one attribute read under the GIL).
        return not self.future.cancelled()

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        _call_in(self.loop, self._settle, outcome)

    def _settle(self, outcome: Outcome) -> None:
        if self.future.done():
            return
        try:
            value = outcome.value()
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(value)


class _MapSink:
    """A map's chunks, gathered in the loop; the future resolves with the list or
    with the first chunk's failure."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[list[Any]] = loop.create_future()
        self._chunks: dict[int, Outcome] = {}
        self._length: int | None = None

    def claim(self) -> bool:
        # Only a cancelled map withdraws its chunks: the caller then abandons
        # the job, which ends its feeding (a failed one is fed to its end).
        return not self.future.cancelled()

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        _call_in(self.loop, self._arrive, index, outcome)

    def set_length(self, chunks: int) -> None:
        _call_in(self.loop, self._set_length, chunks)

    def _arrive(self, index: int, outcome: Outcome) -> None:
        if self.future.done():
            return
        if not outcome.ok:
            self._fail(outcome)
            return
        self._chunks[index] = outcome
        self._maybe_done()

    def _set_length(self, chunks: int) -> None:
        self._length = chunks
        self._maybe_done()

    def _fail(self, outcome: Outcome) -> None:
        try:
            outcome.value()
        except BaseException as exc:
            self.future.set_exception(exc)

    def _maybe_done(self) -> None:
        if self.future.done() or self._length is None or len(self._chunks) < self._length:
            return
        values: list[Any] = []
        for index in range(self._length):
            try:
                values.extend(self._chunks[index].value())
            except BaseException as exc:
                self.future.set_exception(exc)
                return
        self._chunks.clear()
        self.future.set_result(values)


class AsyncMapIterator(Generic[_T]):
    """What ``AsyncPool.imap`` returns: ``async for`` gives the results, in input
    order (``imap_unordered``: as they complete). The input is read only as far
    ahead as the look-ahead allows, from when the iteration starts."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        ordered: bool,
        cancel_running: Callable[[object], None] | None = None,
    ) -> None:
        self._loop = loop
        self._cancel_running = cancel_running
        self._ordered = ordered
        self._outcomes: dict[int, Outcome] = {}
        self._arrived: collections.deque[tuple[int, Outcome]] = collections.deque()
        self._next_chunk = 0
        self._length: int | None = None
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.job: MapJob | None = None

    # ---- the feeder's and the supervisor's side (any thread) ----------------------------

    def claim(self) -> bool:
        return True

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        _call_in(self._loop, self._arrive, index, outcome)

    def set_length(self, chunks: int) -> None:
        _call_in(self._loop, self._set_length, chunks)

    # ---- the loop's side ----------------------------------------------------------------

    def _arrive(self, index: int, outcome: Outcome) -> None:
        if self._ordered:
            self._outcomes[index] = outcome
        else:
            self._arrived.append((index, outcome))
        self._wake()

    def _set_length(self, chunks: int) -> None:
        self._length = chunks
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _take(self) -> tuple[int, Outcome] | None:
        if self._ordered:
            outcome = self._outcomes.pop(self._next_chunk, None)
            if outcome is None:
                return None
            self._next_chunk += 1
            return self._next_chunk - 1, outcome
        if not self._arrived:
            return None
        self._next_chunk += 1
        return self._arrived.popleft()

    def __aiter__(self) -> AsyncMapIterator[_T]:
        return self

    async def __anext__(self) -> _T:
        while not self._items:
            taken = self._take()
            if taken is None:
                if self._length is not None and self._next_chunk >= self._length:
                    raise StopAsyncIteration
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                except asyncio.CancelledError:
                    self.cancel()
                    raise
                continue
            index, outcome = taken
            if self.job is not None:
                self.job.consumed(index)
            self._items.extend(outcome.value())
        item = self._items.popleft()
        if type(item) is ItemFailed:
            raise item.failure.to_exception()
        result: _T = item
        return result

    def cancel(self) -> None:
        """Stop: no more input is read, and tasks not yet with a worker are dropped
        (with ``cancel_running``, the running ones are killed)."""
        if self.job is not None:
            self.job.abandon()
            if self._cancel_running is not None:
                self._cancel_running(self.job)


class _AsyncInput:
    """An async iterable read from the feeder thread: each item is fetched by
    ``__anext__`` on the caller's loop, one at a time, as the look-ahead asks."""

    def __init__(
        self, source: AsyncIterable[Any], loop: asyncio.AbstractEventLoop, stopping: threading.Event
    ) -> None:
        self._iterator = aiter(source)
        self._loop = loop
        self._stopping = stopping

    def __iter__(self) -> Iterator[Any]:
        while True:
            fetch = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            while True:
                if self._stopping.is_set() or self._loop.is_closed():
                    fetch.cancel()
                    return
                try:
                    done, item = fetch.result(_POLL_SECONDS)
                except concurrent.futures.TimeoutError:
                    continue
                break
            if done:
                return
            yield item

    async def _next(self) -> tuple[bool, Any]:
        try:
            return False, await anext(self._iterator)
        except StopAsyncIteration:
            return True, None


class AsyncPool:
    """A process pool for asyncio code: ``async with serentak.AsyncPool(4) as pool``.

    The workers, their fault handling and the options are serentak's
    :class:`~serentak.Pool`'s; the methods are coroutines (``imap``: an async
    iterator) and no thread is started per call.

    Args:
        processes: number of workers; by default ``os.cpu_count()``.
        initializer: called with ``initargs`` in each worker when it starts.
        initargs: arguments for ``initializer``.
        maxtasksperchild: tasks (chunks) a worker runs before it is replaced.
        context: the context (start method) to start workers with.
        max_memory_per_child: MiB of resident memory past which a worker is replaced.
        cancel_running: the default of the calls' ``cancel_running=``: whether
            cancelling an await also stops its running tasks (their workers are
            killed and replaced); if not, they finish and their results are dropped.

    Raises:
        RuntimeError: no asyncio event loop is running in this thread.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        max_memory_per_child: float | None = None,
        cancel_running: bool = False,
    ) -> None:
        _running_loop("AsyncPool()")
        self._pool = Pool(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context,
            max_memory_per_child=max_memory_per_child,
        )
        self._submit = Submitter(self._pool)
        self._stopping = threading.Event()
        self._cancel_running_default = cancel_running

    async def __aenter__(self) -> AsyncPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<serentak.AsyncPool of {self._pool!r}>"

    # ---- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Accept no more tasks; the workers exit once the queued ones are done."""
        self._pool.close()

    def terminate(self) -> None:
        """Stop the workers now; unfinished tasks fail with PoolTerminatedError."""
        self._stopping.set()
        self._pool.terminate()

    async def join(self) -> None:
        """Wait for the workers to exit (after close() or terminate()), without
        blocking the loop (the wait takes one thread, for this call only).

        Raises:
            ValueError: the pool is still running.
        """
        if not self._stopping.is_set():
            await asyncio.to_thread(self._pool.join)
        else:
            self._pool.join()

    # ---- calls --------------------------------------------------------------------------

    def _canceller(self, cancel_running: bool | None) -> Callable[[object], None] | None:
        """What stops a cancelled call's running tasks, if the call asks for it."""
        if cancel_running is None:
            cancel_running = self._cancel_running_default
        if not isinstance(cancel_running, bool):
            raise TypeError(
                f"cancel_running must be True or False, not {type(cancel_running).__name__}"
            )
        return self._submit.cancel_running if cancel_running else None

    async def apply(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        cancel_running: bool | None = None,
    ) -> _T:
        """``func(*args, **kwds)`` in a worker; its result, or its exception raised here.

        Args:
            func: the callable (lambdas and ``__main__`` functions go by value).
            args: positional arguments.
            kwds: keyword arguments.
            timeout: seconds the task may run before its worker is killed
                (it then fails with serentak.TimeoutError).
            cancel_running: whether cancelling this await stops the task if it is
                running (its worker is killed and replaced); by default, the pool's.
        """
        sink = _ApplySink(asyncio.get_running_loop())
        self._submit.check_running(timeout)
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__}")
        canceller = self._canceller(cancel_running)
        self._submit.apply_to(sink, func, args, kwds, timeout)
        try:
            result: _T = await sink.future
        except asyncio.CancelledError:
            if canceller is not None:
                canceller(sink)
            raise
        return result

    async def map(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        cancel_running: bool | None = None,
    ) -> list[_T]:
        """``list(map(func, iterable))``, computed by the workers (see Pool.map);
        ``cancel_running`` as for apply()."""
        return await self._map(
            Kind.MAP, func, iterable, chunksize, timeout, progress, cancel_running
        )

    async def starmap(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        cancel_running: bool | None = None,
    ) -> list[_T]:
        """Like map(), with each item unpacked as the arguments: ``func(*item)``."""
        return await self._map(
            Kind.STARMAP, func, iterable, chunksize, timeout, progress, cancel_running
        )

    async def _map(
        self,
        kind: Kind,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        timeout: float | None,
        progress: ProgressOption,
        cancel_running: bool | None,
    ) -> list[Any]:
        sink = _MapSink(asyncio.get_running_loop())
        submit = self._submit
        submit.check_running(timeout)
        canceller = self._canceller(cancel_running)
        function = submit.register(func)
        items = iterable if isinstance(iterable, Sequence) else list(iterable)
        job = submit.add_job(
            kind, function, items, len(items), chunksize, sink, timeout, progress, False
        )
        try:
            return await sink.future
        except asyncio.CancelledError:
            job.abandon()
            if canceller is not None:
                canceller(job)
            raise

    def imap(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any] | AsyncIterable[Any],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        buffersize: int | None = None,
        buffer_bytes: int | None = None,
        cancel_running: bool | None = None,
    ) -> AsyncMapIterator[_T]:
        """``async for result in pool.imap(func, items)``: results in input order as they
        come. ``items`` may be an async iterable; either is read with bounded
        look-ahead (``buffersize=`` tasks, ``buffer_bytes=`` pickled bytes, as Pool.imap).

        Raises:
            RuntimeError: no asyncio event loop is running in this thread.
        """
        return self._imap(
            True,
            func,
            iterable,
            chunksize,
            timeout,
            progress,
            buffersize,
            buffer_bytes,
            cancel_running,
        )

    def imap_unordered(
        self,
        func: Callable[[Any], _T],
        iterable: Iterable[Any] | AsyncIterable[Any],
        chunksize: int | None = None,
        *,
        timeout: float | None = None,
        progress: ProgressOption = None,
        buffersize: int | None = None,
        buffer_bytes: int | None = None,
        cancel_running: bool | None = None,
    ) -> AsyncMapIterator[_T]:
        """Like imap(), results in the order they complete."""
        return self._imap(
            False,
            func,
            iterable,
            chunksize,
            timeout,
            progress,
            buffersize,
            buffer_bytes,
            cancel_running,
        )

    def _imap(
        self,
        ordered: bool,
        func: Callable[..., Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        chunksize: int | None,
        timeout: float | None,
        progress: ProgressOption,
        buffersize: int | None,
        buffer_bytes: int | None,
        cancel_running: bool | None,
    ) -> AsyncMapIterator[Any]:
        loop = _running_loop(f"AsyncPool.{'imap' if ordered else 'imap_unordered'}()")
        submit = self._submit
        submit.check_running(timeout)
        check_buffer_bounds(buffersize, buffer_bytes)
        canceller = self._canceller(cancel_running)
        function = submit.register(func)
        items: Iterable[Any]
        if isinstance(iterable, AsyncIterable):
            items = _AsyncInput(iterable, loop, self._stopping)
        else:
            items = iterable
        if chunksize is None and buffersize is not None:
            chunksize = 1
        kind = Kind.MAP_EACH if chunksize is None else Kind.MAP
        length = len(items) if isinstance(items, Sized) else None
        results: AsyncMapIterator[Any] = AsyncMapIterator(loop, ordered, canceller)
        results.job = submit.add_job(
            kind,
            function,
            items,
            length,
            chunksize,
            results,
            timeout,
            progress,
            True,
            buffersize,
            buffer_bytes,
        )
        return results
