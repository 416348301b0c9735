"""Faults in a Pool: workers that die, tasks that raise, time out, or cannot send back.

The fault matrix, modelled on CPython's test_concurrent_futures/test_deadlock.py,
crosses what goes wrong in a task (SIGKILL, a segfault, os._exit, an exception,
an exception or a result that cannot be pickled, a BaseException) with how the
task was submitted (apply_async, map, imap_unordered, ProcessPoolExecutor.submit)
under every start method. Each case checks that exactly the faulty task fails,
with the right error, quickly; that the other tasks' results arrive; and that
the same pool goes on working (with a new worker in place of a dead one).

The last part runs whole programs: Ctrl-C while the main thread waits on the
pool, and the parent SIGKILLed under its workers.

A pool's workers note their pids through the ``pool_note_pid`` initializer (a
file each worker appends to once it is up): the tests poll that file to know
that workers, replacements included, have started.
"""

from __future__ import annotations

import functools
import inspect
import os
import pickle
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import _pool_targets
import serentak
import serentak.pool
from _scripts import read_line, rest_of_output, running_script
from _signals import interrupted_by_a_signal_to_another_thread
from _watch import descendants_of, lines, running, still_running_after, until

# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0
# How soon a dead worker's task must fail (the bound).
DEATH_NOTICED = 0.5
# The timeout= given to tasks that block.
TASK_TIMEOUT = 0.3
# How late a timed-out task may fail: generous, CI machines are slow and busy.
LATE = 1.0


# ---- helpers ---------------------------------------------------------------------------------


class Workers:
    """The pids a pool's ``pool_note_pid`` initializer wrote: every worker it has started."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "workers"
        self.initializer = _pool_targets.pool_note_pid
        self.initargs = (str(self.path),)

    def started(self, count: int) -> list[int]:
        """The pids, once ``count`` workers have started."""
        assert until(lambda: len(lines(self.path)) >= count), f"started: {lines(self.path)}"
        return [int(line) for line in lines(self.path)]

    def pool(self, ctx: Any, processes: int = 2) -> Any:
        return ctx.Pool(processes, self.initializer, self.initargs)

    def executor(self, ctx: Any) -> serentak.ProcessPoolExecutor:
        return serentak.ProcessPoolExecutor(
            2, mp_context=ctx, initializer=self.initializer, initargs=self.initargs
        )


@pytest.fixture
def workers(tmp_path: Path) -> Workers:
    return Workers(tmp_path)


def check_pool_goes_on(pool: Any, workers: Workers, before: list[int], *, died: bool) -> None:
    """After a fault: a dead worker was replaced (else no worker was), and the pool works."""
    if died:
        assert len(workers.started(len(before) + 1)) == len(before) + 1
        assert until(lambda: sum(not running(pid) for pid in before) == 1)
    assert pool.map(_pool_targets.pool_square, range(8), chunksize=1) == [x * x for x in range(8)]
    if not died:
        assert lines(workers.path) == [str(pid) for pid in before], "a worker was replaced"
        assert all(running(pid) for pid in before)


def first_error_line(function: Callable[..., Any], text: str) -> int:
    """The line number of the first line of ``function`` that contains ``text``."""
    source, start = inspect.getsourcelines(function)
    return start + next(n for n, line in enumerate(source) if text in line)


# ---- the fault matrix ------------------------------------------------------------------------

DEATHS = {"sigkill", "segfault", "exit"}
# fault -> (the exception the caller gets, a pattern its message must match)
FAULTS: dict[str, tuple[type[BaseException], str]] = {
    "sigkill": (serentak.WorkerLostError, r"SIGKILL.*out.of.memory"),
    "segfault": (serentak.WorkerLostError, r"SIGSEGV"),
    "exit": (serentak.WorkerLostError, r"exit.*\b3\b"),
    "raise": (ValueError, r"^task 2 raised$"),
    "unpicklable_exception": (Exception, r"PoolUnpicklableError"),
    "unpicklable_result": (Exception, r"lock"),
    "system_exit": (SystemExit, r"^7$"),
}
SUBMITTERS = ["apply_async", "map", "imap_unordered", "executor_submit"]
ITEMS = [("ok", 0), ("ok", 1), ("fault", 2), ("ok", 3), ("ok", 4), ("ok", 5)]


def items_with(fault: str) -> list[tuple[str, int]]:
    return [(fault if kind == "fault" else kind, x) for kind, x in ITEMS]


OTHERS = [x * 10 for kind, x in ITEMS if kind == "ok"]


def check_error(error: BaseException | None, fault: str) -> None:
    expected, pattern = FAULTS[fault]
    assert isinstance(error, expected), repr(error)
    assert re.search(pattern, str(error)), str(error)
    if fault == "raise":
        assert isinstance(error.__cause__, serentak.pool.RemoteTraceback)


@pytest.mark.parametrize("submit", SUBMITTERS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_matrix(ctx: Any, workers: Workers, fault: str, submit: str) -> None:
    died = fault in DEATHS
    if submit == "executor_submit":
        with workers.executor(ctx) as executor:
            before = workers.started(2)
            started = time.monotonic()
            futures = [
                executor.submit(_pool_targets.pool_fault, item) for item in items_with(fault)
            ]
            error = futures[2].exception(PATIENCE)
            failed_after = time.monotonic() - started
            check_error(error, fault)
            others = [f.result(PATIENCE) for n, f in enumerate(futures) if n != 2]
            assert others == OTHERS
            assert executor.submit(_pool_targets.pool_square, 9).result(PATIENCE) == 81
            if died:
                assert len(workers.started(3)) == 3
        if died:
            assert failed_after < DEATH_NOTICED
        return

    with workers.pool(ctx) as pool:
        before = workers.started(2)
        started = time.monotonic()
        if submit == "apply_async":
            results = [
                pool.apply_async(_pool_targets.pool_fault, (item,)) for item in items_with(fault)
            ]
            results[2].wait(PATIENCE)
            failed_after = time.monotonic() - started
            assert results[2].ready()
            with pytest.raises(BaseException) as caught:
                results[2].get(0)
            check_error(caught.value, fault)
            assert [r.get(PATIENCE) for n, r in enumerate(results) if n != 2] == OTHERS
        elif submit == "map":
            with pytest.raises(BaseException) as caught:
                pool.map(_pool_targets.pool_fault, items_with(fault), chunksize=1)
            failed_after = time.monotonic() - started
            check_error(caught.value, fault)
        else:
            iterator = pool.imap_unordered(_pool_targets.pool_fault, items_with(fault), 1)
            values, errors = [], []
            failed_after = PATIENCE
            while True:
                try:
                    values.append(iterator.next(timeout=PATIENCE))
                except StopIteration:
                    break
                except serentak.TimeoutError:
                    pytest.fail("imap_unordered hung")
                except BaseException as exc:  # SystemExit among them
                    failed_after = time.monotonic() - started
                    errors.append(exc)
            assert len(errors) == 1, errors
            check_error(errors[0], fault)
            assert sorted(values) == OTHERS
        if died:
            assert failed_after < DEATH_NOTICED
        check_pool_goes_on(pool, workers, before, died=died)


# ---- deaths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda pool, items: pool.map(_pool_targets.pool_fault, items, 3), id="map-chunked"
        ),
        pytest.param(
            lambda pool, items: pool.starmap(_pool_targets.pool_fault, [(i,) for i in items]),
            id="starmap",
        ),
        pytest.param(
            lambda pool, items: list(pool.imap(_pool_targets.pool_fault, items)), id="imap"
        ),
        pytest.param(
            lambda pool, items: pool.map_async(_pool_targets.pool_fault, items).get(PATIENCE),
            id="map_async",
        ),
        pytest.param(
            lambda pool, items: pool.starmap_async(
                _pool_targets.pool_fault, [(i,) for i in items]
            ).get(PATIENCE),
            id="starmap_async",
        ),
    ],
)
def test_map_family_raises_worker_lost_instead_of_hanging(
    ctx: Any, workers: Workers, call: Callable[[Any, list[Any]], object]
) -> None:
    with workers.pool(ctx) as pool:
        before = workers.started(2)
        with pytest.raises(serentak.WorkerLostError, match="SIGKILL"):
            call(pool, items_with("sigkill"))
        check_pool_goes_on(pool, workers, before, died=True)


def test_imap_goes_on_after_a_dead_worker(ctx: Any, workers: Workers) -> None:
    """imap: the dead worker's position raises; the positions after it still come, in order."""
    with workers.pool(ctx) as pool:
        iterator = pool.imap(_pool_targets.pool_fault, items_with("sigkill"), chunksize=1)
        assert [next(iterator), next(iterator)] == [0, 10]
        with pytest.raises(serentak.WorkerLostError):
            next(iterator)
        assert list(iterator) == [30, 40, 50]


def test_imap_with_adaptive_chunks_keeps_every_position_after_a_dead_worker(
    ctx: Any, workers: Workers
) -> None:
    """imap without a chunksize: the items that shared the dead worker's chunk raise
    one by one (they may or may not have run); the others come, each in its place."""
    items = (
        [("ok", x) for x in range(200)] + [("sigkill", 200)] + [("ok", x) for x in range(201, 400)]
    )
    with workers.pool(ctx) as pool:
        outcomes: list[object] = []
        iterator = pool.imap(_pool_targets.pool_fault, items)
        while True:
            try:
                outcomes.append(next(iterator))
            except StopIteration:
                break
            except serentak.WorkerLostError:
                outcomes.append("lost")
        assert len(outcomes) == len(items)
        assert outcomes[200] == "lost"
        assert all(o in ("lost", x * 10) for o, (_, x) in zip(outcomes, items, strict=True))
        assert outcomes[:2] == [0, 10]  # the first items are sent alone, to size the chunks


def test_200_tasks_every_tenth_kills_its_worker(ctx: Any, workers: Workers) -> None:
    """Exactly the 20 killers fail; the 180 others succeed; every task runs exactly once.

    The time bound is 3 s under fork and forkserver; spawn starts each of the 20
    replacements as a new interpreter, so it gets 10 s.
    """
    record = workers.path.with_name("record")
    with workers.pool(ctx) as pool:
        workers.started(2)
        started = time.monotonic()
        results = [
            pool.apply_async(_pool_targets.pool_record_or_die, (str(record), n)) for n in range(200)
        ]
        for result in results:
            result.wait(PATIENCE)
        elapsed = time.monotonic() - started
        values, lost = [], []
        for n, result in enumerate(results):
            assert result.ready(), f"task {n} never finished"
            try:
                values.append(result.get(0))
            except serentak.WorkerLostError:
                lost.append(n)
        assert pool.apply(_pool_targets.pool_square, (5,)) == 25
        # A replacement for each death (the last may still be starting).
        assert until(lambda: len(lines(workers.path)) == 22)
    assert values == [n for n in range(200) if n % 10]
    assert lost == list(range(0, 200, 10))
    executions = sorted(int(line) for line in lines(record))
    assert executions == list(range(200)), "a task was lost or ran twice"
    bound = 10.0 if ctx.get_start_method() == "spawn" else 3.0
    assert elapsed < bound


# ---- exceptions ------------------------------------------------------------------------------


RAISE_THROUGH: dict[str, Callable[[Any], object]] = {
    "apply": lambda pool: pool.apply(_pool_targets.pool_raise, ("boom",)),
    "map": lambda pool: pool.map(_pool_targets.pool_raise, ["boom"]),
    "imap": lambda pool: next(pool.imap(_pool_targets.pool_raise, ["boom"])),
}


@pytest.mark.parametrize("submit", [*RAISE_THROUGH, "executor"])
def test_a_raising_task_brings_its_remote_traceback(ctx: Any, submit: str) -> None:
    line = first_error_line(_pool_targets.pool_raise, "raise ValueError")
    if submit == "executor":
        with serentak.ProcessPoolExecutor(2, mp_context=ctx) as executor:
            error = executor.submit(_pool_targets.pool_raise, "boom").exception(PATIENCE)
    else:
        with ctx.Pool(2) as pool, pytest.raises(ValueError, match=r"^boom$") as caught:
            RAISE_THROUGH[submit](pool)
        error = caught.value
    assert isinstance(error, ValueError)
    cause = error.__cause__
    assert isinstance(cause, serentak.pool.RemoteTraceback)
    text = str(cause)
    assert f'{_pool_targets.__file__}", line {line}, in pool_raise' in text, text
    assert "ValueError: boom" in text


@pytest.mark.parametrize("submit", ["imap", "imap_unordered"])
def test_imap_by_default_fails_only_the_failing_item(ctx: Any, submit: str) -> None:
    """The stdlib's imap and imap_unordered take chunksize=1 by default: one item that
    raises costs that item alone, every other item's result still comes."""
    items = [("raise" if x == 60 else "ok", x) for x in range(100)]
    with ctx.Pool(2) as pool:
        iterator = getattr(pool, submit)(_pool_targets.pool_fault, items)
        values, errors = [], []
        while True:
            try:
                values.append(iterator.next(timeout=PATIENCE))
            except StopIteration:
                break
            except ValueError as exc:
                errors.append(str(exc))
    assert errors == ["task 60 raised"]
    expected = [x * 10 for x in range(100) if x != 60]
    assert (values if submit == "imap" else sorted(values)) == expected


@pytest.mark.parametrize(
    ("fault", "names"),
    [
        ("unpicklable_exception", "PoolUnpicklableError"),
        ("unloadable_exception", "PoolUnloadableError"),
        ("unpicklable_result", "lock"),
        ("generator_result", "generator"),
    ],
)
def test_what_cannot_travel_back_fails_only_its_task(
    ctx: Any, workers: Workers, fault: str, names: str
) -> None:
    with workers.pool(ctx) as pool:
        before = workers.started(2)
        results = [
            pool.apply_async(_pool_targets.pool_fault, (item,)) for item in items_with(fault)
        ]
        results[2].wait(PATIENCE)
        assert results[2].ready()
        with pytest.raises(Exception, match=names):
            results[2].get(0)
        assert [r.get(PATIENCE) for n, r in enumerate(results) if n != 2] == OTHERS
        check_pool_goes_on(pool, workers, before, died=False)


def test_a_result_that_cannot_be_pickled_raises_maybe_encoding_error(ctx: Any) -> None:
    """The stdlib's exception, attributes and message; the error callback gets it too."""
    errors: list[BaseException] = []
    with ctx.Pool(2) as pool:
        result = pool.apply_async(
            _pool_targets.pool_fault, (("unpicklable_result", 1),), error_callback=errors.append
        )
        with pytest.raises(serentak.pool.MaybeEncodingError) as caught:
            result.get(PATIENCE)
        error = caught.value
        assert error.exc == "TypeError(\"cannot pickle '_thread.lock' object\")"
        assert error.value.startswith("<unlocked _thread.lock object at ")
        assert str(error) == f"Error sending result: '{error.value}'. Reason: '{error.exc}'"
        assert repr(error) == f"<MaybeEncodingError: {error}>"
        assert isinstance(error.__cause__, serentak.pool.RemoteTraceback)
        assert "cannot pickle" in str(error.__cause__)
        pool.close()
        pool.join()
    assert len(errors) == 1
    assert isinstance(errors[0], serentak.pool.MaybeEncodingError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.exc, copy.value, str(copy)) == (error.exc, error.value, str(error))


def test_a_map_whose_chunk_cannot_be_pickled_raises_maybe_encoding_error(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        with pytest.raises(serentak.pool.MaybeEncodingError, match="Error sending result"):
            pool.map(_pool_targets.pool_fault, [("ok", 0), ("unpicklable_result", 1)], chunksize=2)
        assert pool.map(_pool_targets.pool_square, range(3)) == [0, 1, 4]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("system_exit", SystemExit), ("keyboard_interrupt", KeyboardInterrupt)],
)
def test_a_base_exception_fails_the_task_and_the_worker_survives(
    ctx: Any, workers: Workers, fault: str, expected: type[BaseException]
) -> None:
    with workers.pool(ctx, processes=1) as pool:
        [pid] = workers.started(1)
        result = pool.apply_async(_pool_targets.pool_fault, ((fault, 1),))
        result.wait(PATIENCE)
        assert result.ready()
        assert not result.successful()
        with pytest.raises(expected):
            result.get(0)
        with pytest.raises(expected):
            pool.map(_pool_targets.pool_fault, [("ok", 0), (fault, 1)])
        assert pool.apply(_pool_targets.pool_pid, (1,)) == (1, pid)
    assert lines(workers.path) == [str(pid)]


@pytest.mark.parametrize("how", ["raise", "exit", "crash"])
@pytest.mark.parametrize("phase", ["unpickling the arguments", "pickling the result"])
def test_faults_while_a_task_travels(ctx: Any, workers: Workers, how: str, phase: str) -> None:
    """{raise, os._exit, crash} while the worker unpickles the task or pickles its result."""
    if phase == "pickling the result":
        task: tuple[Callable[..., Any], tuple[Any, ...]] = (
            _pool_targets.pool_result_that_fails,
            (how,),
        )
    else:
        argument = {
            "raise": _pool_targets.PoolRaiseWhenUnpickled,
            "exit": _pool_targets.PoolExitWhenUnpickled,
            "crash": _pool_targets.PoolCrashWhenUnpickled,
        }[how]()
        task = (_pool_targets.pool_return, (argument,))
    with workers.pool(ctx) as pool:
        before = workers.started(2)
        result = pool.apply_async(*task)
        others = [pool.apply_async(_pool_targets.pool_square, (x,)) for x in range(4)]
        result.wait(PATIENCE)
        assert result.ready()
        if how == "raise" and phase == "pickling the result":
            with pytest.raises(serentak.pool.MaybeEncodingError, match="raised while"):
                result.get(0)
        elif how == "raise":
            with pytest.raises(ValueError, match="raised while"):
                result.get(0)
        else:
            signal_or_code = r"SIGSEGV" if how == "crash" else r"exit.*\b3\b"
            with pytest.raises(serentak.WorkerLostError, match=signal_or_code):
                result.get(0)
        assert [other.get(PATIENCE) for other in others] == [0, 1, 4, 9]
        check_pool_goes_on(pool, workers, before, died=how != "raise")


def test_an_unpicklable_argument_fails_only_its_task(ctx: Any) -> None:
    import threading

    with ctx.Pool(2) as pool:
        result = pool.apply_async(_pool_targets.pool_return, (threading.Lock(),))
        result.wait(PATIENCE)
        assert result.ready()
        with pytest.raises(Exception, match="lock"):
            result.get(0)
        assert pool.apply(_pool_targets.pool_square, (3,)) == 9


# ---- timeouts --------------------------------------------------------------------------------


def expect_task_timeout(call: Callable[[], object]) -> serentak.TimeoutError:
    """Run ``call``, which must raise a task's TimeoutError (not a get() that gave up waiting)."""
    started = time.monotonic()
    with pytest.raises(serentak.TimeoutError) as caught:
        call()
    elapsed = time.monotonic() - started
    assert elapsed < PATIENCE / 2, "that was get() giving up, not the task's timeout"
    assert isinstance(caught.value, TimeoutError)
    return caught.value


def check_blocker_killed(workers: Workers, blocked: Path, before: list[int]) -> None:
    """The worker that ran the blocking task was killed, and a new one took its place."""
    assert until(lambda: len(lines(blocked)) >= 1)
    [victim] = {int(pid) for pid in lines(blocked)}
    assert victim in before
    assert still_running_after({victim}, PATIENCE) == set()
    assert len(workers.started(3)) == 3


def test_apply_async_timeout(ctx: Any, workers: Workers) -> None:
    blocked = workers.path.with_name("blocked")
    with workers.pool(ctx) as pool:
        before = workers.started(2)
        started = time.monotonic()
        result = pool.apply_async(
            _pool_targets.pool_block_forever, (str(blocked),), timeout=TASK_TIMEOUT
        )
        others = [pool.apply_async(_pool_targets.pool_square, (x,)) for x in range(6)]
        result.wait(PATIENCE)
        elapsed = time.monotonic() - started
        assert result.ready()
        expect_task_timeout(lambda: result.get(0))
        assert TASK_TIMEOUT <= elapsed < TASK_TIMEOUT + LATE
        assert [other.get(PATIENCE) for other in others] == [x * x for x in range(6)]
        check_blocker_killed(workers, blocked, before)
        check_pool_goes_on(pool, workers, before, died=True)


def test_apply_timeout_that_is_not_reached(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        assert pool.apply(_pool_targets.pool_square, (3,), timeout=PATIENCE) == 9
        assert pool.apply_async(_pool_targets.pool_square, (4,), timeout=PATIENCE).get() == 16


@pytest.mark.parametrize("submit", ["map", "starmap", "map_async"])
def test_map_timeout(ctx: Any, workers: Workers, submit: str) -> None:
    blocked = workers.path.with_name("blocked")
    function = functools.partial(_pool_targets.pool_block_on, str(blocked), 3)
    with workers.pool(ctx) as pool:
        before = workers.started(2)
        if submit == "map":
            expect_task_timeout(lambda: pool.map(function, range(6), timeout=TASK_TIMEOUT))
        elif submit == "map_async":
            result = pool.map_async(function, range(6), timeout=TASK_TIMEOUT)
            result.wait(PATIENCE)
            assert result.ready()
            expect_task_timeout(lambda: result.get(0))
        else:
            arguments = [(str(blocked), 3, x) for x in range(6)]
            expect_task_timeout(
                lambda: pool.starmap(_pool_targets.pool_block_on, arguments, timeout=TASK_TIMEOUT)
            )
        check_blocker_killed(workers, blocked, before)
        check_pool_goes_on(pool, workers, before, died=True)


@pytest.mark.parametrize(
    ("chunksize", "expected"),
    [
        (1, [0, 10, 20, "timeout", 40, 50]),
        (2, [0, 10, "timeout", 40, 50]),  # the chunk [2, 3] fails as one
    ],
)
def test_imap_timeout_fails_the_overdue_task_and_goes_on(
    ctx: Any, workers: Workers, chunksize: int, expected: list[object]
) -> None:
    blocked = workers.path.with_name("blocked")
    function = functools.partial(_pool_targets.pool_block_on, str(blocked), 3)
    with workers.pool(ctx) as pool:
        before = workers.started(2)
        iterator = pool.imap(function, range(6), chunksize, timeout=TASK_TIMEOUT)
        seen: list[object] = []
        for _ in expected:
            try:
                seen.append(iterator.next(timeout=PATIENCE))
            except serentak.TimeoutError:
                seen.append("timeout")
                break
        seen.extend(iterator)
        assert seen == expected
        check_blocker_killed(workers, blocked, before)
        check_pool_goes_on(pool, workers, before, died=True)


def test_imap_unordered_timeout(ctx: Any, workers: Workers) -> None:
    blocked = workers.path.with_name("blocked")
    function = functools.partial(_pool_targets.pool_block_on, str(blocked), 3)
    with workers.pool(ctx) as pool:
        before = workers.started(2)
        iterator = pool.imap_unordered(function, range(6), timeout=TASK_TIMEOUT)
        values: list[int] = []
        timeouts = 0
        started = time.monotonic()
        while True:
            try:
                values.append(iterator.next(timeout=PATIENCE))
            except StopIteration:
                break
            except serentak.TimeoutError:
                assert time.monotonic() - started < PATIENCE / 2, "imap_unordered hung"
                timeouts += 1
        assert timeouts == 1
        assert sorted(values) == [0, 10, 20, 40, 50]
        check_blocker_killed(workers, blocked, before)
        check_pool_goes_on(pool, workers, before, died=True)


# ---- whole programs: Ctrl-C and the parent's death -------------------------------------------


def printed_tracebacks(stderr: str) -> int:
    """How many exceptions ``stderr`` reports, each with the ones chained to it counted once
    (Ctrl-C in the middle of an import that was handling an ImportError prints both)."""
    blocks = stderr.count("Traceback (most recent call last)")
    chained = stderr.count("During handling of the above exception") + stderr.count(
        "The above exception was the direct cause"
    )
    return blocks - chained


CTRL_C_SCRIPT = """
import os
import signal
import sys
import threading
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


def square(x):
    return x * x


def main():
    method, wait_in, up, busy = sys.argv[1:]
    ctx = serentak.get_context(method)
    with ctx.Pool(2, note, (up,)) as pool:
        print("workers", *[child.pid for child in serentak.active_children()], flush=True)
        try:
            print("waiting", flush=True)
            if wait_in == "start":
                pool.map(square, range(4))  # waits for the workers to start
                signal.pause()
            elif wait_in == "map":
                pool.map(slow, [busy] * 4, chunksize=1)
            elif wait_in == "imap":
                for _ in pool.imap(slow, [busy] * 4):
                    pass
            else:
                pool.apply_async(slow, (busy,)).get()
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            raise


if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize(
    ("wait_in", "send_to"),
    [
        ("map", "group"),
        ("map", "main"),
        ("imap", "group"),
        ("get", "group"),
        ("start", "group"),
    ],
)
def test_ctrl_c_while_waiting_on_the_pool(
    start_method: str, tmp_path: Path, wait_in: str, send_to: str
) -> None:
    """SIGINT (to the whole process group as a terminal sends it, or to the main process)
    while the main thread waits in map, imap or AsyncResult.get() (or while the workers
    are still starting): KeyboardInterrupt at once, every worker gone within a second, and
    only the main's traceback printed."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    up, busy = tmp_path / "up", tmp_path / "busy"
    with running_script(
        script, start_method, wait_in, str(up), str(busy), start_new_session=True
    ) as process:
        label, *pids = read_line(process).split()
        assert label == "workers"
        worker_pids = {int(pid) for pid in pids}
        assert len(worker_pids) == 2
        assert read_line(process) == "waiting"
        if wait_in != "start":
            # Every worker is up, and the main thread waits while the tasks run
            # (both workers', or the one of an apply).
            assert until(lambda: len(lines(up)) >= 2)
            assert until(lambda: len(lines(busy)) >= (1 if wait_in == "get" else 2))
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
    assert process.returncode == -signal.SIGINT
    assert stdout == ""
    assert printed_tracebacks(stderr) == 1, stderr
    assert stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    assert still_running_after(family, 2.0) == set(), "orphans left behind"


PARENT_DEATH_SCRIPT = """
import os
import signal
import sys

import serentak


def block(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\\n" % os.getpid())
    os.close(fd)
    while True:
        signal.pause()


def square(x):
    return x * x


if __name__ == "__main__":
    method, state, path = sys.argv[1:]
    pool = serentak.get_context(method).Pool(2)
    assert pool.map(square, range(4)) == [0, 1, 4, 9]
    if state == "busy":
        pool.map_async(block, [path] * 6, chunksize=1)
    print(*[child.pid for child in serentak.active_children()], flush=True)
    while True:
        signal.pause()
"""


@pytest.mark.parametrize("state", ["idle", "busy"])
def test_workers_exit_when_the_parent_is_killed(
    start_method: str, tmp_path: Path, state: str
) -> None:
    script = tmp_path / "parent_death.py"
    script.write_text(PARENT_DEATH_SCRIPT)
    busy = tmp_path / "busy"
    with running_script(script, start_method, state, str(busy)) as process:
        worker_pids = {int(pid) for pid in read_line(process).split()}
        assert len(worker_pids) == 2
        if state == "busy":
            assert until(lambda: len(lines(busy)) >= 2)
            assert {int(pid) for pid in lines(busy)} == worker_pids
        family = descendants_of(process.pid)
        assert worker_pids <= family
        assert all(running(pid) for pid in worker_pids)

        process.kill()
        process.wait()
        killed = time.monotonic()
        alive = still_running_after(worker_pids, 0.5)
        assert alive == set(), f"workers still running {time.monotonic() - killed:.2f} s later"
    assert still_running_after(family, PATIENCE) == set(), "orphans left behind"


EXECUTOR_PARENT_DEATH_SCRIPT = """
import os
import signal
import sys

import serentak


def note(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\\n" % os.getpid())
    os.close(fd)


def block(path):
    note(path)
    while True:
        signal.pause()


def nested(method, path):
    note(path)
    with serentak.get_context(method).Pool(2) as pool:
        pool.map(block, [path] * 2, chunksize=1)


if __name__ == "__main__":
    method, path = sys.argv[1:]
    executor = serentak.ProcessPoolExecutor(2, mp_context=serentak.get_context(method))
    executor.submit(nested, method, path)
    print(*[child.pid for child in serentak.active_children()], flush=True)
    while True:
        signal.pause()
"""


def test_executor_workers_and_their_pools_exit_when_the_parent_is_killed(
    start_method: str, tmp_path: Path
) -> None:
    """The executor's workers are not daemonic, yet die with its process; the pool
    one of them started dies with that worker."""
    script = tmp_path / "executor_parent_death.py"
    script.write_text(EXECUTOR_PARENT_DEATH_SCRIPT)
    busy = tmp_path / "busy"
    with running_script(script, start_method, str(busy)) as process:
        worker_pids = {int(pid) for pid in read_line(process).split()}
        assert len(worker_pids) == 2
        # The executor's worker, then the two workers of its pool.
        assert until(lambda: len(lines(busy)) >= 3)
        family = descendants_of(process.pid)
        assert {int(pid) for pid in lines(busy)} <= family
        process.kill()
        process.wait()
        alive = still_running_after(family, 1.0)
        assert alive == set(), f"still running after their parent was killed: {alive}"


# ---- a signal taken by another thread ----------------------------------------------------


def test_a_signal_taken_by_another_thread_interrupts_join(ctx: Any, gates: Path) -> None:
    """The kernel may hand a process's SIGINT to any thread (a pool has several). One taken
    by another thread must still interrupt the main thread's join() while a task runs on."""
    with ctx.Pool(2) as pool:
        result = pool.apply_async(_pool_targets.pool_gate, (str(gates), "held", "done"))
        assert _pool_targets.pool_gate_started(str(gates), "held")
        pool.close()
        with interrupted_by_a_signal_to_another_thread(
            lambda: _pool_targets.pool_gate_open(str(gates), "held")
        ):
            pool.join()
        pool.join()
        assert result.get(PATIENCE) == "done"


def test_a_signal_taken_by_another_thread_interrupts_join_while_a_callback_runs(
    ctx: Any,
) -> None:
    """join() waits for the callbacks too: a signal must interrupt that wait as well."""
    started, go = threading.Event(), threading.Event()

    def callback(value: object) -> None:
        started.set()
        go.wait(PATIENCE)

    with ctx.Pool(2) as pool:
        pool.apply_async(_pool_targets.pool_square, (3,), callback=callback)
        assert started.wait(PATIENCE)
        pool.close()
        with interrupted_by_a_signal_to_another_thread(go.set):
            pool.join()
        pool.join()
