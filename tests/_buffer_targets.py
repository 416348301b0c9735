"""Worker functions for test_buffers: children import them from here."""

from __future__ import annotations

from typing import Any

import numpy as np


def echo_until_none(conn: Any) -> None:
    """Send back whatever arrives, until None."""
    while (message := conn.recv()) is not None:
        conn.send(message)
    conn.close()


def send_filled(conn: Any, count: int, size: int) -> None:
    """Send ``count`` float64 arrays of ``size`` items, the i-th filled with i; then wait
    for None (so that the receiver holds the arrays while the sender is alive and sending)."""
    for i in range(count):
        conn.send(np.full(size, float(i)))
    conn.recv()
    conn.close()


def send_one_and_exit(conn: Any, size: int) -> None:
    conn.send(np.arange(size, dtype=np.float64))
    conn.close()


def hold_until_killed(conn: Any) -> None:
    """Receive an array, say so, and keep it until killed."""
    import signal

    kept = conn.recv()
    conn.send(float(kept.sum()))
    while True:
        signal.pause()


def double(array: Any) -> Any:
    return array * 2


def total(array: Any) -> float:
    return float(array.sum())


def fill(array: Any, value: float) -> None:
    array[...] = value


def same(array: Any) -> Any:
    return array


def double_or_die(array: Any) -> Any:
    """The array times 2; None kills the worker (SIGKILL), as an OOM kill would."""
    if array is None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return array * 2
