"""``ProcessPoolExecutor``: the ``concurrent.futures`` interface on serentak's pool.

::

    submit(fn, *args)  -> Future  ---- the Pool's engine runs it ---->  outcome
    Future: RUNNING when handed to a worker (cancel() works until then),
            then result or exception, set from the pool's callback thread

Unlike the stdlib's, a worker that dies fails only its own future
(:class:`serentak.WorkerLostError`); the executor carries on.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any, TypeVar

from serentak._exceptions import TimeoutError
from serentak._os.waiting import in_main_thread, spans

from .api import Pool, Submitter, check_buffer_bounds
from .results import CallbackRunner, IMapIterator, Outcome
from .tasks import Kind

_T = TypeVar("_T")


class _Future(concurrent.futures.Future[_T]):
    """The stdlib's Future, whose result() and exception() wait in spans in the main
    thread: a Ctrl-C taken by another thread still interrupts them (see _waiting)."""

    def result(self, timeout: float | None = None) -> _T:
        return super().result(self._waited(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._waited(timeout))

    def _waited(self, timeout: float | None) -> float | None:
        """Wait in spans (main thread only) until done or ``timeout`` has passed;
        the timeout that is left for the stdlib's own wait."""
        if self.done() or not in_main_thread():
            return timeout
        for span in spans(timeout):
            if concurrent.futures.wait((self,), span).done:
                break
        return 0


class _FutureSink:
    """Delivers a task's outcome to a Future."""

    def __init__(self, future: concurrent.futures.Future[Any], runner: CallbackRunner) -> None:
        self._future = future
        self._runner = runner

    def claim(self) -> bool:
        # Claimed again when a task sent ahead to a worker that died is re-queued.
        return self._future.running() or self._future.set_running_or_notify_cancel()

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        # Setting a Future runs its done-callbacks: not in the pool's supervisor thread.
        self._runner.submit(lambda: self._settle(outcome))

    def _settle(self, outcome: Outcome) -> None:
        if self._future.cancelled():
            return
        try:
            value = outcome.value()
        except BaseException as exc:
            self._future.set_exception(exc)
        else:
            self._future.set_result(value)


class _ExecutorPool(Pool):
    """The executor's pool: its workers are not daemonic, so that a task may start
    processes (a Pool of its own); they still die with the executor's process."""

    _daemonic_workers = False


class ProcessPoolExecutor(concurrent.futures.Executor):
    """An Executor running calls in worker processes.

    Args:
        max_workers: number of workers; by default ``os.cpu_count()``.
        mp_context: the context (start method) to start workers with.
        initializer: called with ``initargs`` in each worker when it starts.
        initargs: arguments for ``initializer``.
        max_tasks_per_child: tasks a worker runs before it is replaced.
        retries, retry_on, backoff, memory_limit, seed: as for
            :class:`serentak.Pool`, for every ``submit`` and ``map`` (``submit``
            passes its keyword arguments to the function, so these are set here).

    Raises:
        ValueError: ``max_workers`` is not positive, or a bad option.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        retries: int = 0,
        retry_on: Any = None,
        backoff: float = 0.0,
        memory_limit: int | str | None = None,
        seed: int | None = None,
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._pool = _ExecutorPool(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            mp_context,
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            memory_limit=memory_limit,
            seed=seed,
        )
        self._submit = Submitter(self._pool)
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._unfinished: weakref.WeakSet[concurrent.futures.Future[Any]] = weakref.WeakSet()

    def submit(
        self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[_T]:
        """Schedule ``fn(*args, **kwargs)``; return its Future.

        Raises:
            RuntimeError: after shutdown().
        """
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: concurrent.futures.Future[_T] = _Future()
            self._unfinished.add(future)
            sink = _FutureSink(future, self._submit.callbacks)
            self._submit.apply_to(sink, fn, args, kwargs, None)
            return future

    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool | Mapping[str, Any] | None = None,
        errors: str = "raise",
    ) -> Iterator[_T]:
        """Like ``map(fn, *iterables)``, computed by the workers, results in order.

        The inputs are read lazily: at most ``buffersize`` chunks (Python 3.14's
        argument) are submitted ahead of the results read, by default a few per
        worker. ``progress=True`` (or a dict of tqdm options) shows a progress bar.
        ``errors="return"`` yields a failed call's exception in its place
        instead of raising it.

        Raises:
            TimeoutError: (on iteration) a result is not ready ``timeout``
                seconds after this call.
            ValueError: ``buffersize`` is not positive.
        """
        check_buffer_bounds(buffersize, None)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        options = self._submit.options(errors=errors)
        end = None if timeout is None else time.monotonic() + timeout
        arguments: Iterable[tuple[Any, ...]] = zip(*iterables)  # noqa: B905 (stops at the shortest)
        sized = [it for it in iterables if isinstance(it, Sized)]
        if sized and len(sized) == len(iterables):
            # The progress bar's total: zip() hides the inputs' lengths.
            arguments = _SizedZip(arguments, min(map(len, sized)))
        results = self._submit.imap(
            IMapIterator,
            Kind.STARMAP,
            fn,
            arguments,
            chunksize,
            None,
            progress,
            buffersize,
            options=options,
        )
        return _until(results, end)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Accept no more calls; with ``wait``, return once every call has finished.

        Args:
            wait: wait for the pending calls and the workers' exit.
            cancel_futures: cancel the calls no worker has started.
        """
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            for future in list(self._unfinished):
                future.cancel()
        self._pool.close()
        if wait:
            self._pool.join()

    def terminate_workers(self) -> None:
        """SIGTERM every worker now (Python 3.14's API, with a difference).

        The calls running fail with :class:`serentak.WorkerLostError` naming the
        signal; the calls not yet started are cancelled. Unlike CPython's, which
        shuts the executor down, this executor stays usable: fresh workers take
        the calls submitted afterwards.

        Raises:
            RuntimeError: after shutdown().
        """
        self._stop_workers(kill=False)

    def kill_workers(self) -> None:
        """Like terminate_workers(), with SIGKILL (which a worker cannot catch)."""
        self._stop_workers(kill=True)

    def _stop_workers(self, *, kill: bool) -> None:
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot stop the workers after shutdown")
            for future in list(self._unfinished):
                future.cancel()  # succeeds only for the calls no worker has taken
            self._submit.stop_workers(kill=kill)


class _SizedZip:
    """Executor.map's zipped arguments, with the length the inputs give them."""

    def __init__(self, arguments: Iterable[tuple[Any, ...]], length: int) -> None:
        self._arguments = arguments
        self._length = length

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._arguments)

    def __len__(self) -> int:
        return self._length


def _until(results: IMapIterator, end: float | None) -> Iterator[Any]:
    while True:
        remaining = None if end is None else end - time.monotonic()
        try:
            yield results.next(remaining)
        except StopIteration:
            return
        except TimeoutError:
            # 3.10's concurrent.futures.TimeoutError is not the builtin one.
            if sys.version_info < (3, 11):
                raise concurrent.futures.TimeoutError from None
            raise
