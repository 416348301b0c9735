"""Queue, JoinableQueue and SimpleQueue: objects between processes, surviving crashed peers.

Data flow::

    producer (any process, any thread)       kernel                     consumer (any process)
    ----------------------------------       ------                     ----------------------
    put(obj): pickle here (errors raise);                                get(): one recvmsg takes
      bytes/bytearray go as they are;        AF_UNIX SOCK_SEQPACKET        one whole datagram, or
      too big for a datagram: a memfd        [dgram|dgram|dgram|...]       nothing (another reader
      writer lock:                           one message each,             won the race)
        id = tail += 1                       atomic both ways;           head = max(head, id)
        sendmsg(MSG_DONTWAIT) ─────────────▶ a memfd rides along ──────▶ map the memfd, if any
        socket full: tail -= 1, buffer ─┐    as SCM_RIGHTS               unpickle
      release                           │
                                        ▼
    feeder thread (one per process and queue, while its buffer is not empty):
      waits for POLLOUT without the lock, then sends from the front of the
      buffer under it; joined at process exit unless cancel_join_thread()

Every process holds both ends of one socket pair: writers send on one,
readers receive on the other. ``sendmsg`` and ``recvmsg`` move whole
datagrams, so readers need no lock at all, a writer killed mid-send never
leaves half a message, and a reader killed mid-get loses only the message it
took. A message too big for a datagram (a quarter of the socket's send
buffer: 2 MiB where ``net.core.wmem_max`` allows, ~100 KiB on a default
Linux) travels as a memfd whose fd is in the datagram, so any size works and
the kernel frees it with its last holder.

Threads: the caller's thread pickles and, when nothing of its process is
buffered, sends directly; otherwise it appends to the process's buffer. The
feeder thread owns sending from the buffer. ``_Local.mutex`` orders the two,
which keeps each producer's messages in order.

The shared block (one per queue, in :func:`serentak._shm.allocate` memory)::

    lock         writer lock: owner pid | WAITERS; taken over when the owner died
    tail         newest id given out                    writer-lock holder only
    head         highest id taken                       readers: compare-and-swap max
    held         messages in feeder buffers             writer-lock holder; sum of slots
    slots[]      per process: pid, messages it buffers  writer-lock holder
    done         task_done() calls (JoinableQueue)      compare-and-swap
    suspects[]   ids a dead writer may not have sent    set by the lock's next owner
    phantoms     suspects proven never sent             whoever proves it

Counting by positions is what makes a crash harmless. Ids are given out under
the writer lock in the order datagrams enter the socket, so once id ``X`` is
taken every id below it has left the socket: ``qsize() = tail - head + held``
with no per-message bookkeeping for a crash to leave half done. The writer
lock is held only over short non-blocking sections, never while waiting.

* Writer killed before its ``sendmsg``: nothing was sent; after it: the
  datagram is whole. The next owner of the lock takes it over (the dead
  owner's pid is in the word) and, since the id may have been given out and
  never sent, makes ``tail`` a suspect if no reader has taken it yet.
* Reader killed between ``recvmsg`` and moving ``head``: ``head`` lags by
  one. A later take moves it past; so does a heal, which under the writer
  lock peeks the oldest datagram's id (or sees the socket empty) and raises
  ``head`` to just below it. A ``put()`` that finds a bounded queue full, and
  ``qsize()``, heal first: ``maxsize`` capacity is never lost to a crash.
* A process killed with messages in its feeder buffer loses them (they only
  existed in its memory, as with the stdlib's feeder thread); what they
  counted in ``held`` is reclaimed from its slot once the process is seen
  dead (the lock's takeover, a full bounded put, a waiting ``join()``).
* JoinableQueue counts unfinished tasks as ``tail - phantoms - done + held``.
  A reader that takes a suspect clears it; taking a later id, or a heal,
  proves it was never sent and counts it a phantom, so ``join()`` does not
  wait for a task that does not exist. (A reader that took a suspect and
  died before clearing it makes it count as a phantom too: its task was
  never going to be done.) A consumer killed after ``get()`` and before
  ``task_done()`` leaves that task unfinished, as it should.
"""

from __future__ import annotations

import array
import collections
import ctypes
import dataclasses
import enum
import fcntl
import mmap
import os
import pickle
import select
import socket
import struct
import termios
import threading
import time
import traceback
import types
import weakref
from collections.abc import Sequence
from queue import Empty, Full
from typing import Any, Final, Protocol

from . import _native, _posix, _shm
from ._process import register_before_exit
from ._serialize import dumps_with_fds, fd_received, fd_to_send, loads_with_fds

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]

# ---- constants -------------------------------------------------------------------

_MASK: Final = 0xFFFF_FFFF
_HALF: Final = 0x8000_0000
_MINUS_ONE: Final = _MASK  # Futex.add works modulo 2**32
_PID_MASK: Final = 0x3FFF_FFFF
_WAITERS: Final = 0x8000_0000
_WAKE_ALL: Final = 0x7FFF_FFFF
# Longest uninterrupted sleep: how late a dead lock owner or a lost capacity
# unit is noticed, and how late Ctrl-C is seen when it went to another thread.
_SLICE: Final = 0.05
# Asked for, not guaranteed: the kernel caps it at net.core.wmem_max (then
# doubles it). More room in the socket means fewer puts fall back on the
# feeder thread, and bigger messages travel inside a datagram.
_SEND_BUFFER: Final = 4 << 20
# Payloads up to a quarter of the socket's send buffer travel inside the
# datagram (the socket polls writable once three quarters are free, so one
# always fits then); bigger ones go in a memfd. Inline is the fast way: the
# kernel copies into its own buffers without zeroing pages, where a memfd
# needs fresh zeroed pages for every message (1 MiB messages: 4 GB/s against
# 1.5 GB/s here). 2 MiB with this module's request where wmem_max allows it,
# about 100 KiB on a default Linux.
_INLINE_FLOOR: Final = 1024
_SLOTS: Final = 128
_SUSPECTS: Final = 8
_MAX_FDS: Final = 253  # SCM_MAX_FD
_ANCILLARY: Final = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
_HEADER: Final = struct.Struct("<IB")  # message id, kind (encoding | _IN_SEGMENT)
_SEGMENT_HEADER: Final = struct.Struct("<IBQ")  # message id, kind, payload size in the memfd
_SMALL_SEND: Final = 4096  # below this, one joined buffer beats a scatter list
_NO_FDS: Final[tuple[int, ...]] = ()
# Types whose pickle never calls a reducer (no by-value functions, no handles
# with fds): the plain C pickler is four times faster than the full one.
_PLAIN: Final = frozenset({bytes, bytearray, str, int, float, complex, bool, type(None)})
_FIONREAD: Final = termios.FIONREAD
_INT: Final = struct.Struct("i")
# Plain ints: the socket module's flags are IntFlag members, and IntFlag
# arithmetic costs more than the system call on this path.
_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
_PEEK: Final = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
_RECEIVE_FLAGS: Final = int(socket.MSG_CMSG_CLOEXEC)
_TRUNCATED: Final = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)


class _Encoding(enum.IntEnum):
    """What the payload of a datagram (or of its memfd) is: the low bits of the kind byte."""

    PICKLE = 0
    BYTES = 1  # a bytes object's contents: no pickling, no copy on the sending side
    BYTEARRAY = 2  # a bytearray's contents


# The kind byte's flag for a payload in the memfd that is the datagram's first fd.
_IN_SEGMENT: Final = 0x80
# Plain ints for the hot path.
_PICKLE: Final = int(_Encoding.PICKLE)
_BYTES: Final = int(_Encoding.BYTES)
_BYTEARRAY: Final = int(_Encoding.BYTEARRAY)


class _Acquired(enum.Enum):
    """How the writer lock was obtained."""

    CLEAN = "clean"
    TAKEN_OVER = "taken over"  # its owner died holding it


# ---- this process ------------------------------------------------------------------

_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- modular arithmetic on 32-bit ids -------------------------------------------------


def _after(a: int, b: int) -> bool:
    """True if id ``a`` comes after id ``b`` (modulo 2**32)."""
    return 0 < ((a - b) & _MASK) < _HALF


def _signed(value: int) -> int:
    value &= _MASK
    return value - (1 << 32) if value & _HALF else value


def _raise_to(word: _native.Futex, value: int) -> bool:
    """Move ``word`` up to ``value`` unless it is already there or past it; True if moved."""
    while True:
        current = word.load()
        if not _after(value, current):
            return False
        if word.compare_exchange(current, value):
            return True


def _store(word: _native.Futex, value: int) -> None:
    """Set ``word`` (only for words that one lock holder writes at a time)."""
    while not word.compare_exchange(word.load(), value & _MASK):
        pass


# ---- the shared block ---------------------------------------------------------------------


class _Slot(ctypes.Structure):
    _fields_ = (("pid", ctypes.c_uint32), ("held", ctypes.c_uint32))


class _Layout(ctypes.Structure):
    # The first eight words and the suspects are futexes: each needs 4-byte
    # alignment, which c_uint32 fields from the block's 16-byte aligned start have.
    _fields_ = (
        ("lock", ctypes.c_uint32),
        ("tail", ctypes.c_uint32),
        ("head", ctypes.c_uint32),
        ("held", ctypes.c_uint32),
        ("done", ctypes.c_uint32),
        ("phantoms", ctypes.c_uint32),
        ("suspect_count", ctypes.c_uint32),
        ("space_waiters", ctypes.c_uint32),
        ("suspects", ctypes.c_uint32 * _SUSPECTS),
        ("slots_used", ctypes.c_uint32),
        ("slots", _Slot * _SLOTS),
    )


def _futex(block: _shm.Block, field: str) -> _native.Futex:
    offset: int = getattr(_Layout, field).offset
    return _native.Futex(block.buffer[offset : offset + 4])


class _WriterLock:
    """A process-shared mutex in one futex word, taken over when its owner has died.

    The word is 0 when free, else the owner's pid, with WAITERS set once
    someone sleeps on it. Sleepers wake every ``_SLICE`` to check that the
    owner is alive. It is held only across short, non-blocking sections:
    never across a wait for socket space or queue capacity.
    """

    __slots__ = ("_word",)

    def __init__(self, word: _native.Futex) -> None:
        self._word = word

    def acquire(self, deadline: float | None) -> _Acquired | None:
        """Take the lock; None if ``deadline`` (a monotonic time) passed first."""
        word = self._word
        me = _pid
        if word.compare_exchange(0, me):
            return _Acquired.CLEAN
        while True:
            current = word.load()
            if current == 0:
                # Others may be asleep: keep WAITERS so that our release wakes one.
                if word.compare_exchange(0, me | _WAITERS):
                    return _Acquired.CLEAN
                continue
            if not current & _WAITERS:
                if not word.compare_exchange(current, current | _WAITERS):
                    continue
                current |= _WAITERS
            wait = _SLICE
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None
            if word.wait(current, wait):
                continue  # woken, or the word changed
            if (
                word.load() == current
                and _posix.pid_gone(current & _PID_MASK)
                and word.compare_exchange(current, me | _WAITERS)
            ):
                return _Acquired.TAKEN_OVER

    def release(self) -> None:
        word = self._word
        me = _pid
        if not word.compare_exchange(me, 0):
            # Only WAITERS can have changed under us.
            word.compare_exchange(me | _WAITERS, 0)
            word.wake(1)


# ---- messages waiting in a feeder ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Outgoing:
    """A message that found the socket full, waiting in this process's feeder buffer.

    Attributes:
        kind: the kind byte: an _Encoding, with _IN_SEGMENT if in a memfd.
        payload: what follows the header (empty for a segment).
        size: the payload's size in the memfd.
        fds: owned here: the memfd first (for a segment), then the handles' fds (dups).
    """

    kind: int
    payload: bytes
    size: int
    fds: tuple[int, ...]

    def discard(self) -> None:
        for fd in self.fds:
            _posix.close_quietly(fd)


class _Local:
    """What one process keeps for one queue: its feeder buffer and thread.

    ``mutex`` orders a put against the buffer: a put sends directly only when
    nothing of this process is buffered, so that messages of one producer keep
    their order. The feeder thread sends from the front of ``buffer`` and
    exits when it is empty.
    """

    __slots__ = (
        "__weakref__",
        "buffer",
        "cancelled",
        "closing",
        "idle",
        "mutex",
        "pid",
        "slot",
        "thread",
    )

    def __init__(self) -> None:
        self.pid = _pid
        self.mutex = threading.Lock()
        self.idle = threading.Condition(self.mutex)
        self.buffer: collections.deque[_Outgoing] = collections.deque()
        self.thread: threading.Thread | None = None
        self.slot = -1
        self.closing = False
        self.cancelled = False

    def drain(self) -> None:
        """Wait until the feeder has sent everything (unless the join was cancelled)."""
        with self.mutex:
            while self.thread is not None and not self.cancelled:
                self.idle.wait()


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


# ---- the channel ------------------------------------------------------------------------


class Channel(Protocol):
    """What the public queues need from the machinery below them.

    A shared-memory ring buffer may implement it later; the public classes
    only validate arguments and keep the stdlib's surface.
    """

    def put(self, obj: Any, block: bool, deadline: float | None) -> None: ...
    def get(self, block: bool, deadline: float | None) -> Any: ...
    def qsize(self) -> int: ...
    def empty(self) -> bool: ...
    def task_done(self) -> None: ...
    def join(self) -> None: ...
    def close(self) -> None: ...
    def join_feeder(self) -> None: ...
    def cancel_join(self) -> None: ...
    def refuse_unless_spawning(self, what: str) -> None: ...


def _close_sockets(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()


class SocketChannel:
    """A queue's channel: a SOCK_SEQPACKET socket pair and a shared block (see the module doc).

    Args:
        maxsize: the capacity, 0 for unbounded.
        buffering: whether a put that finds the socket full may leave the
            message to a feeder thread (Queue) or must wait (SimpleQueue).
    """

    def __init__(self, maxsize: int, *, buffering: bool) -> None:
        writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            block = _shm.allocate(ctypes.sizeof(_Layout))
            block.buffer[:] = bytes(block.size)
        except BaseException:
            _close_sockets(writer, reader)
            raise
        self._attach(maxsize, buffering, writer, reader, block)

    def _attach(
        self,
        maxsize: int,
        buffering: bool,
        writer: socket.socket,
        reader: socket.socket,
        block: _shm.Block,
    ) -> None:
        self._maxsize = maxsize
        self._buffering = buffering
        self._writer = writer
        self._reader = reader
        self._closer = weakref.finalize(self, _close_sockets, writer, reader)
        self._block = block
        self._layout = _Layout.from_buffer(block.buffer)
        self._lock_word = _futex(block, "lock")
        self._lock = _WriterLock(self._lock_word)
        self._tail = _futex(block, "tail")
        self._head = _futex(block, "head")
        self._held = _futex(block, "held")
        self._done = _futex(block, "done")
        self._phantoms = _futex(block, "phantoms")
        self._suspect_count = _futex(block, "suspect_count")
        self._space_waiters = _futex(block, "space_waiters")
        # Every process computes the same bound from the one shared socket.
        sndbuf = writer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self._inline_max = max(_INLINE_FLOOR, sndbuf // 4 - _SEGMENT_HEADER.size)
        base = _Layout.suspects.offset
        self._suspects = [
            _native.Futex(block.buffer[base + 4 * i : base + 4 * i + 4]) for i in range(_SUSPECTS)
        ]
        self._local_state = _Local()
        # Receive buffers, reused: a get takes one and puts it back. Anonymous
        # mappings, so that their pages exist only once a big message used them.
        self._buffers: list[mmap.mmap] = []

    def __reduce__(self) -> tuple[Any, ...]:
        return _attach_channel, (
            self._maxsize,
            self._buffering,
            fd_to_send(self._writer.fileno(), "Queue"),
            fd_to_send(self._reader.fileno(), "Queue"),
            self._block,
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

    # ---- the writer lock and what a successor repairs --------------------------------

    def _acquire(self, deadline: float | None = None) -> bool:
        """Take the writer lock and repair what an interrupted holder left; False on timeout."""
        # The uncontended case first, without a call: it is most puts' only cost here.
        if self._lock_word.compare_exchange(0, _pid):
            how: _Acquired | None = _Acquired.CLEAN
        else:
            how = self._lock.acquire(deadline)
            if how is None:
                return False
        if how is _Acquired.TAKEN_OVER:
            try:
                self._recover()
            except BaseException:
                self._release()
                raise
        return True

    def _release(self) -> None:
        if not self._lock_word.compare_exchange(_pid, 0):
            self._lock.release()  # sleepers to wake

    def _recover(self) -> None:
        """Repair what a writer that died holding the lock may have left half done.

        It may have published its message's id as tail and died before (or
        during) its sendmsg: if that id has not been taken yet, it becomes a
        suspect for readers to settle (see _settle_suspects). What its feeder
        held is reclaimed with the slots of every dead process.
        """
        tail = self._tail.load()
        if _after(tail, self._head.load()):
            self._add_suspect(tail)
        self._reclaim_dead()

    def _add_suspect(self, ident: int) -> None:
        for word in self._suspects:
            if word.compare_exchange(0, ident):
                self._suspect_count.add(1)
                return
        # All suspect entries are busy (that many writers died mid-send and
        # nothing was read since): this one is taken as sent.

    def _reclaim_dead(self) -> None:
        """Free the slots of dead processes: what their feeders held will never be sent."""
        layout = self._layout
        for index in range(layout.slots_used):
            slot = layout.slots[index]
            if slot.pid and slot.pid != _pid and _posix.pid_gone(slot.pid):
                slot.held = 0
                slot.pid = 0
        self._recount_held()

    def _recount_held(self) -> None:
        layout = self._layout
        _store(self._held, sum(layout.slots[i].held for i in range(layout.slots_used)))

    def _claim_slot(self, local: _Local) -> int:
        """This process's slot, claimed on first use; -1 if the table is full of live processes."""
        layout = self._layout
        if local.slot >= 0 and layout.slots[local.slot].pid == _pid:
            return local.slot
        for attempt in range(2):
            for index in range(layout.slots_used):
                if layout.slots[index].pid == 0:
                    break
            else:
                index = layout.slots_used
                if index == _SLOTS:
                    if attempt == 0:
                        self._reclaim_dead()
                        continue
                    return -1
                layout.slots_used = index + 1
            layout.slots[index].held = 0
            layout.slots[index].pid = _pid
            local.slot = index
            return index
        return -1

    # ---- sending ------------------------------------------------------------------------

    def _send_locked(
        self,
        kind: int,
        payload: bytes | bytearray | memoryview,
        size: int,
        fds: Sequence[int],
        slot: int,
    ) -> None:
        """Send one message now, under the writer lock.

        ``slot`` is this process's slot when the message comes from its feeder
        buffer (its held count drops as the message is published), else -1.

        Raises:
            BlockingIOError: the socket is full; nothing was sent.
        """
        # Only writer-lock holders move tail, so an increment is this message's
        # id, published before the datagram exists: the count is then never
        # low, whoever reads it while the message is in flight.
        tail = self._tail
        ident = tail.add(1)
        if ident == 0:
            ident = tail.add(1)  # 0 means "none" to the suspects
        try:
            if kind & _IN_SEGMENT:
                header = _SEGMENT_HEADER.pack(ident, kind, size)
            else:
                header = _HEADER.pack(ident, kind)
            if fds:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                self._writer.sendmsg([header, payload], rights, _DONTWAIT)
            elif len(payload) <= _SMALL_SEND:
                self._writer.send(header + payload, _DONTWAIT)
            else:
                self._writer.sendmsg([header, payload], (), _DONTWAIT)
        except OSError:
            # Nothing was sent (EAGAIN: the socket is full): take the id back.
            tail.add(_MINUS_ONE)
            raise
        except BaseException:
            # Interrupted (Ctrl-C) around the sendmsg: sent or not is unknown.
            self._add_suspect(ident)
            raise
        if slot >= 0:
            # The message has left the buffer: after tail, so the count never dips.
            self._layout.slots[slot].held -= 1
            self._held.add(_MINUS_ONE)

    def put(self, obj: Any, block: bool, deadline: float | None) -> None:
        """Pickle ``obj`` (raising here if it cannot be) and queue it.

        Raises:
            queue.Full: the queue is bounded and stayed full until ``deadline``
                (or at once if not ``block``).
        """
        cls = type(obj)
        fds: Sequence[int] = _NO_FDS
        if cls is bytes:
            payload: bytes | bytearray = obj
            kind = _BYTES
        elif cls is bytearray:
            payload, kind = obj, _BYTEARRAY
        elif cls in _PLAIN:
            payload, kind = pickle.dumps(obj, 5), _PICKLE
        else:
            payload, fds = dumps_with_fds(obj)
            kind = _PICKLE
        size = 0
        segment = -1
        if len(payload) > self._inline_max:
            segment = _write_segment(payload)
            size = len(payload)
            kind, payload, fds = kind | _IN_SEGMENT, b"", (segment, *fds)
        if len(fds) > _MAX_FDS:
            _posix.close_quietly(segment)
            raise ValueError(f"a queued object can carry at most {_MAX_FDS} file descriptors")
        if segment < 0:
            self._deliver(kind, payload, size, fds, block, deadline)
            return
        try:
            self._deliver(kind, payload, size, fds, block, deadline)
        finally:
            # Sent or not, the memfd is no longer ours to keep: the kernel holds
            # it for the datagram, and a buffered message owns a dup.
            os.close(segment)

    def _deliver(
        self,
        kind: int,
        payload: bytes | bytearray | memoryview,
        size: int,
        fds: Sequence[int],
        block: bool,
        deadline: float | None,
    ) -> None:
        maxsize = self._maxsize
        local = self._local_state
        if local.pid != _pid:
            local = self._local()
        while True:
            full = False
            with local.mutex:
                self._acquire()
                try:
                    if maxsize:
                        head = self._head.load()
                        if self._count_locked(head) >= maxsize:
                            full = True
                    if not full:
                        if not local.buffer:
                            try:
                                self._send_locked(kind, payload, size, fds, -1)
                                return
                            except BlockingIOError:
                                pass  # the socket is full
                        if self._buffering and self._buffer_locked(local, kind, payload, size, fds):
                            return
                finally:
                    self._release()
            if full:
                if not block or not self._wait_for_space(head, deadline):
                    raise Full
            elif not self._wait_writable(deadline if block else time.monotonic()):
                raise Full

    def _count_locked(self, head: int) -> int:
        """Messages in the queue, healing a count left high by a crash (writer lock held)."""
        count = _signed(self._tail.load() - head) + self._held.load()
        if count >= self._maxsize:
            if self._held.load():
                self._reclaim_dead()
            if self._heal_locked():
                head = self._head.load()
            count = _signed(self._tail.load() - head) + self._held.load()
        return count

    def _heal_locked(self) -> bool:
        """Move head up to just below the oldest id still in the socket; True if it moved.

        Every id below the oldest datagram has left the socket, taken by a
        reader (maybe one that died before counting it) or never sent; with
        the socket empty, every id up to tail has. Exact under the writer
        lock: no live writer has published an id it has not sent yet.
        """
        try:
            oldest = self._reader.recv(_HEADER.size, _PEEK)
        except BlockingIOError:
            below = self._tail.load()
        else:
            below = (_HEADER.unpack_from(oldest)[0] - 1) & _MASK
        moved = _raise_to(self._head, below)
        if self._suspect_count.load():
            for word in self._suspects:
                ident = word.load()
                if ident and not _after(ident, below):
                    self._settle_phantom(word, ident)
        return moved

    def _buffer_locked(
        self,
        local: _Local,
        kind: int,
        payload: bytes | bytearray | memoryview,
        size: int,
        fds: Sequence[int],
    ) -> bool:
        """Leave the message to this process's feeder thread; False if no slot is free."""
        slot = self._claim_slot(local)
        if slot < 0:
            return False
        owned = tuple(os.dup(fd) for fd in fds)
        # held first, then the slot: an interruption in between over-counts
        # (harmless), and the next recount from the slots corrects it.
        self._held.add(1)
        self._layout.slots[slot].held += 1
        local.buffer.append(_Outgoing(kind, bytes(payload), size, owned))
        if local.thread is None:
            local.thread = threading.Thread(
                target=self._feed, args=(local,), name="QueueFeederThread", daemon=True
            )
            local.thread.start()
            _exit_flush.watch(local)
        return True

    def _feed(self, local: _Local) -> None:
        """The feeder thread: send this process's buffer in order, then exit."""
        buffer = local.buffer
        while True:
            with local.mutex:
                if not buffer:
                    local.thread = None
                    local.idle.notify_all()
                    if local.closing:
                        self._closer()
                    return
            progressed = False
            self._acquire()
            try:
                # The front stays in the buffer until sent, so that puts made
                # meanwhile queue behind it.
                while buffer:
                    item = buffer[0]
                    try:
                        self._send_locked(item.kind, item.payload, item.size, item.fds, local.slot)
                    except BlockingIOError:
                        break
                    except Exception:
                        traceback.print_exc()
                        self._drop_locked(local.slot)
                    buffer.popleft()
                    item.discard()
                    progressed = True
            finally:
                self._release()
            if not progressed:
                self._wait_writable(None)

    def _drop_locked(self, slot: int) -> None:
        """A buffered message could not be sent at all: it leaves the count."""
        self._layout.slots[slot].held -= 1
        self._held.add(_MINUS_ONE)

    def _wait_writable(self, deadline: float | None) -> bool:
        """Wait until the socket has room; False if ``deadline`` passed first."""
        poller = select.poll()
        poller.register(self._writer.fileno(), select.POLLOUT)
        if deadline is None:
            poller.poll()
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        poller.poll(max(1, int(remaining * 1000 + 0.999)))
        return True

    def _wait_for_space(self, head: int, deadline: float | None) -> bool:
        """Sleep until a reader moves head past ``head``, or a slice passes; False at deadline."""
        wait = _SLICE
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return False
        self._space_waiters.add(1)
        try:
            self._head.wait(head, wait)
        finally:
            self._space_waiters.add(_MINUS_ONE)
        return True

    # ---- receiving ----------------------------------------------------------------------

    def get(self, block: bool, deadline: float | None) -> Any:
        """Take the next message.

        Raises:
            queue.Empty: nothing came before ``deadline`` (or at once if not ``block``).
        """
        if block and deadline is None:
            return self._receive(0)
        while True:
            try:
                return self._receive(_DONTWAIT)
            except BlockingIOError:
                pass
            if not block:
                raise Empty
            remaining = deadline - time.monotonic() if deadline is not None else 0.0
            if remaining <= 0:
                raise Empty
            _posix.fd_readable(self._reader.fileno(), remaining)

    def _receive(self, flags: int) -> Any:
        buffers = self._buffers
        buffer = buffers.pop() if buffers else mmap.mmap(-1, _HEADER.size + self._inline_max)
        try:
            nbytes, ancillary, msg_flags, _address = self._reader.recvmsg_into(
                [buffer], _ANCILLARY, flags | _RECEIVE_FLAGS
            )
            fds = _fds_in(ancillary) if ancillary else _NO_FDS
            if nbytes < _HEADER.size or msg_flags & _TRUNCATED:
                for fd in fds:
                    os.close(fd)
                raise OSError(f"queue channel: damaged message ({nbytes} bytes, flags {msg_flags})")
            ident, kind = _HEADER.unpack_from(buffer)
            self._taken(ident)
            if kind & _IN_SEGMENT:
                size = _SEGMENT_HEADER.unpack_from(buffer)[2]
                return _load_segment(kind & ~_IN_SEGMENT, fds[0], size, fds[1:])
            if nbytes <= _SMALL_SEND:
                # Slicing copies, which for small messages is cheaper than a view.
                return _decode(kind, buffer[_HEADER.size : nbytes], fds)
            with memoryview(buffer) as whole, whole[_HEADER.size : nbytes] as view:
                return _decode(kind, view, fds)
        finally:
            buffers.append(buffer)

    def _taken(self, ident: int) -> None:
        """Account for message ``ident`` leaving the socket."""
        head = self._head
        # One reader taking messages in order: head is the previous id.
        if not head.compare_exchange((ident - 1) & _MASK, ident):
            _raise_to(head, ident)
        if self._suspect_count.load():
            self._settle_suspects(ident)
        if self._maxsize and self._space_waiters.load():
            head.wake(_WAKE_ALL)

    def _settle_suspects(self, ident: int) -> None:
        """Taking ``ident`` proves a suspect real (it is ``ident``) or a phantom (it is older)."""
        for word in self._suspects:
            suspect = word.load()
            if suspect == 0:
                continue
            if suspect == ident:
                if word.compare_exchange(suspect, 0):
                    self._suspect_count.add(_MINUS_ONE)
            elif _after(ident, suspect):
                self._settle_phantom(word, suspect)

    def _settle_phantom(self, word: _native.Futex, suspect: int) -> None:
        if word.compare_exchange(suspect, 0):
            self._suspect_count.add(_MINUS_ONE)
            self._phantoms.add(1)
            self._done.wake(_WAKE_ALL)  # join() may be waiting for exactly this one

    # ---- sizes ----------------------------------------------------------------------------

    def _pending_bytes(self) -> int:
        """Bytes in the socket (for SOCK_SEQPACKET the kernel sums every datagram)."""
        result: int = _INT.unpack(fcntl.ioctl(self._reader.fileno(), _FIONREAD, bytes(4)))[0]
        return result

    def qsize(self) -> int:
        """Messages put and not yet taken, buffered ones included."""
        if _signed(self._tail.load() - self._head.load()) > 0 and self._reader.fileno() >= 0:
            # A reader may have died before counting its take: heal first.
            self._acquire()
            try:
                self._heal_locked()
            finally:
                self._release()
        held = self._held.load()
        return max(0, _signed(self._tail.load() - self._head.load())) + held

    def empty(self) -> bool:
        """True if no message is in the socket (buffered ones do not count, as in the stdlib)."""
        return not self._pending_bytes()

    # ---- JoinableQueue ----------------------------------------------------------------------

    def _unfinished(self, done: int) -> int:
        # The order matters: what lowers the count (done, phantoms, a held
        # message published) is read before what raises it (held, tail), so
        # that a message being published is never missed.
        phantoms = self._phantoms.load()
        held = self._held.load()
        tail = self._tail.load()
        return _signed(tail - phantoms - done) + held

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
            if not done_word.wait(done, _SLICE) and self._held.load():
                # Slow path: a producer may have died with messages in its feeder.
                self._acquire()
                try:
                    self._reclaim_dead()
                finally:
                    self._release()

    # ---- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release this process's handles once its feeder has sent what it buffered."""
        local = self._local()
        with local.mutex:
            local.closing = True
            if local.thread is None:
                self._closer()

    def join_feeder(self) -> None:
        """Wait until this process's feeder has sent everything."""
        self._local().drain()

    def cancel_join(self) -> None:
        """Do not wait for this process's feeder at exit (buffered messages may be lost)."""
        local = self._local()
        with local.mutex:
            local.cancelled = True
            local.idle.notify_all()


def _attach_channel(
    maxsize: int, buffering: bool, writer: int, reader: int, block: _shm.Block
) -> SocketChannel:
    channel = SocketChannel.__new__(SocketChannel)
    writer_socket = socket.socket(fileno=os.dup(fd_received(writer)))
    reader_socket = socket.socket(fileno=os.dup(fd_received(reader)))
    channel._attach(maxsize, buffering, writer_socket, reader_socket, block)
    return channel


def _fds_in(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _write_segment(payload: bytes | bytearray) -> int:
    """A memfd holding ``payload``."""
    fd = _posix.memfd("serentak-queue", 0)
    try:
        with memoryview(payload) as view:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
    except BaseException:
        os.close(fd)
        raise
    return fd


def _decode(encoding: int, payload: bytes | memoryview, fds: Sequence[int]) -> Any:
    """The object a payload holds (``fds`` are the handles' descriptors, closed after)."""
    if encoding == _PICKLE:
        return loads_with_fds(payload, fds) if fds else pickle.loads(payload)
    if encoding == _BYTES:
        return payload if type(payload) is bytes else bytes(payload)
    return bytearray(payload)


def _load_segment(encoding: int, fd: int, size: int, fds: Sequence[int]) -> Any:
    """The object in the first ``size`` bytes of memfd ``fd`` (which is closed)."""
    try:
        mapping = mmap.mmap(
            fd, size, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ
        )
    except BaseException:
        for other in fds:
            os.close(other)
        raise
    finally:
        os.close(fd)
    with mapping, memoryview(mapping) as view:
        return _decode(encoding, view, fds)


# ---- the public queues -------------------------------------------------------------------------


def _deadline(block: bool, timeout: float | None) -> float | None:
    if not block or timeout is None:
        return None
    return time.monotonic() + max(timeout, 0.0)


class Queue:
    """A FIFO queue between processes: the stdlib's ``multiprocessing.Queue``.

    Objects are pickled in ``put()``, so one that cannot be pickled raises
    there. ``put()`` on an unbounded queue hands a message to the socket at
    once, or, if the socket is full, to this process's feeder thread, and
    returns. A process killed in the middle of a put or a get costs the
    queue at most the message in flight (see the module documentation).

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
        self._channel: Channel = SocketChannel(maxsize if bounded else 0, buffering=True)
        self._closed = False

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
        self._check_open()
        self._channel.put(obj, block, _deadline(block, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest object.

        Args:
            block: wait for an object if the queue is empty.
            timeout: the most seconds to wait; None waits as long as needed.

        Raises:
            queue.Empty: nothing came in time (or at once if not ``block``).
            ValueError: the queue is closed.
        """
        self._check_open()
        return self._channel.get(block, _deadline(block, timeout))

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
        """True if the queue looks empty (objects still in a feeder thread do not count)."""
        return self._channel.empty()

    def full(self) -> bool:
        """True if the queue looks full."""
        return self._channel.qsize() >= self._maxsize

    def close(self) -> None:
        """No more puts or gets from this process; its feeder still sends what it buffered."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def join_thread(self) -> None:
        """Wait until this process's feeder thread has sent everything; only after close().

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


def _rebuild_queue(cls: type[Queue], maxsize: int, channel: Channel) -> Queue:
    queue = cls.__new__(cls)
    queue._maxsize = maxsize
    queue._channel = channel
    queue._closed = False
    return queue


class SimpleQueue:
    """A plain queue between processes: put, get, empty, close (the stdlib's SimpleQueue).

    ``put()`` waits while the socket is full; there is no feeder thread.

    Args:
        ctx: the context that made the queue (accepted for the stdlib's signature).
    """

    @classmethod
    def __class_getitem__(cls, item: Any) -> types.GenericAlias:
        return types.GenericAlias(cls, item)

    def __init__(self, *, ctx: Any = None) -> None:
        self._channel: Channel = SocketChannel(0, buffering=False)
        self._closed = False

    def __reduce__(self) -> tuple[Any, ...]:
        self._channel.refuse_unless_spawning(type(self).__name__)
        return _rebuild_simple_queue, (self._channel,)

    def _check_open(self) -> None:
        if self._closed:
            raise OSError("handle is closed")

    def put(self, obj: Any) -> None:
        """Put ``obj`` in the queue, waiting while the socket is full.

        Raises:
            OSError: the queue is closed.
            Exception: whatever pickling ``obj`` raises.
        """
        self._check_open()
        self._channel.put(obj, True, None)

    def get(self) -> Any:
        """Remove and return the oldest object, waiting for one.

        Raises:
            OSError: the queue is closed.
        """
        self._check_open()
        return self._channel.get(True, None)

    def empty(self) -> bool:
        """True if the queue is empty."""
        self._check_open()
        return self._channel.empty()

    def close(self) -> None:
        """Release this process's handles on the queue."""
        if not self._closed:
            self._closed = True
            self._channel.close()


def _rebuild_simple_queue(channel: Channel) -> SimpleQueue:
    queue = SimpleQueue.__new__(SimpleQueue)
    queue._channel = channel
    queue._closed = False
    return queue
