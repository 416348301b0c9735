"""What the pool's threads do while long tasks run: a worker gets its next task
before its running one ends, and no thread of the parent wakes for nothing.

Every test runs under every start method (the ``ctx`` fixture). Tasks that must
be running while the test looks are held at a gate (``_pool_targets.pool_gate``).
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import _pool_targets
from _watch import until

PATIENCE = 20.0
# Tasks of this length make the pool expect long tasks (a round trip per task is
# then small beside the task, and tasks are sent ahead one at a time).
LONG = 0.2


def _voluntary_switches(thread: threading.Thread) -> int:
    """How many times ``thread`` went to sleep so far (Linux: /proc)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("voluntary_ctxt"))
    return int(line.split()[1])


def test_a_long_task_dispatched_by_the_caller_gets_its_successor_sent_ahead(
    ctx: Any, gates: Path
) -> None:
    """The caller's thread dispatches a map's first tasks itself while the supervisor
    thread sleeps. The supervisor must still wake in time to send the worker its
    next task before the running one should end: else the worker waits a round
    trip through the parent for it, at every task."""
    with ctx.Pool(1) as pool:
        assert pool.map(_pool_targets.feat_sleep, [LONG, LONG], chunksize=1) == [LONG, LONG]
        gate = functools.partial(_pool_targets.pool_gate, str(gates))
        result = pool.map_async(gate, ["first", "second"], chunksize=1)
        assert _pool_targets.pool_gate_started(str(gates), "first")
        (worker,) = pool._supervisor.workers()
        # The first task is held at its gate: the second can only have gone ahead.
        assert until(lambda: len(worker.in_flight) == 2), "the next task was not sent ahead"
        _pool_targets.pool_gate_open(str(gates), "first")
        _pool_targets.pool_gate_open(str(gates), "second")
        assert result.get(PATIENCE) == [None, None]


def test_the_feeder_sleeps_through_a_map_it_has_fed_whole(ctx: Any) -> None:
    """A map whose chunks all went out at once (the caller's thread fed them) has
    nothing more for the feeder thread: its results must not wake it, one by one,
    taking a CPU from the workers for nothing."""
    with ctx.Pool(2) as pool:
        assert pool.map(_pool_targets.pool_square, range(4)) == [0, 1, 4, 9]
        feeder = pool._feeder._thread
        before = _voluntary_switches(feeder)
        assert pool.map(_pool_targets.pool_square, range(12), chunksize=1) == [
            x * x for x in range(12)
        ]
        assert _voluntary_switches(feeder) == before
