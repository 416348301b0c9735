"""A Pool under hardship: process creation refused, memory exhausted, workers
killed at awkward moments. Exactly the task that was hit fails (or none, when
none had begun), every result computed is delivered, and the pool goes on."""

from __future__ import annotations

import functools
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

import _pool_targets
import serentak
import serentak.pool
from _scripts import read_line, rest_of_output, running_script, script_env
from _watch import lines
from serentak._os.posix import REFUSE_FORKS_VARIABLE

PATIENCE = 20.0

# ---- 1. process creation refused ----------------------------------------------------------

REFUSED_FORKS = textwrap.dedent(
    """
    import os, signal, sys, time
    import serentak

    def main():
        method, refuse = sys.argv[1], sys.argv[2]
        ctx = serentak.get_context(method)
        with ctx.Pool(2) as pool:
            squares = [x * x for x in range(100)]
            assert pool.starmap(pow, [(x, 2) for x in range(100)]) == squares
            workers = [w.pid for w in pool.stats().workers]
            open(refuse, "w").close()  # from now on, fork() fails with EAGAIN
            try:
                ctx.Process(target=abs, args=(1,)).start()
            except OSError as exc:
                print("refused", exc.errno)
            os.kill(workers[0], signal.SIGKILL)
            # The pool cannot replace it: the survivor does the work meanwhile.
            print("survivor", pool.starmap(pow, [(x, 2) for x in range(100)]) == squares)
            os.kill(workers[1], 0)
            print("alive", workers[1])
            os.remove(refuse)
            deadline = time.monotonic() + 10
            while sum(w.alive for w in pool.stats().workers) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            print("workers", sum(w.alive for w in pool.stats().workers))
            print("after", pool.starmap(pow, [(x, 2) for x in range(100)]) == squares)

    if __name__ == "__main__":
        main()
    """
)


def test_a_refused_fork_fails_one_start_and_the_pool_replaces_the_worker_later(
    start_method: str, tmp_path: Path
) -> None:
    """fork() failing (EAGAIN, as at RLIMIT_NPROC) fails that one start; the
    fork server and every child go on; the pool retries the replacement
    worker, and meanwhile its other worker runs the tasks."""
    script = tmp_path / "refused.py"
    script.write_text(REFUSED_FORKS)
    refuse = tmp_path / "refuse"
    env = script_env()
    env[REFUSE_FORKS_VARIABLE] = str(refuse)
    with running_script(script, start_method, str(refuse), env=env) as process:
        assert read_line(process) == "refused 11", rest_of_output(process)
        assert read_line(process) == "survivor True", rest_of_output(process)
        assert read_line(process).startswith("alive "), rest_of_output(process)
        assert read_line(process) == "workers 2", rest_of_output(process)
        assert read_line(process) == "after True", rest_of_output(process)
        assert process.wait(timeout=20) == 0, rest_of_output(process)


def test_a_pool_that_cannot_start_all_its_workers_raises_the_original_error(ctx: Any) -> None:
    """The second worker cannot be created: Pool() raises that OSError, having
    stopped the first worker and closed its pipes (the leak check sees to it)."""
    refusing = _pool_targets.PoolRefusingContext(ctx, refuse_from=2)
    with pytest.raises(BlockingIOError, match="refused by the test"):
        serentak.pool.Pool(3, context=refusing)
    assert refusing.created == 2


# ---- 2. memory exhausted ------------------------------------------------------------------


def test_a_result_too_big_to_send_twice_fails_at_most_its_task(ctx: Any) -> None:
    """A 400 MiB result under an address-space limit with room to pickle it but
    not to hold it, its pickle and a copy of the pickle (RLIMIT_AS): the worker
    lives on and the caller gets the result or a MemoryError with the worker's
    traceback, never a WorkerLostError."""
    with ctx.Pool(1) as pool:
        pid = pool.apply(os.getpid)
        error: MemoryError | None = None
        size = 0
        try:
            size = len(pool.apply(_pool_targets.pool_big_result_under_limit, (400, 700)))
        except MemoryError as exc:
            error = exc
        if error is None:
            assert size == 400 << 20
        else:
            assert isinstance(error.__cause__, serentak.pool.RemoteTraceback)
        assert pool.apply(os.getpid) == pid
        assert pool.stats().tasks_lost == 0


# ---- 3. work lost or misattributed --------------------------------------------------------


def test_a_killed_worker_delivers_the_items_it_finished(ctx: Any, tmp_path: Path) -> None:
    """imap with adaptive chunks; the worker running item 1500 is SIGKILLed.
    Only item 1500 fails (WorkerLostError); every other item's result arrives,
    and each ran exactly once (the chunk's items before it had finished, those
    after it had not begun)."""
    marker, record = tmp_path / "killed", tmp_path / "record"
    task = functools.partial(_pool_targets.pool_kill_once_at, str(marker), str(record), 1500)
    results: dict[int, Any] = {}
    with ctx.Pool(2) as pool:
        iterator = pool.imap(task, range(3000))
        for x in range(3000):
            try:
                results[x] = next(iterator)
            except serentak.WorkerLostError as exc:
                results[x] = exc
        stats = pool.stats()
    failed = [x for x, value in results.items() if isinstance(value, BaseException)]
    assert failed == [1500]
    assert all(results[x] == x * 10 for x in results if x != 1500)
    ran = [int(line) for line in lines(record)]
    assert sorted(ran) == [x for x in range(3000) if x != 1500], "lost or repeated"
    assert stats.tasks_lost == 1
    assert stats.chunks_done < 3000, "the test needs chunks of several items"


def test_a_task_sent_to_a_worker_that_died_before_reading_it_runs_elsewhere(ctx: Any) -> None:
    """The worker is stopped, a task is sent to it, then it is killed: the task
    never began, so it goes to the replacement worker instead of failing."""
    with ctx.Pool(1) as pool:
        pid = pool.apply(os.getpid)
        os.kill(pid, signal.SIGSTOP)
        result = pool.apply_async(os.getpid)
        os.kill(pid, signal.SIGKILL)
        replacement = result.get(PATIENCE)
        assert replacement != pid
        stats = pool.stats()
        assert (stats.tasks_lost, stats.restarts) == (0, 1)


def test_stats_count_tasks_and_chunks_apart(ctx: Any) -> None:
    """300 tasks in chunks of 10: 300 tasks done, in 30 chunks."""
    with ctx.Pool(2) as pool:
        pool.map(_pool_targets.pool_square, range(300), 10)
        stats = pool.stats()
    assert (stats.tasks_done, stats.chunks_done) == (300, 30)
    assert "chunks" in str(stats)
