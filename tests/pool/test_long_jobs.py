"""Long jobs you can trust: retries, journals (resume after a crash), seeded task
streams, per-task memory limits and partial results (serentak._pool.options,
_pool.journal, _pool.seeding, the supervisor's retry and memory paths).

Behaviour runs under every start method (``ctx``, ``start_method``), with pools
of two workers. Tasks count their attempts in files (one O_APPEND write per
line), so a test knows how often a task ran whichever process ran it.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import _buffer_targets
import _pool_targets
import serentak
from _scripts import run_script, running_script
from _watch import descendants_of, lines, still_running_after, until
from serentak._pool.journal import MAGIC, Journal
from serentak._pool.tasks import resident_memory_mb

PATIENCE = 20.0


# ---- retries ---------------------------------------------------------------------------------


def test_a_task_killing_its_worker_twice_succeeds_with_two_retries(
    ctx: Any, tmp_path: Path
) -> None:
    attempts = tmp_path / "attempts"
    mapped = tmp_path / "mapped"
    with ctx.Pool(2) as pool:
        result = pool.apply_async(_pool_targets.pool_die_first, (str(attempts), 2, "ok"), retries=2)
        assert result.get(PATIENCE) == "ok"
        assert len(lines(attempts)) == 3
        task = functools.partial(_pool_targets.pool_die_first, str(mapped), 2)
        assert pool.map(task, [7], retries=2) == [7]
        assert len(lines(mapped)) == 3
        stats = pool.stats()
        assert stats.retries == 4
        assert stats.tasks_lost == 4
        assert pool.map(_pool_targets.pool_square, range(5)) == [0, 1, 4, 9, 16]  # the pool goes on


def test_a_task_out_of_retries_fails_saying_how_many_attempts_and_chains_the_first(
    ctx: Any, tmp_path: Path
) -> None:
    attempts = tmp_path / "attempts"
    with ctx.Pool(2, retries=1) as pool:  # the pool-wide default
        result = pool.apply_async(_pool_targets.pool_die_first, (str(attempts), 2, "ok"))
        with pytest.raises(serentak.WorkerLostError, match=r"SIGKILL.*attempt 2 of 2") as info:
            result.get(PATIENCE)
        assert len(lines(attempts)) == 2
        first = info.value.__cause__
        assert isinstance(first, serentak.WorkerLostError)
        assert first is not info.value
        assert "attempt" not in str(first)
        assert pool.stats().retries == 1


def test_retry_on_and_backoff(ctx: Any, tmp_path: Path) -> None:
    flaky = tmp_path / "flaky"
    once = tmp_path / "once"
    with ctx.Pool(2) as pool:
        started = time.monotonic()
        task = functools.partial(_pool_targets.pool_fail_first, str(flaky), 2)
        assert pool.map(task, [5], retries=2, retry_on=ConnectionError, backoff=0.1) == [5]
        # 0.1 s before the first retry, 0.2 s before the second.
        assert time.monotonic() - started >= 0.3
        assert len(lines(flaky)) == 3
        # An exception not in retry_on (by default: a lost worker, a timeout) fails at once.
        task = functools.partial(_pool_targets.pool_fail_first, str(once), 2)
        with pytest.raises(ConnectionError, match="flaky") as info:
            pool.map(task, [5], retries=2)
        assert len(lines(once)) == 1
        assert not hasattr(info.value, "attempts")


def test_an_item_raising_in_a_map_whose_items_fail_alone_is_retried(
    ctx: Any, tmp_path: Path
) -> None:
    with ctx.Pool(2) as pool:
        for n, call in enumerate(("imap", "journal", "errors")):
            flaky = functools.partial(_pool_targets.pool_fail_first, str(tmp_path / call), 1)
            options: dict[str, Any] = {"retries": 1, "retry_on": ConnectionError}
            if call == "imap":
                results = list(pool.imap(flaky, [n], **options))
            elif call == "journal":
                results = pool.map(flaky, [n], journal=tmp_path / "j", **options)
            else:
                results = pool.map(flaky, [n], errors="return", **options)
            assert results == [n]
            assert len(lines(tmp_path / call)) == 2


def test_a_retried_exception_keeps_its_remote_traceback_and_chains_the_first(
    ctx: Any, tmp_path: Path
) -> None:
    flaky = tmp_path / "flaky"
    with ctx.Pool(1) as pool:
        task = functools.partial(_pool_targets.pool_fail_first, str(flaky), 5)
        with pytest.raises(ConnectionError) as info:
            pool.apply(task, (1,), retries=2, retry_on=(ConnectionError,))
    assert info.value.attempts == 3  # type: ignore[attr-defined]
    remote = info.value.__cause__
    assert isinstance(remote, serentak.pool.RemoteTraceback)
    assert isinstance(remote.__cause__, ConnectionError)  # the first attempt's
    assert remote.__cause__ is not info.value


def test_the_executor_retries_submit_and_map(ctx: Any, tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"
    with serentak.ProcessPoolExecutor(2, mp_context=ctx, retries=2) as executor:
        future = executor.submit(_pool_targets.pool_die_first, str(attempts), 2, "ok")
        assert future.result(PATIENCE) == "ok"
        assert list(executor.map(_pool_targets.pool_square, range(4))) == [0, 1, 4, 9]
    assert len(lines(attempts)) == 3


# ---- errors="return" -------------------------------------------------------------------------


def test_errors_return_gives_every_value_and_the_exception_in_place(ctx: Any) -> None:
    task = functools.partial(_pool_targets.pool_fail_on, 500)
    with ctx.Pool(2) as pool:
        results = pool.map(task, range(1000), errors="return")
        assert len(results) == 1000
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1
        assert isinstance(results[500], ValueError)
        assert "item 500 is bad" in str(results[500])
        assert [r for i, r in enumerate(results) if i != 500] == [
            2 * i for i in range(1000) if i != 500
        ]
        # chunksize 50: the other 49 items of the bad one's chunk still come back.
        starred = pool.starmap(
            _pool_targets.pool_fail_on, [(3, i) for i in range(100)], chunksize=50, errors="return"
        )
        assert isinstance(starred[3], ValueError)
        assert starred[:3] + starred[4:] == [2 * i for i in range(100) if i != 3]
        with pytest.raises(ValueError, match="item 500"):
            pool.map(task, range(1000))  # errors="raise" stays the default


def test_errors_return_puts_a_lost_worker_in_place_of_its_item(ctx: Any, tmp_path: Path) -> None:
    attempts = tmp_path / "attempts"
    with ctx.Pool(2) as pool:
        results = pool.map(_pool_targets.pool_square, range(3), errors="return")
        assert results == [0, 1, 4]
        killer = functools.partial(_pool_targets.pool_die_first, str(attempts), 1)
        results = pool.map(killer, ["a"], errors="return")
        assert isinstance(results[0], serentak.WorkerLostError)


def test_executor_map_errors_return(ctx: Any) -> None:
    with serentak.ProcessPoolExecutor(2, mp_context=ctx) as executor:
        results: list[Any] = list(
            executor.map(_pool_targets.pool_fail_on, [5] * 10, range(10), errors="return")
        )
    assert isinstance(results[5], ValueError)
    assert results[:5] + results[6:] == [2 * i for i in range(10) if i != 5]


# ---- seeded streams ------------------------------------------------------------------------


def test_a_seeded_map_is_the_same_with_any_workers_and_chunking(ctx: Any) -> None:
    runs = []
    for workers in (1, 2, 4):
        with ctx.Pool(workers, seed=1234) as pool:
            runs.append(pool.map(_pool_targets.pool_draws, range(60)))
            runs.append(pool.map(_pool_targets.pool_draws, range(60), chunksize=1))
            runs.append(list(pool.imap_unordered(_pool_targets.pool_draws, range(60), seed=1234)))
    first = runs[0]
    for run in runs[1:]:
        assert sorted(run) == first
    draws = [first_draw for _, first_draw, _, _ in first]
    assert len(set(draws)) == 60  # each item its own stream


def test_the_seed_and_index_make_the_stream(ctx: Any) -> None:
    import numpy

    with ctx.Pool(2) as pool:
        seeded = pool.map(_pool_targets.pool_draws, range(10), seed=7)
        other = pool.map(_pool_targets.pool_draws, range(10), seed=8)
        starred = pool.starmap(_pool_targets.pool_draws, [(i,) for i in range(10)], seed=7)
    assert seeded == starred
    assert [row[1] for row in seeded] != [row[1] for row in other]
    expected = numpy.random.Generator(
        numpy.random.PCG64(numpy.random.SeedSequence(7, spawn_key=(3,)))
    ).random(3)
    assert seeded[3][3] == expected.tolist()


def test_task_rng_outside_a_seeded_task_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="seed"):
        serentak.task_rng()
    with pytest.raises(ValueError, match="numpy"):
        serentak.task_rng("torch")


# ---- memory limit ----------------------------------------------------------------------------


def test_a_task_past_its_memory_limit_fails_alone_within_a_second(ctx: Any) -> None:
    with ctx.Pool(2) as pool:
        pool.map(_pool_targets.pool_square, range(4))  # the workers are up
        started = time.monotonic()
        hog = pool.apply_async(_pool_targets.pool_allocate, (2 << 30,), memory_limit="256MiB")
        others = [pool.apply_async(_pool_targets.pool_square, (i,)) for i in range(20)]
        with pytest.raises(serentak.MemoryLimitError, match=r"256\.0 MiB") as info:
            hog.get(PATIENCE)
        caught = time.monotonic() - started
        assert [r.get(PATIENCE) for r in others] == [i * i for i in range(20)]
        assert caught < 1.0, f"caught {caught:.2f} s after the task started"
        assert isinstance(info.value, MemoryError)
        stats = pool.stats()
        assert stats.tasks_over_memory == 1
        # The limit is the task's: the replaced worker runs the next task unlimited.
        assert pool.apply(_pool_targets.pool_allocate, (300 << 20,)) == 300 << 20


def test_a_pool_wide_memory_limit_and_one_task_under_it(ctx: Any) -> None:
    with ctx.Pool(1, memory_limit=512 << 20) as pool:
        assert pool.map(_pool_targets.pool_allocate, [1 << 20] * 3) == [1 << 20] * 3
        with pytest.raises(serentak.MemoryLimitError, match=r"512\.0 MiB"):
            pool.map(_pool_targets.pool_allocate, [2 << 30])


# Inputs of growing sizes: each task's input and its two temporaries (as big) need
# segments bigger than any an earlier task left warm, so the worker's caches (its
# mappings of the inputs, the freed temporaries, the results the parent holds)
# grow past one task's need by the third task. A task needs 3 * 40 + 8 MiB at most.
CHURN_MIB = (8, 16, 24, 32, 40)
RESULT_MIB = 8
TASK_NEED_MIB = 3 * max(CHURN_MIB) + RESULT_MIB


def _churn(pool: Any, **options: Any) -> list[Any]:
    """Run the growing tasks one by one; the parent keeps every result."""
    results = []
    for mib in CHURN_MIB:
        x = np.ones((mib << 20) // 8)
        results.append(pool.apply(_buffer_targets.temporaries, (x, RESULT_MIB), **options))
    for mib, result in zip(CHURN_MIB, results, strict=True):
        assert result.nbytes == RESULT_MIB << 20
        assert result[0] == 3.0 * (mib << 20) // 8
    return results


def test_warm_segments_do_not_count_against_a_memory_limit_a_big_task_still_does(
    ctx: Any,
) -> None:
    with ctx.Pool(1) as pool:
        base_mib = pool.apply(_buffer_targets.resident_mb)
        limit = int(base_mib + TASK_NEED_MIB + 48) << 20  # just above one task's need
        results = _churn(pool, memory_limit=limit)
        stats = pool.stats()
        assert (stats.tasks_over_memory, stats.restarts) == (0, 0), str(stats)
        # Arrays that live in shared segments count as soon as a task holds them,
        # the warm ones it reuses included.
        hog = (4 * (limit >> 20), 16, False)
        with pytest.raises(serentak.MemoryLimitError):
            pool.apply(_buffer_targets.hold_arrays, hog, memory_limit=limit)
        assert pool.stats().tasks_over_memory == 1
        del results


def test_warm_segments_do_not_retire_a_worker_a_big_task_still_does(ctx: Any) -> None:
    # Above a fresh worker's own size, whatever the method, by one task's need.
    limit_mib = resident_memory_mb() + 64 + TASK_NEED_MIB
    with ctx.Pool(1, max_memory_per_child=limit_mib) as pool:
        results = _churn(pool)
        stats = pool.stats()
        assert stats.restarts == 0, f"a worker retired at {limit_mib:.0f} MiB: {stats}"
        # Past the limit with its warm segments, it gave them back instead.
        assert pool.apply(_buffer_targets.resident_mb) <= limit_mib
        # A task that keeps far more than the limit in arrays retires its worker.
        assert pool.apply(_buffer_targets.hold_arrays, (2 * int(limit_mib), 16, True)) > 0
        assert pool.apply(_pool_targets.pool_square, (3,)) == 9
        stats = pool.stats()
        # Retired (after its task, nothing lost), not killed.
        assert (stats.restarts, stats.tasks_lost, stats.tasks_over_memory) == (1, 0, 0), str(stats)
        del results


# ---- journal -----------------------------------------------------------------------------


JOURNAL_SCRIPT = """
import os, sys, time
import serentak

method, journal, executions = sys.argv[1], sys.argv[2], sys.argv[3]

def work(x):
    fd = os.open(executions, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{x}\\n".encode())
    os.close(fd)
    time.sleep(0.002)  # some work: the test kills this parent half-way
    return x * x + 0.5

with serentak.get_context(method).Pool(2) as pool:
    results = pool.map(work, range(2000), journal=journal)
print(results == [x * x + 0.5 for x in range(2000)], len(results), flush=True)
"""


def test_a_journaled_map_killed_half_way_resumes_with_only_the_missing_items(
    start_method: str, tmp_path: Path
) -> None:
    script = tmp_path / "journaled.py"
    script.write_text(JOURNAL_SCRIPT)
    journal = tmp_path / "sweep.journal"
    first, second = tmp_path / "first", tmp_path / "second"
    with running_script(script, start_method, str(journal), str(first)) as process:
        assert until(lambda: len(lines(first)) >= 1000)
        family = descendants_of(process.pid)
        process.kill()
        process.wait()
    assert still_running_after(family, PATIENCE) == set(), "orphans left behind"
    ran_before = {int(x) for x in lines(first)}
    assert 1000 <= len(ran_before) < 2000
    done = set(_done_in(journal))
    assert done <= ran_before

    finished = run_script(script, start_method, str(journal), str(second))
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["True", "2000"]
    ran_after = [int(x) for x in lines(second)]
    assert sorted(ran_after) == sorted(set(range(2000)) - done)  # each missing item once


def _done_in(journal: Path) -> list[int]:
    """The indexes a journal holds (read as the map itself reads it)."""

    def work(x: Any) -> Any: ...

    work.__module__, work.__qualname__ = "__main__", "work"
    opened = Journal.open(journal, work, star=False)
    opened.close()
    return list(opened.done)


def test_a_journal_skips_what_it_holds_and_survives_a_torn_record(ctx: Any, tmp_path: Path) -> None:
    journal = tmp_path / "j"
    executions = tmp_path / "executions"
    task = functools.partial(_pool_targets.pool_record, str(executions))
    with ctx.Pool(2) as pool:
        first = pool.map(task, range(40), chunksize=5, journal=journal)
        assert [x for x, _ in first] == list(range(40))
        assert len(lines(executions)) == 40
        again = pool.map(task, range(40), journal=journal)
        assert again == first
        assert len(lines(executions)) == 40  # nothing ran again
        with open(journal, "ab") as file:
            file.write(b"\x40\x00\x00\x00torn")  # a record cut short by a crash
        assert pool.map(task, range(40), journal=journal) == first
        assert list(pool.imap(task, range(40), journal=journal)) == first
        assert len(lines(executions)) == 40


def test_a_journal_of_failed_items_runs_them_again(ctx: Any, tmp_path: Path) -> None:
    journal = tmp_path / "j"
    with ctx.Pool(2) as pool:
        task = functools.partial(_pool_targets.pool_fail_on, 3)
        results = pool.map(task, range(6), journal=journal, errors="return")
        assert isinstance(results[3], ValueError)
        assert len(_journal_items(journal, task)) == 5  # the failure is not recorded
        # The same function (a partial's name is its function's) now succeeds on item 3.
        fixed = functools.partial(_pool_targets.pool_fail_on, -1)
        assert pool.map(fixed, range(6), journal=journal) == [0, 2, 4, 6, 8, 10]
    assert len(_journal_items(journal, task)) == 6


def _journal_items(journal: Path, func: Any) -> dict[int, Any]:
    opened = Journal.open(journal, func, star=False)
    opened.close()
    return opened.done


def test_a_journal_of_another_function_or_other_inputs_is_refused(ctx: Any, tmp_path: Path) -> None:
    journal = tmp_path / "j"
    with ctx.Pool(2) as pool:
        pool.map(_pool_targets.pool_square, range(10), journal=journal)
        with pytest.raises(ValueError, match=r"pool_square.*not of .*pool_pid"):
            pool.map(_pool_targets.pool_pid, range(10), journal=journal)
        with pytest.raises(ValueError, match=r"other inputs \(item 4"):
            pool.map(_pool_targets.pool_square, [0, 1, 2, 3, 40, 5, 6, 7, 8, 9], journal=journal)
        with pytest.raises(ValueError, match="starmap"):
            pool.starmap(_pool_targets.pool_square, [(i,) for i in range(10)], journal=journal)
        assert pool.map(_pool_targets.pool_square, range(12), journal=journal)[-1] == 121


# ---- bad input -----------------------------------------------------------------------------


BAD_CALLS: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("map", {"retries": -1}, ValueError, "retries must be 0 or more"),
    ("map", {"retries": 1.5}, TypeError, "retries must be an int"),
    ("map", {"backoff": -0.5}, ValueError, "backoff must be 0 or more"),
    ("map", {"retry_on": ("x",)}, TypeError, "retry_on must hold exception classes"),
    ("map", {"seed": "7"}, TypeError, "seed must be an int"),
    ("map", {"seed": 1.0}, TypeError, "seed must be an int"),
    ("map", {"memory_limit": "lots"}, ValueError, "memory_limit 'lots' is not a size"),
    ("map", {"memory_limit": "1 parsec"}, ValueError, "is not a size"),
    ("map", {"memory_limit": -5}, ValueError, "memory_limit must be positive"),
    ("map", {"memory_limit": 1.5}, TypeError, "memory_limit must be bytes"),
    ("map", {"errors": "ignore"}, ValueError, 'errors must be "raise" or "return"'),
    ("imap", {"retries": -1}, ValueError, "retries"),
    ("starmap", {"errors": "ignore"}, ValueError, "errors"),
    ("apply_async", {"memory_limit": "1 GiBB"}, ValueError, "not a size"),
]


def test_bad_options_fail_at_the_call_before_any_task_runs(ctx: Any, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    task = functools.partial(_pool_targets.pool_record, str(ran))
    with ctx.Pool(1) as pool:
        for method, options, error, message in BAD_CALLS:
            call = getattr(pool, method)
            arguments = ((1,),) if method == "apply_async" else ([(1,), (2,)],)
            func = _pool_targets.pool_add if method == "starmap" else task
            with pytest.raises(error, match=message):
                call(func, *arguments, **options)
        with pytest.raises(ValueError, match=r"directory .* does not exist"):
            pool.map(task, [1], journal=tmp_path / "missing" / "j")
        not_a_journal = tmp_path / "notes.txt"
        not_a_journal.write_text("shopping list\n")
        with pytest.raises(ValueError, match="not a serentak journal"):
            pool.map(task, [1], journal=not_a_journal)
        assert not_a_journal.read_text() == "shopping list\n"  # left as it was
        with pytest.raises(TypeError, match="journal must be a file path"):
            pool.map(task, [1], journal=3)
    assert lines(ran) == []
    with pytest.raises(ValueError, match="retries"):
        ctx.Pool(1, retries=-2)
    with pytest.raises(TypeError, match="seed"):
        serentak.ProcessPoolExecutor(1, mp_context=ctx, seed="x")  # type: ignore[arg-type]


def test_the_thread_pool_says_what_it_cannot_do() -> None:
    from serentak.pool import ThreadPool

    with ThreadPool(1) as pool:
        with pytest.raises(ValueError, match="cannot run tasks again"):
            pool.map(abs, [1], retries=1)
        with pytest.raises(ValueError, match="memory_limit"):
            pool.map(abs, [1], memory_limit="1GiB")
        assert pool.map(abs, [-1, -2], errors="return") == [1, 2]


def test_journal_records_are_framed_after_the_magic(tmp_path: Path) -> None:
    journal = tmp_path / "j"
    opened = Journal.open(journal, _pool_targets.pool_square, star=False)
    opened.append([(0, b"x" * 12, 0)])
    opened.close()
    assert journal.read_bytes().startswith(MAGIC)
    again = Journal.open(journal, _pool_targets.pool_square, star=False)
    again.close()
    assert again.done == {0: (b"x" * 12, 0)}
