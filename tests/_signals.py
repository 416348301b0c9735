"""A signal taken by another thread, while the main thread waits.

The kernel hands a process-directed signal (Ctrl-C's SIGINT) to any thread
that does not block it; CPython runs the handler in the main thread only, and
the signal does not wake the main thread from a lock, a poll or a read. Every
blocking call made from the main thread must notice it anyway, within a span
(serentak._os.waiting). ``interrupted_by_a_signal_to_another_thread`` checks one
such call::

    with interrupted_by_a_signal_to_another_thread(release=lambda: queue.put(1)):
        queue.get()

A helper thread waits until the main thread sleeps in the kernel, sends
SIGUSR1 to itself (not to the main thread), and gives the main thread a
while to raise :class:`Signalled` from the handler. Only then does it call
``release``, which must end the wait by itself: a wait that ended that way,
or did not end, fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

import pytest

from _watch import PATIENCE, waiting_in_kernel


class Signalled(BaseException):
    """Raised by the test's SIGUSR1 handler in the main thread: a BaseException, as
    KeyboardInterrupt is, so that no ``except Exception`` on the way swallows it."""


def _raise_signalled(signum: int, frame: object) -> None:
    raise Signalled


@contextlib.contextmanager
def interrupted_by_a_signal_to_another_thread(release: Callable[[], object]) -> Iterator[None]:
    """The main thread's wait in the ``with`` block must end with :class:`Signalled`.

    Args:
        release: ends the wait without the signal (called from the helper
            thread, after the main thread had its chance, or after it was
            interrupted: it also cleans up).
    """
    interrupted = threading.Event()
    released = threading.Event()

    def signal_this_thread() -> None:
        try:
            if waiting_in_kernel(threading.main_thread()):
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
            # Were the signal not acted on, the wait ends with the release, and the test fails.
            interrupted.wait(PATIENCE / 4)
        finally:
            released.set()
            release()

    previous = signal.signal(signal.SIGUSR1, _raise_signalled)
    helper = threading.Thread(target=signal_this_thread, name="signalled-helper", daemon=True)
    helper.start()
    try:
        with pytest.raises(Signalled):
            yield
        assert not released.is_set(), "the wait ended when it was released, not with the signal"
    finally:
        interrupted.set()
        helper.join(PATIENCE)
        signal.signal(signal.SIGUSR1, previous)
    assert not helper.is_alive(), "the release did not return"
