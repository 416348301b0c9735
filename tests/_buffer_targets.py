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


# ---- arrays born in a pool worker's shared segments ------------------------------

_kept: list[Any] = []


def double_and_keep(array: Any) -> Any:
    """``array * 2``, also kept here (a user's cache) for a later task to write to."""
    result = array * 2
    _kept.append(result)
    return result


def overwrite_kept(value: float) -> list[float]:
    """Write ``value`` into every kept array; their sums as the worker now sees them."""
    for kept in _kept:
        kept[...] = value
    return [float(kept.sum()) for kept in _kept]


def allocations() -> tuple[int, int, int]:
    """(live, pooled, private) arrays of this process's shared allocator."""
    from serentak._os import _native

    return _native.ndalloc_counts()


def double_then_fork(array: Any) -> tuple[Any, int]:
    """``array * 2``; a forked child then writes into it and checks that its own big
    arrays are plain. Returns the array and the child's exit code (0: all as expected)."""
    import os

    from serentak._os import _native

    result = array * 2
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            result[...] = -1.0
            live, pooled, _ = _native.ndalloc_counts()
            fresh = np.ones(array.size)
            code = 0 if (live, pooled) == (0, 0) == _native.ndalloc_counts()[:2] else 2
            code = code or int(not (fresh == 1.0).all())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return result, os.waitstatus_to_exitcode(status)


def zeros_after_garbage(size: int) -> tuple[bool, tuple[int, int, int]]:
    """np.zeros in memory a freed array filled: zeros still (calloc of a reused segment)."""
    garbage = np.full(size, 7.0)
    del garbage
    zeros = np.zeros(size)
    return bool((zeros == 0.0).all()), allocations()


def grown(size: int) -> Any:
    """An arange of ``size`` items, resized in place (realloc) to twice that."""
    array = np.arange(size, dtype=np.float64)
    array.resize(2 * size, refcheck=False)
    return array


def exit_with_allocations(size: int) -> None:
    """Exit 0 if a big array made here is a plain one (a user's process, not a pool's)."""
    import sys

    from serentak._os import _native

    array = np.ones(size)
    sys.exit(0 if _native.ndalloc_counts() == (0, 0, 0) and array.all() else 1)


def send_then_overwrite(conn: Any, size: int) -> None:
    """With numpy allocating in shared segments here (as in a pool worker), send an
    array of ones, overwrite it, then say "done"."""
    from serentak._ipc.buffers import enable_shared_arrays

    if not enable_shared_arrays():
        conn.send("numpy's allocator could not be set")
        return
    ones = np.ones(size)
    conn.send(ones)
    ones[...] = 5.0
    conn.send("done")
    conn.close()


def resident_mb() -> float:
    """This worker's resident size now, in MiB, as its max_memory_per_child counts it."""
    from serentak._pool.tasks import resident_memory_mb

    return resident_memory_mb()


def temporaries(x: Any, result_mib: int) -> Any:
    """Big temporaries the size of ``x``, dropped, then a new ``result_mib`` MiB array:
    what numpy used to give back to the OS stays here in warm segments."""
    doubled = x * 2.0
    shifted = doubled + 1.0
    total = float(shifted.sum())
    del doubled, shifted
    return np.full((result_mib << 20) // 8, total)


def hold_arrays(total_mib: int, piece_mib: int, keep: bool) -> int:
    """Allocate ``total_mib`` MiB of arrays (every page written), all held at once;
    ``keep``: in worker_state, past the task. Returns how many."""
    import serentak

    pieces = [np.ones((piece_mib << 20) // 8) for _ in range(total_mib // piece_mib)]
    if keep:
        serentak.worker_state().setdefault("held", []).append(pieces)
    return len(pieces)


def handler_name() -> str:
    """The name of the data-memory handler numpy allocates with here."""
    core = getattr(np, "_core", None) or np.core
    name: str = core.multiarray.get_handler_name()
    return name
