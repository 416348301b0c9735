"""A caller waiting in ``get()`` for a short apply reads the worker's reply itself
(``Supervisor.collect``): the pool's semantics must not change on that path.

Every test first runs a few short tasks, so that the pool expects short replies
and the waiting caller polls for them; each then checks what the stdlib
promises: results, callbacks on the pool's thread, a dead worker's error,
timeouts, and that the pool goes on working.
"""

from __future__ import annotations

import os
import selectors
import threading
import time
from typing import Any

import pytest

import _pool_targets
import serentak
from serentak._os import _native
from serentak._os.posix import Muter

PATIENCE = 20.0
WARM_UP = 20  # short tasks run first: the pool then expects short replies


def warm(pool: Any) -> None:
    for x in range(WARM_UP):
        assert pool.apply_async(_pool_targets.pool_square, (x,)).get(PATIENCE) == x * x


def test_a_caller_reads_the_replies_of_short_tasks_itself(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        warm(pool)
        for x in range(200):
            assert pool.apply_async(_pool_targets.pool_add, (x, 1)).get() == x + 1
            assert pool.apply(_pool_targets.pool_square, (x,)) == x * x
        # The path under test was taken (at least tried: a poll may find nothing).
        assert pool._supervisor._collected > 0
        stats = pool.stats()
    assert stats.tasks_done == WARM_UP + 400
    assert stats.tasks_lost == 0


def test_callbacks_run_on_the_pool_thread_when_the_caller_reads_the_reply(ctx: Any) -> None:
    threads: list[threading.Thread] = []
    got: list[Any] = []
    errors: list[BaseException] = []

    def callback(value: Any) -> None:
        threads.append(threading.current_thread())
        got.append(value)

    def error_callback(error: BaseException) -> None:
        threads.append(threading.current_thread())
        errors.append(error)

    with ctx.Pool(2) as pool:
        warm(pool)
        for x in range(20):
            result = pool.apply_async(
                _pool_targets.pool_square, (x,), callback=callback, error_callback=error_callback
            )
            assert result.get(PATIENCE) == x * x
            assert got[-1] == x * x  # get() returns once the callback has run
        failing = pool.apply_async(
            _pool_targets.pool_raise, ("bad",), callback=callback, error_callback=error_callback
        )
        with pytest.raises(ValueError, match="bad"):
            failing.get(PATIENCE)
        assert len(errors) == 1
        assert isinstance(errors[0], ValueError)
    assert got == [x * x for x in range(20)]
    assert threading.current_thread() not in threads
    assert len(threads) == 21


@pytest.mark.parametrize("fault", ["os._exit", "segfault"])
def test_a_worker_dying_while_the_caller_reads_fails_only_its_task(ctx: Any, fault: str) -> None:
    with ctx.Pool(2) as pool:
        warm(pool)
        if fault == "os._exit":
            result = pool.apply_async(_pool_targets.pool_os_exit, (3,))
            expected = "exited with code 3"
        else:
            result = pool.apply_async(_pool_targets.pool_segfault)
            expected = "SIGSEGV"
        with pytest.raises(serentak.WorkerLostError, match=expected):
            result.get(PATIENCE)
        # The pool goes on, with a replacement worker, on the same fast path.
        for x in range(50):
            assert pool.apply_async(_pool_targets.pool_square, (x,)).get(PATIENCE) == x * x
        assert pool.stats().tasks_lost == 1


def test_a_task_sent_ahead_behind_a_reply_the_caller_reads_keeps_its_timeout(
    ctx: Any,
) -> None:
    """One worker: the long task is sent ahead, behind a short one, and begins when
    the short one's reply is read (by the caller, when it waits in time); its
    timeout is enforced from then."""
    with ctx.Pool(1) as pool:
        warm(pool)
        short = pool.apply_async(_pool_targets.pool_square, (3,))
        long = pool.apply_async(_pool_targets.feat_sleep_echo, (60, "late"), timeout=0.5)
        assert short.get(PATIENCE) == 9
        with pytest.raises(serentak.TimeoutError, match=r"timeout of 0\.5 s"):
            long.get(PATIENCE)
        assert pool.apply_async(_pool_targets.pool_square, (4,)).get(PATIENCE) == 16


def test_a_get_with_a_timeout_shorter_than_the_poll_still_times_out(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        warm(pool)
        result = pool.apply_async(_pool_targets.feat_sleep_echo, (60, "late"))
        with pytest.raises(serentak.TimeoutError):
            result.get(0.00005)
        result.wait(0.00005)
        assert not result.ready()
        pool.terminate()


def test_worker_retiring_after_a_reply_the_caller_read(ctx: Any) -> None:
    """maxtasksperchild: the caller reads a worker's replies up to the one that ends
    its quota, which the supervisor thread reads, stopping the worker and
    starting its successor; nothing is lost or repeated."""
    with ctx.Pool(2, maxtasksperchild=3) as pool:
        results = [pool.apply_async(_pool_targets.pool_pid, (x,)).get(PATIENCE) for x in range(30)]
        stats = pool.stats()
    assert [value for value, _ in results] == list(range(30))
    assert len({pid for _, pid in results}) >= 10
    assert stats.tasks_done == 30
    assert stats.tasks_lost == 0


def test_a_connection_left_muted_by_an_interrupted_collect_is_watched_again(ctx: Any) -> None:
    """A Ctrl-C can end a collect between its read and its unmuting the worker's
    connection: the supervisor thread's next round watches it again."""
    with ctx.Pool(1) as pool:
        warm(pool)
        supervisor = pool._supervisor
        with supervisor._step_lock:  # what an interrupted collect leaves
            [worker] = supervisor._workers.values()
            supervisor._collected += 1
            supervisor._muter.mute(worker.conn.fileno())
            worker.collecting = True
        pool.stats()  # a round of the supervisor thread
        # A map's replies are read by the supervisor thread alone.
        assert pool.map_async(_pool_targets.pool_square, range(10)).get(PATIENCE) == [
            x * x for x in range(10)
        ]


# ---- the primitives under it -------------------------------------------------------------


def test_spin_readable_returns_on_data_on_eof_and_after_its_time() -> None:
    r, w = os.pipe()
    try:
        started = time.monotonic()
        assert not _native.spin_readable(r, 0.002)
        assert time.monotonic() - started >= 0.002
        os.write(w, b"x")
        assert _native.spin_readable(r, PATIENCE)
        os.read(r, 1)
        os.close(w)
        w = -1
        assert _native.spin_readable(r, PATIENCE)  # at EOF: the next read says so
        with pytest.raises(ValueError, match="bad file descriptor -1"):
            _native.spin_readable(-1, 0.0)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_muted_descriptor_is_not_reported_until_unmuted() -> None:
    selector = selectors.DefaultSelector()
    muter = Muter(selector)
    r, w = os.pipe()
    try:
        selector.register(r, selectors.EVENT_READ, "data")
        os.write(w, b"x")
        muter.mute(r)
        assert selector.select(0) == []
        muter.unmute(r, selectors.EVENT_READ)
        [(key, events)] = selector.select(0)
        assert (key.fd, key.data, events) == (r, "data", selectors.EVENT_READ)
    finally:
        muter.close()
        selector.close()
        os.close(r)
        os.close(w)
