"""What ``serentak.distributed`` runs on a Dask worker: one task of a pool, and its reply.

::

    client (the pool's process)                      Dask worker process (any host)
    ---------------------------                      ------------------------------
    client.submit(run, Call, function, initializer, arguments)
                                          ------->   run(): load the function (cached per
                                                     pool and func_id), run the pool's
                                                     initializer once per pool, run the task
                                                     (on a helper thread, against the clock,
                                                     if it has a timeout)
    the pool's collector thread  <---------------   Reply: status, the result or Failure
                                                     pickled, busy time, pid

The reply carries the result pickled by serentak's pickler, not as an object:
the caller unpickles it in the thread that asks for it (an ``Outcome``, as
for ``serentak.Pool``), and a result or exception that cannot be pickled
fails its task here, with its own message, instead of failing Dask's
transfer. A task's exception is caught here too, so it comes back as
serentak's ``Failure`` with the worker's formatted traceback, whatever Dask
does with tracebacks.

Dask is imported only to learn the worker's address for the reply: the
module loads, and its functions run, outside a worker too.

Two more pieces run on the cluster: ``dask_setup``, the preload hook of the
LocalCluster's worker processes (they ignore SIGINT: Ctrl-C in a terminal
reaches the whole process group, and must interrupt the caller, not kill
its workers), and the probes with which a cancel waits until the scheduler
and the workers have let go of the cancelled tasks (``let_go_on_scheduler``,
``let_go_on_worker``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Final

from serentak._exceptions import TimeoutError
from serentak._ipc.byvalue import main_namespace, new_main_namespace
from serentak._ipc.serialize import dumps, loads
from serentak._pool.tasks import Failure, Kind, encode_failure, run_task

# Callables (and initializer outcomes) a worker process keeps, over every pool
# that uses it; past that, the least recently used is loaded again when needed.
WORKER_CACHE: Final = 256
_MAX_BUSY_US: Final = 0xFFFF_FFFF


class Status(enum.Enum):
    """How a task ended on the worker."""

    DONE = "done"
    FAILED = "failed"  # the task raised, or its result could not be pickled
    TIMED_OUT = "timed out"  # it ran past its timeout (and runs on: nothing can stop it)
    INIT_FAILED = "initializer failed"  # the pool's initializer raised on this worker


@dataclasses.dataclass(frozen=True)
class Call:
    """What a task is, besides its function and arguments (which Dask may hand over
    from data scattered to the cluster, so they travel as separate arguments).

    Attributes:
        pool: the pool's token: caches on the worker are per pool.
        kind: APPLY, MAP or STARMAP.
        func_id: the function's id in its pool.
        timeout: seconds the task may run, or None.
    """

    pool: str
    kind: Kind
    func_id: int
    timeout: float | None


@dataclasses.dataclass(frozen=True)
class Reply:
    """A task's outcome as the worker sends it back.

    Attributes:
        status: how it ended.
        payload: the result pickled (DONE), else a pickled :class:`Failure`.
        busy_us: microseconds the task ran, for adaptive chunk sizes.
        pid: the worker process, for ``pool.stats()``.
        worker: the Dask worker's address, for ``pool.stats()``.
    """

    status: Status
    payload: bytes
    busy_us: int
    pid: int
    worker: str


class _Cache:
    """A worker process's callables, initializer outcomes and ``__main__`` namespaces,
    per pool: shared by the worker's threads, so under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._functions: collections.OrderedDict[tuple[str, int], Callable[..., Any]] = (
            collections.OrderedDict()
        )
        # pool token -> None once its initializer ran, or the Failure it raised.
        self._initialized: collections.OrderedDict[str, Failure | None] = collections.OrderedDict()
        self._initializing = threading.Lock()
        # pool token -> the namespace its functions of __main__ share on this worker:
        # the worker serves many pools, which must not see each other's globals.
        self._namespaces: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def _loads(self, pool: str, payload: bytes) -> Any:
        with self._lock:
            namespace = self._namespaces.get(pool)
            if namespace is None:
                namespace = self._namespaces[pool] = new_main_namespace()
                if len(self._namespaces) > WORKER_CACHE:
                    self._namespaces.popitem(last=False)
            else:
                self._namespaces.move_to_end(pool)
        with main_namespace(namespace):
            return loads(payload)

    def function(self, pool: str, func_id: int, payload: bytes) -> Callable[..., Any]:
        key = (pool, func_id)
        with self._lock:
            cached = self._functions.get(key)
            if cached is not None:
                self._functions.move_to_end(key)
                return cached
        func: Callable[..., Any] = self._loads(pool, payload)  # may import, slowly
        with self._lock:
            self._functions[key] = func
            if len(self._functions) > WORKER_CACHE:
                self._functions.popitem(last=False)
        return func

    def initialize(self, pool: str, payload: bytes) -> Failure | None:
        """Run ``pool``'s initializer once in this process; the Failure if it raised."""
        with self._initializing:  # other threads wait until it has run, as they must
            with self._lock:
                if pool in self._initialized:
                    self._initialized.move_to_end(pool)
                    return self._initialized[pool]
            failure: Failure | None = None
            try:
                initializer, initargs = self._loads(pool, payload)
                initializer(*initargs)
            except BaseException as exc:
                failure = Failure.of(exc, note="the pool's initializer raised on this worker")
            with self._lock:
                self._initialized[pool] = failure
                if len(self._initialized) > WORKER_CACHE:
                    self._initialized.popitem(last=False)
            return failure


_cache = _Cache()


def run(call: Call, function: bytes, initializer: bytes | None, arguments: Any) -> Reply:
    """Run one task of a pool on this Dask worker (the function Dask is given).

    Args:
        call: which pool, what kind of task, which function, its timeout.
        function: the function, pickled by serentak's pickler.
        initializer: the pool's ``(initializer, initargs)``, pickled, or None.
        arguments: the task's arguments as ``run_task`` takes them.

    Returns:
        The reply; never raises for anything the task does.
    """
    started = time.perf_counter()
    if initializer is not None:
        failure = _cache.initialize(call.pool, initializer)
        if failure is not None:
            return _reply(Status.INIT_FAILED, encode_failure(failure), started)
    try:
        func = _cache.function(call.pool, call.func_id, function)
        if call.timeout is None:
            result = run_task(call.kind, func, arguments)
        else:
            result = _run_against_the_clock(call.kind, func, arguments, call.timeout)
    except _Overdue as overdue:
        return _reply(Status.TIMED_OUT, encode_failure(overdue.failure), started)
    except BaseException as exc:  # a task's SystemExit or KeyboardInterrupt fails the task
        return _reply(Status.FAILED, encode_failure(Failure.of(exc)), started)
    try:
        payload = dumps(result)
    except BaseException as exc:
        return _reply(Status.FAILED, encode_failure(Failure.of_result(exc, result)), started)
    return _reply(Status.DONE, payload, started)


def _reply(status: Status, payload: bytes, started: float) -> Reply:
    busy_us = min(int((time.perf_counter() - started) * 1e6), _MAX_BUSY_US)
    return Reply(status, payload, busy_us, os.getpid(), _worker_address())


def _worker_address() -> str:
    """This Dask worker's address ("" outside a worker)."""
    from distributed import get_worker  # present: this runs on a Dask worker

    try:
        address: str = get_worker().address
    except ValueError:
        return ""
    return address


class _Overdue(Exception):
    """A task ran past its timeout; ``failure`` is what its caller gets."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _run_against_the_clock(
    kind: Kind, func: Callable[..., Any], arguments: Any, timeout: float
) -> Any:
    """``run_task`` with a deadline, on a helper thread so that the clock keeps running.

    Dask cannot stop a running task and neither can this: past the deadline the
    task fails with TimeoutError at once and the worker goes on to its next task,
    while the helper thread runs the overdue call to its end and its result is
    dropped. The thread is a daemon, so it does not keep the worker from exiting.
    """
    box: list[tuple[bool, Any]] = []
    finished = threading.Event()

    def target() -> None:
        try:
            box.append((True, run_task(kind, func, arguments)))
        except BaseException as exc:
            box.append((False, exc))
        finally:
            finished.set()

    helper = threading.Thread(target=target, name="serentak-timed-task", daemon=True)
    helper.start()
    if not finished.wait(timeout):
        raise _Overdue(_overdue_failure(helper, timeout))
    ok, value = box[0]
    if ok:
        return value
    raise value


def _overdue_failure(helper: threading.Thread, timeout: float) -> Failure:
    """The TimeoutError of an overdue task, with where the task was when time ran out."""
    message = (
        f"the task ran past its timeout of {timeout:g} s (on Dask worker process "
        f"{os.getpid()}, which cannot stop it: it runs on there until it returns)"
    )
    frame = sys._current_frames().get(helper.ident or 0)
    where = "".join(traceback.format_stack(frame)) if frame is not None else "(it had just ended)\n"
    text = f"Where the task was when its time ran out:\n{where}serentak.TimeoutError: {message}\n"
    return Failure(TimeoutError(message), "serentak.TimeoutError", message, text)


# ---- on the cluster, besides tasks ---------------------------------------------------------

# Worker task states in which a task has not started and will not start once
# the worker hears that it was released.
_NOT_STARTED: Final = frozenset({"waiting", "ready", "constrained", "fetch", "flight", "missing"})
_PROBE_INTERVAL: Final = 0.002


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, in each worker process of a pool's own LocalCluster: ignore
    SIGINT, as ``serentak.Pool``'s workers do. A terminal sends Ctrl-C to the whole
    process group, workers included; it is for the caller (its wait raises
    KeyboardInterrupt and cancels the call's tasks), and would otherwise kill every
    worker in the middle of its task."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


async def let_go_on_scheduler(
    keys: Sequence[str], client: str, patience: float, dask_scheduler: Any = None
) -> int:
    """(Run on the scheduler.) Wait until no key in ``keys`` is wanted by ``client`` any
    more, that is until the scheduler has handled the client's cancel, which travels on
    another connection; at most ``patience`` seconds. Returns how many still are."""
    deadline = time.monotonic() + patience
    while True:
        state = dask_scheduler.clients.get(client)
        wanted = 0
        if state is not None:
            for key in keys:
                task = dask_scheduler.tasks.get(key)
                wanted += task is not None and state in (task.who_wants or ())
        if not wanted or time.monotonic() > deadline:
            return wanted
        await asyncio.sleep(_PROBE_INTERVAL)


async def let_go_on_worker(keys: Sequence[str], patience: float, dask_worker: Any = None) -> int:
    """(Run on each worker.) Wait until no key in ``keys`` is queued on this worker, that is
    until it has dropped the cancelled tasks it held and had not started; at most
    ``patience`` seconds. Returns how many still are queued."""
    deadline = time.monotonic() + patience
    while True:
        tasks = dask_worker.state.tasks
        queued = 0
        for key in keys:
            task = tasks.get(key)
            queued += task is not None and task.state in _NOT_STARTED
        if not queued or time.monotonic() > deadline:
            return queued
        await asyncio.sleep(_PROBE_INTERVAL)
