"""Worker functions for the tests: a spawned or forkserver child imports them from here.

Append; each test module keeps its functions in a section of its own.
"""

from __future__ import annotations

from typing import Any

# ---- test_sync ------------------------------------------------------------------


def sync_increment(lock: Any, block: Any, times: int) -> None:
    """Add 1 to the C int at the start of ``block``, ``times`` times, under ``lock``."""
    import ctypes

    counter = ctypes.c_int.from_buffer(block.buffer)
    for _ in range(times):
        with lock:
            counter.value += 1


def sync_hold_until_killed(lock: Any, holding: Any) -> None:
    """Take ``lock``, say so, and wait to be killed."""
    import signal

    lock.acquire()
    holding.set()
    while True:
        signal.pause()


def sync_hold_until_told(lock: Any, holding: Any, release: Any) -> None:
    """Take ``lock``, say so, and release it when ``release`` is set."""
    with lock:
        holding.set()
        if not release.wait(30):
            raise RuntimeError("never told to release")


def sync_zombie_owner(lock: Any, block: Any, holding: Any, reap: Any) -> None:
    """Fork a grandchild that takes ``lock`` and is then killed; reap it only when told.

    The grandchild stays a zombie until ``reap`` is set, since only its parent
    (this process) may reap it. Its pid goes in the C int at ``block``.
    """
    import ctypes
    import os
    import signal

    from serentak import _posix

    pid = _posix.fork()
    if pid == 0:
        try:
            lock.acquire()
            holding.set()
            while True:
                signal.pause()
        finally:
            os._exit(1)
    ctypes.c_int.from_buffer(block.buffer).value = pid
    if not holding.wait(30):
        raise RuntimeError("the grandchild never took the lock")
    os.kill(pid, signal.SIGKILL)
    try:
        if not reap.wait(30):
            raise RuntimeError("never told to reap")
    finally:
        os.waitpid(pid, 0)


def sync_semaphore_worker(sem: Any, lock: Any, block: Any, rounds: int) -> None:
    """Count how many processes are inside ``sem`` at once; keep the highest count seen.

    ``block`` holds two C ints: inside now, most ever inside.
    """
    import ctypes

    inside = (ctypes.c_int * 2).from_buffer(block.buffer)
    for _ in range(rounds):
        with sem:
            with lock:
                inside[0] += 1
                inside[1] = max(inside[1], inside[0])
            for _ in range(1000):  # stay inside a little while others try to enter
                pass
            with lock:
                inside[0] -= 1


def sync_release_times(sem: Any, times: int) -> None:
    for _ in range(times):
        sem.release()


def sync_condition_waiter(cond: Any, ready: Any, woken: Any) -> None:
    """Wait on ``cond`` once; exit 0 only if woken by a notify (not a timeout)."""
    import sys

    with cond:
        ready.release()  # the parent takes cond's lock only once we sleep in wait()
        notified = cond.wait(30)
    woken.release()
    sys.exit(0 if notified else 3)


def sync_event_relay(first: Any, second: Any) -> None:
    """Set ``second`` once ``first`` is set."""
    if not first.wait(30):
        raise RuntimeError("first was never set")
    second.set()


def sync_barrier_party(barrier: Any) -> None:
    """Wait at ``barrier``; the exit code is 10 + this party's index."""
    import sys

    sys.exit(10 + barrier.wait(30))


def sync_bump(block: Any) -> None:
    """A barrier action: add 1 to the C int at ``block``."""
    import ctypes

    ctypes.c_int.from_buffer(block.buffer).value += 1
