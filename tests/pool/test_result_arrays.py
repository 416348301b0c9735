"""Arrays born in shared memory in a pool worker: numpy allocates a task's big arrays
in warm segments of the worker's own, and a result travels by fd, with no copy. What
the parent holds never changes under it (the worker's later writes, a fork in a task,
a reused segment), survives the worker, and nothing leaks (the conftest's check)."""

from __future__ import annotations

from typing import Any

import numpy as np

import _buffer_targets as targets
import _pool_targets
from serentak._os import _native

MIB = 1 << 20
BIG = 2 * MIB // 8  # float64 items of a 2 MiB array: above the allocator's threshold
PATIENCE = 20.0


def test_a_result_array_is_born_in_a_segment_and_its_segment_is_reused(ctx: Any) -> None:
    source = np.full(BIG, 3.0)
    with ctx.Pool(1) as pool:
        for _ in range(4):
            result = pool.apply(targets.double, (source,))
            assert (result == 6.0).all()
            del result  # released: the worker may reuse its segment
        # One segment, idle now, served every result: none leaked, none fresh.
        assert pool.apply(targets.allocations) == (0, 1, 0)


def test_a_worker_allocates_with_the_shared_handler_and_the_parent_does_not(ctx: Any) -> None:
    with ctx.Pool(1) as pool:
        assert pool.apply(targets.handler_name) == "serentak_shared"
    assert targets.handler_name() == "default_allocator"


def test_a_result_the_worker_keeps_and_writes_later_does_not_change(ctx: Any) -> None:
    with ctx.Pool(1) as pool:
        first = pool.apply(targets.double_and_keep, (np.full(BIG, 1.0),))
        second = pool.apply(targets.double_and_keep, (np.full(BIG, 2.0),))
        # The worker writes to what it kept: its own copies change, ours do not.
        assert pool.apply(targets.overwrite_kept, (5.0,)) == [5.0 * BIG] * 2
        assert (first == 2.0).all()
        assert (second == 4.0).all()


def test_a_fork_in_a_task_does_not_write_into_the_result(ctx: Any) -> None:
    with ctx.Pool(1) as pool:
        for _ in range(2):  # the second time with a reused segment
            result, child_exit = pool.apply(targets.double_then_fork, (np.full(BIG, 1.5),))
            assert child_exit == 0, "the forked child's arrays were not plain"
            assert (result == 3.0).all(), "the forked child wrote into the result"
            del result


def test_a_reused_segment_is_zeroed_for_np_zeros(ctx: Any) -> None:
    with ctx.Pool(1) as pool:
        zeroed, (live, pooled, _) = pool.apply(targets.zeros_after_garbage, (BIG,))
        assert zeroed
        assert (live, pooled) == (1, 0)  # the zeros took the garbage's segment


def test_an_array_grown_in_place_keeps_its_items(ctx: Any) -> None:
    with ctx.Pool(1) as pool:
        result = pool.apply(targets.grown, (BIG,))
    assert result.shape == (2 * BIG,)
    np.testing.assert_array_equal(result[:BIG], np.arange(BIG, dtype=np.float64))
    assert not result[BIG:].any()


def test_arrays_outside_pool_tasks_are_plain(ctx: Any) -> None:
    with ctx.Pool(1) as pool:
        assert (pool.apply(targets.double, (np.full(BIG, 1.0),)) == 2.0).all()
        ours = np.ones(BIG)
        assert _native.ndalloc_counts() == (0, 0, 0)
        process = ctx.Process(target=targets.exit_with_allocations, args=(BIG,))
        process.start()
        process.join()
        assert process.exitcode == 0, "a user's process allocated in shared segments"
    assert (ours == 1.0).all()


def test_an_array_sent_through_a_pipe_is_a_snapshot(ctx: Any) -> None:
    """Only the pool's results are lent uncopied: a user's send copies, so writing to
    the array after sending it does not change what the receiver gets."""
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=targets.send_then_overwrite, args=(theirs, BIG))
    process.start()
    theirs.close()
    try:
        assert ours.poll(PATIENCE)
        received = ours.recv()
        assert ours.poll(PATIENCE)
        assert ours.recv() == "done"
        assert (received == 1.0).all()
    finally:
        ours.close()
        process.join()


def test_big_tasks_are_dealt_in_turn_to_the_idle_workers(ctx: Any) -> None:
    """Each result is born in a warm segment of the worker that made it, and a map's
    results are all held until it returns: a worker that ran more big tasks of a
    map than ever before makes a fresh segment. So big tasks go to the idle worker
    that least recently took one, not always to the first idle worker."""
    source = np.full(BIG, 1.0)
    with ctx.Pool(2) as pool:
        # One at a time: both workers are idle whenever a task is sent.
        pids = [pool.apply(_pool_targets.pool_pid, (source,))[1] for _ in range(6)]
        assert len(set(pids)) == 2
        assert all(pids[i] != pids[i + 1] for i in range(5)), pids
        # Small tasks still go to the first idle worker (it may be polling for
        # its next task already): they do not disturb the turns of big ones.
        assert pool.apply(_pool_targets.pool_pid, (1,))[1] in pids
        big = [pool.apply(_pool_targets.pool_pid, (source,))[1] for _ in range(2)]
        assert big[0] != pids[-1], (pids, big)
        assert big[1] != big[0], (pids, big)
