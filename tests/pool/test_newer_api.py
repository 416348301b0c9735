"""The pool API newer CPython releases added, on every Python serentak supports.

``Pool.imap(..., buffersize=N)`` / ``imap_unordered`` (3.15) and
``Executor.map(..., buffersize=N)`` (3.14) read their input lazily, at most N
tasks ahead of the results read; ``buffer_bytes=`` bounds the pickled bytes
the same way. ``ProcessPoolExecutor.terminate_workers()`` / ``kill_workers()``
(3.14) stop the running calls and, unlike CPython's, leave the executor usable.

Every test runs under every start method (``ctx``).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _pool_targets
import serentak

PATIENCE = 20.0


class Counted:
    """An input that counts how many items were taken from it (by the feeder thread)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.taken = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.taken += 1
            yield item


# ---- buffersize ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_buffersize_reads_at_most_that_many_items_ahead(ctx: Any, method: str) -> None:
    source = Counted(list(range(40)))
    with ctx.Pool(2) as pool:
        results = getattr(pool, method)(_pool_targets.pool_square, source, buffersize=3)
        seen = []
        for consumed, value in enumerate(results, 1):
            seen.append(value)
            assert source.taken <= consumed + 3
    assert sorted(seen) == [x * x for x in range(40)]


def test_imap_buffer_bytes_bounds_the_pickled_input_ahead(ctx: Any) -> None:
    megabyte = 1 << 20
    source = Counted([bytes([n]) * megabyte for n in range(12)])
    with ctx.Pool(2) as pool:
        # Two and a half chunks' worth: a third goes while under the bound, no fourth.
        results = pool.imap(
            _pool_targets.pool_nbytes, source, chunksize=1, buffer_bytes=5 * megabyte // 2
        )
        for consumed, value in enumerate(results, 1):
            assert value == megabyte
            assert source.taken <= consumed + 3


def test_one_item_bigger_than_buffer_bytes_still_goes(ctx: Any) -> None:
    with ctx.Pool(1) as pool:
        sizes = list(pool.imap(_pool_targets.pool_nbytes, [b"x" * 100_000] * 3, buffer_bytes=10))
    assert sizes == [100_000] * 3


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_a_reader_that_stops_early_does_not_keep_join_waiting(ctx: Any, method: str) -> None:
    pool = ctx.Pool(2)
    results = getattr(pool, method)(_pool_targets.pool_square, range(200), buffersize=2)
    first = next(results)
    pool.close()
    pool.join()
    # Once closed, the rest was computed (nothing lost); a reader may still take it.
    assert sorted([first, *results]) == [x * x for x in range(200)]


def test_executor_map_buffersize_reads_lazily(ctx: Any) -> None:
    source = Counted(list(range(30)))
    with serentak.ProcessPoolExecutor(2, mp_context=ctx) as executor:
        seen = []
        for consumed, value in enumerate(
            executor.map(_pool_targets.pool_square, source, buffersize=2)
        ):
            seen.append(value)
            assert source.taken <= consumed + 1 + 2
    assert seen == [x * x for x in range(30)]


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1, ValueError), ("2", TypeError), (1.5, TypeError)]
)
def test_bad_buffersize_fails_at_the_call(ctx: Any, value: Any, error: type[Exception]) -> None:
    with ctx.Pool(1) as pool, serentak.ProcessPoolExecutor(1, mp_context=ctx) as executor:
        with pytest.raises(error, match="buffersize"):
            pool.imap(_pool_targets.pool_square, range(3), buffersize=value)
        with pytest.raises(error, match="buffersize"):
            pool.imap_unordered(_pool_targets.pool_square, range(3), buffersize=value)
        with pytest.raises(error, match="buffer_bytes"):
            pool.imap(_pool_targets.pool_square, range(3), buffer_bytes=value)
        with pytest.raises(error, match="buffersize"):
            executor.map(_pool_targets.pool_square, range(3), buffersize=value)


# ---- terminate_workers / kill_workers --------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "signal_name"), [("terminate_workers", "SIGTERM"), ("kill_workers", "SIGKILL")]
)
def test_stopping_the_workers_fails_running_calls_and_the_executor_goes_on(
    ctx: Any, gates: Path, method: str, signal_name: str
) -> None:
    with serentak.ProcessPoolExecutor(1, mp_context=ctx) as executor:
        running = executor.submit(_pool_targets.pool_gate, str(gates), "held")
        assert _pool_targets.pool_gate_started(str(gates), "held")
        queued = executor.submit(_pool_targets.pool_square, 2)
        getattr(executor, method)()
        # Submitted at once: it must not go to a worker being stopped.
        after = executor.submit(_pool_targets.pool_square, 6)
        error = running.exception(PATIENCE)
        assert isinstance(error, serentak.WorkerLostError)
        assert signal_name in str(error)
        assert queued.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result(PATIENCE)
        # Fresh workers take what comes next.
        assert after.result(PATIENCE) == 36
        assert executor.submit(_pool_targets.pool_square, 5).result(PATIENCE) == 25
        assert list(executor.map(_pool_targets.pool_square, range(3))) == [0, 1, 4]


def test_stopping_the_workers_after_shutdown_raises(ctx: Any) -> None:
    executor = serentak.ProcessPoolExecutor(1, mp_context=ctx)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.terminate_workers()
