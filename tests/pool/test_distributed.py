"""serentak.distributed: serentak's Pool API on a Dask cluster.

The module shares one cluster, started the way the README tells users to
start one (``dask scheduler`` and ``dask worker`` on the command line: two
worker processes of one thread each, ``allowed-failures`` 1 so that a task
that kills its workers fails after two deaths instead of four). Each test
connects a pool of its own to it. The cluster's processes are registered
with conftest's ``shared_process_trees``, so the leak check still checks
everything else after every test; the pools' own sockets are closed by their
``terminate()``.

What needs a LocalCluster of the pool's own, or a real SIGINT, runs as a
script in a process of its own (its cluster's resource tracker lives and
dies with it).

Where a test must know that a task has started, the task writes a file and
the test polls for it (``_pool_targets.pool_gate``): no sleep stands in for an event.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _pool_targets
import serentak
import serentak.pool
from _scripts import read_line
from _watch import descendants_of, lines, running, until
from serentak.distributed import Pool

# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0
# A wait that is expected to time out (the result is not there yet).
SHORT = 0.05
WORKERS = 2
TESTS = Path(__file__).parents[1]


# ---- the module's cluster ----------------------------------------------------------------------


class Cluster:
    """The module's cluster: a ``dask scheduler`` and a ``dask worker`` process (its nanny,
    which starts two worker processes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.scheduler_file = directory / "scheduler.json"
        env = dict(os.environ)
        env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "1"
        # The workers import the tasks of _pool_targets by name, as the test process does.
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(":")
        common = ["--scheduler-file", str(self.scheduler_file), "--no-dashboard"]
        common += ["--host", "127.0.0.1"]
        self.processes = [
            self._start("scheduler", [*common, "--port", "0"], env),
            self._start("worker", [*common, "--nworkers", str(WORKERS), "--nthreads", "1"], env),
        ]

    def _start(
        self, what: str, arguments: list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with open(self.directory / f"{what}.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "dask", what, *arguments],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )

    @property
    def address(self) -> str:
        assert until(lambda: bool(lines(self.scheduler_file))), self.logs()
        address: str = json.loads(self.scheduler_file.read_text())["address"]
        return address

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.directory.glob("*.log")))

    def stop(self) -> None:
        """Stop the workers, then the scheduler, and wait until all their processes are gone."""
        family = set().union(*(_tree_of(p.pid) for p in self.processes))
        for process in self.processes[::-1]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if not until(lambda: not any(running(pid) for pid in family)):
            for pid in family:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, shared_process_trees: set[int]
) -> Iterator[Cluster]:
    the_cluster = Cluster(tmp_path_factory.mktemp("dask"))
    roots = {process.pid for process in the_cluster.processes}
    shared_process_trees.update(roots)
    try:
        with Pool(address=the_cluster.address) as pool:
            pool.client.wait_for_workers(WORKERS, timeout=PATIENCE)
        yield the_cluster
    finally:
        the_cluster.stop()
        shared_process_trees.difference_update(roots)


@pytest.fixture
def pool(cluster: Cluster) -> Iterator[Pool]:
    with Pool(address=cluster.address) as the_pool:
        yield the_pool
        # A test that killed workers leaves the cluster whole for the next one.
        if the_pool.client.status == "running":
            the_pool.client.wait_for_workers(WORKERS, timeout=PATIENCE)
            return
    back_to(cluster, WORKERS)


def back_to(cluster: Cluster, workers: int) -> None:
    with Pool(address=cluster.address) as probe:
        probe.client.wait_for_workers(workers, timeout=PATIENCE)


# ---- import, construction ----------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )


def test_import_serentak_does_not_import_dask() -> None:
    done = run_python(
        "import sys, serentak, serentak.pool\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'dask', 'distributed'}))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_dask_the_error_names_the_extra() -> None:
    done = run_python(
        "import sys\n"
        "sys.modules['distributed'] = None  # as if it were not installed\n"
        "import serentak.distributed\n"
    )
    assert done.returncode == 1
    assert "ImportError: serentak.distributed runs on Dask" in done.stderr
    assert "pip install 'serentak[dask]'" in done.stderr


def test_the_worker_count_is_not_an_address() -> None:
    with pytest.raises(TypeError, match="processes="):
        Pool(4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cluster_options"):
        Pool("tcp://127.0.0.1:1", cluster_options={"n_workers": 2})


def test_a_pool_of_the_cluster(pool: Pool, cluster: Cluster) -> None:
    assert pool.cluster is None
    assert pool.client.scheduler.address == cluster.address
    assert repr(pool) == "<serentak.distributed.Pool state=RUN pool_size=2>"


# ---- apply and AsyncResult ---------------------------------------------------------------------


def test_apply(pool: Pool) -> None:
    assert pool.apply(_pool_targets.pool_add, (2, 3)) == 5
    assert pool.apply(_pool_targets.pool_echo, (1, "a"), {"k": [2]}) == ((1, "a"), {"k": [2]})
    assert pool.apply(_pool_targets.pool_echo) == ((), {})


def test_async_result_before_and_after_the_task_finishes(pool: Pool, gates: Path) -> None:
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
    assert result.get(PATIENCE) == 42
    assert result.ready()
    assert result.successful()


def test_callbacks_have_run_when_get_returns(pool: Pool) -> None:
    seen: list[Any] = []
    assert (
        pool.apply_async(_pool_targets.pool_square, (7,), callback=seen.append).get(PATIENCE) == 49
    )
    assert seen == [49]

    errors: list[BaseException] = []
    failing = pool.apply_async(
        _pool_targets.pool_raise, ("no",), callback=seen.append, error_callback=errors.append
    )
    with pytest.raises(ValueError, match=r"^no$"):
        failing.get(PATIENCE)
    assert not failing.successful()
    assert [str(e) for e in errors] == ["no"]

    mapped = pool.map_async(_pool_targets.pool_square, range(5), callback=seen.append)
    assert mapped.get(PATIENCE) == [0, 1, 4, 9, 16]
    assert seen == [49, [0, 1, 4, 9, 16]]
    failed_map = pool.starmap_async(
        _pool_targets.pool_fault, [(("raise", 3),)], error_callback=errors.append
    )
    with pytest.raises(ValueError, match="task 3 raised"):
        failed_map.get(PATIENCE)
    assert [str(e) for e in errors] == ["no", "task 3 raised"]


# ---- map, starmap, imap ------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_map(pool: Pool, chunksize: int | None) -> None:
    assert pool.map(_pool_targets.pool_square, range(100), chunksize) == [x * x for x in range(100)]


def test_map_takes_any_iterable_and_empty_ones(pool: Pool) -> None:
    assert pool.map(_pool_targets.pool_square, (x for x in range(5))) == [0, 1, 4, 9, 16]
    assert pool.map(_pool_targets.pool_square, []) == []
    assert pool.map_async(_pool_targets.pool_square, iter([3])).get(PATIENCE) == [9]


def test_starmap(pool: Pool) -> None:
    pairs = [(x, x + 1) for x in range(40)]
    assert pool.starmap(_pool_targets.pool_add, pairs, 3) == [a + b for a, b in pairs]
    assert pool.starmap_async(_pool_targets.pool_add, pairs).get(PATIENCE) == [
        a + b for a, b in pairs
    ]


@pytest.mark.parametrize("chunksize", [1, 4])
def test_imap_gives_results_in_order(pool: Pool, chunksize: int) -> None:
    iterator = pool.imap(_pool_targets.pool_square, range(30), chunksize)
    assert list(iterator) == [x * x for x in range(30)]


def test_imap_unordered_gives_every_result(pool: Pool) -> None:
    assert sorted(pool.imap_unordered(_pool_targets.pool_square, range(30))) == [
        x * x for x in range(30)
    ]


def test_imap_unordered_gives_results_as_they_complete(pool: Pool, gates: Path) -> None:
    items = [("slow", str(gates)), ("quick", str(gates))]
    iterator = pool.imap_unordered(_pool_targets.distributed_gate_item, items, chunksize=1)
    assert _pool_targets.pool_gate_started(str(gates), "slow")
    _pool_targets.pool_gate_open(str(gates), "quick")
    assert iterator.next(PATIENCE) == "quick"
    _pool_targets.pool_gate_open(str(gates), "slow")
    assert iterator.next(PATIENCE) == "slow"


def test_imap_reads_an_endless_input_lazily(pool: Pool) -> None:
    pulled = itertools.count()
    taken: list[int] = []

    def endless() -> Iterator[int]:
        for x in itertools.count():
            taken.append(next(pulled))
            yield x

    iterator = pool.imap(_pool_targets.pool_square, endless(), chunksize=1)
    assert [iterator.next(PATIENCE) for _ in range(10)] == [x * x for x in range(10)]
    # The feeder keeps at most its look-ahead window (4 per worker, plus 4) unread.
    window = 4 * WORKERS + 4
    assert len(taken) <= 10 + window + 1
    del iterator  # dropped: the feeder stops reading the input


def test_imap_next_with_a_timeout(pool: Pool, gates: Path) -> None:
    iterator = pool.imap(_pool_targets.distributed_gate_item, [("only", str(gates))])
    assert _pool_targets.pool_gate_started(str(gates), "only")
    with pytest.raises(serentak.TimeoutError):
        iterator.next(SHORT)
    _pool_targets.pool_gate_open(str(gates), "only")
    assert iterator.next(PATIENCE) == "only"
    with pytest.raises(StopIteration):
        iterator.next(PATIENCE)


def test_lambdas_closures_and_local_functions(pool: Pool) -> None:
    offset = 10

    def local(x: int) -> int:
        return x + offset

    assert pool.map(lambda x: x * 3, range(4)) == [0, 3, 6, 9]
    assert pool.map(local, range(3)) == [10, 11, 12]
    assert pool.apply(functools.partial(_pool_targets.pool_add, 100), (1,)) == 101


def test_progress_bar_reaches_100_percent_with_the_right_total(
    pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pool.map(_pool_targets.pool_square, range(23), progress=True) == [
        x * x for x in range(23)
    ]
    final = capsys.readouterr().err.rsplit("\r", 1)[-1]  # tqdm's bar, on stderr
    assert "100%" in final
    assert "23/23" in final

    out = io.StringIO()
    assert pool.map(_pool_targets.pool_square, range(57), progress={"file": out}) == [
        x * x for x in range(57)
    ]
    final = out.getvalue().rsplit("\r", 1)[-1]
    assert "100%" in final
    assert "57/57" in final

    out = io.StringIO()
    results = list(pool.imap(_pool_targets.pool_square, range(9), progress={"file": out}))
    assert len(results) == 9
    assert until(lambda: "9/9" in out.getvalue().rsplit("\r", 1)[-1])


def test_initializer_runs_on_each_worker_before_its_first_task(
    cluster: Cluster, tmp_path: Path
) -> None:
    noted = tmp_path / "initialized"
    with Pool(cluster.address, None, _pool_targets.pool_init, (str(noted), "ready")) as pool:
        results = pool.map(_pool_targets.pool_initialized, range(40), chunksize=1)
        assert results == [(x, "ready") for x in range(40)]
        ran_on = {pid for _, pid in pool.map(_pool_targets.pool_pid, range(40), chunksize=1)}
    initialized = [int(pid) for pid in lines(noted)]
    assert sorted(initialized) == sorted(set(initialized)), "twice on one worker"
    assert ran_on <= set(initialized)


MAIN_CODE = """
state = None

def init(value):
    global state
    state = value

def read(_):
    return state
"""


def test_functions_of_main_share_a_namespace_per_pool(cluster: Cluster) -> None:
    """An initializer's global reaches its pool's tasks, and only them: a worker serves
    many pools."""
    main: dict[str, Any] = {"__name__": "__main__"}  # what a script's functions have
    exec(MAIN_CODE, main)
    with (
        Pool(cluster.address, None, main["init"], ("first",)) as first,
        Pool(cluster.address, None, main["init"], ("second",)) as second,
        Pool(cluster.address) as third,
    ):
        assert first.map(main["read"], range(8), chunksize=1) == ["first"] * 8
        assert second.map(main["read"], range(8), chunksize=1) == ["second"] * 8
        assert first.map(main["read"], range(8), chunksize=1) == ["first"] * 8
        assert third.map(main["read"], range(8), chunksize=1) == [None] * 8


def test_an_initializer_that_raises_fails_every_task(cluster: Cluster) -> None:
    with Pool(cluster.address, None, _pool_targets.pool_init_fails, ("no setup",)) as pool:
        with pytest.raises(RuntimeError, match="no setup") as caught:
            pool.apply(_pool_targets.pool_square, (2,))
        assert "initializer raised" in str(caught.value.__cause__)
        with pytest.raises(RuntimeError, match="no setup"):
            pool.map(_pool_targets.pool_square, range(10))


def test_stats_count_the_tasks(pool: Pool) -> None:
    pool.map(_pool_targets.pool_square, range(12), chunksize=3)
    stats = pool.stats()
    assert stats.tasks_done == 4
    assert stats.tasks_failed == 0
    assert all(worker.alive for worker in stats.workers)
    assert stats.tasks_lost == stats.tasks_timed_out == 0


# ---- lifecycle -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["close", "terminate"])
def test_submitting_to_a_stopped_pool_raises(cluster: Cluster, stop: str) -> None:
    pool = Pool(cluster.address)
    getattr(pool, stop)()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(_pool_targets.pool_square, (1,))
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(_pool_targets.pool_square, [1])
    pool.join()


def test_join_while_running_raises(pool: Pool) -> None:
    with pytest.raises(ValueError, match="still running"):
        pool.join()


def test_close_then_join_finishes_the_queued_tasks_and_closes_the_client(
    cluster: Cluster,
) -> None:
    pool = Pool(cluster.address)
    results = [pool.apply_async(_pool_targets.pool_square, (x,)) for x in range(10)]
    mapped = pool.map_async(_pool_targets.pool_square, range(100), chunksize=3)
    pool.close()
    pool.join()
    assert [r.get(0) for r in results] == [x * x for x in range(10)]
    assert mapped.get(0) == [x * x for x in range(100)]
    assert pool.client.status == "closed"
    pool.terminate()  # harmless after join


def test_terminate_fails_the_unfinished_tasks(cluster: Cluster, gates: Path) -> None:
    with Pool(cluster.address) as pool:
        held = pool.apply_async(_pool_targets.pool_gate, (str(gates), "held"))
        queued = pool.map_async(_pool_targets.pool_square, range(10))
        assert _pool_targets.pool_gate_started(str(gates), "held")
        pool.terminate()
        with pytest.raises(serentak.PoolTerminatedError):
            held.get(PATIENCE)
        with contextlib.suppress(serentak.PoolTerminatedError):
            assert queued.get(PATIENCE) == [x * x for x in range(10)]  # if it was that quick
        assert pool.client.status == "closed"


# ---- failures ------------------------------------------------------------------------------------


def first_error_line(func: Callable[..., Any], text: str) -> int:
    import inspect

    source, start = inspect.getsourcelines(func)
    return start + next(i for i, line in enumerate(source) if text in line)


RAISE_THROUGH: dict[str, Callable[[Pool], object]] = {
    "apply": lambda pool: pool.apply(_pool_targets.pool_raise, ("boom",)),
    "map": lambda pool: pool.map(_pool_targets.pool_raise, ["boom"]),
    "imap": lambda pool: next(pool.imap(_pool_targets.pool_raise, ["boom"])),
}


@pytest.mark.parametrize("submit", RAISE_THROUGH)
def test_a_raising_task_brings_its_remote_traceback(pool: Pool, submit: str) -> None:
    line = first_error_line(_pool_targets.pool_raise, "raise ValueError")
    with pytest.raises(ValueError, match=r"^boom$") as caught:
        RAISE_THROUGH[submit](pool)
    cause = caught.value.__cause__
    assert isinstance(cause, serentak.pool.RemoteTraceback)
    text = str(cause)
    assert f'{_pool_targets.__file__}", line {line}, in pool_raise' in text, text
    assert "ValueError: boom" in text


@pytest.mark.parametrize(
    "fault",
    ["unpicklable_exception", "unloadable_exception", "unpicklable_result", "system_exit"],
)
def test_what_cannot_travel_back_fails_only_its_task(pool: Pool, fault: str) -> None:
    items = [("ok", 1), (fault, 2), ("ok", 3)]
    results = [pool.apply_async(_pool_targets.pool_fault, (item,)) for item in items]
    assert results[0].get(PATIENCE) == 10
    assert results[2].get(PATIENCE) == 30
    with pytest.raises(BaseException) as caught:
        results[1].get(PATIENCE)
    assert isinstance(caught.value.__cause__, serentak.pool.RemoteTraceback)


def test_an_unpicklable_argument_fails_only_its_task(pool: Pool) -> None:
    bad = pool.apply_async(_pool_targets.pool_return, (threading.Lock(),))
    good = pool.apply_async(_pool_targets.pool_square, (5,))
    with pytest.raises(Exception, match="pickle"):
        bad.get(PATIENCE)
    assert good.get(PATIENCE) == 25


def test_a_task_that_kills_its_worker_fails_with_worker_lost(
    pool: Pool, cluster: Cluster, gates: Path
) -> None:
    """The culprit kills every worker it runs on (os.kill(os.getpid(), SIGKILL)): Dask
    runs it again on another worker once (the cluster's allowed-failures), then it fails
    with WorkerLostError. A task running on the other worker meanwhile is not touched."""
    held = pool.apply_async(_pool_targets.pool_gate, (str(gates), "held", "survived"))
    assert _pool_targets.pool_gate_started(str(gates), "held")
    culprit = pool.apply_async(_pool_targets.pool_fault, (("sigkill", 1),))
    with pytest.raises(serentak.WorkerLostError, match="died") as caught:
        culprit.get(PATIENCE)
    assert "allowed-failures=1" in str(caught.value)
    assert "KilledWorker" in repr(caught.value.__cause__)
    _pool_targets.pool_gate_open(str(gates), "held")
    assert held.get(PATIENCE) == "survived"
    assert pool.stats().tasks_lost == 1
    back_to(cluster, WORKERS)
    assert pool.map(_pool_targets.pool_square, range(5)) == [0, 1, 4, 9, 16]


def test_tasks_queued_with_the_culprit_are_run_elsewhere(pool: Pool) -> None:
    """Tasks queued on a worker that dies are run again on other workers: each brings its
    result, or, when it was queued behind the culprit at every death (Dask counts a death
    against every task the worker held, and cannot tell which one killed it), fails with
    WorkerLostError as the culprit does. Nothing hangs, and no result is wrong."""
    items = [("sigkill" if x == 5 else "ok", x) for x in range(20)]
    results = [pool.apply_async(_pool_targets.pool_fault, (item,)) for item in items]
    outcomes: list[object] = []
    for result in results:
        try:
            outcomes.append(result.get(PATIENCE))
        except serentak.WorkerLostError:
            outcomes.append(serentak.WorkerLostError)
    assert outcomes[5] is serentak.WorkerLostError
    for x, outcome in enumerate(outcomes):
        assert outcome in (x * 10, serentak.WorkerLostError)
    assert outcomes.count(serentak.WorkerLostError) == pool.stats().tasks_lost


def test_map_raises_worker_lost_instead_of_hanging(pool: Pool) -> None:
    items = [("sigkill" if x == 3 else "ok", x) for x in range(8)]
    with pytest.raises(serentak.WorkerLostError):
        pool.map(_pool_targets.pool_fault, items, chunksize=1)


def test_apply_async_timeout(pool: Pool, gates: Path) -> None:
    started = time.monotonic()
    overdue = pool.apply_async(_pool_targets.pool_gate, (str(gates), "overdue"), timeout=0.5)
    with pytest.raises(serentak.TimeoutError, match=r"timeout of 0\.5 s") as caught:
        overdue.get(PATIENCE)
    assert 0.5 <= time.monotonic() - started < 5
    assert isinstance(caught.value, builtins.TimeoutError)
    where = str(caught.value.__cause__)
    assert "in pool_gate" in where, where  # where the task was when its time ran out
    # Its worker moved on: both workers still take tasks (the overdue one runs on
    # until the gate opens, on a thread of its own).
    assert pool.map(_pool_targets.pool_square, range(10), chunksize=1) == [x * x for x in range(10)]
    assert pool.apply(_pool_targets.pool_square, (4,), timeout=PATIENCE) == 16
    assert pool.stats().tasks_timed_out == 1


def test_map_timeout_fails_the_overdue_chunk(pool: Pool, gates: Path) -> None:
    items = [("overdue" if x == 4 else f"quick{x}", str(gates)) for x in range(8)]
    for x in range(8):
        if x != 4:
            _pool_targets.pool_gate_open(str(gates), f"quick{x}")
    with pytest.raises(serentak.TimeoutError):
        pool.map(_pool_targets.distributed_gate_item, items, timeout=0.5)
    iterator = pool.imap(_pool_targets.distributed_gate_item, items, timeout=0.5)
    got: list[Any] = []
    for _ in items:
        try:
            got.append(iterator.next(PATIENCE))
        except serentak.TimeoutError as exc:
            got.append(type(exc))
    assert got == [serentak.TimeoutError if x == 4 else f"quick{x}" for x in range(8)]


def test_long_job_options_seed_errors_and_journal(pool: Pool, tmp_path: Path) -> None:
    with serentak.get_context("fork").Pool(2) as local:
        expected = local.map(_pool_targets.pool_draws, range(12), seed=9)
    assert pool.map(_pool_targets.pool_draws, range(12), seed=9) == expected
    task = functools.partial(_pool_targets.pool_fail_on, 4)
    results: list[Any] = pool.map(task, range(8), errors="return")
    assert isinstance(results[4], ValueError)
    assert results[:4] + results[5:] == [0, 2, 4, 6, 10, 12, 14]
    journal = tmp_path / "j"
    assert pool.map(_pool_targets.pool_square, range(6), journal=journal) == [0, 1, 4, 9, 16, 25]
    assert pool.map(_pool_targets.pool_square, range(6), journal=journal) == [0, 1, 4, 9, 16, 25]
    # What Dask decides itself: said at the call.
    with pytest.raises(ValueError, match="cannot run tasks again"):
        pool.map(_pool_targets.pool_square, range(3), retries=1)
    with pytest.raises(ValueError, match="memory_limit"):
        pool.apply_async(_pool_targets.pool_square, (3,), memory_limit="1GiB")


def test_timeout_must_be_positive(pool: Pool) -> None:
    with pytest.raises(ValueError, match="positive"):
        pool.apply_async(_pool_targets.pool_square, (1,), timeout=0)


# ---- Ctrl-C, in this process -------------------------------------------------------------------


def interrupt_once(gates: Path, name: str) -> threading.Thread:
    """A thread that, once task ``name`` has started, sends this process's main thread a
    KeyboardInterrupt as Ctrl-C would."""

    def interrupt() -> None:
        if _pool_targets.pool_gate_started(str(gates), name):
            # To the main thread itself, as a terminal's SIGINT reaches it, so that
            # it interrupts a wait that blocks without a timeout.
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    return thread


WAITS: dict[str, Callable[[Pool, list[tuple[str, str]]], object]] = {
    "map": lambda pool, items: pool.map(_pool_targets.distributed_gate_item, items, chunksize=1),
    "get": lambda pool, items: pool.map_async(
        _pool_targets.distributed_gate_item, items, chunksize=1
    ).get(),
    "imap": lambda pool, items: list(pool.imap(_pool_targets.distributed_gate_item, items)),
    "apply": lambda pool, items: pool.apply(_pool_targets.distributed_gate_item, (items[0],)),
}


@pytest.mark.parametrize("wait_in", WAITS)
def test_ctrl_c_cancels_the_calls_tasks_and_the_pool_goes_on(
    pool: Pool, gates: Path, wait_in: str
) -> None:
    items = [(f"task{x}", str(gates)) for x in range(20)]
    interrupter = interrupt_once(gates, "task0")
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        WAITS[wait_in](pool, items)
    interrupter.join()
    assert time.monotonic() - started < 5
    for name, directory in items:
        _pool_targets.pool_gate_open(directory, name)
    # The pool goes on; the cancelled tasks never start: the two running when
    # Ctrl-C came ran (one per worker; they wait for their gates), and the
    # bound leaves room for one more per worker should a worker be slow to hear
    # of the cancel (KeyboardInterrupt waits for that a quarter second at most).
    assert pool.map(_pool_targets.pool_square, range(4)) == [0, 1, 4, 9]
    ran = list(gates.glob("*.started"))
    assert len(ran) <= 2 * WORKERS, sorted(p.name for p in ran)


# ---- big inputs ----------------------------------------------------------------------------------


def test_a_big_input_shared_by_many_tasks_is_scattered_once(pool: Pool, gates: Path) -> None:
    array = np.arange(1 << 18, dtype=np.float64)  # 2 MiB
    items = [(array, str(gates), x) for x in range(20)]
    result = pool.starmap_async(_pool_targets.distributed_checksum, items, chunksize=1)
    # While the first task is held, the ones after it were sent: one copy of the
    # array on the cluster, held by every worker.
    assert _pool_targets.pool_gate_started(str(gates), "0")
    assert until(lambda: pool.scattered == 1)
    copies = [k for k in pool.client.who_has() if str(k).startswith("ndarray-")]
    assert len(copies) == 1
    assert until(lambda: len(pool.client.who_has()[copies[0]]) == WORKERS)
    _pool_targets.pool_gate_open(str(gates), "0")
    assert result.get(PATIENCE) == [(array.nbytes, float(array.sum()), x) for x in range(20)]
    assert pool.scattered == 1

    # Done with it, the pool forgets it: a changed array goes again, never stale.
    array[:] = 1.0
    _pool_targets.pool_gate_open(str(gates), "0")
    again = pool.starmap(_pool_targets.distributed_checksum, items, chunksize=1)
    assert again == [(array.nbytes, float(array.size), x) for x in range(20)]
    assert pool.scattered == 2


def test_a_big_function_is_scattered_once(pool: Pool) -> None:
    weights = bytes(3 << 20)
    func = functools.partial(_pool_targets.distributed_weighted, weights)
    assert pool.map(func, range(20), chunksize=1) == [len(weights) + x for x in range(20)]
    assert pool.scattered == 1


def test_distinct_big_inputs_are_sent_not_scattered(pool: Pool) -> None:
    arrays = [np.full(1 << 18, x, dtype=np.float64) for x in range(6)]
    assert pool.map(_pool_targets.distributed_sum, arrays, chunksize=1) == [
        float(a.sum()) for a in arrays
    ]
    assert pool.scattered == 0


# ---- a LocalCluster of the pool's own, and a real Ctrl-C: scripts -------------------------------


LOCAL_SCRIPT = """
import os
import sys
import time

from serentak.distributed import Pool


def square(x):
    return x * x


def note_and_work(path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\\n" % os.getpid())
    os.close(fd)
    time.sleep(0.2)  # the task's work


def main():
    busy = sys.argv[1:]
    with Pool(processes=2) as pool:
        pids = sorted(pool.client.run(os.getpid).values())
        print("workers", *pids, flush=True)
        print("map", *pool.map(square, range(6)), flush=True)
        for path in busy:  # one Ctrl-C each
            try:
                pool.map(note_and_work, [path] * 40, chunksize=1)
            except KeyboardInterrupt:
                print("interrupted", time.monotonic(), flush=True)
            print("after", pool.apply(square, (7,)), flush=True)
    print("closed", pool.cluster.status.name, flush=True)

    pool = Pool(processes=1)
    print("map", *pool.map(square, range(3)), flush=True)
    pool.close()
    pool.join()
    print("joined", pool.cluster.status.name, flush=True)

    # Left running: the interpreter's exit stops it, and its LocalCluster.
    pool = Pool(processes=1)
    print("left", *pool.client.run(os.getpid).values(), *pool.map(square, range(2)), flush=True)


if __name__ == "__main__":
    main()
"""


def test_a_local_cluster_of_its_own_and_ctrl_c(tmp_path: Path) -> None:
    """Pool() starts a LocalCluster of worker processes and closes it when it stops (the
    with block, close() and join(), the interpreter's exit). SIGINT while map() waits, to
    the main process or to the process group as a terminal sends it, raises
    KeyboardInterrupt at once and cancels the map's tasks; the workers live on (they
    ignore SIGINT) and so does the pool."""
    script = tmp_path / "local.py"
    script.write_text(LOCAL_SCRIPT)
    busy = {send_to: tmp_path / f"busy-{send_to}" for send_to in ("main", "group")}
    process = subprocess.Popen(
        [sys.executable, str(script), *map(str, busy.values())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        label, *pids = read_line(process).split()
        assert label == "workers"
        workers = {int(pid) for pid in pids}
        assert len(workers) == 2
        assert workers <= _tree_of(process.pid)
        assert read_line(process) == "map 0 1 4 9 16 25"

        for send_to, path in busy.items():
            assert until(lambda: len(lines(path)) >= 2)  # noqa: B023 - used at once
            sent = time.monotonic()
            if send_to == "group":
                os.killpg(process.pid, signal.SIGINT)
            else:
                os.kill(process.pid, signal.SIGINT)
            label, stamp = read_line(process).split()
            assert label == "interrupted"
            assert float(stamp) - sent < 0.5
            assert read_line(process) == "after 49"
            assert all(running(pid) for pid in workers), "Ctrl-C killed a worker"

        assert read_line(process) == "closed closed"
        assert not any(running(pid) for pid in workers)
        for path in busy.values():
            # The two tasks running when Ctrl-C came, and at most one more on each
            # worker if it started while the cancel was on its way.
            assert len(lines(path)) <= 2 * 2, "the map's tasks went on after Ctrl-C"
        assert read_line(process) == "map 0 1 4"
        assert read_line(process) == "joined closed"
        label, left, *squares = read_line(process).split()
        assert (label, squares) == ("left", ["0", "1"])
        process.wait(PATIENCE)
        assert process.returncode == 0, process.stderr.read() if process.stderr else ""
        assert not running(int(left)), "the LocalCluster outlived the interpreter"
    finally:
        family = _tree_of(process.pid)
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        assert until(lambda: not any(running(pid) for pid in family)), "orphans left behind"


def _tree_of(root: int) -> set[int]:
    return {root} | descendants_of(root)
