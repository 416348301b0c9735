"""AsyncPool (serentak._pool.aio): the pool's asyncio face.

Each test drives its coroutine with ``asyncio.run`` (no pytest plugin needed)
under every start method (``ctx``), with two workers unless it needs one.
Tasks that must stay running while the test looks are held at a gate
(``_pool_targets.pool_gate``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import _pool_targets
import serentak
from _watch import lines

PATIENCE = 20.0
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
            await asyncio.sleep(0)  # both submitted
            queued.cancel()
            mapped.cancel()
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
