"""How long a blocking call may sleep at once, so that Ctrl-C always interrupts it.

The kernel hands a process-directed signal (Ctrl-C's SIGINT, ``kill -INT``) to
any thread of the process that does not block it, and CPython runs the Python
handler only in the main thread. A signal taken by another thread (a queue's
feeder, a pool's manager) does not wake the main thread from the futex, poll or
read it sleeps in: the handler waits until that wait ends by itself, perhaps
never::

    helper thread                      main thread
    -------------                      -----------
    takes SIGINT: the C handler        blocked in poll()/recv()/futex: not woken
    marks it pending          ------>  wakes at the end of its span, returns to
                                       Python, which runs the handler
                                       (KeyboardInterrupt)

So a wait in the main thread that may last longer than :data:`SIGNAL_SPAN`
sleeps in spans of that length; other threads sleep in one piece (no handler
could run there anyway). The C waits (``src/native``) cut their sleeps in
slices of the same length for every thread, for their own reasons.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Final, Protocol

from serentak._os import _native

# The longest the main thread sleeps before it looks at signals taken by another thread.
# Also the slice in which a waiter on a shared lock or queue word re-checks for a dead
# owner or a missed wake: one length for the C waits and these (native.h).
SIGNAL_SPAN: Final = _native.WAIT_SLICE_NS / 1e9
# While tasks this short are running, the pool's supervisor thread polls for their
# results this long before it sleeps, and so does a caller waiting in get() for an
# apply's: on a virtual machine, waking an idle CPU costs tens of microseconds,
# more than such a task.
RESULT_SPIN: Final = 200e-6
# How long a worker polls for its next task after a short one before it sleeps: the
# next task is usually a round trip away, well under this.
TASK_SPIN: Final = 100e-6


def in_main_thread() -> bool:
    """Whether the calling thread is the one that runs signal handlers."""
    return threading.current_thread() is threading.main_thread()


def wait_span(remaining: float | None) -> float | None:
    """How long to block at once, ``remaining`` seconds (None: for ever) being left."""
    if not in_main_thread():
        return remaining
    return SIGNAL_SPAN if remaining is None else min(remaining, SIGNAL_SPAN)


def spans(timeout: float | None) -> Iterator[float | None]:
    """The timeouts of the successive sleeps that make up a wait of ``timeout`` seconds.

    Outside the main thread, or for a timeout of at most a span, one sleep of
    the whole ``timeout`` (None: for ever). In the main thread, sleeps of at
    most :data:`SIGNAL_SPAN`, for ever or until ``timeout`` has passed. The
    caller stops iterating once what it waits for has come.
    """
    if (timeout is not None and timeout <= SIGNAL_SPAN) or not in_main_thread():
        yield timeout
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if deadline is None:
            yield SIGNAL_SPAN
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        yield min(remaining, SIGNAL_SPAN)


class Joinable(Protocol):
    """A thread, or what stands for one (the pool's manager)."""

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


def join(thread: Joinable) -> None:
    """``thread.join()``, in spans when the caller is the main thread."""
    if not in_main_thread():
        thread.join()
        return
    while thread.is_alive():
        thread.join(SIGNAL_SPAN)
