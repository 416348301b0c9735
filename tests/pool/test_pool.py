"""The Pool API (serentak._pool.api, _results, _feeder): the stdlib's multiprocessing.pool docs.

Every test runs under every start method (the ``ctx`` fixture), with pools of
two workers. Tasks live in ``_pool_targets`` (or are lambdas and closures, which
travel by value). Where a test must know that a task has started or a worker
is up, the task or the pool's initializer writes to a file and the test polls
for that file: no sleep stands in for an event.

Faults (dying workers, tasks that raise, timeouts, Ctrl-C) are in
test_pool_faults.py.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import _pool_targets
import serentak
import serentak.pool
from _scripts import run_script
from _watch import lines, running, until

# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0
# A wait that is expected to time out (the result is not there yet).
SHORT = 0.05
# Waits for tasks that take milliseconds while another task is held.
QUICK = 5.0

METHOD_NAMES = {"fork": "Fork", "spawn": "Spawn", "forkserver": "ForkServer"}


# ---- helpers ---------------------------------------------------------------------------------


def started_workers(path: Path, count: int) -> list[int]:
    """The pids the ``pool_note_pid`` initializer wrote, once there are ``count`` of them."""
    assert until(lambda: len(lines(path)) >= count), f"workers started: {lines(path)}"
    return [int(line) for line in lines(path)]


def noted(tmp_path: Path) -> tuple[Callable[[str], None], tuple[str]]:
    """initializer and initargs that note each worker's pid in tmp_path/workers."""
    return _pool_targets.pool_note_pid, (str(tmp_path / "workers"),)


# ---- construction ----------------------------------------------------------------------------


def test_ctx_pool_is_a_serentak_pool_pool(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        assert isinstance(pool, serentak.pool.Pool)
        assert pool.map(_pool_targets.pool_square, range(5)) == [0, 1, 4, 9, 16]


def test_context_argument_chooses_the_start_method(ctx: Any) -> None:
    """pool.Pool(context=ctx): workers named as the stdlib names them (e.g. SpawnPoolWorker-1)."""
    with serentak.pool.Pool(2, context=ctx) as pool:
        reports = pool.map(_pool_targets.pool_whoami, range(8), chunksize=1)
    prefix = METHOD_NAMES[ctx.get_start_method()] + "PoolWorker-"
    for report in reports:
        assert report["name"].startswith(prefix), report
        assert report["pid"] != os.getpid()
        if ctx.get_start_method() != "forkserver":
            assert report["ppid"] == os.getpid()


def test_processes_defaults_to_cpu_count(ctx: Any, tmp_path: Path) -> None:
    initializer, initargs = noted(tmp_path)
    with ctx.Pool(initializer=initializer, initargs=initargs) as pool:
        pids = started_workers(tmp_path / "workers", ctx.cpu_count())
        assert len(set(pids)) == ctx.cpu_count()
        assert pool.apply(_pool_targets.pool_square, (3,)) == 9


@pytest.mark.parametrize("processes", [0, -1])
def test_processes_must_be_at_least_1(ctx: Any, processes: int) -> None:
    with pytest.raises(ValueError):
        ctx.Pool(processes)


def test_initializer_must_be_callable(ctx: Any) -> None:
    with pytest.raises(TypeError):
        ctx.Pool(2, initializer=3)


@pytest.mark.parametrize("maxtasksperchild", [0, -1])
def test_maxtasksperchild_must_be_positive(ctx: Any, maxtasksperchild: int) -> None:
    with pytest.raises(ValueError):
        ctx.Pool(2, maxtasksperchild=maxtasksperchild)


def test_initializer_runs_once_in_each_worker_with_initargs(ctx: Any, tmp_path: Path) -> None:
    workers = tmp_path / "workers"
    with ctx.Pool(2, _pool_targets.pool_init, (str(workers), "set up")) as pool:
        pids = started_workers(workers, 2)
        results = pool.map(_pool_targets.pool_initialized, range(20), chunksize=1)
        assert results == [(x, "set up") for x in range(20)]
        ran_on = {pid for _, pid in pool.map(_pool_targets.pool_pid, range(20), chunksize=1)}
    assert ran_on <= set(pids)
    assert len(lines(workers)) == 2, "an initializer ran more than once per worker"


@pytest.mark.parametrize("submit", ["apply_async", "map"])
def test_maxtasksperchild_replaces_workers_without_losing_or_repeating_tasks(
    ctx: Any, tmp_path: Path, submit: str
) -> None:
    record = tmp_path / "record"
    initializer, initargs = noted(tmp_path)
    with ctx.Pool(2, initializer, initargs, maxtasksperchild=2) as pool:
        if submit == "apply_async":
            handles = [
                pool.apply_async(_pool_targets.pool_record, (str(record), i)) for i in range(12)
            ]
            results = [handle.get(PATIENCE) for handle in handles]
        else:
            results = pool.starmap(
                _pool_targets.pool_record, [(str(record), i) for i in range(12)], chunksize=1
            )
        # Each worker ran at most 2 tasks (chunks), so at least 6 ran them.
        started_workers(tmp_path / "workers", 6)
    assert [task for task, _ in results] == list(range(12))
    executions = [tuple(map(int, line.split())) for line in lines(record)]
    assert sorted(task for task, _ in executions) == list(range(12)), "lost or repeated"
    assert sorted(executions) == sorted(results)
    per_worker = [pid for _, pid in executions]
    assert max(per_worker.count(pid) for pid in per_worker) <= 2
    assert len(set(per_worker)) >= 6
    assert set(per_worker) <= {int(pid) for pid in lines(tmp_path / "workers")}


@pytest.mark.parametrize("submit", ["apply_async", "map"])
def test_tasks_submitted_before_close_run_when_workers_retire_after_it(
    ctx: Any, tmp_path: Path, submit: str
) -> None:
    """close() right after submitting, with maxtasksperchild=1: the workers that
    retire after close() are replaced until every submitted task has run."""
    record = tmp_path / "record"
    pool = ctx.Pool(3, maxtasksperchild=1)
    try:
        if submit == "apply_async":
            handles = [
                pool.apply_async(_pool_targets.pool_record, (str(record), i)) for i in range(6)
            ]
        else:
            mapped = pool.starmap_async(
                _pool_targets.pool_record, [(str(record), i) for i in range(6)], chunksize=1
            )
        pool.close()
        pool.join()
        if submit == "apply_async":
            results = [handle.get(0) for handle in handles]
        else:
            results = mapped.get(0)
    finally:
        pool.terminate()
    assert [task for task, _ in results] == list(range(6))
    assert len({pid for _, pid in results}) == 6, "a worker ran more than one task"
    executions = sorted(int(line.split()[0]) for line in lines(record))
    assert executions == list(range(6)), "lost or repeated"


def test_a_pool_cannot_start_in_a_pool_worker_or_a_daemonic_process(ctx: Any) -> None:
    """As in the stdlib: daemonic processes (pool workers are) may not have children.
    The task fails with the stdlib's AssertionError; the outer pool goes on."""
    method = ctx.get_start_method()
    message = "daemonic processes are not allowed to have children"
    with ctx.Pool(1) as pool:
        assert pool.apply(_pool_targets.pool_try_nested_pool, (method,)) == message
        assert pool.apply(_pool_targets.pool_square, (3,)) == 9
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=_pool_targets.pool_nested_pool_reports, args=(theirs, method))
    process.daemon = True
    process.start()
    theirs.close()
    assert ours.recv() == message
    ours.close()
    process.join(PATIENCE)
    assert process.exitcode == 0


# ---- apply and AsyncResult -------------------------------------------------------------------


def test_apply(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        assert pool.apply(_pool_targets.pool_add, (2, 3)) == 5
        assert pool.apply(_pool_targets.pool_echo, (1, "a"), {"k": [2]}) == ((1, "a"), {"k": [2]})
        assert pool.apply(_pool_targets.pool_echo) == ((), {})


def test_async_result_before_and_after_the_task_finishes(ctx: Any, gates: Path) -> None:
    with ctx.Pool(2) as pool:
        result = pool.apply_async(_pool_targets.pool_gate, (str(gates), "task", 42))
        assert isinstance(result, serentak.pool.AsyncResult)
        assert _pool_targets.pool_gate_started(str(gates), "task")
        assert not result.ready()
        with pytest.raises(ValueError):
            result.successful()
        result.wait(SHORT)
        assert not result.ready()
        with pytest.raises(serentak.TimeoutError) as caught:
            result.get(timeout=SHORT)
        assert isinstance(caught.value, builtins.TimeoutError)

        _pool_targets.pool_gate_open(str(gates), "task")
        result.wait(PATIENCE)
        assert result.ready()
        assert result.successful()
        assert result.get() == 42
        assert result.get(timeout=0) == 42


def test_successful_is_false_when_the_task_raised(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        result = pool.apply_async(_pool_targets.pool_raise, ("no",))
        result.wait(PATIENCE)
        assert result.ready()
        assert not result.successful()
        with pytest.raises(ValueError, match="no"):
            result.get()


def test_apply_async_callback_has_run_when_get_returns(ctx: Any) -> None:
    got: list[Any] = []
    with ctx.Pool(2) as pool:
        result = pool.apply_async(_pool_targets.pool_square, (7,), callback=got.append)
        assert result.get(PATIENCE) == 49
        assert got == [49]


def test_error_callback_has_run_when_get_raises(ctx: Any) -> None:
    errors: list[BaseException] = []
    got: list[Any] = []
    with ctx.Pool(2) as pool:
        result = pool.apply_async(
            _pool_targets.pool_raise, ("bad",), callback=got.append, error_callback=errors.append
        )
        with pytest.raises(ValueError, match="bad"):
            result.get(PATIENCE)
        assert got == []
        assert len(errors) == 1
        assert isinstance(errors[0], ValueError)


def test_callbacks_have_run_when_join_returns(ctx: Any) -> None:
    squares: list[int] = []
    lists: list[list[int]] = []
    errors: list[BaseException] = []
    pool = ctx.Pool(2)
    try:
        for x in range(10):
            pool.apply_async(_pool_targets.pool_square, (x,), callback=squares.append)
        pool.apply_async(_pool_targets.pool_raise, ("bad",), error_callback=errors.append)
        pool.map_async(_pool_targets.pool_square, range(3), callback=lists.append)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    assert sorted(squares) == [x * x for x in range(10)]
    assert lists == [[0, 1, 4]]
    assert [type(error) for error in errors] == [ValueError]


def test_wait_without_timeout_returns_once_ready(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        result = pool.apply_async(_pool_targets.pool_square, (4,))
        result.wait()
        assert result.ready()
        assert result.get() == 16


# ---- map, starmap ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
def test_map(ctx: Any, chunksize: int | None) -> None:
    with ctx.Pool(2) as pool:
        assert pool.map(_pool_targets.pool_square, range(23), chunksize) == [
            x * x for x in range(23)
        ]


def test_map_takes_any_iterable(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        assert pool.map(_pool_targets.pool_square, []) == []
        assert pool.map(_pool_targets.pool_square, (x for x in range(5))) == [0, 1, 4, 9, 16]
        assert pool.map(_pool_targets.pool_square, {3}) == [9]
        assert pool.map(len, ["a", "bb"]) == [1, 2]


def test_map_async_callback_has_run_when_get_returns(ctx: Any) -> None:
    got: list[Any] = []
    with ctx.Pool(2) as pool:
        result = pool.map_async(_pool_targets.pool_square, range(6), 2, callback=got.append)
        assert isinstance(result, serentak.pool.MapResult)
        assert result.get(PATIENCE) == [0, 1, 4, 9, 16, 25]
        assert got == [[0, 1, 4, 9, 16, 25]]
        assert result.successful()


def test_map_async_error_callback_has_run_when_get_raises(ctx: Any) -> None:
    errors: list[BaseException] = []
    with ctx.Pool(2) as pool:
        items = [("ok", 0), ("raise", 1), ("ok", 2)]
        result = pool.map_async(_pool_targets.pool_fault, items, error_callback=errors.append)
        with pytest.raises(ValueError, match="task 1 raised"):
            result.get(PATIENCE)
        assert [type(error) for error in errors] == [ValueError]


def test_starmap(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        pairs = [(x, 10 * x) for x in range(9)]
        assert pool.starmap(_pool_targets.pool_add, pairs) == [11 * x for x in range(9)]
        assert pool.starmap(_pool_targets.pool_add, pairs, 4) == [11 * x for x in range(9)]
        assert pool.starmap(_pool_targets.pool_add, iter(pairs)) == [11 * x for x in range(9)]
        assert pool.starmap(_pool_targets.pool_add, []) == []


def test_starmap_async_callback_has_run_when_get_returns(ctx: Any) -> None:
    got: list[Any] = []
    with ctx.Pool(2) as pool:
        result = pool.starmap_async(_pool_targets.pool_add, [(1, 2), (3, 4)], callback=got.append)
        assert result.get(PATIENCE) == [3, 7]
        assert got == [[3, 7]]


def test_new_tasks_after_short_ones_are_spread_over_the_workers(ctx: Any, gates: Path) -> None:
    """After many short tasks, when workers are sent several tasks ahead, a few new tasks
    of unknown length still start on different workers: none waits behind another."""
    with ctx.Pool(2) as pool:
        assert (
            pool.starmap(_pool_targets.pool_add, [(i, 1) for i in range(2000)], chunksize=1)[-1]
            == 2000
        )
        gate = functools.partial(_pool_targets.pool_gate, str(gates))
        result = pool.map_async(gate, ["first", "second"], chunksize=1)
        assert _pool_targets.pool_gate_started(str(gates), "first")
        assert _pool_targets.pool_gate_started(str(gates), "second"), (
            "both tasks sent to one worker"
        )
        _pool_targets.pool_gate_open(str(gates), "first")
        _pool_targets.pool_gate_open(str(gates), "second")
        assert result.get(PATIENCE) == [None, None]


class _Signalled(Exception):
    """Raised by the test's signal handler in the main thread."""


_WAITS: dict[str, Callable[[Any, Callable[[str], Any]], object]] = {
    "map": lambda pool, task: pool.map(task, ["held"], chunksize=1),
    "get": lambda pool, task: pool.apply_async(task, ("held",)).get(),
    "imap": lambda pool, task: list(pool.imap(task, ["held"])),
}


@pytest.mark.parametrize("wait_in", list(_WAITS))
def test_a_signal_taken_by_another_thread_interrupts_the_wait(
    ctx: Any, gates: Path, wait_in: str
) -> None:
    """The kernel may hand a process's SIGINT to any thread. One taken by another
    thread of the caller must still interrupt the main thread waiting on the pool."""
    interrupted = threading.Event()

    def raise_signalled(signum: int, frame: object) -> None:
        raise _Signalled

    def signal_this_thread() -> None:
        if _pool_targets.pool_gate_started(str(gates), "held"):
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        # Were the signal not acted on, the wait ends with the task, and the test fails.
        interrupted.wait(PATIENCE / 4)
        _pool_targets.pool_gate_open(str(gates), "held")

    task = functools.partial(_pool_targets.pool_gate, str(gates))
    previous = signal.signal(signal.SIGUSR1, raise_signalled)
    signaller = threading.Thread(target=signal_this_thread, daemon=True)
    try:
        with ctx.Pool(2) as pool:
            signaller.start()
            with pytest.raises(_Signalled):
                _WAITS[wait_in](pool, task)
            assert signaller.is_alive(), "the wait ended with the task, not with the signal"
    finally:
        interrupted.set()
        signaller.join()
        signal.signal(signal.SIGUSR1, previous)


# ---- imap, imap_unordered --------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 4])
def test_imap_gives_results_in_order(ctx: Any, chunksize: int) -> None:
    with ctx.Pool(2) as pool:
        results = pool.imap(_pool_targets.pool_square, range(21), chunksize)
        assert isinstance(results, serentak.pool.IMapIterator)
        assert iter(results) is results
        assert list(results) == [x * x for x in range(21)]
        assert list(pool.imap(_pool_targets.pool_square, [])) == []


@pytest.mark.parametrize("chunksize", [None, 1])
def test_imap_reads_an_endless_input_lazily(ctx: Any, chunksize: int | None) -> None:
    pulled = itertools.count()

    def numbers() -> Iterator[int]:
        for x in itertools.count():
            next(pulled)
            yield x

    with ctx.Pool(2) as pool:
        results = pool.imap(_pool_targets.pool_square, numbers(), chunksize)
        assert [next(results) for _ in range(10)] == [x * x for x in range(10)]
        if chunksize == 1:
            assert next(pulled) < 100, "imap read far ahead of what was consumed"


def test_adaptive_chunks_read_one_item_per_worker_until_a_task_has_reported(
    ctx: Any, gates: Path
) -> None:
    """Without a chunksize, the first items go one per worker, and no more of the input
    is read until one of them has finished: its time sizes the next chunks."""
    pulled = []

    def names() -> Iterator[str]:
        for i in range(10):
            pulled.append(i)
            yield f"g{i}"

    with ctx.Pool(2) as pool:
        results = pool.imap(functools.partial(_pool_targets.pool_gate, str(gates)), names())
        assert _pool_targets.pool_gate_started(str(gates), "g0")
        assert _pool_targets.pool_gate_started(str(gates), "g1")
        assert pulled == [0, 1]
        for i in range(10):
            _pool_targets.pool_gate_open(str(gates), f"g{i}")
        assert list(results) == [None] * 10


def test_imap_next_with_a_timeout(ctx: Any, gates: Path) -> None:
    with ctx.Pool(2) as pool:
        results = pool.imap(functools.partial(_pool_targets.pool_gate, str(gates), "task"), [5])
        assert _pool_targets.pool_gate_started(str(gates), "task")
        with pytest.raises(serentak.TimeoutError):
            results.next(timeout=SHORT)
        _pool_targets.pool_gate_open(str(gates), "task")
        assert results.next(timeout=PATIENCE) == 5
        with pytest.raises(StopIteration):
            results.next(timeout=PATIENCE)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_unordered_gives_every_result(ctx: Any, chunksize: int) -> None:
    with ctx.Pool(2) as pool:
        results = pool.imap_unordered(_pool_targets.pool_square, range(21), chunksize)
        assert isinstance(results, serentak.pool.IMapUnorderedIterator)
        assert sorted(results) == [x * x for x in range(21)]


def test_imap_unordered_gives_results_as_they_complete(ctx: Any, gates: Path) -> None:
    """While the first task is held, the other worker's results come first."""
    directory = str(gates)
    with ctx.Pool(2) as pool:
        results = pool.imap_unordered(
            lambda x: _pool_targets.pool_gate(directory, "first", x) if x == 0 else x, range(4), 1
        )
        assert _pool_targets.pool_gate_started(directory, "first")
        early = [results.next(timeout=QUICK) for _ in range(3)]
        assert sorted(early) == [1, 2, 3]
        _pool_targets.pool_gate_open(directory, "first")
        assert results.next(timeout=PATIENCE) == 0


def test_a_held_task_does_not_hold_up_the_tasks_behind_it(ctx: Any, gates: Path) -> None:
    """apply_async: while one worker is held, the other runs what comes after."""
    with ctx.Pool(2) as pool:
        held = pool.apply_async(_pool_targets.pool_gate, (str(gates), "held", "held"))
        assert _pool_targets.pool_gate_started(str(gates), "held")
        others = [pool.apply_async(_pool_targets.pool_square, (x,)) for x in range(4)]
        assert [other.get(QUICK) for other in others] == [0, 1, 4, 9]
        assert not held.ready()
        _pool_targets.pool_gate_open(str(gates), "held")
        assert held.get(PATIENCE) == "held"


# ---- lifecycle -------------------------------------------------------------------------------

SUBMISSIONS: dict[str, Callable[[Any], object]] = {
    "apply": lambda pool: pool.apply(_pool_targets.pool_square, (1,)),
    "apply_async": lambda pool: pool.apply_async(_pool_targets.pool_square, (1,)),
    "map": lambda pool: pool.map(_pool_targets.pool_square, [1]),
    "map_async": lambda pool: pool.map_async(_pool_targets.pool_square, [1]),
    "imap": lambda pool: pool.imap(_pool_targets.pool_square, [1]),
    "imap_unordered": lambda pool: pool.imap_unordered(_pool_targets.pool_square, [1]),
    "starmap": lambda pool: pool.starmap(_pool_targets.pool_add, [(1, 2)]),
    "starmap_async": lambda pool: pool.starmap_async(_pool_targets.pool_add, [(1, 2)]),
}


@pytest.mark.parametrize("stop", ["close", "terminate"])
def test_submitting_to_a_stopped_pool_raises(ctx: Any, stop: str) -> None:
    pool = ctx.Pool(2)
    try:
        getattr(pool, stop)()
        refusals: dict[str, str] = {}
        for name, submit in SUBMISSIONS.items():
            try:
                submit(pool)
            except ValueError as exc:
                refusals[name] = str(exc)
            else:
                refusals[name] = "accepted the task"
        assert refusals == dict.fromkeys(SUBMISSIONS, "Pool not running")
    finally:
        pool.terminate()
        pool.join()


def test_stdlib_threadpool_says_the_same_after_close() -> None:
    """The message the previous test expects is the stdlib's."""
    import multiprocessing.pool

    pool = multiprocessing.pool.ThreadPool(1)
    pool.close()
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        pool.apply_async(len, ("a",))
    pool.join()


def test_join_while_running_raises(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        with pytest.raises(ValueError):
            pool.join()
        assert pool.apply(_pool_targets.pool_square, (2,)) == 4


def test_close_then_join_finishes_the_queued_tasks(ctx: Any, tmp_path: Path) -> None:
    initializer, initargs = noted(tmp_path)
    pool = ctx.Pool(2, initializer, initargs)
    try:
        results = [pool.apply_async(_pool_targets.pool_square, (x,)) for x in range(10)]
        mapped = pool.map_async(_pool_targets.pool_square, range(10), 3)
        lazy = pool.imap(_pool_targets.pool_square, range(10))
        pool.close()
        pool.join()
        assert all(result.ready() for result in results)
        assert [result.get(0) for result in results] == [x * x for x in range(10)]
        assert mapped.get(0) == [x * x for x in range(10)]
        assert list(lazy) == [x * x for x in range(10)]
        pids = [int(pid) for pid in lines(tmp_path / "workers")]
        assert pids
        assert not any(running(pid) for pid in pids)
    finally:
        pool.terminate()


def test_close_twice_and_terminate_after_join_are_harmless(ctx: Any) -> None:
    pool = ctx.Pool(2)
    pool.close()
    pool.close()
    pool.join()
    pool.terminate()
    pool.join()


def test_terminate_stops_running_tasks_at_once(ctx: Any, tmp_path: Path, gates: Path) -> None:
    initializer, initargs = noted(tmp_path)
    pool = ctx.Pool(2, initializer, initargs)
    try:
        held = pool.apply_async(_pool_targets.pool_gate, (str(gates), "held"))
        assert _pool_targets.pool_gate_started(str(gates), "held")
        pids = started_workers(tmp_path / "workers", 2)
        started = time.monotonic()
        pool.terminate()
        assert time.monotonic() - started < 2.0
        assert not any(running(pid) for pid in pids)
        held.wait(PATIENCE)
        assert held.ready()
        with pytest.raises(serentak.PoolTerminatedError):
            held.get()
        pool.join()
    finally:
        pool.terminate()


def test_leaving_the_with_block_terminates(ctx: Any, tmp_path: Path, gates: Path) -> None:
    initializer, initargs = noted(tmp_path)
    with ctx.Pool(2, initializer, initargs) as pool:
        held = pool.apply_async(_pool_targets.pool_gate, (str(gates), "held"))
        assert _pool_targets.pool_gate_started(str(gates), "held")
        pids = started_workers(tmp_path / "workers", 2)
    assert not any(running(pid) for pid in pids)
    held.wait(PATIENCE)
    assert held.ready()
    assert not held.successful()
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        pool.apply_async(_pool_targets.pool_square, (1,))


def test_a_pool_dropped_while_running_stops_its_workers(ctx: Any, tmp_path: Path) -> None:
    initializer, initargs = noted(tmp_path)
    pool = ctx.Pool(2, initializer, initargs)
    assert pool.apply(_pool_targets.pool_square, (3,)) == 9
    pids = started_workers(tmp_path / "workers", 2)
    del pool
    assert until(lambda: not any(running(pid) for pid in pids))


# ---- what a task may be ----------------------------------------------------------------------


def test_lambdas_closures_and_local_functions(ctx: Any) -> None:
    offset = 100

    def add_offset(x: int) -> int:
        return x + offset

    def make_multiplier(k: int) -> Callable[[int], int]:
        return lambda x: k * x

    with ctx.Pool(2) as pool:
        assert pool.map(lambda x: x + 1, range(4)) == [1, 2, 3, 4]
        assert pool.map(add_offset, range(3)) == [100, 101, 102]
        assert pool.apply(make_multiplier(3), (5,)) == 15
        assert pool.apply_async(lambda: "no args").get(PATIENCE) == "no args"
        assert sorted(pool.imap_unordered(make_multiplier(2), range(4))) == [0, 2, 4, 6]
        assert pool.starmap(lambda a, b: a - b, [(5, 3), (1, 1)]) == [2, 0]


MAIN_SCRIPT = """
import sys

import serentak


def triple(x):
    return 3 * x


class Scale:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x


def make_adder(n):
    def add(x):
        return x + n

    return add


def run():
    ctx = serentak.get_context(sys.argv[1])
    with ctx.Pool(2) as pool:
        print(pool.map(triple, range(4)))
        print(pool.map(lambda x: x - 1, range(4)))
        print(pool.map(make_adder(10), range(4)))
        print(pool.apply(Scale(5), (2,)))
        print(sorted(pool.imap_unordered(triple, range(3))))
        print(list(pool.imap(Scale(-1), range(3))))
        print(pool.starmap(lambda a, b: a * b, [(2, 3)]))


GUARD
"""
MAIN_OUTPUT = """[0, 3, 6, 9]
[-1, 0, 1, 2]
[10, 11, 12, 13]
10
[0, 3, 6]
[0, -1, -2]
[6]
"""


@pytest.mark.parametrize("guard", ["with a __main__ guard", "without"])
def test_functions_of_a_scripts_main_module(start_method: str, tmp_path: Path, guard: str) -> None:
    """Functions, classes, lambdas and closures of a script's __main__, under every method."""
    call = 'if __name__ == "__main__":\n    run()' if guard != "without" else "run()"
    script = tmp_path / "main_functions.py"
    script.write_text(MAIN_SCRIPT.replace("GUARD", call))
    done = run_script(script, start_method)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == MAIN_OUTPUT


# ---- what the stdlib's own pool example reads -------------------------------------------------


@pytest.mark.parametrize("stop", ["close", "terminate", "drop"])
def test_pool_lists_its_workers_alive_until_stopped(ctx: Any, stop: str) -> None:
    """``pool._pool``, as the stdlib documentation's pool example reads it: every worker
    alive while the pool runs, none once closed and joined, terminated and joined, or
    shortly after the pool is dropped."""
    pool = ctx.Pool(2)
    workers = pool._pool
    assert len(workers) == 2
    assert all(worker.is_alive() for worker in workers)
    assert all(running(worker.pid) for worker in workers)
    assert pool.apply(_pool_targets.pool_square, (3,)) == 9
    with pytest.raises(AttributeError):
        pool._pool = []
    if stop == "close":
        pool.close()
        pool.join()
    elif stop == "terminate":
        pending = [pool.apply_async(_pool_targets.pool_square, (x,)) for x in range(100)]
        pool.terminate()
        pool.join()
        assert all(result.ready() for result in pending)
    else:
        del pool
        assert until(lambda: not any(worker.is_alive() for worker in workers))
    assert not any(worker.is_alive() for worker in workers)
    assert not any(running(worker.pid) for worker in workers)


@pytest.mark.parametrize("callbacks", [False, True])
def test_cache_holds_the_results_not_yet_complete(ctx: Any, gates: Path, callbacks: bool) -> None:
    """``pool._cache``, as the stdlib's example reads it: truthy while a result handed
    out has not completed, falsy once every one has (after its callback)."""
    seen: list[Any] = []
    with ctx.Pool(2) as pool:
        assert not pool._cache
        held = pool.apply_async(
            _pool_targets.pool_gate,
            (str(gates), "held", 7),
            callback=seen.append if callbacks else None,
        )
        mapped = pool.map_async(_pool_targets.pool_square, range(4))
        lazy = pool.imap_unordered(_pool_targets.pool_square, range(4))
        ordered = pool.imap(_pool_targets.pool_square, range(4), 2)
        assert held in pool._cache.values()
        assert mapped.get(PATIENCE) == [0, 1, 4, 9]
        assert sorted(lazy) == [0, 1, 4, 9]
        assert ordered.next(PATIENCE) == 0  # read or not, all its chunks come
        assert until(lambda: list(pool._cache.values()) == [held])
        _pool_targets.pool_gate_open(str(gates), "held")
        assert held.get(PATIENCE) == 7
        assert not pool._cache
        assert seen == ([7] if callbacks else [])
