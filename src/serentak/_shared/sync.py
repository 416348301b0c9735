"""Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event and Barrier between processes.

Every primitive keeps all of its state in a block of shared memory
(:func:`serentak._ipc.segments.allocate`); the Python object in each process is a view
on that block. A child gets the object by inheritance (fork) or by pickling
the block's segment while it is being started (spawn, forkserver); the state
itself is never copied::

    parent                         shared block                  child
    Lock ─── C SemLock ──────────▶ [lock word: pid|WAITERS] ◀──── Lock
    Condition ─ its Lock ────────▶ [lock word]              ◀──── Condition
              └ Futex, ctypes ───▶ [seq | waiting | tail |  ◀────
                                    tokens (boundary, count)]
    Event ─── Futex ─────────────▶ [generation<<1 | flag]   ◀──── Event
    Barrier ─ Condition, ctypes ─▶ [phase | count]          ◀──── Barrier

Lock, RLock and the semaphores are the C ``_native.SemLock`` (futexes, owner
pid in the word so a dead owner's lock is taken over with
:class:`LockOwnerDiedWarning`); the classes here add allocation, pickling and
the stdlib's reprs, and nothing on the acquire/release path.

Condition (the interesting one), with every field but ``seq`` guarded by the
condition's lock:

* ``wait`` takes a ticket (``tail``, then ``tail += 1``), counts itself in
  ``waiting``, notes ``seq``, releases the lock fully and sleeps on ``seq``.
* ``notify(n)`` grants ``k = min(n, waiting - pending)`` wake-ups as a token
  entry ``(boundary=tail, count=k)``: they may be taken only by waiters whose
  ticket is below ``boundary``, i.e. waiters that were already waiting. It
  bumps ``seq`` and wakes ``k`` sleepers.
* A waiter whose ``seq`` moved retakes the lock and takes one token from the
  oldest entry it qualifies for; if none, it sleeps again. A waiter that
  times out (or is interrupted) still takes a token if one is there for it,
  else it leaves ``waiting``.

So notify(n) wakes at most n waiters, a waiter arriving after a notify cannot
steal its wake-up, and a timed-out waiter never absorbs one (it either takes
it and reports True, or it was never counted). Sleeps are cut in slices so a
waiter missed by the kernel wake re-checks within ``SIGNAL_SPAN`` seconds.
"""

from __future__ import annotations

import ctypes
import enum
import os
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Final, TypeVar

from serentak._exceptions import LockOwnerDiedWarning
from serentak._ipc import segments as _shm
from serentak._ipc.serialize import fd_to_send
from serentak._os import _native
from serentak._os.waiting import SIGNAL_SPAN
from serentak._process.process import current_process

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "RLock",
    "Semaphore",
]

_native.set_owner_died_category(LockOwnerDiedWarning)

# Longest uninterrupted sleep of a Condition or Event waiter: the bound on how
# late a waiter the kernel wake missed notices its token, and on how late
# Ctrl-C is seen when the signal went to another thread.
_WAKE_ALL: Final = 0x7FFF_FFFF

_T = TypeVar("_T")


def _inheritance_only(obj: object, block: _shm.Block) -> None:
    """Refuse to pickle ``obj`` unless a child's start-up data is being pickled.

    Registering the segment's fd under ``obj``'s class name makes the stdlib's
    RuntimeError name ``obj`` rather than the segment; the block pickled next
    registers the same fd again, which lands on the same index.
    """
    fd_to_send(block.segment.fd, type(obj).__name__)


def _holder_name() -> str:
    """The calling process's name, and thread's unless main, as the stdlib's reprs show."""
    name = current_process().name
    thread = threading.current_thread()
    if thread is not threading.main_thread():
        name += "|" + thread.name
    return name


def _zeroed(size: int) -> _shm.Block:
    """A shared block of ``size`` bytes, cleared (recycled blocks are not)."""
    block = _shm.allocate(size)
    block.buffer[:] = bytes(block.size)
    return block


# ---- Lock, RLock, Semaphore, BoundedSemaphore ----------------------------------


class _SemLock(_native.SemLock):
    """Allocation and pickling for the C SemLock; no code on the acquire path."""

    __slots__ = ("__weakref__", "_block")
    _KIND: ClassVar[int]

    def __init__(self, value: int, maxvalue: int) -> None:
        block = _shm.allocate(_native.SEMLOCK_SIZE)
        super().__init__(block.buffer, self._KIND, value, maxvalue, True)
        self._block = block

    def __reduce__(self) -> tuple[Any, ...]:
        _inheritance_only(self, self._block)
        return _attach_semlock, (type(self), self._block)

    def spare_bytes(self) -> tuple[_shm.Block, int, int]:
        """``(block, offset, size)``: bytes on the lock's own cache line that it never
        touches, for the data it guards (a Value's, so that a process taking the lock
        gets the value in the same cache line). 16-byte aligned; not cleared."""
        offset, size = self._spare()
        return self._block, offset, size


_S = TypeVar("_S", bound=_SemLock)


def _attach_semlock(cls: type[_S], block: _shm.Block) -> _S:
    lock = cls.__new__(cls)
    _native.SemLock.__init__(lock, block.buffer, cls._KIND, 0, 0, False)
    lock._block = block
    return lock


class Lock(_SemLock):
    """A non-recursive lock shared between processes.

    As the stdlib's, any thread of any process may release it. The lock
    records the pid of the process that acquired it: if that process exits
    while the lock is still held (killed, crashed, or simply ended without
    releasing), the next acquirer gets it with a
    :class:`~serentak.LockOwnerDiedWarning` instead of waiting forever.

    Args:
        ctx: accepted for the stdlib's signature; unused.
    """

    __slots__ = ()
    _KIND = _native.LOCK

    def __init__(self, *, ctx: object = None) -> None:
        super().__init__(1, 1)

    def __repr__(self) -> str:
        if self._is_mine():
            owner = _holder_name()
        elif not self._is_zero():
            owner = "None"
        elif self._owner_pid() == os.getpid():
            owner = "SomeOtherThread"
        else:
            owner = "SomeOtherProcess"
        return f"<{type(self).__name__}(owner={owner})>"


class RLock(_SemLock):
    """A recursive lock shared between processes: the owning thread may re-acquire it.

    Args:
        ctx: accepted for the stdlib's signature; unused.
    """

    __slots__ = ()
    _KIND = _native.RLOCK

    def __init__(self, *, ctx: object = None) -> None:
        super().__init__(1, 1)

    def __repr__(self) -> str:
        if self._is_mine():
            owner, depth = _holder_name(), str(self._count())
        elif not self._is_zero():
            owner, depth = "None", "0"
        elif self._owner_pid() == os.getpid():
            owner, depth = "SomeOtherThread", "nonzero"
        else:
            owner, depth = "SomeOtherProcess", "nonzero"
        return f"<{type(self).__name__}({owner}, {depth})>"


class Semaphore(_SemLock):
    """A counting semaphore shared between processes.

    A semaphore has no owner: a unit taken by a process that dies is not
    given back (as with the stdlib's).

    Args:
        value: the initial count, at least 0.
        ctx: accepted for the stdlib's signature; unused.

    Raises:
        ValueError: ``value`` is negative.
    """

    __slots__ = ()
    _KIND = _native.SEMAPHORE

    def __init__(self, value: int = 1, *, ctx: object = None) -> None:
        self._setup(value, _native.SEM_VALUE_MAX)

    def _setup(self, value: int, maxvalue: int) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        if value > _native.SEM_VALUE_MAX:
            raise ValueError(f"semaphore initial value must be <= {_native.SEM_VALUE_MAX}")
        super().__init__(value, maxvalue)

    def get_value(self) -> int:
        """The current count."""
        return self._get_value()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self._get_value()})>"


class BoundedSemaphore(Semaphore):
    """A semaphore whose count may not be released above its initial value.

    Args:
        value: the initial and largest count.
        ctx: accepted for the stdlib's signature; unused.

    Raises:
        ValueError: ``value`` is negative; or, from ``release()``, the count
            would exceed ``value``.
    """

    __slots__ = ()

    def __init__(self, value: int = 1, *, ctx: object = None) -> None:
        self._setup(value, value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self._get_value()}, maxvalue={self.maxvalue})>"


# ---- Condition -----------------------------------------------------------------

# Distinct generations of wake-ups outstanding at once; only waiters slower to
# wake than this many notifies fill it, and then the newest entry absorbs the
# next (a slight loss of fairness, never of a wake-up).
_TOKEN_SLOTS: Final = 8


class _Tokens(ctypes.Structure):
    _fields_ = (
        ("boundary", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


class _ConditionState(ctypes.Structure):
    # ``seq`` comes first: the Futex is laid over the block's first 4 bytes.
    _fields_ = (
        ("seq", ctypes.c_uint32),
        ("waiting", ctypes.c_uint32),
        ("pending", ctypes.c_uint32),
        ("entries", ctypes.c_uint32),
        ("tail", ctypes.c_uint64),
        ("tokens", _Tokens * _TOKEN_SLOTS),
    )


class Condition:
    """A condition variable shared between processes.

    Args:
        lock: the Lock or RLock it uses; a new RLock if None.
        ctx: accepted for the stdlib's signature; unused.

    Raises:
        TypeError: ``lock`` is not a serentak Lock or RLock.
    """

    def __init__(self, lock: Lock | RLock | None = None, *, ctx: object = None) -> None:
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, (Lock, RLock)):
            raise TypeError(f"Condition needs a serentak Lock or RLock, not {type(lock).__name__}")
        self._attach(lock, _zeroed(ctypes.sizeof(_ConditionState)))

    def _attach(self, lock: Lock | RLock, block: _shm.Block) -> None:
        self._lock = lock
        self._block = block
        self._state = _ConditionState.from_buffer(block.buffer)
        self._seq = _native.Futex(block.buffer)

    def __reduce__(self) -> tuple[Any, ...]:
        _inheritance_only(self, self._block)
        return _attach_condition, (self._lock, self._block)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Acquire the underlying lock; see :meth:`Lock.acquire`."""
        return self._lock.acquire(block, timeout)

    def release(self) -> None:
        """Release the underlying lock."""
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> None:
        self._lock.release()

    def __repr__(self) -> str:
        state = self._state
        return f"<{type(self).__name__}({self._lock!r}, {state.waiting - state.pending})>"

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, sleep until notified or ``timeout`` seconds pass, retake the lock.

        An RLock held recursively is released fully and retaken to the same depth.

        Returns:
            False if the timeout expired without a notification, else True.

        Raises:
            AssertionError: the calling thread does not hold the lock (as the stdlib).
        """
        lock = self._lock
        if not lock._is_mine():
            raise AssertionError("must acquire() condition before using wait()")
        state = self._state
        ticket = state.tail
        state.tail = ticket + 1
        state.waiting += 1
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            seen = self._seq.load()
            depth = lock._release_save()
            try:
                expired = self._sleep(seen, deadline)
            except BaseException:
                lock._acquire_restore(depth)
                self._leave(ticket)
                raise
            lock._acquire_restore(depth)
            if self._take_token(ticket):
                return True
            if expired:
                state.waiting -= 1
                return False

    def _sleep(self, seen: int, deadline: float | None) -> bool:
        """Sleep until ``seq`` moves past ``seen``; True if the deadline passed first."""
        seq = self._seq
        while True:
            if deadline is None:
                seq.wait(seen, SIGNAL_SPAN)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                seq.wait(seen, min(remaining, SIGNAL_SPAN))
            if seq.load() != seen:
                return False

    def _take_token(self, ticket: int) -> bool:
        """Take one wake-up granted to waiters older than ``ticket``, oldest grant first."""
        state = self._state
        tokens = state.tokens
        for index in range(state.entries):
            entry = tokens[index]
            if entry.boundary > ticket:
                entry.count -= 1
                if entry.count == 0:
                    for later in range(index + 1, state.entries):
                        tokens[later - 1].boundary = tokens[later].boundary
                        tokens[later - 1].count = tokens[later].count
                    state.entries -= 1
                state.pending -= 1
                state.waiting -= 1
                if state.pending:
                    # The kernel may have woken a waiter these grants were
                    # not for; pass a wake on rather than wait for a slice.
                    self._seq.wake(1)
                return True
        return False

    def _leave(self, ticket: int) -> None:
        if not self._take_token(ticket):
            self._state.waiting -= 1

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` of the processes or threads waiting on this condition.

        Raises:
            AssertionError: the calling thread does not hold the lock (as the stdlib).
        """
        if not self._lock._is_mine():
            raise AssertionError("lock is not owned")
        state = self._state
        count = min(n, state.waiting - state.pending)
        if count <= 0:
            return
        tokens = state.tokens
        last = state.entries - 1
        if last >= 0 and (tokens[last].boundary == state.tail or state.entries == _TOKEN_SLOTS):
            tokens[last].boundary = state.tail
            tokens[last].count += count
        else:
            tokens[last + 1].boundary = state.tail
            tokens[last + 1].count = count
            state.entries += 1
        state.pending += count
        self._seq.add(1)
        self._seq.wake(count)

    def notify_all(self) -> None:
        """Wake every process or thread waiting on this condition."""
        self.notify(_WAKE_ALL)

    def wait_for(self, predicate: Callable[[], _T], timeout: float | None = None) -> _T:
        """Wait until ``predicate()`` is true, or ``timeout`` seconds pass.

        Returns:
            The last value ``predicate`` returned.
        """
        result = predicate()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            if deadline is None:
                self.wait()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.wait(remaining)
            result = predicate()
        return result


def _attach_condition(lock: Lock | RLock, block: _shm.Block) -> Condition:
    condition = Condition.__new__(Condition)
    condition._attach(lock, block)
    return condition


# ---- Event ---------------------------------------------------------------------


class Event:
    """A flag shared between processes, with waiting until it is set.

    The word holds ``generation << 1 | flag``; every ``set()`` of a clear
    flag bumps the generation, so a waiter learns it was set even if it is
    cleared again before the waiter runs (``wait()`` then returns True, as
    ``threading.Event``'s does).

    Args:
        ctx: accepted for the stdlib's signature; unused.
    """

    def __init__(self, *, ctx: object = None) -> None:
        self._attach(_zeroed(4))

    def _attach(self, block: _shm.Block) -> None:
        self._block = block
        self._word = _native.Futex(block.buffer)

    def __reduce__(self) -> tuple[Any, ...]:
        _inheritance_only(self, self._block)
        return _attach_event, (self._block,)

    def is_set(self) -> bool:
        """True if the flag is set."""
        return bool(self._word.load() & 1)

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        word = self._word
        while True:
            current = word.load()
            if current & 1:
                return
            if word.compare_exchange(current, (current + 2) | 1):
                word.wake(_WAKE_ALL)
                return

    def clear(self) -> None:
        """Clear the flag."""
        word = self._word
        while True:
            current = word.load()
            if not current & 1 or word.compare_exchange(current, current & ~1):
                return

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set, or ``timeout`` seconds pass.

        Returns:
            True if the flag was set before or during the wait, else False.
        """
        word = self._word
        seen = word.load()
        if seen & 1:
            return True
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while word.load() == seen:
            if deadline is None:
                word.wait(seen, SIGNAL_SPAN)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                word.wait(seen, min(remaining, SIGNAL_SPAN))
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} at {id(self):#x} {'set' if self.is_set() else 'unset'}>"


def _attach_event(block: _shm.Block) -> Event:
    event = Event.__new__(Event)
    event._attach(block)
    return event


# ---- Barrier -------------------------------------------------------------------


class _Phase(enum.IntEnum):
    FILLING = 0  # parties are arriving
    DRAINING = 1  # the barrier tripped; the parties are leaving wait()
    RESETTING = 2  # reset() while parties waited: they leave with BrokenBarrierError
    BROKEN = 3  # aborted, timed out or the action failed, until reset()


class _BarrierState(ctypes.Structure):
    _fields_ = (("phase", ctypes.c_int32), ("count", ctypes.c_int32))


class Barrier:
    """A barrier for a fixed number of parties across processes (``threading.Barrier``'s API).

    Args:
        parties: how many must call :meth:`wait` before all of them proceed.
        action: called by one of the parties when the barrier trips, before any
            of them proceeds; it must be picklable to reach a spawned child.
        timeout: default timeout of :meth:`wait`.
        ctx: accepted for the stdlib's signature; unused.

    Raises:
        ValueError: ``parties`` is less than 1.
    """

    def __init__(
        self,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        *,
        ctx: object = None,
    ) -> None:
        if parties < 1:
            raise ValueError("parties must be >= 1")
        self._attach(
            parties, action, timeout, Condition(Lock()), _zeroed(ctypes.sizeof(_BarrierState))
        )

    def _attach(
        self,
        parties: int,
        action: Callable[[], object] | None,
        timeout: float | None,
        condition: Condition,
        block: _shm.Block,
    ) -> None:
        self._parties = parties
        self._action = action
        self._timeout = timeout
        self._cond = condition
        self._block = block
        self._state = _BarrierState.from_buffer(block.buffer)

    def __reduce__(self) -> tuple[Any, ...]:
        _inheritance_only(self, self._block)
        return _attach_barrier, (
            self._parties,
            self._action,
            self._timeout,
            self._cond,
            self._block,
        )

    def wait(self, timeout: float | None = None) -> int:
        """Wait until all parties have called wait(), then return.

        Args:
            timeout: seconds to wait; the barrier's default if None.

        Returns:
            This party's arrival index, from 0 to ``parties - 1``; unique per trip.

        Raises:
            threading.BrokenBarrierError: the barrier is or becomes broken or
                reset while waiting, or the timeout expired (which breaks it).
        """
        if timeout is None:
            timeout = self._timeout
        state = self._state
        with self._cond:
            # Parties of the previous trip still leaving: do not mix with them.
            self._cond.wait_for(lambda: state.phase in (_Phase.FILLING, _Phase.BROKEN))
            if state.phase == _Phase.BROKEN:
                raise threading.BrokenBarrierError
            index: int = state.count
            state.count += 1
            try:
                if index + 1 == self._parties:
                    self._trip()
                else:
                    self._await_trip(timeout)
                return index
            finally:
                state.count -= 1
                if state.count == 0 and state.phase in (_Phase.DRAINING, _Phase.RESETTING):
                    state.phase = _Phase.FILLING
                    self._cond.notify_all()

    def _trip(self) -> None:
        try:
            if self._action is not None:
                self._action()
        except BaseException:
            self._break()
            raise
        self._state.phase = _Phase.DRAINING
        self._cond.notify_all()

    def _await_trip(self, timeout: float | None) -> None:
        state = self._state
        if not self._cond.wait_for(lambda: state.phase != _Phase.FILLING, timeout):
            self._break()
            raise threading.BrokenBarrierError
        if state.phase in (_Phase.BROKEN, _Phase.RESETTING):
            raise threading.BrokenBarrierError

    def _break(self) -> None:
        self._state.phase = _Phase.BROKEN
        self._cond.notify_all()

    def reset(self) -> None:
        """Return the barrier to its empty state; current waiters get BrokenBarrierError."""
        state = self._state
        with self._cond:
            if state.count > 0:
                if state.phase in (_Phase.FILLING, _Phase.BROKEN):
                    state.phase = _Phase.RESETTING
            else:
                state.phase = _Phase.FILLING
            self._cond.notify_all()

    def abort(self) -> None:
        """Break the barrier: current and future waiters get BrokenBarrierError."""
        with self._cond:
            self._break()

    @property
    def parties(self) -> int:
        """The number of parties needed to trip the barrier."""
        return self._parties

    @property
    def n_waiting(self) -> int:
        """The number of parties currently waiting."""
        state = self._state
        return state.count if state.phase == _Phase.FILLING else 0

    @property
    def broken(self) -> bool:
        """True if the barrier is broken."""
        return bool(self._state.phase == _Phase.BROKEN)

    def __repr__(self) -> str:
        where = f"{type(self).__qualname__} at {id(self):#x}"
        if self.broken:
            return f"<{where}: broken>"
        return f"<{where}: waiters={self.n_waiting}/{self.parties}>"


def _attach_barrier(
    parties: int,
    action: Callable[[], object] | None,
    timeout: float | None,
    condition: Condition,
    block: _shm.Block,
) -> Barrier:
    barrier = Barrier.__new__(Barrier)
    barrier._attach(parties, action, timeout, condition, block)
    return barrier
