"""ThreadPool (serentak._pool.engines.thread, serentak.pool.ThreadPool) and serentak.dummy.

Both run tasks in threads of this process, so there is no start method to vary
(no ``ctx`` here) and nothing is pickled: arguments, results and exceptions are
the very objects. Where it helps, the stdlib's ``multiprocessing.pool.ThreadPool``
and ``multiprocessing.dummy`` run the same calls and the outcomes are compared.
"""

from __future__ import annotations

import array
import multiprocessing.dummy
import multiprocessing.pool
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import _pool_targets
import serentak.dummy
import serentak.pool
from _signals import interrupted_by_a_signal_to_another_thread

PATIENCE = 20.0

POOLS: dict[str, Callable[..., Any]] = {
    "serentak.pool.ThreadPool": serentak.pool.ThreadPool,
    "serentak.dummy.Pool": serentak.dummy.Pool,
}


@pytest.fixture(params=list(POOLS))
def make_pool(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """serentak.pool.ThreadPool and serentak.dummy.Pool in turn."""
    return POOLS[request.param]


class Gate:
    """A threading.Event a task can wait on (threads share it: nothing is pickled)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.go = threading.Event()

    def hold(self, value: Any) -> Any:
        self.started.set()
        if not self.go.wait(PATIENCE):
            raise RuntimeError("never let go")
        return value


@pytest.fixture
def gate() -> Iterator[Gate]:
    held = Gate()
    yield held
    held.go.set()


# ---- the pool runs in threads ----------------------------------------------------------------


def test_tasks_run_in_threads_of_this_process(make_pool: Callable[..., Any]) -> None:
    with make_pool(2) as pool:
        reports = pool.map(_pool_targets.pool_whoami, range(6), chunksize=1)
    assert {report["pid"] for report in reports} == {os.getpid()}
    assert threading.get_ident() not in {report["thread"] for report in reports}


def test_nothing_is_pickled(make_pool: Callable[..., Any]) -> None:
    lock = threading.Lock()
    seen: list[int] = []
    with make_pool(2) as pool:
        assert pool.apply(_pool_targets.pool_thread_lock, (lock, 1)) == (1, True)
        assert pool.map(lambda x: _pool_targets.pool_thread_lock(lock, x), range(3)) == [
            (0, True),
            (1, True),
            (2, True),
        ]
        pool.map(seen.append, range(5))  # the caller's own list, changed by the threads
        unpicklable = (n for n in range(3))
        assert pool.apply(list, (unpicklable,)) == [0, 1, 2]
        result = pool.apply(threading.Lock)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert type(result) is type(lock)


def test_the_api(make_pool: Callable[..., Any]) -> None:
    got: list[Any] = []
    with make_pool(2) as pool:
        assert pool.apply(_pool_targets.pool_add, (1, 2)) == 3
        assert (
            pool.apply_async(_pool_targets.pool_square, (4,), callback=got.append).get(PATIENCE)
            == 16
        )
        assert got == [16]
        assert pool.map(_pool_targets.pool_square, range(5), 2) == [0, 1, 4, 9, 16]
        assert pool.map_async(_pool_targets.pool_square, range(3)).get(PATIENCE) == [0, 1, 4]
        assert list(pool.imap(_pool_targets.pool_square, range(5), 2)) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(_pool_targets.pool_square, range(5))) == [0, 1, 4, 9, 16]
        assert pool.starmap(_pool_targets.pool_add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.starmap_async(_pool_targets.pool_add, [(5, 6)]).get(PATIENCE) == [11]


def test_a_task_exception_is_the_very_object(make_pool: Callable[..., Any]) -> None:
    error = KeyError("the same")

    def fail() -> None:
        raise error

    with make_pool(2) as pool:
        result = pool.apply_async(fail)
        result.wait(PATIENCE)
        assert result.ready()
        assert not result.successful()
        with pytest.raises(KeyError) as caught:
            result.get()
        assert caught.value is error
        with pytest.raises(KeyError):
            pool.map(lambda x: fail() if x == 2 else x, range(4))


def test_initializer_runs_in_each_thread(make_pool: Callable[..., Any]) -> None:
    threads: queue.SimpleQueue[int] = queue.SimpleQueue()
    with make_pool(3, lambda: threads.put(threading.get_ident())) as pool:
        assert pool.map(_pool_targets.pool_square, range(6)) == [x * x for x in range(6)]
    pool.join()
    idents = [threads.get_nowait() for _ in range(threads.qsize())]
    assert len(idents) == 3
    assert len(set(idents)) == 3


def test_async_result_while_a_task_is_held(make_pool: Callable[..., Any], gate: Gate) -> None:
    with make_pool(2) as pool:
        result = pool.apply_async(gate.hold, ("held",))
        assert gate.started.wait(PATIENCE)
        assert not result.ready()
        with pytest.raises(ValueError):
            result.successful()
        with pytest.raises(serentak.TimeoutError):
            result.get(0.05)
        assert [pool.apply(_pool_targets.pool_square, (x,)) for x in range(3)] == [0, 1, 4]
        gate.go.set()
        assert result.get(PATIENCE) == "held"


def test_lifecycle(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2)
    with pytest.raises(ValueError, match=r"^Pool is still running$"):
        pool.join()
    results = [pool.apply_async(_pool_targets.pool_square, (x,)) for x in range(10)]
    pool.close()
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        pool.apply_async(_pool_targets.pool_square, (1,))
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        pool.map(_pool_targets.pool_square, [1])
    pool.join()
    assert [result.get(0) for result in results] == [x * x for x in range(10)]
    with make_pool(2) as other:
        pass
    with pytest.raises(ValueError, match=r"^Pool not running$"):
        other.apply(_pool_targets.pool_square, (1,))


def test_constructor_checks_its_arguments(make_pool: Callable[..., Any]) -> None:
    with pytest.raises(ValueError):
        make_pool(0)
    with pytest.raises(TypeError):
        make_pool(2, 3)


def test_timeout_is_refused_as_a_thread_cannot_be_stopped() -> None:
    with serentak.pool.ThreadPool(2) as pool, pytest.raises(ValueError):
        pool.apply_async(_pool_targets.pool_square, (1,), timeout=1.0)


# ---- the same calls through the stdlib -------------------------------------------------------


def run_program(pool_class: Callable[..., Any]) -> list[Any]:
    """A few calls whose outcomes the stdlib's ThreadPool defines; what they gave."""
    outcomes: list[Any] = []
    callbacks: list[Any] = []
    with pool_class(2) as pool:
        outcomes.append(pool.map(_pool_targets.pool_square, range(7), 3))
        outcomes.append(pool.starmap(_pool_targets.pool_add, [(1, 2), (3, 4)]))
        outcomes.append(list(pool.imap(_pool_targets.pool_square, iter(range(4)))))
        outcomes.append(sorted(pool.imap_unordered(_pool_targets.pool_square, range(4))))
        result = pool.map_async(_pool_targets.pool_square, [3], callback=callbacks.append)
        outcomes.append((result.get(PATIENCE), list(callbacks)))
        failed = pool.apply_async(
            _pool_targets.pool_raise, ("bad",), error_callback=callbacks.append
        )
        failed.wait(PATIENCE)
        # Types only: an exception keeps its traceback's frames, and they the pool.
        called = [type(argument).__name__ for argument in callbacks]
        outcomes.append((failed.ready(), failed.successful(), called))
        callbacks.clear()
        try:
            failed.get()
        except ValueError as exc:
            outcomes.append(("ValueError", str(exc)))
        outcomes.append(pool.map(_pool_targets.pool_square, []))
        pool.close()
        pool.join()
        try:
            pool.apply(_pool_targets.pool_square, (1,))
        except ValueError as exc:
            outcomes.append(("ValueError", str(exc)))
    return outcomes


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (serentak.pool.ThreadPool, multiprocessing.pool.ThreadPool),
        (serentak.dummy.Pool, multiprocessing.dummy.Pool),
    ],
)
def test_same_outcomes_as_the_stdlib(ours: Callable[..., Any], theirs: Callable[..., Any]) -> None:
    assert run_program(ours) == run_program(theirs)


def test_a_signal_taken_by_another_thread_interrupts_join(
    make_pool: Callable[..., Any], gate: Gate
) -> None:
    """The kernel may hand a process's SIGINT to any thread: here, maybe one of the pool's.
    One taken by another thread must still interrupt the main thread's join() while a
    task runs on."""
    with make_pool(2) as pool:
        result = pool.apply_async(gate.hold, ("done",))
        assert gate.started.wait(PATIENCE)
        pool.close()
        with interrupted_by_a_signal_to_another_thread(gate.go.set):
            pool.join()
        pool.join()
        assert result.get(PATIENCE) == "done"


# ---- serentak.dummy --------------------------------------------------------------------------


def test_dummy_has_the_stdlib_names() -> None:
    assert sorted(serentak.dummy.__all__) == sorted(multiprocessing.dummy.__all__)
    for name in serentak.dummy.__all__:
        assert hasattr(serentak.dummy, name), name


def test_dummy_value_array_dict_and_list_are_the_stdlibs() -> None:
    """What the stdlib's dummy gives: plain objects threads share, no locks."""
    ours, theirs = serentak.dummy.Value("i", 3), multiprocessing.dummy.Value("i", 3)
    assert repr(ours) == repr(theirs) == "<Value('i', 3)>"
    ours.value += 4
    assert ours.value == 7
    unlocked = serentak.dummy.Value("d", 1.5, lock=False)
    assert unlocked.value == 1.5
    numbers = serentak.dummy.Array("i", range(4), lock=False)
    assert numbers == multiprocessing.dummy.Array("i", range(4)) == array.array("i", range(4))
    with serentak.dummy.Pool(2) as pool:
        pool.starmap(numbers.__setitem__, [(i, 9) for i in range(4)])
    assert list(numbers) == [9, 9, 9, 9]
    assert serentak.dummy.dict is dict
    assert serentak.dummy.list is list


def test_dummy_process_is_a_thread() -> None:
    here: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    go = threading.Event()

    def target() -> None:
        here.put((os.getpid(), threading.get_ident()))
        go.wait(PATIENCE)

    process = serentak.dummy.Process(target=target)
    assert isinstance(process, threading.Thread)
    exitcodes = [process.exitcode]
    process.start()
    pid, ident = here.get(timeout=PATIENCE)
    assert process.is_alive()
    assert serentak.dummy.active_children() == [process]
    go.set()
    process.join(PATIENCE)
    assert not process.is_alive()
    exitcodes.append(process.exitcode)
    assert exitcodes == [None, 0]
    assert pid == os.getpid()
    assert ident != threading.get_ident()
    assert serentak.dummy.active_children() == []
    assert serentak.dummy.current_process() is threading.current_thread()


def test_dummy_queue_lock_and_pipe_are_shared_by_threads() -> None:
    items: queue.Queue[int] = serentak.dummy.Queue()
    lock = serentak.dummy.Lock()
    with serentak.dummy.Pool(2) as pool:
        pool.map(items.put, range(4))
        assert pool.apply(_pool_targets.pool_thread_lock, (lock, 7)) == (7, True)
    assert sorted(items.get_nowait() for _ in range(4)) == [0, 1, 2, 3]
    near, far = serentak.dummy.Pipe()
    near.send({"a": 1})
    assert far.recv() == {"a": 1}
    far.send("back")
    assert near.recv() == "back"
