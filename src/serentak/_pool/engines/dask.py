"""The engine of ``serentak.distributed.Pool``: tasks as futures of a Dask cluster.

::

    callers / feeder thread                 Dask (client, scheduler, workers)   collector thread
    -----------------------                 ---------------------------------   ----------------
    function(func): pickled once per pool
    encode(args): big shared buffers
      scattered once (SharedInputs)  ---->  scatter(broadcast=True)
    dispatch(task): in-flight table,
      client.submit(run, ...)  ---------->  a worker runs it
                                            (_distributed_worker.run)
                                            future done: Dask's callback
                                              thread puts it on a queue  ---->  gather the replies
                                                                                 in batches, pop the
                                                                                 in-flight entries,
                                                                                 complete the sinks
    close(): once nothing is in flight  ---------------------------> the collector closes the client
    terminate(): fail everything in flight, close the client and cluster, now
    Ctrl-C in get()/next(): cancel(owner) cancels that call's futures

The in-flight table (task key -> task, the result object it belongs to, the
shared inputs it holds, its Dask future) is the one piece of state several
threads touch, under one lock; whoever pops an entry completes its task, so a
task completes exactly once whichever of result, terminate or cancel comes
first. Completions go through the collector thread, not Dask's callback
thread: gathering a result is a round trip, Dask's callback thread is shared
by every client of the process, and the collector gathers whatever finished
together in one call.

What Dask decides, and what this engine does about it:

- A worker that dies: the scheduler runs its tasks again on other workers, up
  to ``distributed.scheduler.allowed-failures`` times (Dask's default, 3),
  then fails the task with ``KilledWorker``, raised here as
  :class:`serentak.WorkerLostError` (Dask's error as its cause).
- A timeout: Dask cannot stop a running task, so the worker keeps the clock
  (``_distributed_worker``): past its deadline the task fails with
  :class:`serentak.TimeoutError` and the worker moves on while the overdue
  call runs out on a helper thread.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import queue
import re
import secrets
import threading
import traceback
import weakref
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import CancelledError
from typing import Any, Final, Protocol

from distributed import KilledWorker

from serentak._exceptions import PoolTerminatedError, ProcessError, RemoteTraceback, WorkerLostError
from serentak._ipc.serialize import dumps
from serentak._os import waiting as _waiting
from serentak._pool.api import FunctionRegistry
from serentak._pool.feeder import MapJob
from serentak._pool.results import Outcome
from serentak._pool.tasks import Function, Task

from .dask_worker import (
    Call,
    Reply,
    Status,
    let_go_on_scheduler,
    let_go_on_worker,
    run,
)
from .process import PoolStats, WorkerStats

# Buffers (and pickled callables) from this size on are scattered to the
# cluster once when a second task uses them, instead of travelling in every
# task: below it, a copy per task costs less than a scatter's round trips.
SCATTER_THRESHOLD: Final = 1 << 20
# How deep arguments are searched for big buffers: a task's arguments, and the
# elements of a tuple, list or dict among them (a starmap item, a map item that
# is a tuple), not further.
SEARCH_DEPTH: Final = 2
_PLAIN_TYPES: Final = frozenset({int, float, complex, str, bool, type(None)})
# How long a cancel (Ctrl-C) waits for the scheduler, then for the workers, to
# let go of the cancelled tasks: a few milliseconds is usual; past this it
# returns anyway, as Ctrl-C must.
CANCEL_PATIENCE: Final = 0.25


# What the engine uses of Dask's Client, Future and LocalCluster (Dask's own
# annotations leave most of these untyped).


class Future(Protocol):
    """A ``distributed.Future``."""

    @property
    def key(self) -> Hashable: ...

    @property
    def status(self) -> str: ...

    def result(self, timeout: float | None = None) -> Any: ...

    def traceback(self, timeout: float | None = None) -> Any: ...

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...


class Client(Protocol):
    """A ``distributed.Client``."""

    def submit(
        self, func: Callable[..., Any], *args: Any, key: Any = ..., pure: Any = ...
    ) -> Any: ...

    def scatter(self, data: Any, *, broadcast: Any = ..., hash: Any = ...) -> Any: ...

    def gather(self, futures: Any) -> Any: ...

    def cancel(self, futures: Any) -> Any: ...

    def nthreads(self) -> Any: ...

    def scheduler_info(self) -> Any: ...

    def close(self) -> Any: ...


class Cluster(Protocol):
    """A ``distributed.LocalCluster``."""

    def close(self) -> object: ...


# ---- big inputs, scattered once ----------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _SharedInput:
    """One big input while tasks in flight use it.

    Attributes:
        value: the object (kept alive, so that its id, the key, stays its own).
        users: tasks in flight that use it.
        future: its copy on the cluster, once a second task used it.
    """

    value: Any
    users: int = 1
    future: Future | None = None


class SharedInputs:
    """Big inputs that several tasks share, scattered to every worker once.

    The first task that uses an input takes it along; a second one, while the
    first is still in flight, has it scattered (``broadcast=True``, so that a
    dying worker takes no input with it) and takes the cluster's copy, as do
    the ones after. Once no task in flight uses it, it is forgotten and the
    cluster frees its copy: an array changed between two ``map`` calls goes
    again, as it would to ``serentak.Pool``. Inputs are known by identity, so
    hashing gigabytes is never needed; do not change a buffer while tasks that
    use it are pending (with ``serentak.Pool`` that is a race as well).
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _SharedInput] = {}
        self._not_buffers: set[type] = {memoryview}  # a memoryview cannot be pickled at all
        self.scattered = 0

    def share(self, obj: Any, held: list[Hashable], depth: int = 0) -> Any:
        """``obj`` with its big buffers replaced by their cluster copies; keys go in ``held``."""
        kind = type(obj)
        if kind in _PLAIN_TYPES:
            return obj
        if kind is tuple or kind is list:
            return obj if depth >= SEARCH_DEPTH else self._share_items(obj, held, depth)
        if kind is dict:
            if depth >= SEARCH_DEPTH:
                return obj
            values = list(obj.values())
            shared = self._share_items(values, held, depth)
            return obj if shared is values else dict(zip(obj.keys(), shared, strict=True))
        if self._size(obj) < SCATTER_THRESHOLD:
            return obj
        return self.acquire(("buffer", id(obj)), obj, held)

    def _share_items(self, items: Sequence[Any], held: list[Hashable], depth: int) -> Any:
        replaced: list[Any] | None = None
        for position, item in enumerate(items):
            shared = self.share(item, held, depth + 1)
            if shared is not item and replaced is None:
                replaced = list(items[:position])  # copy only once something changes
            if replaced is not None:
                replaced.append(shared)
        if replaced is None:
            return items
        return tuple(replaced) if type(items) is tuple else replaced

    def _size(self, obj: Any) -> int:
        """Bytes of ``obj`` if it is a buffer (bytes, bytearray, numpy array, ...); else 0."""
        kind = type(obj)
        if kind in self._not_buffers:
            return 0
        try:
            view = memoryview(obj)
        except TypeError:
            self._not_buffers.add(kind)  # no need to try each instance of a non-buffer type
            return 0
        with view:
            return view.nbytes

    def acquire(self, key: Hashable, value: Any, held: list[Hashable]) -> Any:
        """``value`` itself for its first user, its cluster copy for the ones after."""
        with self._lock:
            held.append(key)
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _SharedInput(value)
                return value
            entry.users += 1
            # A copy whose every holder died is lost: scatter it again.
            if entry.future is None or entry.future.status != "finished":
                entry.future = self._client.scatter(value, broadcast=True, hash=False)
                self.scattered += 1
            return entry.future

    def release(self, keys: Sequence[Hashable]) -> None:
        """Tasks that held ``keys`` are done with them."""
        if not keys:
            return
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.users -= 1
                    if entry.users <= 0:
                        del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# ---- what a task carries ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Shipped:
    """A function as the engine ships it: pickled once, and a name for its task keys."""

    name: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class _Encoded:
    """A task's arguments, big buffers replaced by cluster copies, and the inputs it holds."""

    arguments: Any
    shared: tuple[Hashable, ...]


@dataclasses.dataclass(eq=False)
class _InFlight:
    """A task handed to Dask and not completed yet."""

    task: Task
    owner: object  # the caller's result object: what Ctrl-C in its get() cancels
    shared: list[Hashable]
    future: Future | None = None


class _EngineState(enum.Enum):
    """The engine's lifecycle."""

    RUNNING = "running"
    CLOSING = "closing"  # no new tasks; shut down once nothing is in flight
    TERMINATED = "terminated"


@dataclasses.dataclass
class _WorkerTally:
    """What one Dask worker did for this pool, as its replies told."""

    pid: int
    done: int = 0
    failed: int = 0
    busy_us: int = 0


_KEY_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_]+")


def task_name(func: Callable[..., Any]) -> str:
    """The prefix of ``func``'s task keys, by which Dask's dashboard groups them."""
    inner = func.func if isinstance(func, functools.partial) else func
    name = _KEY_UNSAFE.sub("_", getattr(inner, "__name__", type(inner).__name__)).strip("_")
    return name or "task"


class DaskEngine:
    """Runs a pool's tasks on a Dask cluster: see the module docstring.

    Args:
        client: the pool's own client (closed by the engine).
        cluster: the LocalCluster the pool started, or None (closed by the engine).
        initializer: run once per worker before that worker's first task of this pool.
        initargs: its arguments.
    """

    # Enforced, not by killing: the task fails when its worker's clock runs out.
    kills_overdue_tasks = True
    # Dask reruns the tasks of a worker that died itself (allowed-failures), and
    # its memory limits are per worker, set on the cluster: see the README.
    retries_tasks = False
    limits_memory = False

    def __init__(
        self,
        client: Client,
        cluster: Cluster | None,
        initializer: Callable[..., object] | None,
        initargs: Sequence[Any],
    ) -> None:
        self._client = client
        self._cluster = cluster
        # Eight hex digits: unique per pool, and Dask's key_split leaves it out of the
        # task's prefix, so the dashboard groups tasks by function name.
        self._token = secrets.token_hex(4)
        self._functions = FunctionRegistry()
        self._initializer = None if initializer is None else dumps((initializer, tuple(initargs)))
        self._shared = SharedInputs(client)
        self._lock = threading.Lock()
        self._state = _EngineState.RUNNING
        self._broken: BaseException | None = None  # the initializer raised on a worker
        self._in_flight: dict[Hashable, _InFlight] = {}
        self._cancelled: weakref.WeakSet[Any] = weakref.WeakSet()
        self._tally: dict[str, _WorkerTally] = {}
        self._lost = 0
        self._timed_out = 0
        self._shut = False
        self._shutdown_lock = threading.Lock()
        # Done futures from Dask's callback thread, None to wake the collector up.
        self._done: queue.SimpleQueue[Future | None] = queue.SimpleQueue()
        self._collector = threading.Thread(
            target=self._collect, name="serentak-dask-results", daemon=True
        )
        self._collector.start()

    @property
    def client(self) -> Client:
        return self._client

    @property
    def scattered(self) -> int:
        """How many inputs were scattered to the cluster so far."""
        return self._shared.scattered

    # ---- the Engine protocol ------------------------------------------------------------

    def function(self, func: Callable[..., Any]) -> Function:
        registered = self._functions.register(func)
        return Function(registered.func_id, _Shipped(task_name(func), registered.payload))

    def encode(self, obj: Any) -> _Encoded:
        held: list[Hashable] = []
        try:
            arguments = self._shared.share(obj, held)
        except BaseException:
            self._shared.release(held)
            raise
        return _Encoded(arguments, tuple(held))

    def dispatch(self, tasks: Sequence[Task]) -> None:
        for task in tasks:
            self._dispatch_one(task)

    def _dispatch_one(self, task: Task) -> None:
        encoded: _Encoded = task.payload
        shipped: _Shipped = task.function.payload
        sink = task.sink
        owner = sink.sink if isinstance(sink, MapJob) else sink
        key = f"{shipped.name}-{self._token}-{task.task_id}"
        held = list(encoded.shared)
        function: Any = shipped.data
        try:
            if len(shipped.data) >= SCATTER_THRESHOLD:  # a partial holding an array, say
                function = self._shared.acquire(("function", task.function.func_id), function, held)
        except BaseException as exc:
            self._shared.release(held)
            sink.complete_chunk(task.index, Outcome.of_exception(exc))
            return
        entry = _InFlight(task, owner, held)
        with self._lock:
            refusal = self._refusal(owner)
            if refusal is None:
                self._in_flight[key] = entry
        if refusal is not None:
            self._shared.release(held)
            sink.complete_chunk(task.index, Outcome.of_exception(refusal))
            return
        if not sink.claim():
            self._finish(key, None)
            return
        call = Call(self._token, task.kind, task.function.func_id, task.timeout)
        try:
            future = self._client.submit(
                run, call, function, self._initializer, encoded.arguments, key=key, pure=False
            )
        except BaseException as exc:  # this task alone fails: arguments Dask cannot pickle, ...
            self._finish(key, Outcome.of_exception(_why_not_sent(exc, encoded.arguments)))
            return
        with self._lock:
            entry.future = future
            # Cancelled (Ctrl-C) or terminated while it was being submitted: whoever
            # popped it completed it, but could not cancel a future not made yet.
            orphan = self._in_flight.get(key) is not entry
        if orphan:
            try:
                self._client.cancel([future])
            except Exception:
                pass  # a closed client: the scheduler has dropped it already
            return
        future.add_done_callback(self._done.put)

    def close(self) -> None:
        with self._lock:
            if self._state is _EngineState.RUNNING:
                self._state = _EngineState.CLOSING
        self._done.put(None)

    def terminate(self) -> None:
        with self._lock:
            self._state = _EngineState.TERMINATED
            entries = list(self._in_flight.values())
            self._in_flight.clear()
        self._done.put(None)
        reason = PoolTerminatedError("the pool was terminated before the task finished")
        for entry in entries:
            self._shared.release(entry.shared)
            entry.task.sink.complete_chunk(entry.task.index, Outcome.of_exception(reason))
        if self._collector is not threading.current_thread():
            self._collector.join()
        # Closing the client releases every future it holds: the scheduler drops
        # the pool's queued tasks, and running ones end with their workers
        # (a LocalCluster of our own) or run out unheeded (a shared cluster).
        self._shut_down()

    def join(self) -> None:
        if self._collector is not threading.current_thread():
            _waiting.join(self._collector)

    def stats(self) -> PoolStats:
        try:
            present = set(self._client.scheduler_info()["workers"])
        except Exception:  # a closed client: every worker is gone as far as we know
            present = set()
        with self._lock:
            tallies = {address: dataclasses.replace(t) for address, t in self._tally.items()}
            lost, timed_out = self._lost, self._timed_out
        workers = sorted(
            (
                WorkerStats(
                    t.pid,
                    address in present,
                    t.done,
                    t.failed,
                    t.busy_us / 1e6,
                    None if address in present else "left the cluster",
                )
                for address, t in tallies.items()
            ),
            key=lambda w: not w.alive,
        )
        gone = sum(1 for w in workers if not w.alive)
        return PoolStats(tuple(workers), restarts=gone, tasks_lost=lost, tasks_timed_out=timed_out)

    # ---- Ctrl-C -----------------------------------------------------------------------

    def cancel(self, owner: object) -> None:
        """Cancel the tasks of one call (its result object): its caller was interrupted."""
        with self._lock:
            self._cancelled.add(owner)
            keys = [key for key, entry in self._in_flight.items() if entry.owner is owner]
            entries = [self._in_flight.pop(key) for key in keys]
        futures = [entry.future for entry in entries if entry.future is not None]
        if futures:
            try:
                self._client.cancel(futures)
            except Exception:
                pass  # a client that is closing cancels them anyway
            else:
                self._await_let_go([future.key for future in futures])
        reason = _cancelled()
        for entry in entries:
            self._shared.release(entry.shared)
            entry.task.sink.complete_chunk(entry.task.index, Outcome.of_exception(reason))
        self._done.put(None)  # the collector may have the cluster to shut down now

    def _await_let_go(self, keys: list[Hashable]) -> None:
        """Return once the scheduler and every worker have let go of the cancelled ``keys``.

        ``client.cancel`` only sends the cancel on its way: until the scheduler
        has it, it goes on handing queued tasks to workers, and until a worker
        hears of it, that worker starts the tasks it holds as soon as it is
        free. Waiting for both (a few milliseconds; at most CANCEL_PATIENCE
        each) means that once Ctrl-C has raised, none of the call's tasks that
        had not started yet will. Best effort: a scheduler or worker that cannot
        run the probe (no serentak there, say) is not waited for.
        """
        client: Any = self._client
        try:
            client.run_on_scheduler(let_go_on_scheduler, keys, client.id, CANCEL_PATIENCE)
        except Exception:
            pass  # then the workers are asked all the same
        try:
            client.run(let_go_on_worker, keys, CANCEL_PATIENCE, on_error="ignore")
        except Exception:
            pass

    # ---- internals --------------------------------------------------------------------

    def _refusal(self, owner: object) -> BaseException | None:
        """Why a task of ``owner`` cannot be run now (holding the lock); None if it can."""
        if self._broken is not None:
            return self._broken
        if self._state is not _EngineState.RUNNING:
            return PoolTerminatedError("the pool has stopped")
        if owner is not None and owner in self._cancelled:
            return _cancelled()
        return None

    def _finish(self, key: Hashable, outcome: Outcome | None, busy_us: int = 0) -> None:
        """Complete the task under ``key`` (None: drop it), unless someone else did."""
        with self._lock:
            entry = self._in_flight.pop(key, None)
        if entry is None:
            return
        self._shared.release(entry.shared)
        if outcome is not None:
            entry.task.sink.complete_chunk(entry.task.index, outcome, busy_us)
        self._done.put(None)

    def _collect(self) -> None:
        """The collector thread: complete tasks as their futures finish; shut down when closed."""
        while True:
            batch = [self._done.get()]
            while True:
                try:
                    batch.append(self._done.get_nowait())
                except queue.Empty:
                    break
            futures = [future for future in batch if future is not None]
            if futures:
                self._complete(futures)
            # Hold no future while waiting for the next: a future held keeps its
            # result in the cluster's memory.
            del batch, futures
            with self._lock:
                if self._state is _EngineState.TERMINATED:
                    return  # terminate() shuts down, in its own thread
                if self._state is _EngineState.CLOSING and not self._in_flight:
                    break
        self._shut_down()

    def _complete(self, futures: list[Future]) -> None:
        with self._lock:
            taken = [(f, self._in_flight.pop(f.key, None)) for f in futures]
        entries = [(future, entry) for future, entry in taken if entry is not None]
        finished = [future for future, _ in entries if future.status == "finished"]
        replies: dict[Hashable, Reply] = {}
        if finished:
            try:
                gathered = self._client.gather(finished)
                replies = dict(zip((f.key for f in finished), gathered, strict=True))
            except Exception:
                replies = {}  # one of them went wrong meanwhile: each is looked at alone below
        for future, entry in entries:
            self._shared.release(entry.shared)
            reply = replies.get(future.key)
            if reply is None:
                outcome = self._failure_of(future)
                busy_us = 0
            else:
                outcome = Outcome(reply.status is Status.DONE, reply.payload)
                busy_us = reply.busy_us
                self._count(reply)
                if reply.status is Status.INIT_FAILED:
                    self._break(outcome)
            entry.task.sink.complete_chunk(entry.task.index, outcome, busy_us)

    def _failure_of(self, future: Future) -> Outcome:
        """The outcome of a future that did not bring back a reply."""
        with self._lock:
            terminated = self._state is _EngineState.TERMINATED
        if terminated:
            return Outcome.of_exception(
                PoolTerminatedError("the pool was terminated before the task finished")
            )
        try:
            reply = future.result()
        except KilledWorker as exc:
            with self._lock:
                self._lost += 1
            return Outcome.of_exception(_worker_lost(exc))
        except BaseException as exc:
            tb = None
            try:
                tb = future.traceback()
            except BaseException:
                pass  # no traceback to add
            if tb is not None and exc.__cause__ is None:
                exc.__cause__ = RemoteTraceback("".join(traceback.format_tb(tb)))
            return Outcome.of_exception(exc)
        if isinstance(reply, Reply):  # gathered alone after a batch failed: as above
            self._count(reply)
            return Outcome(reply.status is Status.DONE, reply.payload)
        return Outcome.of_exception(ProcessError(f"a Dask worker sent {reply!r}"))

    def _count(self, reply: Reply) -> None:
        with self._lock:
            tally = self._tally.get(reply.worker)
            if tally is None:
                tally = self._tally[reply.worker] = _WorkerTally(reply.pid)
            tally.done += 1
            tally.failed += reply.status is not Status.DONE
            tally.busy_us += reply.busy_us
            self._timed_out += reply.status is Status.TIMED_OUT

    def _break(self, outcome: Outcome) -> None:
        """The initializer raised on a worker: as with serentak.Pool, every task fails with it."""
        try:
            outcome.value()
        except BaseException as exc:
            with self._lock:
                if self._broken is None:
                    self._broken = exc
                entries = list(self._in_flight.values())
                self._in_flight.clear()
                broken = self._broken
            futures = [entry.future for entry in entries if entry.future is not None]
            if futures:
                try:
                    self._client.cancel(futures)
                except Exception:
                    pass
            for entry in entries:
                self._shared.release(entry.shared)
                entry.task.sink.complete_chunk(entry.task.index, Outcome.of_exception(broken))

    def _shut_down(self) -> None:
        """Close the client, and the cluster if the pool started it; once."""
        with self._shutdown_lock:
            if self._shut:
                return
            self._shut = True
            self._shared.clear()
            try:
                self._client.close()
            finally:
                if self._cluster is not None:
                    self._cluster.close()


def _why_not_sent(exc: BaseException, arguments: Any) -> BaseException:
    """What to raise for a task Dask would not take: pickling's own error if the arguments
    do not pickle (as serentak.Pool raises it), rather than Dask's word on its graph."""
    try:
        dumps(arguments)
    except Exception as precise:
        return precise
    return exc


def _cancelled() -> CancelledError:
    return CancelledError("cancelled: its caller was interrupted (KeyboardInterrupt) while waiting")


def _worker_lost(exc: KilledWorker) -> WorkerLostError:
    """Dask's KilledWorker as serentak's error, Dask's as its cause."""
    worker = getattr(exc.last_worker, "address", exc.last_worker)
    tries = exc.allowed_failures + 1
    error = WorkerLostError(
        f"the Dask worker running the task died ({tries} worker{'s' if tries > 1 else ''} "
        f"in turn, the last {worker}; the scheduler allows "
        f"distributed.scheduler.allowed-failures={exc.allowed_failures} retries). A worker "
        "killed by SIGKILL was most often out of memory: see the worker's log"
    )
    error.__cause__ = exc
    return error
