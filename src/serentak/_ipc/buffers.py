"""Big binary data beside the pickle: out-of-band buffers in shared memory.

::

    sender                                          receiver
    ------                                          --------
    pack(obj):                                      unpack(payload, fds):
      pickle protocol 5; each buffer of               map the segment (or find it mapped
      OOB_THRESHOLD bytes or more (numpy arrays,      already), slice the buffers out:
      memoryviews; bytes and bytearrays near the      pickle.loads(..., buffers=slices)
      top, see _lift) stays out of the pickle and     builds arrays on the shared pages,
      is copied, once, into a
      segment of the sender's pool                    no copy (bytes: one copy out)
      payload = MARK + table + pickle  -------------> when the last array of the message
      fds = handles' fds + [segment fds]              dies, the segment's busy flag is
                                                      cleared: the sender may reuse it

Why a pool: fresh shared-memory pages cost far more than copying into them.
Each 4 KiB page of a memfd is allocated and zeroed on first touch, about
2.7 us a page on a 2-core VM (1.4 GB/s at best, whether faulted, MAP_POPULATE'd,
fallocate'd or MADV_POPULATE_WRITE'd), against 19 GB/s to copy into warm
pages; shmem gets huge pages only where the administrator enables them
(``/sys/kernel/mm/transparent_hugepage/shmem_enabled``; MADV_HUGEPAGE on a
memfd mapping is ignored when it says ``never``). So a sender keeps its
segments and refills them (the smallest free one that fits), and a receiver
keeps its mappings: mapping a warm 64 MiB segment still costs about 8 ms of
page-table set-up, once per segment and receiver. The copy in runs without
the GIL (``_native.copy_into``): the sender's other threads (the pool's
supervisor sending the previous task) go on meanwhile.

A segment holds one message at a time; its first 64 bytes are a header whose
first word is the busy word: 0 when free, SENT once the sender has filled it,
then the pid of the receiver holding it, and 0 again on the receiver's release.
A segment whose holder has died is free again.

Nothing can leak: a segment is a memfd, freed by the kernel once no process
maps it or holds its fd. The pool only ever gives segments up, never waits on
them: if a message was never read, the segment stays busy and the pool, past
its size limit, closes it; the memory goes with the last mapping. ``trim()``
closes every segment not in use.

A buffer that already lives in a segment of serentak's (an array born in
shared memory, see ``serentak.shared_memory``) is not copied at all: its
segment's fd travels, and the receiver maps the very same memory.

Nor is a big numpy array a pool worker allocated (``enable_shared_arrays``):
there numpy's allocator (``_native``'s ndalloc.c) puts arrays of 1 MiB or more
in warm segments of the worker's own, laid out as the pooled ones (header and
busy word, then the data), so ``a * 2`` writes into pages already faulted in
and its result travels as a POOLED segment (``pack(..., lend_arrays=True)``:
the worker's results only). After each reply the worker calls
``detach_sent_arrays()``: an array it sent and still holds gets private pages,
so that what the receiver holds never changes under it::

    worker                                      parent
    malloc: a free warm array segment
    pack: ndalloc_locate -> fd, busy := SENT --> map it, busy := pid
    the array dies: segment idle                its arrays die: busy := 0
    next malloc: reused once busy is 0
"""

from __future__ import annotations

import collections
import ctypes
import enum
import mmap
import os
import pickle
import struct
import sys
import threading
import weakref
from collections.abc import Sequence
from typing import Any, Final

from serentak._os import _native
from serentak._os import posix as _posix

from . import segments as _shm
from .serialize import PROTOCOL, dumps_with_fds, loads_with_fds

OOB_THRESHOLD: Final = 64 * 1024
ALIGNMENT: Final = 64  # numpy wants aligned data; a cache line is plenty
HEADER: Final = 64  # a pooled segment's header: the busy word, then unused
SENT: Final = 0xFFFF_FFFF  # the busy word of a message not yet received
SEGMENT_MIN: Final = 1 << 20
POOL_SEGMENTS: Final = 32  # segments a sending process keeps at most
POOL_BYTES: Final = 1 << 30  # and bytes
RECEIVER_MAPPINGS: Final = 32  # segments a receiving process keeps mapped
_MARK: Final = b"\x00"  # a pickle's first byte is PROTO (0x80): never this
_HEAD: Final = struct.Struct("<II")  # segments, buffers
_ENTRY: Final = struct.Struct("<IQQ")  # segment index, offset, length
_BUSY: Final = struct.Struct("=I")  # a segment's busy word, as ctypes.c_uint32 reads it
_POPULATE: Final = getattr(mmap, "MAP_POPULATE", 0)


class SegmentKind(enum.IntEnum):
    """How a message's segment is to be treated by the receiver."""

    POOLED = 0  # the sender's: release it when the message's buffers die
    SHARED = 1  # a shared segment of the sender's: keep it, forward it without copies


class Packed:
    """A message ready to send (a plain class: one is built per message sent).

    Attributes:
        payload: the bytes of the frame.
        fds: descriptors to send with it, owned by this Packed (duplicates: the
            message may be sent long after packing, when the objects and pool
            segments they came from are gone or reused).
        buffered: bytes of out-of-band buffers travelling beside the payload.
    """

    __slots__ = ("buffered", "fds", "payload")

    def __init__(self, payload: bytes, fds: tuple[int, ...] = (), buffered: int = 0) -> None:
        self.payload = payload
        self.fds = fds
        self.buffered = buffered

    def __repr__(self) -> str:
        return f"Packed({len(self.payload)} bytes, fds={self.fds}, buffered={self.buffered})"

    def close(self) -> None:
        """Release the descriptors (once the message is sent, or abandoned)."""
        for fd in self.fds:
            _posix.close_quietly(fd)


# Plain data is checked in C (exact str, bytes, numbers and None, in exact
# tuples, lists, dicts and sets) up to this many objects, a KiB of str or
# bytes counting as one; bytes are pickled in band by either pickler. Bigger
# data is cheaper through the reused pickler's stream than pickle.dumps.
PLAIN_BUDGET: Final = 64


def plain(obj: Any) -> bool:
    """Whether ``obj`` is small plain data that the stdlib's pickler handles as is."""
    return type(obj) is range or _native.plain_data(obj, PLAIN_BUDGET)


class _Beside:
    """A big bytes or bytearray, wrapped so that the pickler offers it to the
    buffer callback: the C pickler writes these two types itself, in band,
    without asking ``reducer_override`` (on every Python up to 3.13 at least)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self.data), (pickle.PickleBuffer(self.data),)


# How deep into tuples, lists and dicts big bytes are looked for, and in how
# many items of each: the message itself, a task's (args, kwds), a map chunk's
# items and their arguments. Deeper, or inside other objects, they travel in band.
_LIFT_DEPTH: Final = 3
_LIFT_ITEMS: Final = 256


def _lift(obj: Any, depth: int) -> Any:
    """``obj`` with its big bytes and bytearrays (see _LIFT_DEPTH) wrapped in
    _Beside; ``obj`` itself when it has none."""
    kind = type(obj)
    if kind is bytes or kind is bytearray:
        return _Beside(obj) if len(obj) >= OOB_THRESHOLD else obj
    if not depth or kind not in (tuple, list, dict) or len(obj) > _LIFT_ITEMS:
        return obj
    if kind is dict:
        values = {key: _lift(value, depth - 1) for key, value in obj.items()}
        return values if any(values[k] is not v for k, v in obj.items()) else obj
    items = [_lift(item, depth - 1) for item in obj]
    if all(new is old for new, old in zip(items, obj, strict=True)):
        return obj
    return tuple(items) if kind is tuple else items


def pack(obj: Any, *, spawning: bool = False, lend_arrays: bool = False) -> Packed:
    """Pickle ``obj`` with its big buffers out of band.

    Args:
        obj: what to pickle.
        spawning: for a child being spawned (see dumps_with_fds).
        lend_arrays: arrays this process's numpy allocated in shared segments
            (see enable_shared_arrays) travel by fd, uncopied. Only for a sender
            that lets go of them once sent, and calls detach_sent_arrays() after
            the send for any the user still holds: the pool worker's results. A
            user's ``conn.send(a)`` copies, so writing to ``a`` afterwards cannot
            change what the receiver gets.

    Raises:
        Whatever pickling raises.
    """
    if plain(obj):  # a task's few numbers and strings: the stdlib's pickler, as is
        return Packed(pickle.dumps(obj, PROTOCOL))
    obj = _lift(obj, _LIFT_DEPTH)
    buffers: list[pickle.PickleBuffer] = []

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        with buffer.raw() as raw:
            if raw.nbytes < OOB_THRESHOLD:
                return True  # in the pickle: small buffers are cheaper inline
        buffers.append(buffer)
        return False

    data, fds = dumps_with_fds(obj, spawning=spawning, buffer_callback=keep_out_of_band)
    if not buffers:
        return Packed(data, tuple(os.dup(fd) for fd in fds)) if fds else Packed(data)
    segments, entries = _place(buffers, lend_arrays)
    table = (
        _HEAD.pack(len(segments), len(entries))
        + bytes(kind for _, kind in segments)
        + b"".join(_ENTRY.pack(*entry) for entry in entries)
    )
    owned = tuple(os.dup(fd) for fd in (*fds, *(fd for fd, _ in segments)))
    return Packed(_MARK + table + data, owned, sum(length for _, _, length in entries))


_Segments = list[tuple[int, SegmentKind]]  # (fd, kind)
_Entries = list[tuple[int, int, int]]  # per buffer: segment index, offset, length


def _place(
    buffers: Sequence[pickle.PickleBuffer], lend_arrays: bool = False
) -> tuple[_Segments, _Entries]:
    """Decide where each buffer travels: in a shared segment it lives in, or copied."""
    segments: _Segments = []
    entries: _Entries = []
    copies: list[tuple[int, memoryview]] = []  # entry index, data
    offset = HEADER
    for buffer in buffers:
        raw = buffer.raw()
        lives = _lives_in(raw, lend_arrays)
        if lives is not None:
            fd, position, kind = lives
            index = next((i for i, (f, _) in enumerate(segments) if f == fd), len(segments))
            if index == len(segments):
                segments.append((fd, kind))
            entries.append((index, position, raw.nbytes))
            continue
        offset += -offset % ALIGNMENT
        copies.append((len(entries), raw))
        entries.append((-1, offset, raw.nbytes))
        offset += raw.nbytes
    if copies:
        segment = _pool().take(offset)
        for entry_index, raw in copies:
            _, position, length = entries[entry_index]
            _native.copy_into(segment.view[position : position + length], raw)
        index = len(segments)
        segments.append((segment.fd, SegmentKind.POOLED))
        entries = [(index if i == -1 else i, o, n) for i, o, n in entries]
    return segments, entries


def _lives_in(raw: memoryview, lend_arrays: bool) -> tuple[int, int, SegmentKind] | None:
    """Where ``raw`` lives in shared memory already, if it does (segment fd, offset,
    how it travels): in a shared segment of serentak's, or (with ``lend_arrays``) in a
    segment a pool worker's numpy allocated it in (see enable_shared_arrays), which
    travels as a pooled segment, its busy word now SENT, with no copy."""
    shared = _shm.locate(raw)
    if shared is not None:
        return (*shared, SegmentKind.SHARED)
    born = _native.ndalloc_locate(raw) if lend_arrays else None
    return None if born is None else (*born, SegmentKind.POOLED)


def unpack(payload: bytes | memoryview, fds: Sequence[int]) -> Any:
    """Rebuild what :func:`pack` packed; closes ``fds``.

    Raises:
        Whatever unpickling raises.
    """
    if not fds:  # no handles and no segments (a message with buffers has a segment)
        return pickle.loads(payload)
    view = memoryview(payload)
    if not view or view[0] != _MARK[0]:
        return loads_with_fds(view, fds)
    segment_count, buffer_count = _HEAD.unpack_from(view, 1)
    kinds = bytes(view[1 + _HEAD.size : 1 + _HEAD.size + segment_count])
    handle_fds = list(fds[: len(fds) - segment_count])
    segment_fds = fds[len(fds) - segment_count :]
    position = 1 + _HEAD.size + segment_count
    entries = []
    for _ in range(buffer_count):
        entries.append(_ENTRY.unpack_from(view, position))
        position += _ENTRY.size
    try:
        regions = [
            _region(fd, SegmentKind(kind), [(o, n) for i, o, n in entries if i == index])
            for index, (fd, kind) in enumerate(zip(segment_fds, kinds, strict=True))
        ]
    finally:
        for fd in segment_fds:
            os.close(fd)
    slices = []
    for index, offset, length in entries:
        base, region = regions[index]
        slices.append(region[offset - base : offset - base + length])
    return loads_with_fds(view[position:], handle_fds, buffers=slices)


def _region(fd: int, kind: SegmentKind, spans: list[tuple[int, int]]) -> tuple[int, memoryview]:
    """The part of segment ``fd`` that holds the message's buffers, and where it starts."""
    start = min(offset for offset, _ in spans)
    end = max(offset + length for offset, length in spans)
    if kind is SegmentKind.SHARED:
        # Someone's shared segment: keep it as one of ours, so what is sliced
        # from it travels on without a copy too.
        segment = _shm.Segment(os.fstat(fd).st_size, _fd=os.dup(fd))
        return start, _shm.lasting_view(segment, start, end)
    mapping = _mappings().get(fd)
    busy = ctypes.c_uint32.from_buffer(mapping, 0)
    busy.value = os.getpid()  # ours until released: if we die, the sender takes it back
    _changed()
    # The message's bytes as one ctypes array: when the last buffer built on
    # it dies, so does the array, and its finalizer frees the segment.
    region = (ctypes.c_char * (end - start)).from_buffer(mapping, start)
    weakref.finalize(region, _release, busy)
    return start, memoryview(region).cast("B")


def _release(busy: ctypes.c_uint32) -> None:
    busy.value = 0
    _changed()


def to_segment(payload: bytes | bytearray | memoryview) -> int:
    """Copy ``payload`` into a segment of this process's pool, for a channel that
    carries its own framing (a Queue's message too big for its ring).

    Returns:
        A descriptor of the segment, a duplicate the caller owns (it closes it
        once the message is sent or abandoned); the receiver reads it with
        :class:`SegmentRead`, which hands the segment back for reuse.
    """
    with memoryview(payload) as view:
        segment = _pool().take(HEADER + view.nbytes)
        _native.copy_into(segment.view[HEADER : HEADER + view.nbytes], view)
    return os.dup(segment.fd)


class SegmentRead:
    """The payload of a segment :func:`to_segment` filled, while it is read:
    ``with SegmentRead(fd, size) as view: ...``. Mapping it (in the constructor)
    closes ``fd``; the sender may refill the segment as soon as the block ends,
    so the block copies out whatever it keeps.

    Raises:
        OSError: the segment could not be mapped.
    """

    __slots__ = ("_busy", "_mapping", "_size")

    def __init__(self, fd: int, size: int) -> None:
        try:
            self._mapping = _mappings().get(fd)
        finally:
            os.close(fd)
        self._size = size
        self._busy: ctypes.c_uint32 | None = None

    def __enter__(self) -> memoryview:
        self._busy = ctypes.c_uint32.from_buffer(self._mapping, 0)
        self._busy.value = os.getpid()  # ours while we read: if we die, the sender takes it back
        _changed()
        return memoryview(self._mapping)[HEADER : HEADER + self._size]

    def __exit__(self, *exc_info: object) -> None:
        if self._busy is not None:
            self._busy.value = 0
            _changed()
        # A ctypes view pins the mapping: the cache must stay free to drop it.
        self._busy = None


# ---- the sender's pool ----------------------------------------------------------------


class _Outbound:
    """A pooled segment, mapped in the sender."""

    __slots__ = ("busy", "fd", "mapping", "size", "touched", "view")

    def __init__(self, size: int) -> None:
        self.size = size
        # The most of it a message ever filled here (e.g. 40 MiB of a 48 MiB
        # segment): the pages this process faulted in, so counts in its resident size.
        self.touched = 0
        self.fd = _posix.memfd("serentak-message", size)
        self.mapping = mmap.mmap(self.fd, size)
        self.view = memoryview(self.mapping)
        self.busy = ctypes.c_uint32.from_buffer(self.mapping, 0)

    def free(self) -> bool:
        """Whether no message is in it: never used, released, or its holder died."""
        holder = self.busy.value
        if holder == 0:
            return True
        if holder != SENT and _native.pid_gone(holder):
            self.busy.value = 0
            return True
        return False

    def close(self) -> None:
        """Give the segment up here: the memory goes once no other process maps it."""
        del self.busy
        self.view.release()
        self.mapping.close()
        os.close(self.fd)


class _Pool:
    """This process's pooled segments (thread-safe)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._segments: collections.deque[_Outbound] = collections.deque()

    def take(self, size: int) -> _Outbound:
        """A segment of at least ``size`` bytes, marked busy."""
        _changed()
        with self._lock:
            # The smallest free segment that fits: a small message must not take
            # the big segment the next big one needs, or that one pays for fresh
            # pages (far dearer than the copy, see the module's docstring).
            fits = [s for s in self._segments if s.size >= size and s.free()]
            if fits:
                segment = min(fits, key=lambda s: s.size)
                segment.busy.value = SENT
                segment.touched = max(segment.touched, size)
                return segment
            segment = _Outbound(_capacity(size))
            segment.busy.value = SENT
            segment.touched = size
            self._segments.append(segment)
            while len(self._segments) > 1 and (
                len(self._segments) > POOL_SEGMENTS
                or sum(s.size for s in self._segments) > POOL_BYTES
            ):
                self._evict(keep=segment)
            return segment

    def idle_bytes(self) -> int:
        """The bytes its segments keep resident here: each holds a message sent
        already (its receiver's now) or none, so none is a task's own memory."""
        with self._lock:
            return sum(-(-s.touched // mmap.PAGESIZE) * mmap.PAGESIZE for s in self._segments)

    def trim(self) -> None:
        """Close every segment not in use."""
        _changed()
        with self._lock:
            for segment in [s for s in self._segments if s.free()]:
                self._segments.remove(segment)
                segment.close()

    def _evict(self, keep: _Outbound) -> None:
        # Free segments first; failing that the oldest busy one: its receiver
        # may have died or never read it, and its memory goes with its mapping.
        candidates = [s for s in self._segments if s is not keep]
        free = [s for s in candidates if s.free()]
        victim = free[0] if free else candidates[0]
        self._segments.remove(victim)
        victim.close()


def _capacity(size: int) -> int:
    """A segment size for ``size`` bytes: rounded up in steps of an eighth of a power
    of two, so that messages of similar sizes share segments and little is wasted."""
    size = max(size, SEGMENT_MIN)
    step = 1 << max(size.bit_length() - 4, 12)
    return -(-size // step) * step


class _Mappings:
    """The receiver's mappings of pooled segments, by segment identity (LRU)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._maps: collections.OrderedDict[tuple[int, int, int], mmap.mmap] = (
            collections.OrderedDict()
        )

    def get(self, fd: int) -> mmap.mmap:
        status = os.fstat(fd)
        key = (status.st_dev, status.st_ino, status.st_size)
        with self._lock:
            mapping = self._maps.get(key)
            if mapping is not None:
                self._maps.move_to_end(key)
                return mapping
            # MAP_POPULATE: the pages exist already; mapping them all at once
            # is cheaper than a fault per page on first touch.
            mapping = mmap.mmap(fd, status.st_size, flags=mmap.MAP_SHARED | _POPULATE)
            self._maps[key] = mapping
            _changed()
            if len(self._maps) > RECEIVER_MAPPINGS:
                # Dropped, not closed: arrays built on it keep it mapped.
                self._maps.popitem(last=False)
            return mapping

    def idle_bytes(self) -> int:
        """The bytes of the cached mappings no message of ours is read from (the
        busy word is not our pid): mapped with MAP_POPULATE, so resident here,
        all of them. One dropped from the cache but still under an array is
        not counted: that array's memory is its holder's."""
        pid = os.getpid()
        with self._lock:
            return sum(
                len(mapping)
                for mapping in self._maps.values()
                if _BUSY.unpack_from(mapping)[0] != pid
            )


_state_lock: Final = threading.Lock()
_outbound: _Pool | None = None
_inbound: _Mappings | None = None


def _pool() -> _Pool:
    global _outbound
    with _state_lock:
        if _outbound is None or _outbound.pid != os.getpid():
            # A forked child must not share its parent's pool: both would fill
            # the same free segment.
            _outbound = _Pool()
        return _outbound


def trim() -> None:
    """Give up what this process keeps for reuse: pooled segments that hold no message,
    the receiver's cached mappings (each holds an fd: mmap keeps one), and the array
    segments numpy freed (see enable_shared_arrays). What is still in use stays
    mapped until its last array goes."""
    _native.ndalloc_trim()
    global _inbound
    with _state_lock:
        pool = _outbound if _outbound is not None and _outbound.pid == os.getpid() else None
        _inbound = None
    _changed()
    if pool is not None:
        pool.trim()


_generation = 0  # bumped at every change idle_bytes() would see


def _changed() -> None:
    global _generation
    _generation += 1


def idle_generation() -> int:
    """A number that changes whenever what :func:`idle_bytes` counts may have:
    its caller recounts only then (a recount walks every segment and mapping)."""
    return _generation


def idle_bytes() -> int:
    """The bytes this process keeps resident for reuse and no live object of its
    own uses: its pooled segments, the cached mappings of other processes'
    segments no message it holds lives in, and the array segments numpy freed
    (see enable_shared_arrays; those its allocator publishes itself, see
    publish_idle_arrays, and are not counted here). A memory limit leaves them out:
    they are a cache, and no task's memory."""
    with _state_lock:
        pool = _outbound if _outbound is not None and _outbound.pid == os.getpid() else None
        mappings = _inbound if _inbound is not None and _inbound.pid == os.getpid() else None
    return (pool.idle_bytes() if pool is not None else 0) + (
        mappings.idle_bytes() if mappings is not None else 0
    )


def _mappings() -> _Mappings:
    global _inbound
    with _state_lock:
        if _inbound is None or _inbound.pid != os.getpid():
            _inbound = _Mappings()
        return _inbound


# ---- arrays born in shared memory (a pool worker's) ------------------------------


def enable_shared_arrays() -> bool:
    """Have numpy allocate big arrays in shared segments of this process from now
    on (in the calling thread's context), if numpy is loaded already: the runtime
    never imports it for the user. Returns whether they are on."""
    global _arrays_unavailable
    if _arrays_unavailable or "numpy" not in sys.modules:
        return False
    try:
        _native.ndalloc_enable()
    except (ImportError, ValueError, OSError):
        _arrays_unavailable = True  # a numpy without the handler API (< 1.22): arrays stay plain
        return False
    return True


_arrays_unavailable = False  # enable_shared_arrays failed here once: not tried again


def publish_idle_arrays(word: memoryview | None) -> None:
    """Have numpy's allocator keep, in ``word`` (8 bytes, 8-aligned, a native
    u64), the bytes its idle array segments hold resident in this process,
    up to date at every allocation and free; None stops it. The caller keeps
    ``word``'s memory mapped until it stops it."""
    _native.ndalloc_publish(word)


def detach_sent_arrays() -> None:
    """After a message went: give each array it carried that this process still
    holds private pages (the receiver's copy must not change when we write)."""
    _native.ndalloc_detach_sent()
