"""ProcessPoolExecutor (serentak._pool.executor): the concurrent.futures interface on the pool.

Every test runs under every start method (``ctx``, given as ``mp_context``),
with two workers unless it needs one. Tasks that must stay running while the
test looks are held at a gate (``_pool_targets.pool_gate``): the task creates a file
when it starts and returns once the test creates another.

Unlike the stdlib's, an executor whose worker dies is not broken: only that
worker's future fails (the fault matrix in test_pool_faults.py covers every
kind of death; here, the executor's side of it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _pool_targets
import serentak
import serentak.pool
from _signals import interrupted_by_a_signal_to_another_thread
from _watch import lines, running, until

# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0


@contextlib.contextmanager
def opened_on_exit(directory: Path) -> Iterator[None]:
    """Open every gate on leaving (before an enclosing executor waits for its calls)."""
    try:
        yield
    finally:
        _pool_targets.pool_gate_open_all(str(directory))


def executor_of(ctx: Any, workers: int = 2, **kwargs: Any) -> serentak.ProcessPoolExecutor:
    return serentak.ProcessPoolExecutor(workers, mp_context=ctx, **kwargs)


def warm_executor(ctx: Any, tmp_path: Path) -> serentak.ProcessPoolExecutor:
    """An executor of two workers, returned once both have started."""
    path = tmp_path / "workers"
    executor = executor_of(ctx, initializer=_pool_targets.pool_note_pid, initargs=(str(path),))
    assert until(lambda: len(lines(path)) >= 2), "the workers did not start"
    return executor


# ---- submit ----------------------------------------------------------------------------------


def test_is_a_concurrent_futures_executor(ctx: Any) -> None:
    with executor_of(ctx) as executor:
        assert isinstance(executor, concurrent.futures.Executor)
        future = executor.submit(_pool_targets.pool_add, 2, 3)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(PATIENCE) == 5


def test_submit_passes_args_and_kwargs(ctx: Any) -> None:
    with executor_of(ctx) as executor:
        future = executor.submit(_pool_targets.pool_echo, 1, "two", three=[3])
        assert future.result(PATIENCE) == ((1, "two"), {"three": [3]})
        assert executor.submit(lambda: "lambda").result(PATIENCE) == "lambda"


def test_a_raising_call_sets_its_future_exception(ctx: Any) -> None:
    with executor_of(ctx) as executor:
        future = executor.submit(_pool_targets.pool_raise, "boom")
        error = future.exception(PATIENCE)
        assert isinstance(error, ValueError)
        assert str(error) == "boom"
        assert isinstance(error.__cause__, serentak.pool.RemoteTraceback)
        with pytest.raises(ValueError, match="boom"):
            future.result()
        assert executor.submit(_pool_targets.pool_square, 3).result(PATIENCE) == 9


def test_futures_work_with_wait_as_completed_and_done_callbacks(ctx: Any) -> None:
    done: list[int] = []
    with executor_of(ctx) as executor:
        futures = [executor.submit(_pool_targets.pool_square, x) for x in range(8)]
        for future in futures:
            future.add_done_callback(lambda f: done.append(f.result()))
        finished, pending = concurrent.futures.wait(futures, timeout=PATIENCE)
        assert (len(finished), pending) == (8, set())
        completed = concurrent.futures.as_completed(futures, timeout=PATIENCE)
        assert sorted(f.result() for f in completed) == [x * x for x in range(8)]
    assert sorted(done) == [x * x for x in range(8)]


def test_a_future_runs_once_handed_to_a_worker(ctx: Any, gates: Path) -> None:
    with executor_of(ctx) as executor, opened_on_exit(gates):
        future = executor.submit(_pool_targets.pool_gate, str(gates), "held", "value")
        assert _pool_targets.pool_gate_started(str(gates), "held")
        assert future.running()
        assert not future.done()
        assert not future.cancel()
        _pool_targets.pool_gate_open(str(gates), "held")
        assert future.result(PATIENCE) == "value"


def test_a_future_not_yet_started_can_be_cancelled(ctx: Any, gates: Path, tmp_path: Path) -> None:
    record = tmp_path / "record"
    with executor_of(ctx, 1) as executor, opened_on_exit(gates):
        held = executor.submit(_pool_targets.pool_gate, str(gates), "held")
        assert _pool_targets.pool_gate_started(str(gates), "held")
        queued = [executor.submit(_pool_targets.pool_record, str(record), n) for n in range(5)]
        assert queued[-1].cancel()
        assert queued[-1].cancelled()
        _pool_targets.pool_gate_open(str(gates), "held")
        held.result(PATIENCE)
        with pytest.raises(concurrent.futures.CancelledError):
            queued[-1].result(PATIENCE)
        assert [f.result(PATIENCE)[0] for f in queued[:-1]] == [0, 1, 2, 3]
    assert sorted(int(line.split()[0]) for line in lines(record)) == [0, 1, 2, 3]


def test_a_dead_worker_fails_its_future_not_the_executor(ctx: Any) -> None:
    with executor_of(ctx) as executor:
        others = [executor.submit(_pool_targets.pool_square, x) for x in range(4)]
        dying = executor.submit(_pool_targets.pool_fault, ("sigkill", 1))
        error = dying.exception(PATIENCE)
        assert isinstance(error, serentak.WorkerLostError)
        assert "SIGKILL" in str(error)
        assert [f.result(PATIENCE) for f in others] == [0, 1, 4, 9]
        assert executor.submit(_pool_targets.pool_square, 5).result(PATIENCE) == 25
        assert list(executor.map(_pool_targets.pool_square, range(4))) == [0, 1, 4, 9]


# ---- map -------------------------------------------------------------------------------------


def test_map(ctx: Any) -> None:
    with executor_of(ctx) as executor:
        assert list(executor.map(_pool_targets.pool_square, range(10))) == [
            x * x for x in range(10)
        ]
        assert list(executor.map(_pool_targets.pool_add, range(4), [10, 20, 30])) == [10, 21, 32]
        assert list(executor.map(_pool_targets.pool_square, [])) == []


@pytest.mark.parametrize("chunksize", [1, 3, 50])
def test_map_chunksize(ctx: Any, chunksize: int) -> None:
    with executor_of(ctx) as executor:
        results = executor.map(_pool_targets.pool_square, range(23), chunksize=chunksize)
        assert list(results) == [x * x for x in range(23)]


def test_map_raises_at_the_failing_position(ctx: Any) -> None:
    items = [("ok", 0), ("ok", 1), ("raise", 2), ("ok", 3)]
    with executor_of(ctx) as executor:
        results = executor.map(_pool_targets.pool_fault, items)
        assert [next(results), next(results)] == [0, 10]
        with pytest.raises(ValueError, match="task 2 raised"):
            next(results)


def test_map_timeout_counts_from_the_call(ctx: Any, gates: Path, tmp_path: Path) -> None:
    with warm_executor(ctx, tmp_path) as executor, opened_on_exit(gates):
        held = lambda x: _pool_targets.pool_gate(str(gates), "held", x) if x == 1 else x  # noqa: E731
        started = time.monotonic()
        results = executor.map(held, range(3), timeout=0.5)
        assert next(results) == 0
        with pytest.raises(concurrent.futures.TimeoutError):  # on 3.10 not the builtin one
            next(results)
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < PATIENCE / 2


def test_map_timeout_not_reached(ctx: Any) -> None:
    with executor_of(ctx) as executor:
        results = executor.map(_pool_targets.pool_square, range(6), timeout=PATIENCE)
        assert list(results) == [x * x for x in range(6)]


# ---- shutdown --------------------------------------------------------------------------------


def test_shutdown_waits_for_every_call(ctx: Any, gates: Path) -> None:
    executor = executor_of(ctx)
    held = executor.submit(_pool_targets.pool_gate, str(gates), "held", "held")
    futures = [executor.submit(_pool_targets.pool_square, x) for x in range(6)]

    def let_go() -> None:
        _pool_targets.pool_gate_started(str(gates), "held")  # once it runs (or gives up waiting)
        _pool_targets.pool_gate_open(str(gates), "held")

    opener = threading.Thread(target=let_go)
    opener.start()
    executor.shutdown(wait=True)
    opener.join()
    assert held.done()
    assert held.result() == "held"
    assert [f.result(0) for f in futures] == [x * x for x in range(6)]


def test_shutdown_without_waiting_returns_at_once(ctx: Any, gates: Path) -> None:
    executor = executor_of(ctx)
    try:
        held = executor.submit(_pool_targets.pool_gate, str(gates), "held", "held")
        assert _pool_targets.pool_gate_started(str(gates), "held")
        executor.shutdown(wait=False)
        assert not held.done()
        _pool_targets.pool_gate_open(str(gates), "held")
        assert held.result(PATIENCE) == "held"
    finally:
        _pool_targets.pool_gate_open_all(str(gates))
        executor.shutdown(wait=True)


def test_shutdown_cancel_futures(ctx: Any, gates: Path, tmp_path: Path) -> None:
    record = tmp_path / "record"
    executor = executor_of(ctx, 1)
    try:
        held = executor.submit(_pool_targets.pool_gate, str(gates), "held", "held")
        assert _pool_targets.pool_gate_started(str(gates), "held")
        queued = [executor.submit(_pool_targets.pool_record, str(record), n) for n in range(8)]
        executor.shutdown(wait=False, cancel_futures=True)
    finally:
        _pool_targets.pool_gate_open_all(str(gates))
        executor.shutdown(wait=True)
    assert held.result(0) == "held"
    cancelled = [n for n, f in enumerate(queued) if f.cancelled()]
    ran = [n for n, f in enumerate(queued) if not f.cancelled()]
    assert cancelled, "no queued call was cancelled"
    assert cancelled == list(range(ran[-1] + 1 if ran else 0, 8)), "cancelled out of order"
    assert [queued[n].result(0)[0] for n in ran] == ran
    assert sorted(int(line.split()[0]) for line in lines(record)) == ran


def test_submit_after_shutdown_raises(ctx: Any) -> None:
    executor = executor_of(ctx)
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(_pool_targets.pool_square, 2)
    with pytest.raises(RuntimeError):
        executor.map(_pool_targets.pool_square, [2])
    executor.shutdown()  # twice is harmless


def test_leaving_the_with_block_waits_and_stops_the_workers(ctx: Any, tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    with executor_of(
        ctx, initializer=_pool_targets.pool_note_pid, initargs=(str(workers),)
    ) as executor:
        futures = [executor.submit(_pool_targets.pool_square, x) for x in range(10)]
    assert all(f.done() for f in futures)
    assert [f.result(0) for f in futures] == [x * x for x in range(10)]
    pids = [int(pid) for pid in lines(workers)]
    assert pids
    assert not any(running(pid) for pid in pids)


# ---- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_must_be_positive(ctx: Any, max_workers: int) -> None:
    with pytest.raises(ValueError):
        serentak.ProcessPoolExecutor(max_workers, mp_context=ctx)


def test_initializer_and_max_tasks_per_child(ctx: Any, tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    with executor_of(
        ctx,
        initializer=_pool_targets.pool_init,
        initargs=(str(workers), "ready"),
        max_tasks_per_child=1,
    ) as executor:
        futures = [executor.submit(_pool_targets.pool_initialized, x) for x in range(3)]
        assert [f.result(PATIENCE) for f in futures] == [(x, "ready") for x in range(3)]
        pids = [executor.submit(_pool_targets.pool_pid, x).result(PATIENCE)[1] for x in range(3)]
    assert len(set(pids)) == 3, "a worker ran more than one task"
    assert set(pids) <= {int(pid) for pid in lines(workers)}


def test_the_stdlibs_executor_on_a_serentak_context_is_refused_at_construction(ctx: Any) -> None:
    """It would build the stdlib's queues on our context and wait for ever; the error
    names the executor to use instead. Nothing is started before it is raised."""
    method = ctx.get_start_method()
    expected = re.escape(
        "use serentak.ProcessPoolExecutor(max_workers, "
        f"mp_context=serentak.get_context({method!r}))"
    )
    with pytest.raises(TypeError, match=expected):
        concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx)
    with pytest.raises(TypeError, match=r"serentak\.ProcessPoolExecutor"):
        concurrent.futures.ProcessPoolExecutor(2, mp_context=serentak)  # type: ignore[call-overload]
    assert ctx.get_start_method() == method  # everyone else still gets the answer


# ---- processes of its own ----------------------------------------------------------------------


def test_a_call_can_start_a_pool(ctx: Any) -> None:
    """The workers are not daemonic (as the stdlib executor's since 3.9)."""
    with executor_of(ctx) as executor:
        future = executor.submit(_pool_targets.pool_nested_map, ctx.get_start_method())
        daemonic, squares = future.result(PATIENCE)
    assert daemonic is False
    assert squares == [0, 1, 4, 9]


def test_a_process_that_leaves_its_executor_running_still_exits(ctx: Any, tmp_path: Path) -> None:
    """Its exit joins its non-daemonic children: the executor is stopped first."""
    ran = tmp_path / "ran"
    process = ctx.Process(
        target=_pool_targets.exec_submit_and_leave, args=(ctx.get_start_method(), str(ran))
    )
    process.start()
    try:
        process.join(PATIENCE)
        assert process.exitcode == 0
        assert len(lines(ran)) == 1
    finally:
        if process.exitcode is None:
            process.kill()
            process.join()


@pytest.mark.parametrize("wait", ["result", "exception", "shutdown"])
def test_a_signal_taken_by_another_thread_interrupts_a_wait(
    ctx: Any, gates: Path, wait: str
) -> None:
    """The kernel may hand a process's SIGINT to any thread (an executor has several). One
    taken by another thread must still interrupt the main thread waiting on a call."""
    with executor_of(ctx) as executor, opened_on_exit(gates):
        future = executor.submit(_pool_targets.pool_gate, str(gates), "held", "done")
        assert _pool_targets.pool_gate_started(str(gates), "held")
        with interrupted_by_a_signal_to_another_thread(
            lambda: _pool_targets.pool_gate_open(str(gates), "held")
        ):
            if wait == "result":
                future.result()
            elif wait == "exception":
                future.exception()
            else:
                executor.shutdown(wait=True)
        assert future.result(PATIENCE) == "done"


# ---- asyncio ---------------------------------------------------------------------------------


def test_asyncio_run_in_executor(ctx: Any) -> None:
    async def main(executor: concurrent.futures.Executor) -> list[Any]:
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(executor, _pool_targets.pool_square, x) for x in range(5)]
        calls.append(loop.run_in_executor(executor, _pool_targets.pool_add, 40, 2))
        return list(await asyncio.gather(*calls))

    with executor_of(ctx) as executor:
        assert asyncio.run(main(executor)) == [0, 1, 4, 9, 16, 42]


def test_asyncio_sees_a_call_fail(ctx: Any) -> None:
    async def main(executor: concurrent.futures.Executor) -> BaseException | None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(executor, _pool_targets.pool_raise, "async boom")
        except ValueError as exc:
            return exc
        return None

    with executor_of(ctx) as executor:
        error = asyncio.run(main(executor))
    assert isinstance(error, ValueError)
    assert str(error) == "async boom"


def test_asyncio_sees_a_dead_worker_and_the_executor_goes_on(ctx: Any) -> None:
    """A call whose worker is SIGKILLed fails with WorkerLostError in the awaiting
    coroutine; the calls around it, lambdas and closures among them, still complete."""
    offset = 100

    async def main(executor: concurrent.futures.Executor) -> list[Any]:
        loop = asyncio.get_running_loop()
        calls = [
            loop.run_in_executor(executor, _pool_targets.pool_fault, ("ok", 1)),
            loop.run_in_executor(executor, _pool_targets.pool_fault, ("sigkill", 2)),
            loop.run_in_executor(executor, lambda: offset + 3),
            loop.run_in_executor(executor, _pool_targets.pool_fault, ("ok", 4)),
        ]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    with executor_of(ctx) as executor:
        started = time.monotonic()
        first, lost, third, fourth = asyncio.run(main(executor))
        assert time.monotonic() - started < PATIENCE / 2
        assert isinstance(lost, serentak.WorkerLostError)
        assert "SIGKILL" in str(lost)
        assert [first, third, fourth] == [10, 103, 40]
        assert list(executor.map(lambda x: x + offset, range(3))) == [100, 101, 102]
