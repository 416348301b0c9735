"""Queue, JoinableQueue and SimpleQueue: a ring in shared memory that survives crashed peers.

Data flow::

    producer (any process/thread)      shared memory (memfd)        consumer (any process)
    -----------------------------      ---------------------        ----------------------
    put(obj): pickle here (errors      ring (src/native/ring.c)     get(): Ring.get copies the
      raise); bytes go as they are     [rec|rec|rec|....]           oldest record out under
      Ring.put copies a record in ───▶ tail, head: one 64-bit ────▶ the reader lock, moves
      under the writer lock, then      word each (count, bytes)     head; unpickle outside
      moves tail                                                    the lock
      ring full, unbounded Queue:
        this process's buffer ─┐       socket pair (SEQPACKET)
                               ▼       [tag+fds|tag+fds|...] ─────▶ HOLD record: take the
    feeder thread (one per process     only for messages that       datagram with its tag
      and queue, while its buffer      carry fds or do not fit      under the same lock
      is not empty): waits for room    in the ring (a memfd)
      and puts from its front

The ring does the work: one C call per put and per get, a memcpy each way,
and a futex wake only when the other side sleeps (``src/native/ring.c``
draws its layout). Its two positions are each published with one atomic
store after the bytes they cover are complete, so a process killed in the
middle of a put leaves an invisible half record that the next writer
overwrites, and one killed in the middle of a get leaves head where it was:
the next reader takes the same message again. The lock words name their
owner's pid and are taken over when it has died.

Messages the ring cannot hold go beside it. A message that carries file
descriptors (a Connection, a Lock) or is bigger than a quarter of the ring (it
then travels in a memfd of the sender's segment pool, ``_ipc/buffers.py``: any
size works, its pages are reused for the next big message instead of being
allocated and zeroed afresh, and the kernel frees it with its last holder) is
a HOLD record in the ring plus a datagram on the socket pair holding the fds,
both tagged with a number given out under the writer lock. The datagram is
sent before the record is published and received under the reader lock, so:

* writer killed between the two: an orphan datagram with an older tag than
  any record; the next reader of a HOLD record discards it (closing its fds);
* reader killed between receiving the datagram and moving head: the next
  reader finds the datagram gone (the socket is empty or holds a newer tag),
  skips the record and counts it in ``lost``: the message in flight is lost.

The shared words beside the ring (after its header)::

    done         task_done() calls (JoinableQueue)          compare-and-swap
    lost         HOLD records skipped (their reader died)   reader lock holder
    slots[]      per process: pid, messages its feeder      the process itself; claimed and
                 holds (an unbounded Queue whose ring        reclaimed (pid gone) under the
                 was full)                                   writer lock

``qsize() = put - taken + held`` and a JoinableQueue has ``put + held - done
- lost`` unfinished tasks. A process killed with messages in its feeder loses
them (as with the stdlib's feeder thread); its slot is reclaimed once it is
seen dead, so counts and ``join()`` do not wait for them. A consumer killed
after ``get()`` and before ``task_done()`` leaves that task unfinished, as it
should.

Threads: a put sends directly when nothing of its process is buffered, so
that each producer's messages keep their order; the feeder thread owns
sending from the buffer, and ``_Local.mutex`` orders the two.
"""

from __future__ import annotations

import array
import collections
import ctypes
import dataclasses
import os
import pickle
import socket
import struct
import threading
import time
import traceback
import types
import weakref
from collections.abc import Iterable, Sequence
from queue import Empty, Full
from typing import Any, Final

from serentak._ipc.buffers import SegmentRead, to_segment
from serentak._ipc.serialize import dumps_with_fds, fd_received, fd_to_send, loads_with_fds
from serentak._os import _native
from serentak._os import posix as _posix
from serentak._os.waiting import SIGNAL_SPAN, wait_span
from serentak._process.process import register_before_exit

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

# ---- constants -------------------------------------------------------------------

_MASK: Final = 0xFFFF_FFFF
_HALF: Final = 0x8000_0000
_MINUS_ONE: Final = _MASK  # Futex.add works modulo 2**32
_PID_MASK: Final = _native.PID_MASK  # the lock-word layout, defined in native.h
_WAITERS: Final = _native.WAITERS
_WAKE_ALL: Final = 0x7FFF_FFFF
# Longest uninterrupted sleep: how late a dead lock owner is noticed, and how
# late Ctrl-C is seen when it went to another thread.
# Bytes of record space. Pages are the kernel's only once touched, so a queue
# of small messages that never backs up costs what it uses. 8 MiB lets 1 MiB
# messages stream with several in flight (bench_queue.py: 1 MiB messages at
# the speed of memcpy, where a 2 MiB ring stalls the producer on every wrap).
_RING_BYTES: Final = 8 << 20
# Bigger payloads travel in a memfd beside the ring, so that one message never
# takes most of it.
_IN_RING_MAX: Final = _RING_BYTES // 4
_SLOTS: Final = 128
_MAX_FDS: Final = 253  # SCM_MAX_FD
_ANCILLARY: Final = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
_TAG: Final = struct.Struct("<I")  # a side datagram: the tag of its record
_SIDE: Final = struct.Struct("<IQ")  # a HOLD record starts with: tag, size of the memfd payload
_NO_FDS: Final[tuple[int, ...]] = ()
# Exact str, bytes, numbers, None, and tuples, lists, dicts and sets of them
# pickle without a reducer (no by-value functions, no handles with fds): the
# plain C pickler is four times faster than the full one for small messages.
# They are checked in C (_native.plain_data) up to this many objects, a KiB
# of str or bytes counting as one; bigger messages amortise the full
# pickler's set-up, and its reused stream beats pickle.dumps on big data.
_PLAIN_BUDGET: Final = 64
_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
_PEEK: Final = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
_RECEIVE_FLAGS: Final = int(socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)

# A record's kind: the encoding, and flags.
_PICKLE: Final = 0
_BYTES: Final = 1  # a bytes object's contents: no pickling
_BYTEARRAY: Final = 2  # a bytearray's contents
_ENCODING: Final = 0x7F
_IN_SEGMENT: Final = 0x80  # the payload is in the memfd that is the datagram's first fd
_HOLD: Final = _native.RING_HOLD  # fds travel in a datagram beside the record

# ---- this process ------------------------------------------------------------------

_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _after(a: int, b: int) -> bool:
    """True if count or tag ``a`` comes after ``b`` (modulo 2**32)."""
    return 0 < ((a - b) & _MASK) < _HALF


def _signed(value: int) -> int:
    value &= _MASK
    return value - (1 << 32) if value & _HALF else value


def _deadline(block: bool, timeout: float | None) -> float | None:
    """The monotonic time a wait ends (0.0: do not wait; None: no limit)."""
    if not block:
        return 0.0
    if timeout is None:
        return None
    return time.monotonic() + max(timeout, 0.0)


def _sleep_for(deadline: float | None) -> float:
    """How long the next sleep may last; 0 or less once ``deadline`` has passed."""
    if deadline is None:
        return SIGNAL_SPAN
    return min(SIGNAL_SPAN, deadline - time.monotonic())


# ---- the shared words beside the ring ------------------------------------------------


class _Slot(ctypes.Structure):
    _fields_ = (("pid", ctypes.c_uint32), ("held", ctypes.c_uint32))


class _JoinableCounts(ctypes.Structure):
    _fields_ = (
        ("done", ctypes.c_uint32),
        ("lost", ctypes.c_uint32),
        ("slots_used", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("slots", _Slot * _SLOTS),
    )


def _futex(segment: memoryview, offset: int) -> _native.Futex:
    return _native.Futex(segment[offset : offset + 4])


class _WriterLock:
    """The ring's writer lock, taken from Python (ring.c takes it too, with the same protocol).

    The word is 0 when free, else the owner's pid, with WAITERS set once
    someone sleeps on it; beside it, the stamp word holds the owner's start
    stamp (written just after taking the word, cleared just before releasing
    it), so that a reused pid is not taken for the owner. A sleeper wakes every
    ``SIGNAL_SPAN`` to check that the owner is alive and takes the lock over if
    it is not (the C routine the Locks and ring.c use).
    """

    __slots__ = ("_stamp", "_word")

    def __init__(self, word: _native.Futex, stamp: _native.Futex) -> None:
        self._word = word
        self._stamp = stamp

    def acquire(self) -> None:
        word = self._word
        me = _pid
        if word.compare_exchange(0, me):
            self._stamp.compare_exchange(0, _native.start_stamp())
            return
        while True:
            current = word.load()
            if current == 0:
                # Others may be asleep: keep WAITERS so that our release wakes one.
                if word.compare_exchange(0, me | _WAITERS):
                    self._stamp.compare_exchange(0, _native.start_stamp())
                    return
                continue
            if not current & _WAITERS:
                if not word.compare_exchange(current, current | _WAITERS):
                    continue
                current |= _WAITERS
            if word.wait(current, SIGNAL_SPAN):
                continue
            if word.take_over(self._stamp, current, _PID_MASK, me | _WAITERS):
                return

    def release(self) -> None:
        word = self._word
        self._stamp.compare_exchange(_native.start_stamp(), 0)  # before the word
        if not word.compare_exchange(_pid, 0):
            word.compare_exchange(_pid | _WAITERS, 0)
            word.wake(1)

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- messages waiting in a feeder ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _EncodedMessage:
    """An encoded message.

    Attributes:
        kind: the encoding, with _IN_SEGMENT if its payload is in a memfd.
        payload: the bytes (empty for a memfd).
        size: the payload's size in the memfd.
        fds: the memfd first (if any), then the handles' fds; owned by a
            buffered message (dups), borrowed otherwise.
    """

    kind: int
    payload: bytes | bytearray
    size: int
    fds: Sequence[int]

    def owned_copy(self) -> _EncodedMessage:
        return _EncodedMessage(
            self.kind, bytes(self.payload), self.size, tuple(map(os.dup, self.fds))
        )

    def discard(self) -> None:
        for fd in self.fds:
            _posix.close_quietly(fd)


class _Local:
    """What one process keeps for one queue: its feeder buffer and thread.

    ``mutex`` orders the buffer's changes and this process's slot count;
    the feeder thread puts from the front of ``buffer`` and removes a message
    only once it is in the ring, so a put that finds the buffer not empty
    queues behind it. ``sending``: the feeder is putting ``buffer[0]`` (outside
    the mutex); while it is not, a putting thread moves what the ring has room
    for itself (see ``_Channel._drain_locked``).
    """

    __slots__ = (
        "__weakref__",
        "buffer",
        "cancelled",
        "closing",
        "idle",
        "mutex",
        "pid",
        "sending",
        "slot",
        "thread",
    )

    def __init__(self) -> None:
        self.pid = _pid
        self.mutex = threading.Lock()
        self.idle = threading.Condition(self.mutex)
        self.buffer: collections.deque[_EncodedMessage] = collections.deque()
        self.thread: threading.Thread | None = None
        self.slot = -1
        self.closing = False
        self.cancelled = False
        self.sending = False

    def drain(self) -> None:
        """Wait until the feeder has put everything (unless the join was cancelled)."""
        with self.mutex:
            while self.thread is not None and not self.cancelled:
                # The feeder may wait for a reader for ever: the main thread
                # wakes in spans for a Ctrl-C another thread took (see _waiting).
                self.idle.wait(wait_span(None))


class _ExitFlush:
    """Flush every feeder of this process at its normal exit, as the stdlib joins its feeders."""

    def __init__(self) -> None:
        self._pid = -1
        self._locals: weakref.WeakSet[_Local] = weakref.WeakSet()

    def watch(self, local: _Local) -> None:
        if self._pid != _pid:
            # First feeder in this process (a forked child inherits a stale copy).
            self._pid = _pid
            self._locals = weakref.WeakSet()
            register_before_exit(self._flush)
        self._locals.add(local)

    def _flush(self) -> None:
        for local in list(self._locals):
            local.drain()


_exit_flush: Final = _ExitFlush()


# ---- encoding -------------------------------------------------------------------------------


def _encode(obj: Any) -> _EncodedMessage:
    """Pickle ``obj`` (raising here if it cannot be); big payloads go to a memfd."""
    cls = type(obj)
    fds: Sequence[int] = _NO_FDS
    if cls is bytes:
        payload: bytes | bytearray = obj
        kind = _BYTES
    elif cls is bytearray:
        payload, kind = obj, _BYTEARRAY
    elif _native.plain_data(obj, _PLAIN_BUDGET):
        payload, kind = pickle.dumps(obj, 5), _PICKLE
    else:
        payload, fds = dumps_with_fds(obj)
        kind = _PICKLE
    if len(fds) >= _MAX_FDS:
        raise ValueError(f"a queued object can carry at most {_MAX_FDS - 1} file descriptors")
    return _package(kind, payload, fds)


def _package(kind: int, payload: bytes | bytearray, fds: Sequence[int]) -> _EncodedMessage:
    """An encoded message: in the ring if it fits a quarter of it, else in a memfd."""
    if len(payload) <= _IN_RING_MAX - _SIDE.size:
        return _EncodedMessage(kind, payload, 0, fds)
    return _EncodedMessage(kind | _IN_SEGMENT, b"", len(payload), (to_segment(payload), *fds))


def _decode(kind: int, payload: bytes | memoryview, fds: Sequence[int]) -> Any:
    """The object a payload holds (``fds`` are the handles' descriptors, closed after)."""
    encoding = kind & _ENCODING
    if encoding == _PICKLE:
        return loads_with_fds(payload, fds) if fds else pickle.loads(payload)
    if encoding == _BYTES:
        return payload if type(payload) is bytes else bytes(payload)
    return bytearray(payload)


def _load_segment(kind: int, fd: int, size: int, fds: Sequence[int]) -> Any:
    """The object in the pooled segment ``fd`` (which is closed) holding ``size`` bytes."""
    try:
        reading = SegmentRead(fd, size)
    except BaseException:
        for other in fds:
            os.close(other)
        raise
    with reading as view:
        return _decode(kind, view, fds)


def _fds_in(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


# ---- the channel ------------------------------------------------------------------------


def _close_handles(memfd: int, *sockets: socket.socket) -> None:
    # The mapping stays until the last view of it (the futexes', the Ring's own) goes.
    for sock in sockets:
        sock.close()
    os.close(memfd)


class _Channel:
    """A queue's ring, its side sockets and shared words (see the module documentation).

    Args:
        maxsize: the capacity in messages, 0 for unbounded.
        buffering: whether a put that finds the ring full leaves the message
            to a feeder thread (unbounded Queue) or waits (the others).
    """

    def __init__(self, maxsize: int, *, buffering: bool) -> None:
        writer, reader = _posix.socketpair(socket.SOCK_SEQPACKET)
        try:
            memfd = _posix.memfd("serentak-queue", _native.RING_HEADER + _RING_BYTES)
        except BaseException:
            writer.close()
            reader.close()
            raise
        self._attach(maxsize, buffering, memfd, writer, reader)

    def _attach(
        self,
        maxsize: int,
        buffering: bool,
        memfd: int,
        writer: socket.socket,
        reader: socket.socket,
    ) -> None:
        self._maxsize = maxsize
        self._buffering = buffering
        self._memfd = memfd
        self._writer = writer
        self._reader = reader
        self._closer = weakref.finalize(self, _close_handles, memfd, writer, reader)
        try:
            self._ring = _native.Ring(memfd, _native.RING_HEADER + _RING_BYTES)
        except BaseException:
            self._closer()
            raise
        segment = self._ring_view = memoryview(self._ring)
        self._shared = _JoinableCounts.from_buffer(segment, _native.RING_USER)
        self._writer_lock = _WriterLock(
            _futex(segment, _native.RING_WRITER_LOCK), _futex(segment, _native.RING_WRITER_STAMP)
        )
        self._side_tag = _futex(segment, _native.RING_SIDE_TAG)
        self._head_count = _futex(segment, _native.RING_HEAD_COUNT)
        self._space_waiters = _futex(segment, _native.RING_SPACE_WAITERS)
        user = _native.RING_USER
        self._done = _futex(segment, user + _JoinableCounts.done.offset)
        self._lost = _futex(segment, user + _JoinableCounts.lost.offset)
        self._local_state = _Local()

    def __reduce__(self) -> tuple[Any, ...]:
        return _attach_channel, (
            self._maxsize,
            self._buffering,
            fd_to_send(self._memfd, "Queue"),
            fd_to_send(self._writer.fileno(), "Queue"),
            fd_to_send(self._reader.fileno(), "Queue"),
        )

    def refuse_unless_spawning(self, what: str) -> None:
        """Raise the stdlib's RuntimeError, naming ``what``, unless a child is being started."""
        fd_to_send(self._writer.fileno(), what)

    def _local(self) -> _Local:
        local = self._local_state
        if local.pid != _pid:
            # A forked child: the parent's buffer and feeder are not ours to send.
            local = self._local_state = _Local()
        return local

    # ---- putting ------------------------------------------------------------------------

    def put(self, obj: Any, deadline: float | None) -> None:
        """Encode ``obj`` and queue it.

        Raises:
            queue.Full: the queue stayed full until ``deadline``.
        """
        cls = type(obj)
        # The common case first, with no call to spare.
        if cls is bytes:
            kind, payload = _BYTES, obj
        elif _native.plain_data(obj, _PLAIN_BUDGET):
            kind, payload = _PICKLE, pickle.dumps(obj, 5)
        else:
            self._put_encoded(_encode(obj), deadline)
            return
        if len(payload) > _IN_RING_MAX - _SIDE.size:
            self._put_encoded(_package(kind, payload, _NO_FDS), deadline)
            return
        if not self._buffering:
            if not self._ring.put(kind, payload, self._maxsize, deadline, False):
                raise Full
            return
        local = self._local_state
        if local.buffer or local.pid != _pid or not self._ring.put(kind, payload, 0, 0.0, False):
            self._put_encoded(_EncodedMessage(kind, payload, 0, _NO_FDS), deadline)

    def _put_encoded(self, message: _EncodedMessage, deadline: float | None) -> None:
        try:
            if self._buffering:
                local = self._local()
                with local.mutex:
                    if local.buffer:
                        self._drain_locked(local)
                    if not local.buffer and self._publish(message, 0.0):
                        return
                    if self._buffer_locked(local, message):
                        return
                # No slot to count it in: wait for room here instead.
                deadline = None
            if not self._publish(message, deadline):
                raise Full
        finally:
            if message.kind & _IN_SEGMENT:
                # Sent or not, the memfd is no longer ours to keep: a datagram
                # holds it, and a buffered message owns a dup.
                os.close(message.fds[0])

    def _publish(self, message: _EncodedMessage, deadline: float | None) -> bool:
        """Put ``message`` in the ring; False if it found no room by ``deadline``."""
        if not message.fds:
            return bool(
                self._ring.put(message.kind, message.payload, self._maxsize, deadline, False)
            )
        return self._publish_beside(message, deadline)

    def _publish_beside(self, message: _EncodedMessage, deadline: float | None) -> bool:
        """A HOLD record, its fds in a datagram sent first (see the module documentation)."""
        length = _SIDE.size + len(message.payload)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", message.fds))]
        while True:
            seen = self._head_count.load()
            with self._writer_lock:
                # Under the writer lock room only grows: check before sending,
                # so that no datagram is sent for a record that will not follow.
                if self._ring.fits(length, self._maxsize):
                    tag = self._side_tag.add(1)
                    try:
                        self._writer.sendmsg([_TAG.pack(tag)], rights, _DONTWAIT)
                    except BlockingIOError:
                        pass  # the socket is full: wait as for room in the ring
                    else:
                        record = _SIDE.pack(tag, message.size) + message.payload
                        return bool(
                            self._ring.put(message.kind | _HOLD, record, self._maxsize, 0.0, True)
                        )
            wait = _sleep_for(deadline)
            if wait <= 0:
                return False
            self._space_waiters.add(1)
            try:
                self._head_count.wait(seen, wait)
            finally:
                self._space_waiters.add(_MINUS_ONE)

    def _drain_locked(self, local: _Local) -> None:
        """Put, in order, what of the buffer the ring has room for now, from this
        (putting) thread. Once the ring was full for a moment (its reader late,
        descheduled), every later put went to the feeder thread, and that thread
        and the producing one handed the GIL back and forth for each message: the
        queue stayed ten times slower for as long as the producer kept putting."""
        buffer = local.buffer
        while buffer and not local.sending:
            message = buffer[0]
            # One whose fds go in a datagram is left to the feeder: the socket's
            # few datagrams, not the ring, are what hold those back, and a put
            # trying them each time only adds failed sends to a loaded machine.
            if message.fds or not self._publish(message, 0.0):
                return
            buffer.popleft()
            self._shared.slots[local.slot].held -= 1
            message.discard()

    def _buffer_locked(self, local: _Local, message: _EncodedMessage) -> bool:
        """Leave the message to this process's feeder thread; False if no slot is free."""
        slot = self._claim_slot(local)
        if slot < 0:
            return False
        owned = message.owned_copy()
        self._shared.slots[slot].held += 1
        local.buffer.append(owned)
        if local.thread is None:
            local.thread = threading.Thread(
                target=self._feed, args=(local,), name="QueueFeederThread", daemon=True
            )
            local.thread.start()
            _exit_flush.watch(local)
        return True

    def _feed(self, local: _Local) -> None:
        """The feeder thread: put this process's buffer in order, then exit."""
        buffer = local.buffer
        while True:
            with local.mutex:
                if not buffer:
                    local.thread = None
                    local.idle.notify_all()
                    if local.closing:
                        self._closer()
                    return
                message = buffer[0]
                local.sending = True
            try:
                self._publish(message, None)
            except Exception:
                traceback.print_exc()  # this message is lost; the next ones go on
            with local.mutex:
                # Out of the buffer only once in the ring: puts made meanwhile queue behind it.
                local.sending = False
                buffer.popleft()
                self._shared.slots[local.slot].held -= 1
            message.discard()

    def _claim_slot(self, local: _Local) -> int:
        """This process's slot, claimed on first use; -1 if the table is full of live processes."""
        shared = self._shared
        if local.slot >= 0 and shared.slots[local.slot].pid == _pid:
            return local.slot
        with self._writer_lock:
            for attempt in range(2):
                for index in range(shared.slots_used):
                    if shared.slots[index].pid == 0:
                        break
                else:
                    index = shared.slots_used
                    if index == _SLOTS:
                        if attempt == 0:
                            self._reclaim_dead_locked()
                            continue
                        return -1
                    shared.slots_used = index + 1
                shared.slots[index].held = 0
                shared.slots[index].pid = _pid
                local.slot = index
                return index
        return -1

    def _reclaim_dead_locked(self) -> None:
        """Free the slots of dead processes: what their feeders held will never come."""
        shared = self._shared
        for index in range(shared.slots_used):
            slot = shared.slots[index]
            if slot.pid and slot.pid != _pid and _posix.pid_gone(slot.pid):
                slot.held = 0
                slot.pid = 0

    def _held(self) -> int:
        """Messages in feeder buffers, reclaiming those of dead processes first."""
        shared = self._shared
        slots = shared.slots
        if not any(slots[index].held for index in range(shared.slots_used)):
            return 0
        with self._writer_lock:
            self._reclaim_dead_locked()
        return sum(slots[index].held for index in range(shared.slots_used))

    # ---- getting ------------------------------------------------------------------------

    def get(self, deadline: float | None) -> Any:
        """Take the next message.

        Raises:
            queue.Empty: nothing came before ``deadline``.
        """
        while True:
            try:
                got = self._ring.get(deadline)
            except BaseException:
                # A signal's handler (Ctrl-C) runs right after a C call and drops what
                # it returned: a HOLD record stays for the next reader, lock released.
                self._ring.drop_hold()
                raise
            if got is None:
                raise Empty
            kind, payload = got
            if kind == _PICKLE:
                return pickle.loads(payload)
            if kind == _BYTES:
                return payload
            if not kind & _HOLD:
                return _decode(kind, payload, _NO_FDS)
            try:
                tag, size = _SIDE.unpack_from(payload)
                fds = self._receive_beside(tag)
            except BaseException:
                # Interrupted before the fds were ours: the next reader takes the record
                # again (or, if they were taken as it struck, counts it lost).
                self._ring.drop_hold()
                raise
            self._ring.finish_hold()
            if fds is not None:
                if kind & _IN_SEGMENT:
                    return _load_segment(kind, fds[0], size, fds[1:])
                with memoryview(payload) as view:
                    return _decode(kind, view[_SIDE.size :], fds)
            # The reader that took this message's datagram died before
            # finishing: the message is lost; the next one is ours.
            self._lost.add(1)
            self._done.wake(_WAKE_ALL)

    def _receive_beside(self, tag: int) -> list[int] | None:
        """The fds of the datagram tagged ``tag`` (reader lock held); None if it is gone."""
        reader = self._reader
        while True:
            try:
                # Peeking without room for fds: the kernel keeps them queued.
                found = _TAG.unpack(reader.recv(_TAG.size, _PEEK))[0]
            except BlockingIOError:
                return None
            if _after(found, tag):
                return None
            _nbytes, ancillary, _flags, _address = reader.recvmsg(
                _TAG.size, _ANCILLARY, _RECEIVE_FLAGS
            )
            fds = _fds_in(ancillary)
            if found == tag:
                return fds
            for fd in fds:  # an orphan: its writer died before publishing the record
                os.close(fd)

    # ---- sizes ------------------------------------------------------------------------------

    def qsize(self) -> int:
        """Messages put and not yet taken, buffered ones included."""
        put, taken = self._ring.counts()
        return max(0, _signed(put - taken)) + self._held()

    def empty(self) -> bool:
        """True if the ring is empty (buffered messages do not count, as in the stdlib)."""
        put, taken = self._ring.counts()
        return put == taken

    # ---- JoinableQueue ----------------------------------------------------------------------

    def _unfinished(self, done: int) -> int:
        put, _taken = self._ring.counts()
        return _signed(put - done - self._lost.load()) + self._held()

    def task_done(self) -> None:
        """Count one task as finished.

        Raises:
            ValueError: more task_done() calls than messages put.
        """
        done_word = self._done
        while True:
            done = done_word.load()
            unfinished = self._unfinished(done)
            if unfinished <= 0:
                raise ValueError("task_done() called too many times")
            if done_word.compare_exchange(done, (done + 1) & _MASK):
                if unfinished == 1:
                    done_word.wake(_WAKE_ALL)
                return

    def join(self) -> None:
        """Wait until every message put has had its task_done()."""
        done_word = self._done
        while True:
            done = done_word.load()
            if self._unfinished(done) <= 0:
                return
            # Slices: a producer may die with messages in its feeder.
            done_word.wait(done, SIGNAL_SPAN)

    # ---- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release this process's handles once its feeder has put what it buffered."""
        local = self._local()
        with local.mutex:
            local.closing = True
            if local.thread is None:
                self._closer()

    def join_feeder(self) -> None:
        """Wait until this process's feeder has put everything."""
        self._local().drain()

    def cancel_join(self) -> None:
        """Do not wait for this process's feeder at exit (buffered messages may be lost)."""
        local = self._local()
        with local.mutex:
            local.cancelled = True
            local.idle.notify_all()


def _attach_channel(
    maxsize: int, buffering: bool, memfd: int, writer: int, reader: int
) -> _Channel:
    channel = _Channel.__new__(_Channel)
    writer_socket = _posix.adopt_socket(os.dup(fd_received(writer)))
    reader_socket = _posix.adopt_socket(os.dup(fd_received(reader)))
    channel._attach(maxsize, buffering, os.dup(fd_received(memfd)), writer_socket, reader_socket)
    return channel


# ---- the public queues -------------------------------------------------------------------------


class Queue:
    """A FIFO queue between processes: the stdlib's ``multiprocessing.Queue``.

    Objects are pickled in ``put()``, so one that cannot be pickled raises
    there. ``put()`` on an unbounded queue copies the message into the ring
    at once, or, if the ring is full, hands it to this process's feeder
    thread, and returns. A process killed in the middle of a put or a get
    costs the queue at most the message in flight (see the module
    documentation).

    Args:
        maxsize: the most messages the queue holds; 0 or less for no limit.
        ctx: the context that made the queue (accepted for the stdlib's signature).
    """

    @classmethod
    def __class_getitem__(cls, item: Any) -> types.GenericAlias:
        return types.GenericAlias(cls, item)

    def __init__(self, maxsize: int = 0, *, ctx: Any = None) -> None:
        bounded = maxsize > 0
        self._maxsize = maxsize if bounded else _native.SEM_VALUE_MAX
        self._channel = _Channel(maxsize if bounded else 0, buffering=not bounded)
        self._closed = False
        # Whether this process has put: as in the stdlib, close() takes the
        # handles empty() needs only from a queue that was used.
        self._used = False

    def __reduce__(self) -> tuple[Any, ...]:
        self._channel.refuse_unless_spawning(type(self).__name__)
        return _rebuild_queue, (type(self), self._maxsize, self._channel)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj`` in the queue.

        Args:
            obj: any picklable object.
            block: wait for a free slot if the queue is full.
            timeout: the most seconds to wait; None waits as long as needed.

        Raises:
            queue.Full: no slot became free in time (or at once if not ``block``).
            ValueError: the queue is closed.
            Exception: whatever pickling ``obj`` raises.
        """
        if self._closed:
            self._check_open()
        self._used = True
        self._channel.put(obj, None if block and timeout is None else _deadline(block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest object.

        Args:
            block: wait for an object if the queue is empty.
            timeout: the most seconds to wait; None waits as long as needed.

        Raises:
            queue.Empty: nothing came in time (or at once if not ``block``).
            ValueError: the queue is closed.
        """
        if self._closed:
            self._check_open()
        return self._channel.get(None if block and timeout is None else _deadline(block, timeout))

    def put_many(
        self, objs: Iterable[Any], block: bool = True, timeout: float | None = None
    ) -> None:
        """Put each of ``objs`` in order (an extra of serentak's: one call for many).

        Args:
            objs: picklable objects.
            block: wait for free slots if the queue is full.
            timeout: the most seconds to wait in all.

        Raises:
            queue.Full: the queue stayed full; the objects before the one that
                did not fit were put.
            ValueError: the queue is closed.
        """
        self._check_open()
        self._used = True
        deadline = _deadline(block, timeout)
        put = self._channel.put
        for obj in objs:
            put(obj, deadline)

    def get_many(
        self, max_items: int, block: bool = True, timeout: float | None = None
    ) -> list[Any]:
        """Remove and return up to ``max_items`` objects, oldest first (a serentak extra).

        Waits (as ``get()`` does) only for the first; then takes what is there.

        Raises:
            queue.Empty: nothing came in time.
            ValueError: the queue is closed.
        """
        self._check_open()
        get = self._channel.get
        items = [get(_deadline(block, timeout))]
        try:
            while len(items) < max_items:
                items.append(get(0.0))
        except Empty:
            pass
        return items

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, False)``."""
        self.put(obj, False)

    def get_nowait(self) -> Any:
        """``get(False)``."""
        return self.get(False)

    def qsize(self) -> int:
        """The approximate number of objects in the queue (it changes as others put and get)."""
        return self._channel.qsize()

    def empty(self) -> bool:
        """True if the queue looks empty (objects still in a feeder thread do not count).

        Raises:
            OSError: the queue was closed after this process put to it (the
                stdlib's behaviour: its close() releases the reading handle
                then; ``qsize()`` and ``full()`` keep working, as there).
        """
        if self._closed and self._used:
            raise OSError("handle is closed")
        return self._channel.empty()

    def full(self) -> bool:
        """True if the queue looks full."""
        return self._channel.qsize() >= self._maxsize

    def close(self) -> None:
        """No more puts or gets from this process; its feeder still puts what it buffered."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def join_thread(self) -> None:
        """Wait until this process's feeder thread has put everything; only after close().

        Raises:
            AssertionError: the queue is not closed (as the stdlib).
        """
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")
        self._channel.join_feeder()

    def cancel_join_thread(self) -> None:
        """Let this process exit without waiting for its feeder (buffered objects may be lost)."""
        self._channel.cancel_join()


class JoinableQueue(Queue):
    """A Queue whose consumers report each task done, so that producers can join().

    Args:
        maxsize: the most messages the queue holds; 0 or less for no limit.
        ctx: the context that made the queue (accepted for the stdlib's signature).
    """

    def task_done(self) -> None:
        """Say that a task taken with get() is finished.

        Raises:
            ValueError: called more times than objects were put.
        """
        self._channel.task_done()

    def join(self) -> None:
        """Block until every object put has been taken and marked with task_done()."""
        self._channel.join()


def _rebuild_queue(cls: type[Queue], maxsize: int, channel: _Channel) -> Queue:
    queue = cls.__new__(cls)
    queue._maxsize = maxsize
    queue._channel = channel
    queue._closed = False
    queue._used = False
    return queue


class SimpleQueue:
    """A plain queue between processes: put, get, empty, close (the stdlib's SimpleQueue).

    ``put()`` waits while the ring is full; there is no feeder thread.

    Args:
        ctx: the context that made the queue (accepted for the stdlib's signature).
    """

    @classmethod
    def __class_getitem__(cls, item: Any) -> types.GenericAlias:
        return types.GenericAlias(cls, item)

    def __init__(self, *, ctx: Any = None) -> None:
        self._channel = _Channel(0, buffering=False)
        self._closed = False

    def __reduce__(self) -> tuple[Any, ...]:
        self._channel.refuse_unless_spawning(type(self).__name__)
        return _rebuild_simple_queue, (self._channel,)

    def _check_open(self) -> None:
        if self._closed:
            raise OSError("handle is closed")

    def put(self, obj: Any) -> None:
        """Put ``obj`` in the queue, waiting while the ring is full.

        Raises:
            OSError: the queue is closed.
            Exception: whatever pickling ``obj`` raises.
        """
        self._check_open()
        self._channel.put(obj, None)

    def get(self) -> Any:
        """Remove and return the oldest object, waiting for one.

        Raises:
            OSError: the queue is closed.
        """
        self._check_open()
        return self._channel.get(None)

    def empty(self) -> bool:
        """True if the queue is empty."""
        self._check_open()
        return self._channel.empty()

    def close(self) -> None:
        """Release this process's handles on the queue."""
        if not self._closed:
            self._closed = True
            self._channel.close()


def _rebuild_simple_queue(channel: _Channel) -> SimpleQueue:
    queue = SimpleQueue.__new__(SimpleQueue)
    queue._channel = channel
    queue._closed = False
    return queue
