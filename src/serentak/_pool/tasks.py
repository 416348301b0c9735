"""Pool tasks on the wire, and the worker process that runs them.

Each worker has a connection of its own to the pool's supervisor thread, so a
worker that dies in the middle of a write can only garble its own channel::

    supervisor thread                                   worker process
    --------------                                   --------------
                                            <------  READY            (initializer done)
                                            <------  INIT_FAILED      (initializer raised)
    FUNCTION  func_id, pickled callable     ------>  cache it
    APPLY     task_id, func_id, (args, kwds) ----->  run, in arrival order
    MAP       task_id, func_id, [item, ...] ------>  run each item
    STARMAP   task_id, func_id, [args, ...] ------>  run each item
                                            <------  DONE   task_id, busy time, pickled result(s)
                                                     (a map chunk's plain ints: packed
                                                     integers, see pack_result)
                                            <------  FAILED task_id, busy time, pickled Failure
                                            <------  PARTIAL task_id, item count, pickled
                                                     results of a chunk's next items (one too
                                                     big for the progress segment)
                                            <------  RETIRE  (over its memory limit: will
                                                     run nothing more, exits)
    FORGET    func_id                       ------>  drop it from the cache
    STOP                                    ------>  exit

A frame is a fixed 20-byte header (kind, func_id, busy time, task_id) and a payload: the
envelope costs a ``struct.unpack``, not a pickle, and the payload stays raw
bytes until whoever needs the value unpickles it (the caller's ``get()``, not
the supervisor thread).

A task's exception comes back whole: the exception itself if it survives a
pickle round trip, with the worker's formatted traceback; if it does not, a
ProcessError naming its type and message. A result that cannot be pickled
fails its task with the stdlib's MaybeEncodingError. Nothing a task does, BaseExceptions included,
takes the worker loop down: only the process dying does.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import os
import signal
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from serentak._exceptions import MaybeEncodingError, ProcessError, RemoteTraceback
from serentak._ipc.buffers import (
    Packed,
    detach_sent_arrays,
    enable_shared_arrays,
    idle_bytes,
    idle_generation,
    pack,
    publish_idle_arrays,
    trim,
    unpack,
)
from serentak._ipc.connection import Connection
from serentak._ipc.segments import Segment
from serentak._ipc.serialize import dumps, loads
from serentak._os import _native
from serentak._os.waiting import TASK_SPIN

if TYPE_CHECKING:
    from .options import RetryPolicy
    from .results import Outcome

_HEADER: Final = struct.Struct("<BxxxIIQ")
HEADER_SIZE: Final = _HEADER.size
_MAX_BUSY_US: Final = 0xFFFF_FFFF  # 71 minutes: longer tasks report that much


if TYPE_CHECKING:
    from serentak._pool.interfaces import ResultSink


class Kind(enum.IntEnum):
    """What a frame carries."""

    FUNCTION = 1
    FORGET = 2
    APPLY = 3
    MAP = 4
    STARMAP = 5
    STOP = 6
    READY = 7
    DONE = 8
    FAILED = 9
    INIT_FAILED = 10
    RETIRE = 11
    MAP_EACH = 12  # a chunk of imap with adaptive chunks: an item that raises fails alone
    STARMAP_EACH = 13
    PARTIAL = 14  # results of a MAP_EACH/STARMAP_EACH chunk's next items (func_id: how many)


# Chunks whose items fail alone, and whose items' results the worker records one
# by one (see WorkerProgress): a worker's death fails only the item it was running.
EACH_KINDS: Final = frozenset({Kind.MAP_EACH, Kind.STARMAP_EACH})


@dataclasses.dataclass(frozen=True)
class Function:
    """A callable as workers receive it: pickled once (processes) or as is (threads),
    and the id workers cache it under."""

    func_id: int
    payload: Any


@dataclasses.dataclass(eq=False)
class Task:
    """A task as the engine tracks it (owned by the engine's thread once submitted).

    Attributes:
        task_id: unique in the pool.
        kind: APPLY, MAP or STARMAP.
        function: the callable to run.
        payload: the arguments: pickled for processes, as is for threads.
        sink: where the outcome goes, at position ``index``.
        index: the chunk's position in its map (0 for apply).
        timeout: seconds the task may run before its worker is killed.
        started: when it began running (became first in its worker's queue).
        fds: descriptors travelling with the arguments (out-of-band buffers),
            owned by the task until it ends: a task re-queued after its
            worker died is sent again, with them.
        expected: seconds of work the task is expected to take, when its
            sender can tell (an adaptive map's chunk); None when it cannot.
        retry: how often and for what the task runs again; None: it runs once.
        attempt: which run of the task this is (1, then 2 for the first retry...).
        first_failure: the error its first attempt failed with, once retried.
        memory_limit: bytes of resident memory its worker may reach while it
            runs; past them the worker is killed and the task fails.
        items: how many items it holds (1 for apply, a chunk's length for maps).
        partials: results of a chunk's first items that arrived in PARTIAL frames.
        delivered: how many items those hold.
        buffered: bytes of out-of-band buffers travelling in shared memory
            beside the payload (0 for small arguments).
    """

    task_id: int
    kind: Kind
    function: Function
    payload: Any
    sink: ResultSink
    index: int
    timeout: float | None
    started: float | None = None
    fds: tuple[int, ...] = ()
    expected: float | None = None
    retry: RetryPolicy | None = None
    attempt: int = 1
    first_failure: BaseException | None = None
    memory_limit: int | None = None
    items: int = 1
    partials: list[Outcome] = dataclasses.field(default_factory=list)
    delivered: int = 0
    buffered: int = 0

    @classmethod
    def encoded(
        cls,
        task_id: int,
        kind: Kind,
        function: Function,
        payload: Any,
        sink: ResultSink,
        index: int,
        timeout: float | None,
        expected: float | None = None,
        *,
        retry: RetryPolicy | None = None,
        memory_limit: int | None = None,
        items: int = 1,
    ) -> Task:
        """A task for an engine-encoded payload: a Packed message's descriptors go with it."""
        fds: tuple[int, ...] = ()
        buffered = 0
        if isinstance(payload, Packed):
            payload, fds, buffered = payload.payload, payload.fds, payload.buffered
        return cls(
            task_id,
            kind,
            function,
            payload,
            sink,
            index,
            timeout,
            fds=fds,
            expected=expected,
            retry=retry,
            memory_limit=memory_limit,
            items=items,
            buffered=buffered,
        )

    def finish(self, outcome: Outcome, busy_us: int = 0) -> None:
        """The task has ended: release its descriptors, deliver its outcome."""
        for fd in self.fds:
            os.close(fd)
        self.fds = ()
        self.sink.complete_chunk(self.index, outcome, busy_us)


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One message between the supervisor and a worker.

    Attributes:
        kind: what the frame carries.
        task_id: the task it is about (task and result frames).
        func_id: the callable it refers to (FUNCTION, FORGET and task frames).
        payload: pickled data; a view of the receive buffer on arrival, valid
            until the next receive on the same connection.
        busy_us: microseconds the worker spent on the task (DONE, FAILED).
        fds: descriptors that came with the frame (out-of-band buffers); the
            receiver owns them.
    """

    kind: Kind
    task_id: int = 0
    func_id: int = 0
    payload: bytes | memoryview = b""
    busy_us: int = 0
    fds: tuple[int, ...] = ()

    def encode(self) -> bytes:
        """The frame's bytes: header and payload (without the connection's framing)."""
        return _HEADER.pack(self.kind, self.func_id, self.busy_us, self.task_id) + self.payload

    def send(self, conn: Connection) -> None:
        """Write the frame (and its fds) to ``conn``, blocking until it is written."""
        conn.send_frame(self.encode(), self.fds)

    @classmethod
    def receive(cls, conn: Connection) -> Frame:
        """Read one frame from ``conn``.

        Raises:
            EOFError: the other end has closed.
            OSError: the other end died in the middle of a frame.
        """
        data, fds = conn.recv_frame()
        kind, func_id, busy_us, task_id = _HEADER.unpack_from(data)
        return cls(Kind(kind), task_id, func_id, data[HEADER_SIZE:], busy_us, tuple(fds))


@dataclasses.dataclass(frozen=True)
class Failure:
    """A task's exception as it travels back to the caller.

    Attributes:
        exception: the exception, if it survived a pickle round trip; else None.
        type_name: its qualified type name.
        message: ``str()`` of it.
        traceback: the worker's formatted traceback.
    """

    exception: BaseException | None
    type_name: str
    message: str
    traceback: str

    @classmethod
    def of(cls, exc: BaseException, *, note: str = "") -> Failure:
        """Capture ``exc`` (being handled) with its traceback, keeping it only if it pickles."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if note:
            text = f"{note}\n{text}"
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        try:
            kept: BaseException | None = exc
            loads(dumps(exc))  # the caller must be able to unpickle it, too
        except Exception as problem:
            kept = None
            text += f"\n(the exception could not be sent back whole: {problem!r})"
        return cls(kept, name, str(exc), text)

    @classmethod
    def of_result(cls, exc: BaseException, result: object) -> Failure:
        """``exc`` (being handled), raised while pickling ``result``: the caller gets
        the stdlib's MaybeEncodingError, the pickling traceback as its cause."""
        note = f"the result ({type(result).__qualname__}) could not be pickled"
        failure = cls.of(exc, note=note)
        if isinstance(exc, MemoryError):
            # Out of memory is not the result's fault, and its repr() would need
            # more memory still: the caller gets the MemoryError itself.
            return failure
        try:
            wrapped = MaybeEncodingError(exc, result)
        except Exception:  # the result's own repr() raised
            wrapped = MaybeEncodingError(exc, _Unprintable(type(result).__qualname__))
        return dataclasses.replace(
            failure,
            exception=wrapped,
            type_name=f"{MaybeEncodingError.__module__}.{MaybeEncodingError.__qualname__}",
            message=str(wrapped),
        )

    def to_exception(self) -> BaseException:
        """The exception to raise in the caller, the worker's traceback as its cause."""
        exc = self.exception
        if exc is None:
            exc = ProcessError(
                f"a task raised {self.type_name}: {self.message} "
                "(its exception could not be pickled, see the remote traceback)"
            )
        exc.__cause__ = RemoteTraceback(self.traceback)
        return exc


class _Unprintable:
    """Stands for a result whose repr() raised, in a MaybeEncodingError."""

    def __init__(self, type_name: str) -> None:
        self._type_name = type_name

    def __repr__(self) -> str:
        return f"<{self._type_name} object (its repr() raised)>"


def encode_failure(failure: Failure) -> bytes:
    """Pickle ``failure``, falling back to a plain ProcessError if even that fails."""
    try:
        return dumps(failure)
    except Exception:
        return dumps(dataclasses.replace(failure, exception=None))


@dataclasses.dataclass(frozen=True)
class ItemFailed:
    """In the results of a MAP_EACH or STARMAP_EACH chunk: this item raised."""

    failure: Failure


def pack_result(kind: Kind, result: Any, *, lend_arrays: bool = False) -> Packed:
    """A task's result as it goes back: a map chunk's list of plain ints (each within
    int64) as fixed-width integers (written in a third of the time of a pickle, and
    read back faster: see ``load_result``), anything else pickled (``lend_arrays``:
    see buffers.pack)."""
    if kind is Kind.MAP or kind is Kind.STARMAP:
        ints = _native.pack_ints(result)
        if ints is not None:
            return Packed(ints)
    return pack(result, lend_arrays=lend_arrays)


def load_result(payload: bytes | memoryview, fds: Sequence[int]) -> Any:
    """What ``pack_result`` packed (the descriptors go with a pickle's buffers)."""
    if payload[:INTS_TAG_SIZE] == INTS_TAG:
        return _native.unpack_ints(payload)
    return unpack(payload, fds)


# How a packed list of ints begins (then "4" or "8": the bytes per item); a pickle
# of protocol 2 or more begins with the PROTO opcode (0x80) instead.
INTS_TAG: Final = b"SRTKI"
INTS_TAG_SIZE: Final = len(INTS_TAG)


def run_task(kind: Kind, func: Callable[..., Any], args: Any) -> Any:
    """Run one task: an apply, or a chunk of a map or starmap."""
    if kind is Kind.APPLY:
        positional, keywords = args
        return func(*positional, **keywords)
    if kind is Kind.MAP:
        return list(map(func, args))
    if kind is Kind.STARMAP:
        return list(itertools.starmap(func, args))
    spread = kind is Kind.STARMAP_EACH
    results: list[Any] = []
    for item in args:
        try:
            results.append(func(*item) if spread else func(item))
        except BaseException as exc:  # an item's SystemExit fails that item, as a task's does
            results.append(ItemFailed(Failure.of(exc)))
    return results


# A worker's progress, in a small shared segment of its own that the manager
# reads once the worker has died (a SIGKILLed process tells nothing else):
#
#   task_id  u64   the task it last began, written before it unpickles the
#                  arguments: a task sent to a worker that died before reading
#                  it never began, and is sent to another worker instead
#   first    u32   the chunk position of the first recorded item
#   count    u32   items recorded
#   end      u32   where the records end
#   begun    u32   items of the chunk begun: one more than recorded while an
#                  item runs, as many when the worker died between two
#   idle     u64   bytes its message segments and cached mappings keep resident
#                  (buffers.idle_bytes), written at each task's start and end
#   arrays   u64   bytes numpy's freed array segments keep resident, written by
#                  the allocator itself at every change (publish_idle_arrays)
#   records, from PROGRESS_HEAD: u32 length, then an item's result as pack()
#                  made it (records are only made of results without fds)
#
# Each record is written before ``count`` covers it, so a worker killed in the
# middle of one leaves the ones before it intact. ``idle + arrays`` is what the
# memory limits leave out of the worker's resident size (see held_bytes).
_PROGRESS: Final = struct.Struct("<QIIII")
_BEGUN: Final = struct.Struct("<I")
_BEGUN_AT: Final = 20
_IDLE: Final = struct.Struct("=Q")  # native: the allocator writes the arrays word from C
_IDLE_AT: Final = 24
_ARRAYS_AT: Final = 32
_RECORD: Final = struct.Struct("<I")
PROGRESS_HEAD: Final = 40
PROGRESS_BYTES: Final = 256 * 1024


@dataclasses.dataclass(frozen=True)
class WorkerProgress:
    """What a dead worker's progress segment says.

    Attributes:
        task_id: the task it last began (0: none).
        first: the chunk position of ``results[0]``; the items before it came
            back in PARTIAL frames.
        results: the finished items' results, pickled, in order.
        running: whether the item after them had begun.
    """

    task_id: int
    first: int
    results: tuple[bytes, ...]
    running: bool

    @classmethod
    def read(cls, view: memoryview) -> WorkerProgress:
        task_id, first, count, _end, begun = _PROGRESS.unpack_from(view)
        results = []
        offset = PROGRESS_HEAD
        for _ in range(count):
            (length,) = _RECORD.unpack_from(view, offset)
            offset += _RECORD.size
            results.append(bytes(view[offset : offset + length]))
            offset += length
        return cls(task_id, first, tuple(results), begun > first + count)


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """How a worker process runs.

    Attributes:
        max_memory_mb: after a task, a worker whose resident memory exceeds
            this many MiB retires (it is replaced; nothing is lost or repeated).
        environ: variables set in the worker's environment at start-up
            (thread limits for BLAS/OpenMP), before any task imports anything.
        spin: poll for the next task a short while before sleeping (and the
            supervisor for results, while tasks are short): no more workers than
            CPUs, so nobody waits for the CPU a poller holds.
    """

    max_memory_mb: float | None = None
    environ: tuple[tuple[str, str], ...] = ()
    spin: bool = False


_worker_state: dict[str, Any] = {}


def worker_state() -> dict[str, Any]:
    """This worker process's own dictionary, kept from task to task.

    Fill it in the pool's ``initializer`` with what is expensive to build (a
    model, a connection) and read it in the tasks::

        def load():
            serentak.worker_state()["model"] = load_model()

        def predict(x):
            return serentak.worker_state()["model"].predict(x)

        with serentak.Pool(initializer=load) as pool:
            pool.map(predict, inputs)

    In a process that is not a pool worker it is just a dictionary of that process.
    """
    return _worker_state


def idle_cached_bytes(progress: memoryview) -> int:
    """The bytes a worker keeps resident only for reuse, as its progress segment says."""
    (idle,) = _IDLE.unpack_from(progress, _IDLE_AT)
    (arrays,) = _IDLE.unpack_from(progress, _ARRAYS_AT)
    return int(idle) + int(arrays)


def held_bytes(pid: int | str, idle: int) -> int | None:
    """The resident size of process ``pid`` ("self": this one) less ``idle``, the
    bytes it keeps only for reuse (warm segments: see idle_cached_bytes), in bytes;
    None if /proc cannot tell.

    The caches are shared memory, so at most all its resident shared pages are
    left out: what a task allocates privately always counts, and so do its live
    arrays in shared segments (they are no cache)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            fields = statm.read().split()
        resident, shared = int(fields[1]) * _PAGE_SIZE, int(fields[2]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None
    return resident - min(idle, shared)


_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")


def resident_memory_mb(idle: int = 0) -> float:
    """This process's resident set size less ``idle`` (see held_bytes), in MiB."""
    held = held_bytes("self", idle)
    if held is not None:
        return held / 2**20
    import resource

    # The peak, not the current size, where /proc is missing: errs on the side of recycling.
    peak: float = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024


class _WorkerLoop:
    """The worker's state: its connection and the callables the supervisor sent."""

    def __init__(self, conn: Connection, options: WorkerOptions, progress: memoryview) -> None:
        self.conn = conn
        self.options = options
        self.progress = progress
        self.functions: dict[int, Callable[..., Any]] = {}
        self.busy_us = 0  # the last task's
        # Whether numpy allocates big arrays in shared segments here (from the
        # first task that finds numpy loaded): results then travel uncopied.
        self.shared_arrays = False
        self.idle_generation = -1  # that of the idle bytes last written in the progress segment

    def serve(self) -> None:
        # numpy's allocator keeps its idle bytes in the progress segment from now on.
        publish_idle_arrays(self.progress[_ARRAYS_AT : _ARRAYS_AT + _IDLE.size])
        try:
            self.serve_tasks()
        finally:
            publish_idle_arrays(None)  # the segment may be unmapped after us

    def publish_idle(self) -> None:
        """Write what the message segments and mappings keep only for reuse, for
        the supervisor's memory limit to leave out (see held_bytes)."""
        generation = idle_generation()
        if generation != self.idle_generation:  # a tiny task's worker does not recount
            self.idle_generation = generation
            _IDLE.pack_into(self.progress, _IDLE_AT, idle_bytes())

    def serve_tasks(self) -> None:
        conn = self.conn
        spin = self.options.spin
        while True:
            if spin and self.busy_us < SPIN_AFTER_US and not conn.has_buffered_data():
                _spin_until_readable(conn, TASK_SPIN)
            try:
                frame = Frame.receive(conn)
            except (EOFError, OSError):
                return  # the supervisor is gone: nothing left to do
            kind = frame.kind
            if kind is Kind.STOP:
                return
            if kind is Kind.FUNCTION:
                self.functions[frame.func_id] = loads(frame.payload)
            elif kind is Kind.FORGET:
                self.functions.pop(frame.func_id, None)
            else:
                self.run(frame)
                limit = self.options.max_memory_mb
                if limit is not None and self.past(limit):
                    Frame(Kind.RETIRE).send(self.conn)
                    return

    def past(self, limit_mb: float) -> bool:
        """Whether what the tasks hold here is past ``limit_mb``. Past it with the
        warm segments kept for the next tasks only, the worker gives those back
        rather than retire: it stays under the limit, and so does the machine."""
        if resident_memory_mb() <= limit_mb:
            return False
        trim()
        self.publish_idle()
        return resident_memory_mb(idle_cached_bytes(self.progress)) > limit_mb

    def run(self, frame: Frame) -> None:
        task_id = frame.task_id
        started = time.perf_counter()
        _PROGRESS.pack_into(self.progress, 0, task_id, 0, 0, PROGRESS_HEAD, 0)
        try:
            arguments = unpack(frame.payload, frame.fds)
            self.publish_idle()  # the mappings the arguments live in are the task's now
            if not self.shared_arrays:
                self.shared_arrays = enable_shared_arrays()
            if frame.kind in EACH_KINDS:
                result = self.run_each(frame.kind, self.functions[frame.func_id], arguments, frame)
            else:
                result = run_task(frame.kind, self.functions[frame.func_id], arguments)
            del arguments  # its buffers: the sender may refill their segment once they go
        except BaseException as exc:  # a task's SystemExit or KeyboardInterrupt fails the task
            self.reply(Kind.FAILED, task_id, Packed(encode_failure(Failure.of(exc))), started)
            return
        try:
            packed = pack_result(frame.kind, result, lend_arrays=self.shared_arrays)
        except BaseException as exc:
            failure = encode_failure(Failure.of_result(exc, result))
            self.reply(Kind.FAILED, task_id, Packed(failure), started)
            return
        del result  # the pickle holds it now: its memory may be what the frame needs
        try:
            self.reply(Kind.DONE, task_id, packed, started)
        except MemoryError as exc:  # raised before the first byte went: the task fails alone
            note = "the result could not be sent back"
            self.reply(
                Kind.FAILED, task_id, Packed(encode_failure(Failure.of(exc, note=note))), started
            )

    def run_each(
        self, kind: Kind, func: Callable[..., Any], items: Sequence[Any], frame: Frame
    ) -> list[Any]:
        """Run a chunk whose items fail alone, recording each item's result in the
        progress segment as it finishes; a result that does not fit there goes
        to the manager at once, with those before it, in a PARTIAL frame.
        Returns the results not sent yet."""
        spread = kind is Kind.STARMAP_EACH
        view = self.progress
        first = 0
        end = PROGRESS_HEAD
        results: list[Any] = []
        for position, item in enumerate(items):
            _BEGUN.pack_into(view, _BEGUN_AT, position + 1)
            try:
                result = func(*item) if spread else func(item)
            except BaseException as exc:  # an item's SystemExit fails that item, as a task's does
                result = ItemFailed(Failure.of(exc))
            try:
                packed = pack(result, lend_arrays=self.shared_arrays)
            except BaseException as exc:  # this item fails alone
                note = f"the result ({type(result).__qualname__}) could not be pickled"
                result = ItemFailed(Failure.of(exc, note=note))
                packed = pack(result, lend_arrays=self.shared_arrays)
            results.append(result)
            if not packed.fds:
                size = _RECORD.size + len(packed.payload)
                if end + size <= len(view):
                    _RECORD.pack_into(view, end, len(packed.payload))
                    view[end + _RECORD.size : end + size] = packed.payload
                    end += size
                    _PROGRESS.pack_into(
                        view, 0, frame.task_id, first, len(results), end, position + 1
                    )
                    continue
            packed.close()
            if position + 1 == len(items):
                break  # the last one: it goes with the DONE frame
            # The item count rides in the func_id field, unused in result frames.
            partial = pack(results, lend_arrays=self.shared_arrays)
            message = Frame(Kind.PARTIAL, frame.task_id, len(results), partial.payload)
            try:
                dataclasses.replace(message, fds=partial.fds).send(self.conn)
            finally:
                partial.close()
            first = position + 1
            end = PROGRESS_HEAD
            results = []
            result = None
            if self.shared_arrays:
                detach_sent_arrays()
            _PROGRESS.pack_into(view, 0, frame.task_id, first, 0, end, first)
        return results

    def reply(self, kind: Kind, task_id: int, packed: Packed, started: float) -> None:
        busy_us = self.busy_us = min(int((time.perf_counter() - started) * 1e6), _MAX_BUSY_US)
        try:
            # Encoded first: a MemoryError (header and payload are joined in one
            # buffer) comes before anything is written, so the caller can still
            # send a FAILED frame in its place.
            data = Frame(kind, task_id, 0, packed.payload, busy_us).encode()
            self.conn.send_frame(data, packed.fds)
        finally:
            packed.close()
        if self.shared_arrays:
            detach_sent_arrays()
        self.publish_idle()


# Only after a task this short: after a longer one, the next task is either sent
# ahead already or a round trip away, which is small beside the task, and the
# CPU the polling would take is better left to the other processes.
SPIN_AFTER_US: Final = 200


def _spin_until_readable(conn: Connection, seconds: float) -> None:
    """Poll ``conn`` without sleeping for up to ``seconds``: a task that comes
    meanwhile is taken without the process being woken up (on a virtual machine,
    waking an idle CPU costs tens of microseconds). The poll yields the CPU to
    any process waiting for it: the parent whose next task we wait for may be
    one, when the CPUs are oversubscribed."""
    if not conn.has_buffered_data():
        _native.spin_readable(conn.fileno(), seconds)


def worker_main(
    conn: Connection,
    initializer: Callable[..., object] | None,
    initargs: Sequence[Any],
    options: WorkerOptions,
    progress: Segment,
) -> None:
    """The target of every pool worker process; ``progress``: see :class:`WorkerProgress`."""
    _worker_state.clear()  # a forked worker starts as empty as a spawned one
    for name, value in options.environ:
        os.environ.setdefault(name, value)
    # Ctrl-C reaches the whole process group; the parent decides what it means
    # (its pool terminates us), and workers print no KeyboardInterrupt tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            note = f"the pool's initializer {initializer!r} raised"
            payload = encode_failure(Failure.of(exc, note=note))
            Frame(Kind.INIT_FAILED, 0, 0, payload).send(conn)
            return
    Frame(Kind.READY).send(conn)
    _WorkerLoop(conn, options, progress.buf).serve()


def describe_exit(pid: int, exitcode: int | None) -> str:
    """How a worker ended, for WorkerLostError messages."""
    if exitcode is None:
        return f"worker process {pid} ended (exit code unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (often the kernel's out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"worker process {pid} was killed by {name}{hint}"
    return f"worker process {pid} exited with code {exitcode}"


def monotonic() -> float:
    """The clock the pool measures task times and deadlines with."""
    return time.monotonic()
