"""Shared-memory segments, and an arena that carves small blocks out of them.

A :class:`Segment` is a memfd mapped into this process. It travels to a child
as its fd (inherited under fork, passed under spawn and forkserver), and the
kernel frees it when the last process closes and unmaps it: a segment cannot
leak, whatever kills the processes using it.

Locks, Values and small Arrays need a few bytes each; a segment apiece would
cost an fd and a page per object. :func:`allocate` hands out :class:`Block`
slices of shared 1 MiB segments instead; a block returns to its segment's free
list when the block object is collected in the process that allocated it.

Ownership: each process has its own arena. A forked child inherits the
parent's arena object but starts a fresh one on its first allocation, so the
two never hand out the same bytes.
"""

from __future__ import annotations

import bisect
import collections
import ctypes
import mmap
import os
import threading
import weakref
from typing import Any, Final

from serentak._os import _native
from serentak._os import posix as _posix

from .serialize import fd_received, fd_to_send

ARENA_SEGMENT_SIZE: Final = 1 << 20
ALIGNMENT: Final = 16


class Segment:
    """A memfd-backed shared mapping of ``size`` bytes.

    Attributes:
        size: length of the mapping in bytes.
        buf: a writable memoryview of the whole mapping.
    """

    def __init__(self, size: int, *, name: str = "serentak", _fd: int | None = None) -> None:
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size}")
        self.size = size
        self.fd = _posix.memfd(name, size) if _fd is None else _fd
        try:
            self._mmap = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.buf = memoryview(self._mmap)
        self.address = _native.buffer_address(self._mmap)
        _registry[self.address] = (size, self.fd)
        # The fd is what travels to children; close it when this object goes.
        # The mapping itself lives as long as any view of it does.
        self._finalizer = weakref.finalize(self, _forget_segment, self.address, self.fd)
        self._finalizer.atexit = False  # children still being started at exit may need it

    def close(self) -> None:
        """Release this process's fd and, once no view remains, its mapping."""
        self._finalizer()
        self.buf.release()
        try:
            self._mmap.close()
        except BufferError:
            pass  # views handed out still use it; the mapping goes with the last of them

    def __reduce__(self) -> tuple[Any, ...]:
        return _attach_segment, (fd_to_send(self.fd, type(self).__name__), self.size)


# Live segments of this process by address: (size, fd). Lets a buffer that
# already lives in shared memory travel as (fd, offset) instead of a copy.
_registry: dict[int, tuple[int, int]] = {}


def _forget_segment(address: int, fd: int) -> None:
    _registry.pop(address, None)
    _posix.close_quietly(fd)


def locate(buffer: memoryview) -> tuple[int, int] | None:
    """The (fd, offset) of the segment holding ``buffer``'s bytes, if one of ours does."""
    if not _registry:
        return None
    start = _native.buffer_address(buffer)
    end = start + buffer.nbytes
    for address, (size, fd) in list(_registry.items()):
        if address <= start and end <= address + size:
            return fd, start - address
    return None


def lasting_view(segment: Segment, start: int = 0, end: int | None = None) -> memoryview:
    """A view of ``segment[start:end]`` that keeps the segment (and so its
    registration, see :func:`locate`) alive for as long as anything built on
    the view lives; the segment is closed after the last of them."""
    end = segment.size if end is None else end
    region = (ctypes.c_char * (end - start)).from_buffer(segment._mmap, start)
    weakref.finalize(region, segment.close)
    return memoryview(region).cast("B")


def _attach_segment(index: int, size: int) -> Segment:
    return Segment(size, _fd=os.dup(fd_received(index)))


class Block:
    """``size`` bytes at ``offset`` in a shared segment.

    Attributes:
        segment: the segment holding the block.
        offset: where the block starts in it.
        size: its length in bytes.
    """

    __slots__ = ("__weakref__", "offset", "segment", "size")

    def __init__(self, segment: Segment, offset: int, size: int) -> None:
        self.segment = segment
        self.offset = offset
        self.size = size

    @property
    def buffer(self) -> memoryview:
        """A writable view of exactly the block's bytes."""
        return self.segment.buf[self.offset : self.offset + self.size]

    def __reduce__(self) -> tuple[Any, ...]:
        return Block, (self.segment, self.offset, self.size)


class _Arena:
    """First-fit allocator over shared segments, with coalescing free lists.

    Guarded by a thread lock: several threads of one process may create locks
    and Values at the same time.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._segments: list[Segment] = []
        # Per segment, sorted (offset, size) runs of free bytes.
        self._free: list[list[tuple[int, int]]] = []
        # Freed blocks wait here until the next allocation takes the lock: a
        # block's finalizer can run from the garbage collector in the middle of
        # allocate(), on the thread that holds the lock.
        self._freed: collections.deque[tuple[int, int, int]] = collections.deque()

    def allocate(self, size: int) -> Block:
        size = max(ALIGNMENT, (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT)
        if size > ARENA_SEGMENT_SIZE // 4:
            # Big blocks get a segment of their own, freed with the block.
            return Block(Segment(size, name="serentak-block"), 0, size)
        with self._lock:
            while self._freed:
                self._coalesce(*self._freed.popleft())
            for index, runs in enumerate(self._free):
                for position, (offset, length) in enumerate(runs):
                    if length >= size:
                        if length == size:
                            del runs[position]
                        else:
                            runs[position] = (offset + size, length - size)
                        return self._handout(index, offset, size)
            segment = Segment(ARENA_SEGMENT_SIZE, name="serentak-arena")
            self._segments.append(segment)
            self._free.append([(size, ARENA_SEGMENT_SIZE - size)])
            return self._handout(len(self._segments) - 1, 0, size)

    def _handout(self, index: int, offset: int, size: int) -> Block:
        block = Block(self._segments[index], offset, size)
        weakref.finalize(block, self._release, index, offset, size)
        return block

    def _release(self, index: int, offset: int, size: int) -> None:
        if os.getpid() == self._pid:  # a forked child's copy must not recycle the parent's bytes
            self._freed.append((index, offset, size))

    def _coalesce(self, index: int, offset: int, size: int) -> None:
        runs = self._free[index]
        position = bisect.bisect(runs, (offset, size))
        start, length = offset, size
        if position < len(runs) and runs[position][0] == offset + size:
            length += runs.pop(position)[1]
        if position > 0 and runs[position - 1][0] + runs[position - 1][1] == offset:
            position -= 1
            start, previous = runs.pop(position)
            length += previous
        runs.insert(position, (start, length))


_arena: _Arena | None = None
_arena_lock: Final = threading.Lock()


def allocate(size: int) -> Block:
    """A zero-filled-at-creation block of at least ``size`` bytes of shared memory.

    Bytes recycled from a freed block are not cleared; callers initialise them.
    """
    global _arena
    with _arena_lock:
        if _arena is None or _arena._pid != os.getpid():
            _arena = _Arena()
        arena = _arena
    return arena.allocate(size)
