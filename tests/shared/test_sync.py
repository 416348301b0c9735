"""Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event, Barrier (serentak._shared.sync).

The first part checks each primitive's semantics within one process (threads
stand in for the other party); the second runs them across processes under
every start method (the ``ctx`` fixture), including a lock owner that dies.
"""

from __future__ import annotations

import ctypes
import functools
import os
import pickle
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import _shared_targets
from _scripts import interrupted_in_futex
from _signals import interrupted_by_a_signal_to_another_thread
from _watch import until
from serentak._exceptions import LockOwnerDiedWarning
from serentak._ipc import segments as _shm
from serentak._ipc import serialize as _serialize
from serentak._shared import sync as _sync

# How late a timed wait may return: generous, CI machines are slow and busy.
LATE = 1.0
# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0

LOCK_TYPES = [_sync.Lock, _sync.RLock]


def shared_ints(count: int) -> tuple[_shm.Block, Any]:
    block = _shm.allocate(ctypes.sizeof(ctypes.c_int) * count)
    ints = (ctypes.c_int * count).from_buffer(block.buffer)
    for index in range(count):
        ints[index] = 0
    return block, ints


def timed(call: Callable[[], object]) -> tuple[object, float]:
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


# ---- Lock and RLock in one process ----------------------------------------------


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_lock_acquire_release(lock_type: type[_sync.Lock | _sync.RLock]) -> None:
    lock = lock_type()
    assert lock.acquire() is True
    assert lock._is_mine()
    assert lock._get_value() == 0
    lock.release()
    assert lock._get_value() == 1
    assert not lock._is_mine()
    with lock as entered:
        assert entered is True
        assert lock._count() == 1
    assert lock._count() == 0


def test_lock_is_not_recursive() -> None:
    lock = _sync.Lock()
    with lock:
        assert lock.acquire(False) is False
        assert lock.acquire(timeout=0) is False


def test_lock_released_too_many_times() -> None:
    lock = _sync.Lock()
    with pytest.raises(ValueError, match=r"^semaphore or lock released too many times$"):
        lock.release()


def test_lock_may_be_released_by_another_thread() -> None:
    lock = _sync.Lock()
    lock.acquire()
    thread = threading.Thread(target=lock.release)
    thread.start()
    thread.join(PATIENCE)
    assert lock.acquire(timeout=PATIENCE)
    lock.release()


@pytest.mark.parametrize("lock_type", LOCK_TYPES)
def test_acquire_timeout_returns_false_in_time(lock_type: type[_sync.Lock | _sync.RLock]) -> None:
    lock = lock_type()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(PATIENCE)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(PATIENCE)
        result, elapsed = timed(lambda: lock.acquire(timeout=0.2))
        assert result is False
        assert 0.2 <= elapsed < 0.2 + LATE
        # A negative timeout counts as 0; a non-blocking acquire ignores its timeout.
        result, elapsed = timed(lambda: lock.acquire(True, -5))
        assert result is False
        assert elapsed < LATE
        result, elapsed = timed(lambda: lock.acquire(False, 10))
        assert result is False
        assert elapsed < LATE
    finally:
        release.set()
        thread.join(PATIENCE)
    assert lock.acquire(timeout=PATIENCE)
    lock.release()


def test_acquire_wakes_when_released_by_another_thread() -> None:
    lock = _sync.Lock()
    lock.acquire()
    timer = threading.Timer(0.1, lock.release)
    timer.start()
    try:
        result, elapsed = timed(lambda: lock.acquire(timeout=PATIENCE))
    finally:
        timer.join(PATIENCE)
    assert result is True
    assert elapsed < LATE
    lock.release()


def test_rlock_recursion() -> None:
    lock = _sync.RLock()
    for depth in range(1, 4):
        assert lock.acquire()
        assert lock._count() == depth
    for depth in range(2, -1, -1):
        lock.release()
        assert lock._count() == depth
    with pytest.raises(AssertionError, match="not owned by thread"):
        lock.release()


def test_rlock_release_by_other_thread_raises() -> None:
    lock = _sync.RLock()
    errors: list[BaseException] = []

    def release() -> None:
        try:
            lock.release()
        except AssertionError as exc:
            errors.append(exc)

    with lock:
        thread = threading.Thread(target=release)
        thread.start()
        thread.join(PATIENCE)
        assert lock._is_mine()
    assert [str(e) for e in errors] == ["attempt to release recursive lock not owned by thread"]


def test_lock_reprs() -> None:
    lock, rlock = _sync.Lock(), _sync.RLock()
    assert repr(lock) == "<Lock(owner=None)>"
    assert repr(rlock) == "<RLock(None, 0)>"
    with lock, rlock, rlock:
        assert repr(lock) == "<Lock(owner=MainProcess)>"
        assert repr(rlock) == "<RLock(MainProcess, 2)>"
        seen: list[str] = []
        thread = threading.Thread(target=lambda: seen.extend([repr(lock), repr(rlock)]))
        thread.start()
        thread.join(PATIENCE)
    assert seen == ["<Lock(owner=SomeOtherThread)>", "<RLock(SomeOtherThread, nonzero)>"]


def test_acquire_arguments() -> None:
    lock = _sync.Lock()
    assert lock.acquire(block=False, timeout=None)
    assert not lock.acquire(block=True, timeout=0.01)
    with pytest.raises(TypeError):
        lock.acquire(blocking=False)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        lock.acquire(True, 1, 2)  # type: ignore[call-arg]
    lock.release()
    # The timeout is checked before the lock is taken.
    with pytest.raises(TypeError):
        lock.acquire(timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lock.acquire(timeout=float("nan"))
    assert lock._get_value() == 1


def test_ctrl_c_interrupts_a_blocked_acquire() -> None:
    lock = _sync.Lock()
    lock.acquire()
    # The signal may land on the timer's thread: the sleeper must notice anyway.
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            lock.acquire(timeout=PATIENCE)
    finally:
        timer.join(PATIENCE)
    lock.release()
    assert lock.acquire(False)
    lock.release()


# ---- Semaphore and BoundedSemaphore in one process ------------------------------


def test_semaphore_counts() -> None:
    sem = _sync.Semaphore(2)
    assert sem.get_value() == 2
    assert sem.acquire()
    assert sem.acquire()
    assert sem.acquire(False) is False
    assert sem._is_zero()
    result, elapsed = timed(lambda: sem.acquire(timeout=0.2))
    assert result is False
    assert 0.2 <= elapsed < 0.2 + LATE
    sem.release()
    sem.release()
    sem.release()  # an unbounded semaphore may go above its initial value
    assert sem.get_value() == 3
    assert repr(sem) == "<Semaphore(value=3)>"
    with sem as entered:
        assert entered is True
        assert sem.get_value() == 2


def test_semaphore_default_and_invalid_values() -> None:
    assert _sync.Semaphore().get_value() == 1
    assert _sync.Semaphore(0).acquire(False) is False
    with pytest.raises(ValueError):
        _sync.Semaphore(-1)
    with pytest.raises(ValueError):
        _sync.BoundedSemaphore(-1)


def test_bounded_semaphore() -> None:
    sem = _sync.BoundedSemaphore(2)
    assert repr(sem) == "<BoundedSemaphore(value=2, maxvalue=2)>"
    with pytest.raises(ValueError, match=r"^semaphore or lock released too many times$"):
        sem.release()
    sem.acquire()
    assert repr(sem) == "<BoundedSemaphore(value=1, maxvalue=2)>"
    sem.release()
    assert sem.get_value() == 2


def test_semaphore_release_wakes_a_waiter() -> None:
    sem = _sync.Semaphore(0)
    timer = threading.Timer(0.1, sem.release)
    timer.start()
    try:
        result, elapsed = timed(lambda: sem.acquire(timeout=PATIENCE))
    finally:
        timer.join(PATIENCE)
    assert result is True
    assert elapsed < LATE
    assert sem.get_value() == 0


def test_ctrl_c_interrupts_a_blocked_semaphore() -> None:
    sem = _sync.Semaphore(0)
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            sem.acquire()
    finally:
        timer.join(PATIENCE)
    sem.release()
    assert sem.acquire(False)


# ---- Condition in one process ---------------------------------------------------


def test_condition_requires_the_lock() -> None:
    cond = _sync.Condition()
    with pytest.raises(AssertionError):
        cond.wait(0)
    with pytest.raises(AssertionError):
        cond.notify()
    with pytest.raises(AssertionError):
        cond.notify_all()
    with pytest.raises(TypeError):
        _sync.Condition(threading.Lock())  # type: ignore[arg-type]


def test_condition_wait_timeout() -> None:
    cond = _sync.Condition(_sync.Lock())
    with cond:
        result, elapsed = timed(lambda: cond.wait(0.2))
        assert result is False
        assert 0.2 <= elapsed < 0.2 + LATE
        assert cond._lock._is_mine()
        assert cond.wait(-1) is False
    assert repr(cond) == "<Condition(<Lock(owner=None)>, 0)>"


def test_condition_wait_restores_rlock_depth() -> None:
    lock = _sync.RLock()
    cond = _sync.Condition(lock)
    entered: list[int] = []

    def other() -> None:
        # Gets in only if wait() released every level of the RLock.
        with cond:
            entered.append(lock._count())
            cond.notify()

    thread = threading.Thread(target=other)
    with cond, cond, cond:
        assert lock._count() == 3
        thread.start()
        assert cond.wait(PATIENCE) is True
        assert lock._is_mine()
        assert lock._count() == 3
    thread.join(PATIENCE)
    assert entered == [1]
    assert lock._count() == 0


def test_condition_notify_wakes_at_most_n() -> None:
    cond = _sync.Condition()
    ready, woken = _sync.Semaphore(0), _sync.Semaphore(0)
    results: list[bool] = []

    def waiter() -> None:
        with cond:
            ready.release()  # the main thread gets the lock only once we sleep in wait()
            results.append(cond.wait(PATIENCE))
        woken.release()

    threads = [threading.Thread(target=waiter) for _ in range(5)]
    for thread in threads:
        thread.start()
    try:
        for _ in threads:
            assert ready.acquire(timeout=PATIENCE)
        with cond:  # the last waiter has released the lock in wait()
            pass
        assert repr(cond) == "<Condition(<RLock(None, 0)>, 5)>"
        with cond:
            cond.notify(2)
        assert woken.acquire(timeout=PATIENCE)
        assert woken.acquire(timeout=PATIENCE)
        assert woken.acquire(timeout=0.3) is False  # no third
        with cond:
            cond.notify(0)
            cond.notify_all()
        for _ in range(3):
            assert woken.acquire(timeout=PATIENCE)
    finally:
        with cond:
            cond.notify_all()
        for thread in threads:
            thread.join(PATIENCE)
    assert results == [True] * 5


def test_condition_late_waiter_does_not_steal_a_notification() -> None:
    cond = _sync.Condition()
    ready = _sync.Semaphore(0)
    first_woken = threading.Event()

    def first() -> None:
        with cond:
            ready.release()
            if cond.wait(PATIENCE):
                first_woken.set()

    thread = threading.Thread(target=first)
    thread.start()
    assert ready.acquire(timeout=PATIENCE)
    with cond:
        cond.notify()
        # This wait began after the notify, so the notification is not for it.
        assert cond.wait(0.1) is False
    thread.join(PATIENCE)
    assert first_woken.is_set()


def test_condition_wait_for() -> None:
    cond = _sync.Condition()
    box = [0]

    def bump() -> None:
        for _ in range(3):
            with cond:
                box[0] += 1
                cond.notify_all()

    with cond:
        assert cond.wait_for(lambda: box[0] == 0) is True
        assert cond.wait_for(lambda: box[0] == 99, 0.05) is False
        thread = threading.Thread(target=bump)
        thread.start()
        assert cond.wait_for(lambda: box[0] == 3, PATIENCE)
    thread.join(PATIENCE)


def test_ctrl_c_in_condition_wait_leaves_it_consistent() -> None:
    cond = _sync.Condition()
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with cond, pytest.raises(KeyboardInterrupt):
            cond.wait(PATIENCE)
        # The lock came back for the `with` to release, and the waiter left.
        assert cond._state.waiting == 0
    finally:
        timer.join(PATIENCE)
    assert cond._lock._get_value() == 1


# ---- Event and Barrier in one process --------------------------------------------


def test_event() -> None:
    event = _sync.Event()
    assert not event.is_set()
    assert repr(event).endswith(" unset>")
    result, elapsed = timed(lambda: event.wait(0.2))
    assert result is False
    assert 0.2 <= elapsed < 0.2 + LATE
    timer = threading.Timer(0.1, event.set)
    timer.start()
    try:
        result, elapsed = timed(lambda: event.wait(PATIENCE))
    finally:
        timer.join(PATIENCE)
    assert result is True
    assert elapsed < LATE
    assert event.is_set()
    assert event.wait(0) is True
    event.set()
    assert repr(event).endswith(" set>")
    event.clear()
    assert not event.is_set()
    assert event.wait(0) is False


def test_barrier_in_threads() -> None:
    trips = [0]
    barrier = _sync.Barrier(3, action=lambda: trips.__setitem__(0, trips[0] + 1))
    assert barrier.parties == 3
    assert repr(barrier).endswith(": waiters=0/3>")
    indices: list[int] = []

    def party() -> None:
        indices.append(barrier.wait(PATIENCE))

    for _ in range(2):  # the barrier can be reused
        threads = [threading.Thread(target=party) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE)
    assert sorted(indices) == [0, 0, 1, 1, 2, 2]
    assert trips == [2]
    assert barrier.n_waiting == 0
    assert not barrier.broken


def test_barrier_timeout_breaks_it_and_reset_mends_it() -> None:
    barrier = _sync.Barrier(2, timeout=0.1)
    start = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait()
    assert time.monotonic() - start < 0.1 + LATE
    assert barrier.broken
    assert repr(barrier).endswith(": broken>")
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait()
    barrier.reset()
    assert repr(barrier).endswith(": waiters=0/2>")  # mended (mypy narrows .broken)
    with pytest.raises(ValueError):
        _sync.Barrier(0)


@pytest.mark.parametrize("end", ["abort", "reset"])
def test_barrier_abort_and_reset_release_waiters(end: str) -> None:
    barrier = _sync.Barrier(3)
    errors: list[BaseException] = []

    def party() -> None:
        try:
            barrier.wait(PATIENCE)
        except threading.BrokenBarrierError as exc:
            errors.append(exc)

    thread = threading.Thread(target=party)
    thread.start()
    try:
        assert until(lambda: barrier.n_waiting == 1)
        barrier.abort() if end == "abort" else barrier.reset()
    finally:
        thread.join(PATIENCE)
    assert len(errors) == 1
    assert barrier.broken is (end == "abort")
    assert barrier.n_waiting == 0


def test_barrier_action_failure_breaks_it() -> None:
    def fail() -> None:
        raise ZeroDivisionError

    barrier = _sync.Barrier(1, action=fail)
    with pytest.raises(ZeroDivisionError):
        barrier.wait()
    assert barrier.broken


# ---- pickling --------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        _sync.Lock,
        _sync.RLock,
        _sync.Semaphore,
        _sync.BoundedSemaphore,
        _sync.Condition,
        _sync.Event,
        functools.partial(_sync.Barrier, 2),
    ],
)
def test_pickling_outside_spawning_raises(make: Callable[[], Any]) -> None:
    obj = make()
    message = rf"^{type(obj).__name__} objects should only be shared between processes through"
    with pytest.raises(RuntimeError, match=message):
        pickle.dumps(obj)
    with pytest.raises(RuntimeError, match=message), _serialize.sending_fds(spawning=False):
        _serialize.dumps(obj)


def test_pickled_while_spawning_it_is_the_same_lock() -> None:
    lock = _sync.RLock()
    with _serialize.sending_fds(spawning=True) as fds:
        data = _serialize.dumps(lock)
        fds = [os.dup(fd) for fd in fds]
    with _serialize.receiving_fds(fds):
        twin = _serialize.loads(data)
    assert type(twin) is _sync.RLock
    with lock:
        assert twin._owner_pid() == os.getpid()
        assert twin._is_mine()  # same process and thread: it is the same lock
    assert twin._get_value() == 1


# ---- across processes ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_excludes_across_processes(ctx: Any, kind: str) -> None:
    lock = getattr(ctx, kind)()
    block, counter = shared_ints(1)
    children = [
        ctx.Process(target=_shared_targets.sync_increment, args=(lock, block, 10_000))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(PATIENCE * 3)
        assert child.exitcode == 0
    assert counter[0] == 20_000


def test_semaphore_across_processes(ctx: Any) -> None:
    sem, lock = ctx.Semaphore(2), ctx.Lock()
    block, inside = shared_ints(2)
    children = [
        ctx.Process(target=_shared_targets.sync_semaphore_worker, args=(sem, lock, block, 200))
        for _ in range(4)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(PATIENCE)
        assert child.exitcode == 0
    assert inside[0] == 0
    assert 1 <= inside[1] <= 2
    assert sem.get_value() == 2

    sem = ctx.Semaphore(0)
    child = ctx.Process(target=_shared_targets.sync_release_times, args=(sem, 3))
    child.start()
    for _ in range(3):
        assert sem.acquire(timeout=PATIENCE)
    child.join(PATIENCE)
    assert child.exitcode == 0
    assert sem.acquire(timeout=0.1) is False


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore"])
def test_timeout_across_processes(ctx: Any, kind: str) -> None:
    lock = getattr(ctx, kind)()
    holding, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_shared_targets.sync_hold_until_told, args=(lock, holding, release))
    child.start()
    try:
        assert holding.wait(PATIENCE)
        result, elapsed = timed(lambda: lock.acquire(timeout=0.2))
        assert result is False
        assert 0.2 <= elapsed < 0.2 + LATE
        if kind != "Semaphore":
            assert repr(lock) in (
                "<Lock(owner=SomeOtherProcess)>",
                "<RLock(SomeOtherProcess, nonzero)>",
            )
    finally:
        release.set()
        child.join(PATIENCE)
    assert child.exitcode == 0
    assert lock.acquire(timeout=PATIENCE)
    lock.release()


def test_condition_notify_across_processes(ctx: Any) -> None:
    cond = ctx.Condition()
    ready, woken = ctx.Semaphore(0), ctx.Semaphore(0)
    children = [
        ctx.Process(target=_shared_targets.sync_condition_waiter, args=(cond, ready, woken))
        for _ in range(4)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            assert ready.acquire(timeout=PATIENCE)
        with cond:  # every child is now asleep in wait()
            cond.notify()
        assert woken.acquire(timeout=PATIENCE)
        assert woken.acquire(timeout=0.3) is False  # notify() woke one only
        with cond:
            cond.notify(2)
        assert woken.acquire(timeout=PATIENCE)
        assert woken.acquire(timeout=PATIENCE)
        assert woken.acquire(timeout=0.3) is False
        with cond:
            cond.notify_all()
        assert woken.acquire(timeout=PATIENCE)
    finally:
        with cond:
            cond.notify_all()
        for child in children:
            child.join(PATIENCE)
    assert [child.exitcode for child in children] == [0] * 4


def test_event_across_processes(ctx: Any) -> None:
    first, second = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_shared_targets.sync_event_relay, args=(first, second))
    child.start()
    try:
        assert second.wait(0.1) is False
        first.set()
        assert second.wait(PATIENCE) is True
    finally:
        first.set()
        child.join(PATIENCE)
    assert child.exitcode == 0
    assert second.is_set()


def test_barrier_across_processes(ctx: Any) -> None:
    block, trips = shared_ints(1)
    barrier = ctx.Barrier(3, action=functools.partial(_shared_targets.sync_bump, block))
    children = [
        ctx.Process(target=_shared_targets.sync_barrier_party, args=(barrier,)) for _ in range(2)
    ]
    for child in children:
        child.start()
    try:
        mine = barrier.wait(PATIENCE)
    finally:
        for child in children:
            child.join(PATIENCE)
    assert sorted([mine] + [child.exitcode - 10 for child in children]) == [0, 1, 2]
    assert trips[0] == 1
    assert not barrier.broken


# ---- a lock owner that dies -------------------------------------------------------


def start_doomed_owner(ctx: Any, lock: Any) -> Any:
    holding = ctx.Event()
    child = ctx.Process(target=_shared_targets.sync_hold_until_killed, args=(lock, holding))
    child.start()
    assert holding.wait(PATIENCE)
    return child


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_of_a_killed_owner_is_taken_over(ctx: Any, kind: str) -> None:
    lock = getattr(ctx, kind)()
    child = start_doomed_owner(ctx, lock)
    assert lock.acquire(False) is False
    child.kill()
    child.join(PATIENCE)
    with pytest.warns(LockOwnerDiedWarning, match=f"process {child.pid}, which died"):
        result, elapsed = timed(lambda: lock.acquire(timeout=PATIENCE))
    assert result is True
    assert elapsed < LATE
    assert lock._is_mine()
    lock.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lock.acquire(False)  # an ordinary lock again
    lock.release()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_waiter_takes_over_when_the_owner_is_killed(ctx: Any, kind: str) -> None:
    lock = getattr(ctx, kind)()
    child = start_doomed_owner(ctx, lock)
    # Kill the owner while this thread is already asleep on the lock.
    timer = threading.Timer(0.1, child.kill)
    timer.start()
    try:
        with pytest.warns(LockOwnerDiedWarning, match=f"process {child.pid}, which died"):
            result, elapsed = timed(lambda: lock.acquire(timeout=PATIENCE))
    finally:
        timer.join(PATIENCE)
        child.join(PATIENCE)
    assert result is True
    assert elapsed < LATE
    lock.release()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_of_a_zombie_owner_is_taken_over(ctx: Any, kind: str) -> None:
    # The owner is a grandchild, so nothing here can reap it: it stays a
    # zombie until its parent, the child, is told to reap it.
    lock = getattr(ctx, kind)()
    holding, reap = ctx.Event(), ctx.Event()
    block, grandchild = shared_ints(1)
    child = ctx.Process(target=_shared_targets.sync_zombie_owner, args=(lock, block, holding, reap))
    child.start()
    try:
        assert holding.wait(PATIENCE)
        with pytest.warns(LockOwnerDiedWarning) as caught:
            result, elapsed = timed(lambda: lock.acquire(timeout=PATIENCE))
        assert result is True
        assert elapsed < LATE
        assert f"process {grandchild[0]}, which died" in str(caught[0].message)
        lock.release()
    finally:
        reap.set()
        child.join(PATIENCE)
    assert child.exitcode == 0


def test_owner_died_as_an_error_leaves_the_lock_usable(ctx: Any) -> None:
    lock = ctx.Lock()
    child = start_doomed_owner(ctx, lock)
    child.kill()
    child.join(PATIENCE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LockOwnerDiedWarning)
        with pytest.raises(LockOwnerDiedWarning):
            lock.acquire()
        assert lock._get_value() == 1
        assert lock.acquire(False) is True
    lock.release()


def test_condition_survives_a_killed_lock_owner(ctx: Any) -> None:
    lock = ctx.Lock()
    cond = ctx.Condition(lock)
    child = start_doomed_owner(ctx, lock)
    child.kill()
    child.join(PATIENCE)
    with pytest.warns(LockOwnerDiedWarning), cond:
        assert cond.wait(0.05) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with cond:
            cond.notify_all()


def test_a_recursively_held_rlock_of_a_killed_owner_is_taken_over_once(ctx: Any) -> None:
    lock = ctx.RLock()
    holding = ctx.Event()
    child = ctx.Process(target=_shared_targets.sync_hold_deep_until_killed, args=(lock, holding, 3))
    child.start()
    assert holding.wait(PATIENCE)
    child.kill()
    child.join(PATIENCE)
    with pytest.warns(LockOwnerDiedWarning, match=f"process {child.pid}, which died"):
        assert lock.acquire(timeout=PATIENCE)
    # The dead owner's three levels are gone: ours is the only one, and one release frees it.
    assert lock._count() == 1
    lock.release()
    assert lock._get_value() == 1
    assert repr(lock) == "<RLock(None, 0)>"


# ---- every primitive as a Process argument ---------------------------------------


def test_every_primitive_as_a_process_argument(ctx: Any) -> None:
    """Each of the seven, passed to a child in its args, is the same object there:
    acquire(block, timeout) in every spelling, context managers, values seen both ways."""
    primitives = {
        "Lock": ctx.Lock(),
        "RLock": ctx.RLock(),
        "Semaphore": ctx.Semaphore(3),
        "BoundedSemaphore": ctx.BoundedSemaphore(1),
        "Condition": ctx.Condition(),
        "Event": ctx.Event(),
        "Barrier": ctx.Barrier(2),
    }
    primitives["Lock"].acquire()
    primitives["RLock"].acquire()
    primitives["BoundedSemaphore"].acquire()
    ours, theirs = ctx.Pipe()
    with ours, theirs:
        child = ctx.Process(
            target=_shared_targets.sync_use_every_primitive, args=(theirs, primitives)
        )
        child.start()
        try:
            mine = primitives["Barrier"].wait(PATIENCE)
            assert ours.poll(PATIENCE)
            seen = ours.recv()
        finally:
            child.join(PATIENCE)
    assert child.exitcode == 0
    barrier_index = seen.pop("Barrier")
    assert sorted([mine, barrier_index]) == [0, 1]
    assert seen == {
        "Lock": [False, False, False],
        "RLock": [False, False],
        "Semaphore": [True, True, True, 0],
        "BoundedSemaphore": [1, "semaphore or lock released too many times"],
        "Condition": [False, True],
    }
    # What the child did is visible here.
    assert primitives["Semaphore"].get_value() == 1  # it left two acquisitions behind
    assert primitives["BoundedSemaphore"].get_value() == 1
    assert primitives["Event"].is_set()
    assert primitives["Barrier"].n_waiting == 0
    primitives["Lock"].release()
    primitives["RLock"].release()


# ---- Ctrl-C while blocked --------------------------------------------------------

# How soon after SIGINT a blocked wait must raise KeyboardInterrupt: the sleeps are
# cut in 50 ms slices, so a signal that went to another thread is seen within one.
PROMPT = 0.5
BLOCKING_KINDS = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier"]


@pytest.mark.parametrize("kind", BLOCKING_KINDS)
def test_ctrl_c_interrupts_every_blocking_wait_promptly(kind: str) -> None:
    """A SIGINT while the main thread is blocked (in acquire, wait or Barrier.wait)
    raises KeyboardInterrupt within a slice, and leaves the primitive consistent."""
    release = threading.Event()
    holder = None
    primitive: Any
    if kind in ("Lock", "RLock", "Semaphore", "BoundedSemaphore"):
        primitive = getattr(_sync, kind)()
        held = threading.Event()

        def hold() -> None:
            with primitive:
                held.set()
                release.wait(PATIENCE)

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(PATIENCE)
        block: Callable[[], object] = lambda: primitive.acquire(True, PATIENCE)  # noqa: E731
    elif kind == "Condition":
        primitive = _sync.Condition()

        def block() -> object:
            with primitive:
                return primitive.wait(PATIENCE)

    elif kind == "Event":
        primitive = _sync.Event()
        block = lambda: primitive.wait(PATIENCE)  # noqa: E731
    else:
        primitive = _sync.Barrier(2)
        block = lambda: primitive.wait(PATIENCE)  # noqa: E731
    sent: list[float] = []

    def interrupt() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    # The signal may land on the timer's thread: the sleeper must notice anyway.
    timer = threading.Timer(0.1, interrupt)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            block()
        interrupted = time.monotonic()
    finally:
        timer.join(PATIENCE)
        release.set()
        if holder is not None:
            holder.join(PATIENCE)
    assert interrupted - sent[0] < PROMPT
    # Consistent afterwards: nothing is held or counted for the interrupted waiter.
    if kind in ("Lock", "RLock", "Semaphore", "BoundedSemaphore"):
        assert primitive.acquire(False)
        primitive.release()
    elif kind == "Condition":
        assert primitive._state.waiting == 0
        assert primitive._lock._get_value() == 1
    elif kind == "Event":
        assert not primitive.is_set()
        primitive.set()
        assert primitive.wait(0)
    else:
        assert primitive.n_waiting == 0
        assert not primitive.broken  # as threading.Barrier: an interrupted party just leaves


CTRL_C_SCRIPT = """
import sys
import time

import serentak


def hold(lock, held, done):
    with lock:
        held.set()
        done.wait(30)


if __name__ == "__main__":
    method, kind = sys.argv[1:]
    ctx = serentak.get_context(method)
    lock = getattr(ctx, kind)()
    held, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=hold, args=(lock, held, done))
    child.start()
    assert held.wait(30)
    print("blocking", flush=True)
    try:
        lock.acquire(timeout=30)
        print("acquired", flush=True)
    except KeyboardInterrupt:
        print("interrupted", time.monotonic(), flush=True)
    done.set()
    child.join(30)
    print("then", child.exitcode, lock.acquire(timeout=30), flush=True)
"""


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore"])
def test_ctrl_c_interrupts_an_acquire_held_up_by_a_child(
    start_method: str, tmp_path: Path, kind: str
) -> None:
    """A program blocked on a lock its child holds (passed in the Process args) gets
    KeyboardInterrupt promptly on SIGINT, and can go on using the lock after."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    lines, stderr, sent, status = interrupted_in_futex(script, start_method, kind)
    label, stamp = lines[0].split()
    assert label == "interrupted", [*lines, stderr]
    assert float(stamp) - sent < PROMPT
    assert lines[1:] == ["then 0 True"], [*lines, stderr]
    assert status == 0, stderr


# ---- a signal taken by another thread ----------------------------------------------------


def blocking_call(ctx: Any, kind: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """A call on a new ``kind`` that blocks the calling thread, and what ends it."""
    if kind == "Lock":
        lock = ctx.Lock()
        lock.acquire()
        return lock.acquire, lock.release
    if kind == "Semaphore":
        semaphore = ctx.Semaphore(0)
        return semaphore.acquire, semaphore.release
    if kind == "Condition":
        condition = ctx.Condition()

        def wait() -> None:
            with condition:
                condition.wait()

        def notify() -> None:
            with condition:
                condition.notify()

        return wait, notify
    if kind == "Event":
        event = ctx.Event()
        return event.wait, event.set
    barrier = ctx.Barrier(2)
    return barrier.wait, barrier.abort


@pytest.mark.parametrize("kind", ["Lock", "Semaphore", "Condition", "Event", "Barrier"])
def test_a_signal_taken_by_another_thread_interrupts_a_wait(ctx: Any, kind: str) -> None:
    """The kernel may hand a process's SIGINT to any thread. One taken by another thread
    must still interrupt the main thread's wait, which sleeps in slices."""
    block, release = blocking_call(ctx, kind)
    with interrupted_by_a_signal_to_another_thread(release):
        block()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_lock_of_a_dead_owner_whose_pid_was_reused_is_taken_over(ctx: Any, kind: str) -> None:
    """The owner is killed and its pid given to another live process (here, made
    so: the word is rewritten to name our parent, which started long before the
    owner). The owner's start stamp beside the word tells them apart."""
    lock = getattr(ctx, kind)()
    child = start_doomed_owner(ctx, lock)
    words = (ctypes.c_uint32 * 8).from_buffer(lock._block.buffer)
    child.kill()
    child.join(PATIENCE)
    impostor = os.getppid()
    words[0] = impostor | (words[0] & 0x8000_0000)
    with pytest.warns(LockOwnerDiedWarning, match=f"process {impostor}, which died"):
        result, elapsed = timed(lambda: lock.acquire(timeout=2 * LATE))
    assert result is True
    assert elapsed < LATE
    lock.release()
