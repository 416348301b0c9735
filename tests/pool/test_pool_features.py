"""The pool for real workloads: progress bars, adaptive chunks, lazy inputs, worker
state, recycling, right-sizing and statistics (serentak._pool.feeder, _pool, _executor).

Behaviour runs under every start method (``ctx``), with pools of two workers.
Where a test must know that a task has started it holds the task at a gate
(``_pool_targets.pool_gate``); where it must know that the workers are up, their
initializer notes their pids in a file the test polls. Timing bounds are
derived in the tests' comments so that a loaded two-core machine cannot trip
them: what they catch is a factor of two, not a few milliseconds.

Covered elsewhere and not repeated here: maxtasksperchild without losing or
repeating a task (test_pool.py), imap reading an endless input with
chunksize=1 (test_pool.py), the distributed pool's progress bar
(test_distributed.py).
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import tqdm.auto

import _pool_targets
import serentak
from _scripts import run_script, script_env
from _watch import lines, until
from serentak._os import posix as _posix
from serentak._pool.tasks import resident_memory_mb

# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0

# tqdm options that print every update (by default tqdm prints at most every 0.1 s).
EVERY_UPDATE = {"mininterval": 0, "miniters": 1}
# One state of a tqdm bar as it prints it: "12/57 [" with a total, "12task [" without.
BAR_STATE = re.compile(r"(\d+)(?:/(\d+)|task) \[")

THREAD_LIMIT_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


# ---- helpers ---------------------------------------------------------------------------------


def bar_states(text: str) -> list[tuple[int, int | None]]:
    """Every ``(n, total)`` a tqdm bar printed into ``text``, in order."""
    return [(int(n), int(total) if total else None) for n, total in BAR_STATE.findall(text)]


def started_workers(path: Path, count: int) -> list[int]:
    """The pids the ``pool_note_pid`` initializer wrote, once there are ``count`` of them."""
    assert until(lambda: len(lines(path)) >= count), f"workers started: {lines(path)}"
    return [int(line) for line in lines(path)]


class FakeBar:
    """Stands in for tqdm.auto.tqdm: records how the pool made and moved its bars."""

    made: ClassVar[list[FakeBar]] = []

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.n = 0
        self.closed = False
        FakeBar.made.append(self)

    def update(self, n: int) -> None:
        assert not self.closed, "a closed bar was updated"
        time.sleep(0.001)  # drawing takes a moment (a terminal write lets other threads run)
        self.n += n

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_bar(monkeypatch: pytest.MonkeyPatch) -> type[FakeBar]:
    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    monkeypatch.setattr(FakeBar, "made", [])
    return FakeBar


# ---- 1. progress -----------------------------------------------------------------------------


def _progress_calls(pool: Any) -> dict[str, Callable[[dict[str, Any]], list[Any]]]:
    """Each map-family call over the 57 items 0..56, given the progress option."""
    square = _pool_targets.pool_square
    return {
        "map": lambda bar: pool.map(square, range(57), progress=bar),
        "map of a generator": lambda bar: pool.map(square, (x for x in range(57)), progress=bar),
        "map chunksize=5": lambda bar: pool.map(square, range(57), 5, progress=bar),
        "map_async": lambda bar: pool.map_async(square, range(57), progress=bar).get(PATIENCE),
        "starmap": lambda bar: pool.starmap(
            _pool_targets.pool_add, [(x * x, 0) for x in range(57)], progress=bar
        ),
        "starmap_async": lambda bar: pool.starmap_async(
            _pool_targets.pool_add, [(x * x, 0) for x in range(57)], progress=bar
        ).get(PATIENCE),
        "imap": lambda bar: list(pool.imap(square, range(57), progress=bar)),
        "imap chunksize=4": lambda bar: list(pool.imap(square, range(57), 4, progress=bar)),
        "imap_unordered": lambda bar: sorted(pool.imap_unordered(square, range(57), progress=bar)),
    }


def test_progress_bar_reaches_100_percent_with_the_right_total(ctx: Any) -> None:
    """Whatever the call, once it has returned its results the bar shows every item
    done out of the input's length (items, not chunks), and has been closed."""
    with ctx.Pool(2) as pool:
        for name, call in _progress_calls(pool).items():
            out = io.StringIO()
            assert call({"file": out, **EVERY_UPDATE}) == [x * x for x in range(57)], name
            text = out.getvalue()
            states = bar_states(text)
            assert states[-1] == (57, 57), f"{name}: {text!r}"
            assert "100%" in text.rsplit("\r", 1)[-1], f"{name}: {text!r}"
            assert {total for _, total in states} == {57}, f"{name}: the total from the start"
            counts = [n for n, _ in states]
            assert counts == sorted(counts), f"{name}: the bar went back: {counts}"
            assert text.endswith("\n"), f"{name}: the bar was not closed: {text!r}"


def test_progress_bar_of_an_input_without_length_counts_without_total(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        out = io.StringIO()
        results = pool.imap(
            _pool_targets.pool_square, (x for x in range(40)), progress={"file": out}
        )
        assert list(results) == [x * x for x in range(40)]
    states = bar_states(out.getvalue())
    assert states[-1] == (40, None), out.getvalue()
    assert {total for _, total in states} == {None}


def test_executor_map_progress_bar(ctx: Any) -> None:
    out = io.StringIO()
    with serentak.ProcessPoolExecutor(2, mp_context=ctx) as executor:
        results = executor.map(_pool_targets.pool_add, range(30), range(40), progress={"file": out})
        assert list(results) == [2 * x for x in range(30)]
    states = bar_states(out.getvalue())
    # The total is the shortest input's length, as zip() and map() stop there.
    assert states[-1] == (30, 30), out.getvalue()
    assert out.getvalue().endswith("\n")


@pytest.mark.parametrize("submit", ["map_async", "imap_unordered"])
def test_progress_bar_advances_as_tasks_finish(ctx: Any, gates: Path, submit: str) -> None:
    """While the first task is held, the bar shows the others done: it moves as tasks
    finish, not once at the end."""
    directory = str(gates)
    out = io.StringIO()
    options = {"file": out, **EVERY_UPDATE}

    def task(x: int) -> Any:
        return _pool_targets.pool_gate(directory, "first", x) if x == 0 else x

    with ctx.Pool(2) as pool:
        if submit == "map_async":
            result = pool.map_async(task, range(20), progress=options)
        else:
            result = pool.imap_unordered(task, range(20), progress=options)
        assert _pool_targets.pool_gate_started(directory, "first")
        assert until(lambda: any(n > 0 for n, _ in bar_states(out.getvalue()))), out.getvalue()
        assert (20, 20) not in bar_states(out.getvalue())
        _pool_targets.pool_gate_open(directory, "first")
        values = result.get(PATIENCE) if submit == "map_async" else list(result)
        assert sorted(values) == list(range(20))
    assert bar_states(out.getvalue())[-1] == (20, 20)


def test_progress_is_off_by_default_and_true_means_tqdm_auto(
    ctx: Any, fake_bar: type[FakeBar]
) -> None:
    square = _pool_targets.pool_square
    with ctx.Pool(2) as pool:
        pool.map(square, range(30))
        list(pool.imap(square, range(30)))
        pool.starmap(_pool_targets.pool_add, [(1, 2)] * 5)
        pool.map(square, range(30), progress=False)
        assert fake_bar.made == [], "a bar without progress="

        pool.map(square, range(30), progress=True)
        (bar,) = fake_bar.made
        # Complete and closed by the time map() returns: the caller prints after the bar.
        assert (bar.options["total"], bar.n, bar.closed) == (30, 30, True)

        list(pool.imap(square, iter(range(12)), progress={"desc": "squares", "leave": False}))
        bar = fake_bar.made[-1]
        assert (bar.options["total"], bar.n, bar.closed) == (None, 12, True)
        assert (bar.options["desc"], bar.options["leave"]) == ("squares", False)


# ---- 2. adaptive chunking --------------------------------------------------------------------


@pytest.mark.parametrize("submit", ["map", "imap", "imap of a generator"])
def test_many_tiny_tasks_go_in_few_chunks(ctx: Any, submit: str) -> None:
    """200,000 tiny tasks without a chunksize: chunks of tens of ms of work, so a few
    dozen of them (pool.stats() counts chunks apart from tasks). The bound allows chunks
    a hundred times smaller than that: only per-item (or near) dispatch fails it."""
    items = 200_000
    square = _pool_targets.pool_square
    with ctx.Pool(2) as pool:
        if submit == "map":
            results = pool.map(square, range(items))
        elif submit == "imap":
            results = list(pool.imap(square, range(items)))
        else:
            results = list(pool.imap(square, (x for x in range(items))))
        stats = pool.stats()
    assert results == [x * x for x in range(items)]
    assert stats.tasks_done == items
    assert stats.chunks_done <= items // 100, f"{stats.chunks_done} chunks for {items} items"


def test_warm_maps_of_ranges_give_what_the_builtin_map_gives(ctx: Any) -> None:
    """A range travels as range slices, and a warm map of one starts with big chunks
    (no lone first item): the results are the builtin map's, for huge values, a
    negative step, an empty range, chunksize=1, and the same maps repeated (their
    chunks then sized from the last map's timing)."""
    square = _pool_targets.pool_square
    inputs = [
        range(10**15, 10**15 + 70_000 * 7, 7),
        range(50_000, -50_000, -3),
        range(-(2**70), -(2**70) + 5),
        range(0),
        range(10, 0, -1),
    ]
    with ctx.Pool(2) as pool:
        for _ in range(2):
            for items in inputs:
                assert pool.map(square, items) == [x * x for x in items], items
        assert pool.map(square, range(100, -100, -7), chunksize=1) == [
            x * x for x in range(100, -100, -7)
        ]


def test_map_results_of_ints_come_back_as_returned_type_for_type(ctx: Any) -> None:
    """A chunk whose results are all plain ints within int64 travels packed, any
    other pickled: chunks of each kind side by side give back exactly what the
    workers returned (bools stay bools, big ints stay whole)."""
    values = [1, 2, True, 3, 2**63 - 1, -(2**63), 2**64, -5, 0, False, 2**31, 7]
    with ctx.Pool(2) as pool:
        for chunksize in (None, 1, 2, 3):
            results = pool.map(_pool_targets.pool_return, values, chunksize)
            assert results == values
            assert [type(value) for value in results] == [type(value) for value in values]
        assert pool.starmap(_pool_targets.pool_add, [(2**40, 1), (-7, 2)]) == [2**40 + 1, -5]


def test_few_slow_tasks_are_spread_over_the_workers(ctx: Any, tmp_path: Path) -> None:
    """50 tasks of 40 ms: one per chunk (two would be past the 20 ms aim), the workers
    sharing them so the map takes about half the work's time.

    Bounds: the work is at least 50 x 40 ms = 2 s of busy time; two workers ideally
    finish in 1 s. The map may take up to 1.5 s (0.5 s for 25 round trips a worker),
    and each worker must do at least 15 tasks (one lagging the other by 400 ms of
    its 1 s). Serial execution, or one worker doing most, fails both by far.
    """
    seconds = 0.04
    workers = tmp_path / "workers"
    with ctx.Pool(2, _pool_targets.pool_note_pid, (str(workers),)) as pool:
        started_workers(workers, 2)  # both up before the clock starts
        began = time.monotonic()
        results = pool.map(functools.partial(_pool_targets.feat_sleep_echo, seconds), range(50))
        elapsed = time.monotonic() - began
        stats = pool.stats()
    assert results == list(range(50))
    assert stats.chunks_done == 50, "slow tasks were grouped into chunks"
    assert stats.busy_seconds >= 50 * seconds
    per_worker = sorted(w.chunks_done for w in stats.workers)
    assert len(per_worker) == 2, per_worker
    assert per_worker[0] >= 15, per_worker
    assert elapsed <= 0.75 * stats.busy_seconds, (elapsed, stats.busy_seconds)


def test_a_map_after_one_of_tiny_items_still_spreads_slow_items(ctx: Any) -> None:
    """A pool's second map of a function starts with chunks sized from its first
    map's timings, a guess only: after 20,000 instant items, 16 items of 50 ms
    still go in small chunks spread over both workers (the chunks are at most a
    quarter of what is left, the first report resizes the rest).

    Bounds: 0.8 s of work, 0.4 s on two workers at best; one worker doing most of
    it (or one chunk of all 16) takes 0.6 s or more, over the 0.75 x busy allowed.
    """
    sleep = _pool_targets.feat_sleep
    with ctx.Pool(2) as pool:
        assert pool.map(sleep, [0.0] * 20_000) == [0.0] * 20_000
        before = pool.stats()
        began = time.monotonic()
        assert pool.map(sleep, [0.05] * 16) == [0.05] * 16
        elapsed = time.monotonic() - began
        after = pool.stats()
    busy = after.busy_seconds - before.busy_seconds
    assert busy >= 16 * 0.05
    assert elapsed <= 0.75 * busy, (elapsed, busy)


def test_an_explicit_chunksize_is_obeyed(ctx: Any) -> None:
    """100 items in chunks of 7 are 15 chunks (of 100 tasks), whichever call, however fast."""
    square = _pool_targets.pool_square
    pairs = [(x, x) for x in range(100)]
    calls: dict[str, Callable[[Any], object]] = {
        "map": lambda pool: pool.map(square, range(100), 7),
        "map_async": lambda pool: pool.map_async(square, range(100), 7).get(PATIENCE),
        "starmap": lambda pool: pool.starmap(_pool_targets.pool_add, pairs, 7),
        "imap": lambda pool: list(pool.imap(square, range(100), 7)),
        "imap of a generator": lambda pool: list(pool.imap(square, iter(range(100)), 7)),
        "imap_unordered": lambda pool: list(pool.imap_unordered(square, range(100), 7)),
    }
    with ctx.Pool(2) as pool:
        for name, call in calls.items():
            before = pool.stats().chunks_done
            call(pool)
            assert pool.stats().chunks_done - before == 15, name


# ---- 3. lazy inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_looks_ahead_a_bounded_number_of_items(ctx: Any, method: str) -> None:
    """Over an endless input, with adaptive chunks, the items read but not yet consumed
    stay bounded however far the caller goes.

    The bound: a task takes at least 5 ms, so an adaptive chunk (20 ms of work) holds
    at most 4 items, and the pool keeps at most 4 x 2 + 4 = 12 chunks ahead of the
    consumer, plus the one being consumed: 52 items.
    """
    pulled = 0

    def numbers() -> Iterator[int]:
        nonlocal pulled
        for x in itertools.count():
            pulled += 1
            yield x

    ahead = []
    with ctx.Pool(2) as pool:
        results = getattr(pool, method)(
            functools.partial(_pool_targets.feat_sleep_echo, 0.005), numbers()
        )
        for consumed in range(1, 151):
            next(results)
            ahead.append(pulled - consumed)
    assert max(ahead) <= 52, ahead


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_of_an_endless_input_yields_and_can_be_stopped(ctx: Any, method: str) -> None:
    """imap(f, itertools.count()) with adaptive chunks: results come; once the caller
    drops the iterator the input is read no more, and close() + join() return."""
    pool = ctx.Pool(2)
    try:
        results = getattr(pool, method)(_pool_targets.pool_square, itertools.count())
        taken = list(itertools.islice(results, 5000))
        del results
        pool.close()
        joiner = threading.Thread(target=pool.join)
        joiner.start()
        joiner.join(PATIENCE)
        assert not joiner.is_alive(), "join() hangs: the dropped imap's input is still read"
    finally:
        pool.terminate()
    if method == "imap":
        assert taken == [x * x for x in range(5000)]
    else:
        assert len(set(taken)) == 5000
        assert all(int(value**0.5) ** 2 == value for value in taken)


def test_map_reads_its_whole_input_at_the_call_as_the_stdlibs_does(ctx: Any) -> None:
    pulled: list[int] = []

    def numbers() -> Iterator[int]:
        for x in range(30):
            pulled.append(x)
            yield x

    def broken() -> Iterator[int]:
        yield 1
        raise KeyError("the input broke")

    with ctx.Pool(2) as pool:
        result = pool.map_async(_pool_targets.pool_square, numbers())
        assert pulled == list(range(30)), "map_async returned before reading its input"
        assert result.get(PATIENCE) == [x * x for x in range(30)]
        # The input's exception comes from the call itself, not from get().
        with pytest.raises(KeyError, match="the input broke"):
            pool.map_async(_pool_targets.pool_square, broken())
        with pytest.raises(KeyError, match="the input broke"):
            pool.map(_pool_targets.pool_square, broken())
        assert pool.map(_pool_targets.pool_square, range(3)) == [0, 1, 4]


# ---- 4. worker state -------------------------------------------------------------------------


@pytest.mark.parametrize("maxtasksperchild", [None, 3])
def test_the_initializer_builds_worker_state_that_tasks_reach(
    ctx: Any, maxtasksperchild: int | None
) -> None:
    """serentak.worker_state(): built by the initializer in each worker (a replacement
    builds its own), kept from task to task, reached by every task of that worker."""
    with ctx.Pool(2, _pool_targets.feat_state_init, ("model",), maxtasksperchild) as pool:
        results = pool.map(_pool_targets.feat_state_use, range(12), chunksize=1)
        stats = pool.stats()
    assert [x for x, *_ in results] == list(range(12))
    assert {value for _, value, *_ in results} == {"model"}
    for _, _, built_by, pid, _ in results:
        assert built_by == pid, "a task saw state built in another process"
    calls: dict[int, list[int]] = {}
    for *_, pid, count in results:
        calls.setdefault(pid, []).append(count)
    for counts in calls.values():
        assert sorted(counts) == list(range(1, len(counts) + 1)), "state not kept between tasks"
    if maxtasksperchild is not None:
        assert max(len(counts) for counts in calls.values()) <= maxtasksperchild
        assert len(calls) >= 4
        assert stats.restarts >= 2


# ---- 5. recycling ----------------------------------------------------------------------------

LEAK_MB = 2
HEADROOM_MB = 5
TASKS = 10


@pytest.mark.parametrize("submit", ["apply_async", "map"])
def test_a_worker_whose_memory_grows_is_recycled_with_no_task_lost(
    ctx: Any, tmp_path: Path, submit: str
) -> None:
    """max_memory_per_child: each worker starts 5 MiB under the limit (its initializer
    takes it there) and every task leaks 2 MiB, so a worker passes the limit at its
    third task (at its fourth, allowing for noise in resident memory); it finishes
    that task and is replaced. So 10 tasks take at least 3 workers. Every task runs
    exactly once, tasks sent ahead to a retiring worker included."""
    limit = resident_memory_mb() + 64  # above a fresh worker's own size, whatever the method
    record = tmp_path / "record"
    task = functools.partial(_pool_targets.feat_leak, str(record), LEAK_MB)
    pool = ctx.Pool(2, _pool_targets.feat_ballast, (limit, HEADROOM_MB), max_memory_per_child=limit)
    try:
        if submit == "apply_async":
            handles = [pool.apply_async(task, (i,)) for i in range(TASKS)]
            results = [handle.get(PATIENCE) for handle in handles]
        else:
            results = pool.map(task, range(TASKS))
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    assert [task_id for task_id, _ in results] == list(range(TASKS))
    executions = [tuple(map(int, line.split())) for line in lines(record)]
    assert sorted(task_id for task_id, _ in executions) == list(range(TASKS)), "lost or repeated"
    assert sorted(executions) == sorted(results)
    stats = pool.stats()
    assert stats.tasks_lost == 0
    assert max(w.tasks_done for w in stats.workers) <= HEADROOM_MB // LEAK_MB + 2, str(stats)
    assert stats.restarts >= 1, str(stats)
    # Retired, not killed: each worker left on its own once its task was done.
    assert all((w.ended or "").endswith("exited with code 0") for w in stats.workers), str(stats)


def test_max_memory_per_child_must_be_positive(ctx: Any) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError):
            ctx.Pool(1, max_memory_per_child=bad)


# ---- 6. right-sized --------------------------------------------------------------------------

AFFINITY_SCRIPT = """
import json
import os
import sys

import serentak


def thread_limit():
    return os.environ.get("OPENBLAS_NUM_THREADS")


if __name__ == "__main__":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    ctx = serentak.get_context(sys.argv[1])
    with ctx.Pool() as pool:
        report = {
            "cpu_count": serentak.cpu_count(),
            "ctx_cpu_count": ctx.cpu_count(),
            "pool_size": len(pool.stats().workers),
            "thread_limit": pool.apply(thread_limit),
        }
    print(json.dumps(report))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_cpu_count_and_pool_size_under_a_restricted_affinity(
    start_method: str, tmp_path: Path
) -> None:
    """A program pinned to one CPU: cpu_count() says 1, Pool() starts one worker, whose
    BLAS gets one thread."""
    script = tmp_path / "affinity.py"
    script.write_text(AFFINITY_SCRIPT)
    env = {k: v for k, v in script_env().items() if k not in THREAD_LIMIT_VARIABLES}
    done = run_script(script, start_method, env=env)
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout) == {
        "cpu_count": 1,
        "ctx_cpu_count": 1,
        "pool_size": 1,
        "thread_limit": "1",
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_get_thread_limits_unless_the_user_set_them(
    ctx: Any, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    for name in THREAD_LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with ctx.Pool(workers) as pool:
        seen = pool.apply(_pool_targets.feat_environ, (list(THREAD_LIMIT_VARIABLES),))
    share = str(max(1, ctx.cpu_count() // workers))
    assert seen == dict.fromkeys(THREAD_LIMIT_VARIABLES, share) | {"OMP_NUM_THREADS": "7"}


def test_pool_size_under_a_cgroup_quota(ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half a CPU's quota: cpu_count() is 1, and so is Pool()'s default size."""
    monkeypatch.setattr(_posix, "_cgroup_cpu_quota", lambda: 0.5)
    assert serentak.cpu_count() == ctx.cpu_count() == 1
    with ctx.Pool() as pool:
        assert len(pool.stats().workers) == 1


@pytest.mark.parametrize(
    ("quota", "expected"),
    [(None, None), (0.5, 1), (1.5, 2), (1.0, 1), (1000.0, None)],
)
def test_usable_cpu_count_is_the_affinity_capped_by_the_quota(
    monkeypatch: pytest.MonkeyPatch, quota: float | None, expected: int | None
) -> None:
    monkeypatch.setattr(_posix, "_cgroup_cpu_quota", lambda: quota)
    affinity = len(os.sched_getaffinity(0))
    assert _posix.usable_cpu_count() == (affinity if expected is None else min(affinity, expected))


def fake_cgroups(
    monkeypatch: pytest.MonkeyPatch, root: Path, membership: str | None, files: dict[str, str]
) -> None:
    """/proc/self/cgroup reads ``membership`` (absent if None), and /sys/fs/cgroup is
    ``root``, holding ``files`` (paths relative to it)."""
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content)
    real_open = open

    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == "/proc/self/cgroup":
            if membership is None:
                raise FileNotFoundError(path)
            return io.StringIO(membership)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(_posix, "open", fake_open, raising=False)
    monkeypatch.setattr(_posix, "_CGROUP_ROOT", str(root))


CGROUP_CASES = {
    "v2, the tightest level": (
        "0::/user.slice/job.scope\n",
        {
            "cpu.max": "max 100000\n",
            "user.slice/cpu.max": "300000 100000\n",
            "user.slice/job.scope/cpu.max": "150000 100000\n",
        },
        1.5,
    ),
    "v2, a parent's quota": (
        "0::/user.slice/job.scope\n",
        {"user.slice/cpu.max": "50000 100000\n", "user.slice/job.scope/cpu.max": "max 100000\n"},
        0.5,
    ),
    "v2 unlimited": ("0::/job\n", {"job/cpu.max": "max 100000\n"}, None),
    "v1": (
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
        2.5,
    ),
    "v1 mounted as cpu": (
        "4:cpuacct,cpu:/docker/abc\n",
        {
            "cpu/docker/abc/cpu.cfs_quota_us": "50000\n",
            "cpu/docker/abc/cpu.cfs_period_us": "100000\n",
        },
        0.5,
    ),
    "v1 unlimited, beside an empty v2": (
        "1:cpu:/\n0::/\n",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
        None,
    ),
    "no cgroup files": ("0::/\n", {}, None),
    "no /proc/self/cgroup": (None, {}, None),
}


@pytest.mark.parametrize("case", list(CGROUP_CASES))
def test_cgroup_cpu_quota_is_read_from_v1_and_v2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, case: str
) -> None:
    membership, files, expected = CGROUP_CASES[case]
    fake_cgroups(monkeypatch, tmp_path, membership, files)
    assert _posix._cgroup_cpu_quota() == expected


# ---- 7. stats --------------------------------------------------------------------------------


def test_stats_tell_what_each_worker_did(ctx: Any) -> None:
    """Tasks done and failed per worker, busy time, restarts and lost tasks; and the
    final figures once the pool has stopped."""
    seconds = 0.01
    task = functools.partial(_pool_targets.feat_sleep_or_raise, seconds)
    pool = ctx.Pool(2)
    try:
        handles = [pool.apply_async(task, (x,)) for x in range(12)]
        failed = 0
        for handle in handles:
            try:
                handle.get(PATIENCE)
            except ValueError:
                failed += 1
        assert failed == 4
        stats = pool.stats()
        assert (stats.tasks_done, stats.tasks_failed) == (12, 4)
        assert (stats.restarts, stats.tasks_lost, stats.tasks_timed_out) == (0, 0, 0)
        assert len(stats.workers) == 2
        for worker in stats.workers:
            assert worker.alive
            assert worker.ended is None
            assert worker.busy_seconds >= worker.tasks_done * seconds
        assert stats.busy_seconds >= 12 * seconds
        assert sum(w.tasks_failed for w in stats.workers) == 4

        with pytest.raises(serentak.WorkerLostError):
            pool.apply(_pool_targets.pool_os_exit, (3,))
        after = pool.stats()
        assert (after.restarts, after.tasks_lost) == (1, 1)
        (gone,) = [w for w in after.workers if not w.alive]
        assert (gone.ended or "").endswith("exited with code 3"), gone.ended
        assert sum(w.alive for w in after.workers) == 2
        assert after.tasks_done == 12, "the lost task counted as done"
        table = str(after)
        assert all(str(w.pid) in table for w in after.workers)
        assert "restarts 1, lost 1" in table

        pool.close()
        pool.join()
        final = pool.stats()  # still answers once the pool has stopped
        assert len(final.workers) == 3
        assert not any(w.alive for w in final.workers)
        assert (final.tasks_done, final.tasks_failed, final.restarts) == (12, 4, 1)
        stopped = [w for w in final.workers if w.pid != gone.pid]
        assert all((w.ended or "").endswith("exited with code 0") for w in stopped)
    finally:
        pool.terminate()
