"""AsyncPool (serentak._pool.aio): the pool's asyncio face.

Each test drives its coroutine with ``asyncio.run`` (no pytest plugin needed)
under every start method (``ctx``), with two workers unless it needs one.
Tasks that must stay running while the test looks are held at a gate
(``_pool_targets.pool_gate``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import _pool_targets
import serentak
from _scripts import read_line, rest_of_output, running_script
from _watch import descendants_of, lines, still_running_after, until

PATIENCE = 20.0
# How soon a cancelled running task's worker must be gone and replaced (a
# replacement under spawn imports serentak afresh: allow for a busy machine).
STOPPED_WITHIN = 1.0
_T = TypeVar("_T")


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(asyncio.wait_for(coroutine, PATIENCE))


def test_apply_map_starmap(ctx: Any) -> None:
    async def main() -> None:
        async with serentak.AsyncPool(2, context=ctx) as pool:
            assert await pool.apply(_pool_targets.pool_add, (2, 3)) == 5
            assert await pool.apply(_pool_targets.pool_echo, (1,), {"k": 2}) == ((1,), {"k": 2})
            assert await pool.map(_pool_targets.pool_square, range(50)) == [
                x * x for x in range(50)
            ]
            assert await pool.starmap(_pool_targets.pool_add, [(1, 2), (3, 4)]) == [3, 7]
            # Several awaits at once, each its own task: no thread per call.
            threads = threading.active_count()
            many = await asyncio.gather(
                *(pool.apply(_pool_targets.pool_square, (x,)) for x in range(20))
            )
            assert many == [x * x for x in range(20)]
            assert threading.active_count() == threads

    run(main())


def test_lambdas_and_closures_go_by_value(ctx: Any) -> None:
    offset = 10

    async def main() -> None:
        async with serentak.AsyncPool(1, context=ctx) as pool:
            assert await pool.apply(lambda x: x + offset, (1,)) == 11
            assert await pool.map(lambda x: -x, [1, 2]) == [-1, -2]

    run(main())


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_over_a_sync_iterable(ctx: Any, method: str) -> None:
    async def main() -> list[int]:
        async with serentak.AsyncPool(2, context=ctx) as pool:
            return [r async for r in getattr(pool, method)(_pool_targets.pool_square, range(30))]

    results = run(main())
    expected = [x * x for x in range(30)]
    assert (results if method == "imap" else sorted(results)) == expected


def test_imap_over_an_async_iterable_reads_it_with_bounded_look_ahead(ctx: Any) -> None:
    taken = 0

    async def numbers() -> AsyncIterator[int]:
        nonlocal taken
        for x in range(20):
            taken += 1
            yield x

    async def main() -> list[int]:
        results = []
        async with serentak.AsyncPool(2, context=ctx) as pool:
            async for value in pool.imap(_pool_targets.pool_square, numbers(), buffersize=2):
                results.append(value)
                assert taken <= len(results) + 2
        return results

    assert run(main()) == [x * x for x in range(20)]


def test_a_raising_task_raises_at_its_await(ctx: Any) -> None:
    async def main() -> None:
        async with serentak.AsyncPool(1, context=ctx) as pool:
            with pytest.raises(ValueError, match="marker 71c") as caught:
                await pool.apply(_pool_targets.pool_raise, ("marker 71c",))
            assert "pool_raise" in str(caught.value.__cause__)
            with pytest.raises(ValueError, match="marker 71d"):
                async for _ in pool.imap(_pool_targets.pool_raise, ["marker 71d"]):
                    pass
            assert await pool.apply(_pool_targets.pool_square, (3,)) == 9

    run(main())


def test_a_dead_worker_fails_only_its_own_await(ctx: Any) -> None:
    async def main() -> None:
        async with serentak.AsyncPool(2, context=ctx) as pool:
            dying, *others = await asyncio.gather(
                pool.apply(_pool_targets.pool_fault, (("sigkill", 1),)),
                *(pool.apply(_pool_targets.pool_square, (x,)) for x in range(4)),
                return_exceptions=True,
            )
            assert isinstance(dying, serentak.WorkerLostError)
            assert "SIGKILL" in str(dying)
            assert others == [0, 1, 4, 9]
            assert await pool.map(_pool_targets.pool_square, range(3)) == [0, 1, 4]

    run(main())


def test_timeout_kills_the_overdue_task(ctx: Any, gates: Path) -> None:
    async def main() -> None:
        async with serentak.AsyncPool(1, context=ctx) as pool:
            with pytest.raises(serentak.TimeoutError):
                await pool.apply(_pool_targets.pool_gate, (str(gates), "never"), timeout=0.3)
            assert await pool.apply(_pool_targets.pool_square, (4,)) == 16

    run(main())


def test_cancelling_an_await_withdraws_its_queued_tasks(
    ctx: Any, gates: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record"

    async def main() -> None:
        async with serentak.AsyncPool(1, context=ctx) as pool:
            held = asyncio.ensure_future(pool.apply(_pool_targets.pool_gate, (str(gates), "held")))
            assert await asyncio.to_thread(_pool_targets.pool_gate_started, str(gates), "held")
            queued = asyncio.ensure_future(pool.apply(_pool_targets.pool_record, (str(record), 1)))
            mapped = asyncio.ensure_future(
                pool.starmap(_pool_targets.pool_record, [(str(record), n) for n in range(3)], 1)
            )
            await asyncio.sleep(0)  # both submitted: each awaits its future
            queued.cancel()
            mapped.cancel()
            # At once, before either cancelled coroutine resumes: the tasks
            # are withdrawn from that instant, whatever the supervisor does next.
            _pool_targets.pool_gate_open(str(gates), "held")
            await held
            with pytest.raises(asyncio.CancelledError):
                await queued
            with pytest.raises(asyncio.CancelledError):
                await mapped
            # The pool goes on; a task submitted after the cancelled ones runs
            # after them, so by now they would have run.
            assert await pool.apply(_pool_targets.pool_square, (2,)) == 4

    run(main())
    assert lines(record) == []


def test_needs_a_running_event_loop(ctx: Any) -> None:
    errors: list[BaseException] = []

    def in_a_thread() -> None:
        try:
            serentak.AsyncPool(1, context=ctx)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join(PATIENCE)
    assert len(errors) == 1
    assert "running asyncio event loop" in str(errors[0])
    with pytest.raises(RuntimeError, match="running asyncio event loop"):
        serentak.AsyncPool(1, context=ctx)


def test_close_and_join_without_blocking_the_loop(ctx: Any) -> None:
    async def main() -> list[int]:
        pool = serentak.AsyncPool(2, context=ctx)
        pending = asyncio.ensure_future(pool.map(_pool_targets.pool_square, range(10)))
        await asyncio.sleep(0)
        pool.close()
        await pool.join()
        return await pending

    assert run(main()) == [x * x for x in range(10)]


def _has_lines(path: Path) -> bool:
    return bool(lines(path))


async def _first_of(results: Any) -> Any:
    async for value in results:
        return value
    return None


@pytest.mark.parametrize("call", ["apply", "starmap", "imap"])
def test_cancel_running_kills_the_running_tasks_and_the_pool_goes_on(
    ctx: Any, gates: Path, call: str
) -> None:
    """A task that would run 30 s is stopped within a second of its await's cancel
    (its worker killed and replaced), delivers nothing, runs only once; an await
    running beside it is unaffected."""
    gate = str(gates)

    async def main() -> None:
        async with serentak.AsyncPool(3, context=ctx) as pool:
            other = asyncio.ensure_future(pool.apply(_pool_targets.pool_gate, (gate, "other", 7)))
            assert await asyncio.to_thread(_pool_targets.pool_gate_started, gate, "other")
            names = ["never"] if call == "apply" else ["never0", "never1"]
            if call == "apply":
                call_result: Any = pool.apply(
                    _pool_targets.pool_gate, (gate, "never"), cancel_running=True
                )
            elif call == "starmap":
                call_result = pool.starmap(
                    _pool_targets.pool_gate, [(gate, n) for n in names], 1, cancel_running=True
                )
            else:
                call_result = _first_of(
                    pool.imap(
                        _pool_targets.distributed_gate_item,
                        [(n, gate) for n in names],
                        1,
                        cancel_running=True,
                    )
                )
            stopped = asyncio.ensure_future(call_result)
            for name in names:
                assert await asyncio.to_thread(_pool_targets.pool_gate_started, gate, name)
            for name in names:  # its pid written
                started = gates / f"{name}.started"
                assert await asyncio.to_thread(until, functools.partial(_has_lines, started))
            busy = {int(lines(gates / f"{name}.started")[0]) for name in names}
            supervisor = pool._pool._supervisor
            assert busy <= set(supervisor.worker_pids())
            sent = time.monotonic()
            stopped.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stopped
            gone = await asyncio.to_thread(
                until, lambda: not busy & set(supervisor.worker_pids()), STOPPED_WITHIN
            )
            assert gone, "the cancelled tasks' workers were not killed in time"
            # Every worker but the one running "other" is free: the replacements are up.
            after = ["after0", "after1"]
            waiting = [
                asyncio.ensure_future(pool.apply(_pool_targets.pool_gate, (gate, name, name)))
                for name in after
            ]
            for name in after:
                assert await asyncio.to_thread(_pool_targets.pool_gate_started, gate, name)
                _pool_targets.pool_gate_open(gate, name)
            assert await asyncio.gather(*waiting) == after
            assert time.monotonic() - sent < 2 * STOPPED_WITHIN
            assert not other.done()
            _pool_targets.pool_gate_open(gate, "other")
            assert await other == 7
            stats = pool._pool.stats()
            assert stats.tasks_lost == 0
            assert stats.restarts == len(names)
        for name in names:  # none ran again
            assert len(lines(gates / f"{name}.started")) == 1

    run(main())


ASYNC_CTRL_C_SCRIPT = """
import asyncio
import functools
import os
import signal
import sys
import time

import serentak


def note(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\\n" % os.getpid())
    os.close(fd)


def slow(path):
    note(path)
    while True:
        signal.pause()


async def main():
    method, busy = sys.argv[1:]
    async with serentak.AsyncPool(2, context=serentak.get_context(method)) as pool:
        await pool.map(note, [os.devnull] * 2)  # both workers up
        print("workers", *pool._pool._supervisor.worker_pids(), flush=True)
        try:
            await asyncio.gather(pool.apply(slow, (busy,)), pool.map(slow, [busy], 1))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted", time.monotonic(), flush=True)
            raise


if __name__ == "__main__":
    asyncio.run(main())
"""


@pytest.mark.parametrize("send_to", ["group", "main"])
def test_ctrl_c_under_asyncio_run_stops_everything(
    start_method: str, tmp_path: Path, send_to: str
) -> None:
    """SIGINT while asyncio.run awaits running tasks: KeyboardInterrupt at once, every
    worker gone within a second, no child left, as with the sync pool."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(ASYNC_CTRL_C_SCRIPT)
    busy = tmp_path / "busy"
    with running_script(script, start_method, str(busy), start_new_session=True) as process:
        label, *pids = read_line(process).split()
        assert label == "workers"
        worker_pids = {int(pid) for pid in pids}
        assert len(worker_pids) == 2
        assert until(lambda: len(lines(busy)) >= 2)  # both running a slow task
        family = descendants_of(process.pid)
        assert worker_pids <= family

        sent = time.monotonic()
        if send_to == "group":
            os.killpg(process.pid, signal.SIGINT)
        else:
            os.kill(process.pid, signal.SIGINT)
        label, stamp = read_line(process).split()
        assert label == "interrupted"
        assert float(stamp) - sent < 0.3
        assert still_running_after(worker_pids, sent + 1.0 - time.monotonic()) == set()
        stdout, stderr = rest_of_output(process)
    assert process.returncode == -signal.SIGINT, stderr
    assert stdout == ""
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert still_running_after(family, 2.0) == set(), "orphans left behind"
