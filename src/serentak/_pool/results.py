"""What ``apply_async``, ``map_async``, ``imap`` and ``imap_unordered`` hand back.

::

    supervisor thread (or a ThreadPool worker)        caller threads
    ---------------------------------------        --------------
    result._complete(outcome)    ---------------->  get() / wait() / ready()
    map_result.complete_chunk(i, outcome)  ------>  get(): every chunk, in order
    iterator.complete_chunk(i, outcome)  -------->  next(): chunk by chunk
                    |
                    +--> callback thread: callback(value) or error_callback(exc),
                         then the result becomes ready (as in the stdlib, get()
                         returns after the callback has run)

A caller waiting in ``ApplyResult.get()`` may first ask its ``collector`` (the
pool's supervisor) to read the worker's reply in the caller's own thread: the
result is then set there, through the same ``complete_chunk``, callbacks still
on the callback thread.

An :class:`Outcome` keeps a worker's reply pickled until someone asks for the
value: unpickling happens in the thread that wants the result. The chunks of a
map are the exception: the supervisor thread unpickles them when it has nothing
else to do, one at a time, so the work overlaps with the workers'.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

from serentak._exceptions import ProcessError, TimeoutError
from serentak._os.waiting import RESULT_SPIN, join, spans, wait_span

from .tasks import Failure, ItemFailed, load_result

_NOT_LOADED: Final = object()

Cancel = Callable[[object], None]
"""Told which result object's caller was interrupted, so that its tasks can be cancelled."""

Collect = Callable[[object, float], None]
"""Told which result object's caller is about to wait, and for how many seconds it may
poll for the reply before it sleeps: reads the result in that thread if it comes."""


class Outcome:
    """A task's result or exception, pickled as it arrived or already a Python object.

    A pickled outcome may come with descriptors (its out-of-band buffers);
    they are closed once it is unpickled, or when it is dropped unread.
    """

    __slots__ = ("__weakref__", "_ahead", "_fds", "_lock", "_payload", "_then", "_value", "ok")

    def __init__(
        self,
        ok: bool,
        payload: bytes | None = None,
        value: Any = _NOT_LOADED,
        fds: tuple[int, ...] = (),
    ) -> None:
        self.ok = ok
        self._payload = payload
        self._value = value
        self._lock = threading.Lock()
        self._fds = fds
        self._then: Callable[[], None] | None = None
        # Whether preload() may unpickle it ahead of the reader (see leave_to_reader).
        self._ahead = True
        if fds:
            weakref.finalize(self, _close_fds, fds)

    @classmethod
    def of_exception(cls, exc: BaseException) -> Outcome:
        return cls(False, value=exc)

    @classmethod
    def of_value(cls, value: Any) -> Outcome:
        return cls(True, value=value)

    def preload(self) -> None:
        """Unpickle now, in the calling thread, so that value() is quick later; then
        call what :meth:`after_preload` was given. Does nothing once the value is
        left to its reader."""
        if not self._ahead:
            return
        with self._lock:
            if self._value is _NOT_LOADED:
                self._value = self._load()
                self._payload = None
            then, self._then = self._then, None
        if then is not None:
            then()

    def after_preload(self, then: Callable[[], None]) -> None:
        """Have :meth:`preload` call ``then`` once it has unpickled the value."""
        self._then = then

    def leave_to_reader(self) -> None:
        """Leave the unpickling to the thread that asks for the value: it is awake, or
        about to be, and another thread unpickling meanwhile would only hold the GIL
        it needs (the pair would hand it over back and forth)."""
        self._ahead = False

    def loaded(self) -> bool:
        """Whether the value is unpickled (value() returns or raises at once)."""
        return self._value is not _NOT_LOADED

    def error(self) -> BaseException | None:
        """The task's exception if it failed (unpickled, in the calling thread); else None."""
        try:
            self.value()
        except BaseException as exc:  # whatever the task raised is its error
            return exc
        return None

    def value(self) -> Any:
        """The task's result; raises the task's exception if it failed."""
        with self._lock:
            if self._value is _NOT_LOADED:
                self._value = self._load()
                self._payload = None
        if self.ok:
            return self._value
        raise self._value

    def _load(self) -> Any:
        payload = self._payload
        if payload is None:
            raise ProcessError("result lost")  # unreachable: every outcome has one or the other
        fds, self._fds = self._fds, ()
        try:
            loaded = load_result(payload, [os.dup(fd) for fd in fds])
        except Exception as exc:
            what = "result" if self.ok else "exception"
            self.ok = False
            error = ProcessError(f"the task's {what} could not be unpickled here: {exc!r}")
            error.__cause__ = exc
            return error
        if self.ok:
            return loaded
        if isinstance(loaded, Failure):
            return loaded.to_exception()
        return ProcessError(f"a worker sent an unexpected failure: {loaded!r}")


def _close_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class ItemError:
    """In a list of results: the item at this place failed with ``error``."""

    error: BaseException


class CallbackRunner:
    """One thread that runs result callbacks in completion order, so that no
    callback ever blocks the thread that moves results."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="serentak-pool-callbacks", daemon=True
                )
                self._thread.start()
        self._queue.put(call)

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            try:
                call()
            finally:
                with self._lock:
                    self._pending -= 1
                    if not self._pending:
                        self._idle.notify_all()

    def drain(self) -> None:
        """Wait until every submitted callback has run."""
        with self._lock:
            while self._pending:
                self._idle.wait(wait_span(None))

    def stop(self) -> None:
        """Let the thread exit once the queued callbacks have run."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            if thread is not threading.current_thread():
                join(thread)


def _call_safely(callback: Callable[[Any], object], argument: Any) -> None:
    try:
        callback(argument)
    except Exception:
        import traceback

        traceback.print_exc()  # a failing callback must not take the pool's thread down


_SETTING: Final = threading.Lock()


class _Done:
    """A one-shot event: set once, waited for by any number of threads. One lock,
    held until set (a ``threading.Event`` costs a condition and a lock per wait)."""

    __slots__ = ("_flag", "_lock")

    def __init__(self) -> None:
        self._flag = False
        self._lock = threading.Lock()
        self._lock.acquire()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with _SETTING:  # two threads setting it at once release it once
            if self._flag:
                return
            self._flag = True
            self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it is set, waiting up to ``timeout`` seconds (None: for ever)."""
        if self._flag:
            return True
        for span in spans(timeout):
            if span is None:
                got = self._lock.acquire()
            elif span > 0:
                got = self._lock.acquire(timeout=min(span, threading.TIMEOUT_MAX))
            else:
                got = self._lock.acquire(blocking=False)
            if got:
                self._lock.release()  # for the next waiter
            if self.is_set():
                break
        return self._flag


class ApplyResult:
    """The result of ``apply_async``: the stdlib's ``AsyncResult``.

    Args:
        callback: called with the result once it succeeds.
        error_callback: called with the exception if the task fails.
        runner: the thread that runs callbacks.

    Attributes:
        cancel_hook: if set (by a pool whose engine can cancel tasks), called
            with this result when a KeyboardInterrupt ends a wait on it.
        collector: if set (by a pool whose waiting callers may read replies
            themselves), called before a wait with this result and RESULT_SPIN.
    """

    cancel_hook: Cancel | None = None
    collector: Collect | None = None

    def __init__(
        self,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        runner: CallbackRunner,
    ) -> None:
        self._event = _Done()
        self._outcome: Outcome | None = None
        self._callback = callback
        self._error_callback = error_callback
        self._runner = runner

    def ready(self) -> bool:
        """Whether the task has finished."""
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the task finished without raising.

        Raises:
            ValueError: the task has not finished.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        outcome = self._outcome
        if outcome is None:
            return False
        try:
            outcome.value()
        except BaseException:
            return False
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the task has finished, or ``timeout`` seconds pass."""
        try:
            self._wait(timeout)
        except KeyboardInterrupt:
            _interrupted(self, self.cancel_hook)
            raise

    def _wait(self, timeout: float | None) -> bool:
        """Whether the task has finished, waiting up to ``timeout`` seconds."""
        collector = self.collector
        if collector is None or self._event.is_set() or (timeout is not None and timeout <= 0):
            return self._event.wait(timeout)
        if timeout is None:
            collector(self, RESULT_SPIN)
            return self._event.wait(None)
        deadline = time.monotonic() + timeout
        collector(self, min(timeout, RESULT_SPIN))
        return self._event.wait(max(0.0, deadline - time.monotonic()))

    def get(self, timeout: float | None = None) -> Any:
        """The task's result; re-raises its exception, the worker's traceback as cause.

        Raises:
            serentak.TimeoutError: not ready within ``timeout`` seconds.
        """
        try:
            ready = self._wait(timeout)
        except KeyboardInterrupt:
            _interrupted(self, self.cancel_hook)
            raise
        if not ready:
            raise TimeoutError
        outcome = self._outcome
        if outcome is None:
            raise ProcessError("result lost")
        return outcome.value()

    def claim(self) -> bool:
        return True

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        self._outcome = outcome
        if self._callback is None and self._error_callback is None:
            self._event.set()
        else:
            self._runner.submit(self._finish_with_callbacks)

    def _finish_with_callbacks(self) -> None:
        outcome = self._outcome
        try:
            if outcome is None:
                return
            try:
                value = outcome.value()
            except BaseException as exc:
                if self._error_callback is not None:
                    _call_safely(self._error_callback, exc)
            else:
                if self._callback is not None:
                    _call_safely(self._callback, value)
        finally:
            self._event.set()

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return f"<{type(self).__name__} {state}>"


AsyncResult = ApplyResult


def _interrupted(result: object, cancel_hook: Cancel | None) -> None:
    if cancel_hook is not None:
        cancel_hook(result)


class MapResult(ApplyResult):
    """The result of ``map_async``/``starmap_async``: a list, in input order.

    The number of chunks is known once the input has been cut up
    (``_set_length``). The first failing chunk makes the whole result fail at
    once (as the stdlib's), even while other chunks still run.

    The list is built as the chunks come: each chunk the supervisor thread
    unpickles while it would wait is appended at once if the chunks before it
    are in, so that when the last chunk arrives only that one is left to
    unpickle and append, not the whole list to join.
    """

    def __init__(
        self,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        runner: CallbackRunner,
    ) -> None:
        super().__init__(callback, error_callback, runner)
        # Chunks received and not yet appended to _merged, e.g. {3: <Outcome>, 5: <Outcome>}.
        self._chunks: dict[int, Outcome] = {}
        self._received = 0
        self._length: int | None = None
        self._lock = threading.Lock()
        self._done = False
        # The results of chunks 0 .. _merged_chunks - 1, in order (under _merging).
        self._merging = threading.Lock()
        self._merged: list[Any] = []
        self._merged_chunks = 0

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        with self._lock:
            if self._done:
                return
            if not outcome.ok:
                final: Outcome | None = outcome
                self._leave_to_reader()
                self._chunks.clear()
            else:
                self._chunks[index] = outcome
                self._received += 1
                outcome.after_preload(self._merge)
                final = self._all_there()
            self._done = final is not None
        if final is not None:
            super().complete_chunk(0, final)

    def set_length(self, chunks: int) -> None:
        with self._lock:
            if self._done:
                return
            self._length = chunks
            final = self._all_there()
            self._done = final is not None
        if final is not None:
            super().complete_chunk(0, final)

    def _all_there(self) -> Outcome | None:
        if self._length is None or self._received < self._length:
            return None
        self._leave_to_reader()
        return _Merged(self._take_all)

    def _leave_to_reader(self) -> None:
        """The caller is about to be woken: the chunks not yet unpickled are its to
        unpickle (holding the lock)."""
        for outcome in self._chunks.values():
            outcome.leave_to_reader()

    def _merge(self) -> None:
        """Append the chunks that are next in order and already unpickled."""
        with self._merging:
            while True:
                with self._lock:
                    outcome = self._chunks.get(self._merged_chunks)
                if outcome is None or not outcome.loaded() or not outcome.ok:
                    return  # a chunk that failed to unpickle fails the map in _take_all
                self._merged.extend(outcome.value())
                with self._lock:
                    del self._chunks[self._merged_chunks]
                self._merged_chunks += 1

    def _take_all(self) -> list[Any]:
        """The whole list: the chunks not merged yet unpickled and appended here.
        Raises what unpickling a chunk raised."""
        with self._merging:
            with self._lock:
                rest = [self._chunks.pop(i) for i in range(self._merged_chunks, self._length or 0)]
            self._merged_chunks += len(rest)
            merged, self._merged = self._merged, []
            for outcome in rest:
                merged.extend(outcome.value())
            return merged


def concatenated(parts: list[Outcome]) -> Outcome:
    """One outcome for the consecutive pieces of a chunk (each a list of results)."""
    return parts[0] if len(parts) == 1 else _Concatenated(parts)


def each_failed(outcome: Outcome, items: int) -> Outcome:
    """For a chunk (or the rest of one) that failed whole (its worker died), in a
    map whose items fail alone: each of its ``items`` fails with that error, so
    the positions after it keep their places."""
    error = outcome.error()  # the chunk's error, whatever it is, goes to each item
    if error is None:
        return outcome
    return Outcome.of_value([ItemError(error)] * items)


class _Merged(Outcome):
    """A map's whole list, put together by ``take`` only when the value is asked for."""

    __slots__ = ("_take",)

    def __init__(self, take: Callable[[], list[Any]]) -> None:
        super().__init__(True)
        self._take: Callable[[], list[Any]] | None = take

    def _load(self) -> Any:
        take, self._take = self._take, None
        if take is None:
            raise ProcessError("result lost")  # unreachable: loaded once, under the lock
        try:
            return take()
        except BaseException as exc:
            self.ok = False
            return exc


class _Concatenated(Outcome):
    """The chunks of a map, unpickled and joined only when the value is asked for."""

    __slots__ = ("_parts",)

    def __init__(self, parts: list[Outcome]) -> None:
        super().__init__(True)
        self._parts = parts

    def _load(self) -> Any:
        values: list[Any] = []
        for part in self._parts:
            try:
                values.extend(part.value())
            except BaseException as exc:
                self.ok = False
                return exc
        self._parts = []
        return values


class _Job(Protocol):
    """The feeder's side of a lazily consumed map: told when a chunk is consumed."""

    def consumed(self, index: int) -> None: ...


class IMapIterator:
    """The iterator ``imap`` returns: results in input order, as they become available.

    Attributes:
        cancel_hook: as :class:`ApplyResult`'s, for a wait in next().
    """

    cancel_hook: Cancel | None = None

    def __init__(self, runner: CallbackRunner, *, return_errors: bool = False) -> None:
        self._return_errors = return_errors  # a failed item yields its exception, not raises it
        self._condition = threading.Condition(threading.Lock())
        self._outcomes: dict[int, Outcome] = {}
        self._length: int | None = None  # chunks, once the input is exhausted
        self._next_chunk = 0
        self._items: collections.deque[Any] = collections.deque()
        # The feeder's job behind this iterator, told as each chunk is consumed (set by the
        # pool once the job is added).
        self.job: _Job | None = None
        self._runner = runner

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result; waits up to ``timeout`` seconds for it.

        Raises:
            StopIteration: all results have been returned.
            serentak.TimeoutError: the next result did not come in time.
            Exception: the exception of the task that produced this position.
        """
        if self._items:
            return self._pop()
        try:
            index, outcome = self._wait_for_chunk(timeout)
        except KeyboardInterrupt:
            _interrupted(self, self.cancel_hook)
            raise
        if self.job is not None:
            self.job.consumed(index)
        error = outcome.error() if self._return_errors else None
        if error is not None:
            self._items.append(ItemError(error))
        else:
            self._items.extend(outcome.value())
        if self._items:
            return self._pop()
        return self.next(timeout)  # an empty chunk cannot happen, but must not end iteration

    def _wait_for_chunk(self, timeout: float | None) -> tuple[int, Outcome]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while True:
                taken = self._take()
                if taken is not None:
                    return taken
                if self._length is not None and self._next_chunk >= self._length:
                    raise StopIteration
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                self._condition.wait(wait_span(remaining))

    def _pop(self) -> Any:
        item = self._items.popleft()
        if type(item) is ItemFailed:
            if self._return_errors:
                return item.failure.to_exception()
            raise item.failure.to_exception()
        if type(item) is ItemError:
            if self._return_errors:
                return item.error
            raise item.error
        return item

    def _take(self) -> tuple[int, Outcome] | None:
        """The next chunk's index and outcome, if it has arrived (holding the condition)."""
        index = self._next_chunk
        outcome = self._outcomes.pop(index, None)
        if outcome is None:
            return None
        self._next_chunk += 1
        return index, outcome

    def claim(self) -> bool:
        return True

    def all_arrived(self) -> bool:
        """Whether every chunk's outcome has come (read or not)."""
        with self._condition:
            return self._length is not None and self._next_chunk + self._unread() >= self._length

    def _unread(self) -> int:
        """How many chunks have come and wait to be read (holding the condition)."""
        return len(self._outcomes)

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        with self._condition:
            self._outcomes[index] = outcome
            self._condition.notify()

    def set_length(self, chunks: int) -> None:
        with self._condition:
            self._length = chunks
            self._condition.notify()


class IMapUnorderedIterator(IMapIterator):
    """The iterator ``imap_unordered`` returns: results in completion order."""

    def __init__(self, runner: CallbackRunner, *, return_errors: bool = False) -> None:
        super().__init__(runner, return_errors=return_errors)
        self._arrived: collections.deque[tuple[int, Outcome]] = collections.deque()

    def _take(self) -> tuple[int, Outcome] | None:
        if not self._arrived:
            return None
        self._next_chunk += 1
        return self._arrived.popleft()

    def _unread(self) -> int:
        return len(self._arrived)

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        with self._condition:
            self._arrived.append((index, outcome))
            self._condition.notify()
