"""How a map's results are put together and its chunks sized, seen from the parent's side.

These exercise the pool's bookkeeping objects directly (no worker process is
involved); the behaviour they support runs under every start method in
test_pool.py and test_pool_features.py.
"""

from __future__ import annotations

import itertools
import pickle
import threading
from typing import Any

import pytest

import serentak
from serentak._pool.engines.process import PREFETCH_LEAD, top_up_time
from serentak._pool.feeder import FEED_BATCH, Chunker, ChunkTimes, Feeder, MapJob
from serentak._pool.results import CallbackRunner, MapResult, Outcome
from serentak._pool.tasks import Function, Kind, Task, load_result, pack_result


def _chunk(values: list[int]) -> Outcome:
    """A chunk's outcome as the supervisor holds it: still pickled."""
    return Outcome(True, pickle.dumps(values, 5))


def test_a_map_result_is_the_chunks_in_order_whatever_was_unpickled_early() -> None:
    """Chunks arrive out of order; some are unpickled (and appended) by the
    supervisor while it waits, the rest by get(): the list is in input order."""
    runner = CallbackRunner()
    result = MapResult(None, None, runner)
    first, second, third, fourth = _chunk([0, 1]), _chunk([2, 3]), _chunk([4]), _chunk([5, 6])
    result.complete_chunk(1, second)
    second.preload()  # chunk 0 is not there yet: nothing to append
    result.complete_chunk(0, first)
    result.complete_chunk(3, fourth)
    first.preload()  # appends chunks 0 and 1
    fourth.preload()  # chunk 2 is missing: waits
    assert not result.ready()
    result.complete_chunk(2, third)
    result.set_length(4)
    assert result.get(1.0) == [0, 1, 2, 3, 4, 5, 6]
    third.preload()  # late: the list was handed out, nothing is appended to it
    assert result.get(1.0) == [0, 1, 2, 3, 4, 5, 6]
    runner.stop()


def test_a_map_result_whose_chunk_cannot_be_unpickled_raises() -> None:
    runner = CallbackRunner()
    result = MapResult(None, None, runner)
    good, bad = _chunk([0]), Outcome(True, b"not a pickle")
    result.complete_chunk(0, good)
    result.complete_chunk(1, bad)
    good.preload()
    bad.preload()
    result.set_length(2)
    with pytest.raises(serentak.ProcessError, match="could not be unpickled"):
        result.get(1.0)
    runner.stop()


def test_chunks_start_from_the_last_map_of_the_same_function() -> None:
    """Without timings a map probes with one item per worker; with the last map's
    (10,000 items in 1 ms) it starts at a quarter of the input per chunk, and its
    own first report replaces the guess."""
    times = ChunkTimes()
    key = (7, Kind.MAP)
    fresh = Chunker(range(100_000), None, 100_000, 2, times, key)
    assert len(fresh.next_chunk()) == 1
    assert fresh.window(12) == 2
    fresh.observe(10_000, 1_000)
    assert times.recall(key) == (10_000, 1_000)

    items = list(range(100_000))
    warm = Chunker(items, None, len(items), 2, times, key)
    assert warm.window(12) == 12
    assert len(warm.next_chunk()) == 1  # its items' size in bytes is not known yet
    warm.weigh(1, 20)
    assert len(warm.next_chunk()) == 24_999
    warm.observe(10, 1_000_000)  # far slower than the guess: believed at once
    assert times.recall(key) == (10, 1_000_000)
    assert len(warm.next_chunk()) == 1


def test_a_warm_map_of_a_range_weighs_no_first_item_alone() -> None:
    """A range's items are ints, its chunks travel as ranges: a warm map of one starts
    with a quarter of the input per chunk at once, both workers busy from the start."""
    times = ChunkTimes()
    times.remember((7, Kind.MAP), 10_000, 1_000)
    warm = Chunker(range(100_000), None, 100_000, 2, times, (7, Kind.MAP))
    first = warm.next_chunk()
    assert first == range(25_000)
    assert len(warm.next_chunk()) == 18_750


def test_the_tail_of_a_warm_map_is_small_chunks_not_the_rest_in_one() -> None:
    """After a map that timed the function at 0.05 us an item, 200,000 items (10 ms)
    go in chunks that shrink to a small share of the input, the last one no
    bigger than the ones before it: the rest of the input, however little work it
    is, never goes in one chunk that leaves the other worker idle."""
    times = ChunkTimes()
    times.remember((7, Kind.MAP), 50_000, 2_500)
    sizes = _sizes(Chunker(range(200_000), None, 200_000, 2, times, (7, Kind.MAP)))
    assert sum(sizes) == 200_000
    assert sizes[0] == 50_000
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-2] <= 200_000 // 32


def test_big_items_go_one_by_one_even_after_a_map_of_the_function() -> None:
    """The first item of a warm map is weighed before any chunk holds several: items
    of 8 MiB go one per chunk, whatever the last map's timing said."""
    times = ChunkTimes()
    times.remember((7, Kind.MAP), 16, 1_000)
    warm = Chunker(list(range(16)), None, 16, 2, times, (7, Kind.MAP))
    for _ in range(3):
        assert len(warm.next_chunk()) == 1
        warm.weigh(1, 8 << 20)


def _sizes(chunker: Chunker) -> list[int]:
    sizes = []
    while chunk := chunker.next_chunk():
        chunker.weigh(len(chunk), 28 * len(chunk))
        sizes.append(len(chunk))
    return sizes


def test_a_warm_map_of_little_work_goes_in_two_chunks_per_worker() -> None:
    """After a map that timed the function at 0.05 us an item, 1,000 items (50 us of
    work) go in a weighed first item (none for a range) and two even chunks per worker, with no
    halving tail of ever smaller chunks; 200,000 items (10 ms) are still sized
    by time, in more chunks, smaller towards the end."""
    times = ChunkTimes()
    times.remember((7, Kind.MAP), 50_000, 2_500)
    assert _sizes(Chunker(list(range(1000)), None, 1000, 2, times, (7, Kind.MAP))) == [
        1,
        250,
        250,
        250,
        249,
    ]
    assert _sizes(Chunker(range(1000), None, 1000, 2, times, (7, Kind.MAP))) == [250] * 4
    big = _sizes(Chunker(range(200_000), None, 200_000, 2, times, (7, Kind.MAP)))
    assert sum(big) == 200_000
    assert len(big) > 5
    assert big[1] > big[-1]


def test_a_fixed_chunksize_ignores_and_keeps_no_timings() -> None:
    times = ChunkTimes()
    times.remember((7, Kind.MAP), 10_000, 1_000)
    fixed = Chunker(range(100), 3, 100, 2, times, (7, Kind.MAP))
    assert len(fixed.next_chunk()) == 3
    fixed.observe(3, 5)
    assert times.recall((7, Kind.MAP)) == (10_000, 1_000)


def test_an_input_of_unknown_length_probes_even_after_a_map_of_the_function() -> None:
    """A generator's chunks cannot be bounded by what is left: it starts with one item
    per worker, as on a fresh pool, whatever the last map measured."""
    times = ChunkTimes()
    times.remember((7, Kind.MAP), 10_000, 1_000)
    lazy = Chunker(iter(range(100)), None, None, 2, times, (7, Kind.MAP))
    assert len(lazy.next_chunk()) == 1
    assert lazy.window(12) == 2


def _feeding(chunks: int) -> tuple[Feeder, list[str], threading.Event, CallbackRunner]:
    """A feeder whose engine records which thread dispatched each batch, and lets
    ``done`` know once ``chunks`` tasks have come."""
    threads: list[str] = []
    done = threading.Event()
    count = 0

    def dispatch(tasks: Any) -> None:
        nonlocal count
        threads.extend(threading.current_thread().name for _ in tasks)
        count += len(tasks)
        if count >= chunks:
            done.set()

    return (
        Feeder(dispatch, pickle.dumps, itertools.count().__next__, lambda: None),
        threads,
        done,
        CallbackRunner(),
    )


def _job(feeder: Feeder, runner: CallbackRunner, items: int) -> MapJob:
    chunker = Chunker(range(items), 1, items, 2)
    result = MapResult(None, None, runner)
    return MapJob(feeder, Kind.MAP, Function(1, b""), chunker, result, None, 1_000, lazy=False)


def test_the_caller_feeds_a_small_map_itself_and_leaves_the_rest_to_the_feeder() -> None:
    """A map added ``here`` with no other job waiting is fed by the caller's thread,
    its first batch only: a longer one goes on in the feeder's thread."""
    feeder, threads, done, runner = _feeding(3)
    try:
        feeder.add(_job(feeder, runner, 3), here=True)
        assert done.wait(5)
        assert threads == [threading.current_thread().name] * 3
    finally:
        feeder.stop()
        feeder.join()
        runner.stop()
    items = FEED_BATCH + 5
    feeder, threads, done, runner = _feeding(items)
    try:
        feeder.add(_job(feeder, runner, items), here=True)
        assert done.wait(5)
        assert threads[:FEED_BATCH] == [threading.current_thread().name] * FEED_BATCH
        assert set(threads[FEED_BATCH:]) == {"serentak-pool-feeder"}
    finally:
        feeder.stop()
        feeder.join()
        runner.stop()


def _running(expected: float | None, started: float) -> Task:
    """A map chunk that began running at ``started``, expected to take ``expected`` s."""
    sink = MapResult(None, None, CallbackRunner())  # no callbacks: the runner starts no thread
    task = Task.encoded(1, Kind.MAP, Function(1, b""), b"", sink, 0, None, expected)
    task.started = started
    return task


def test_a_map_chunk_shorter_than_the_lead_has_its_next_sent_at_once() -> None:
    """A worker running a chunk expected to take less than PREFETCH_LEAD is sent its
    next at once, whatever tasks took lately: it goes on without a round trip
    through the parent, as chunks shrink at the end of a map. A longer chunk's
    next goes PREFETCH_LEAD before its expected end; a task of unknown length's
    at most half its usual time ahead; an overrunning task's, not at all."""
    assert top_up_time(_running(0.5e-3, 10.0), 5e-3, 10.0) == 10.0
    assert top_up_time(_running(0.1, 10.0), 5e-3, 10.0) == pytest.approx(10.0 + 0.1 - PREFETCH_LEAD)
    assert top_up_time(_running(None, 10.0), 4e-3, 10.0) == pytest.approx(10.002)
    assert top_up_time(_running(0.5e-3, 10.0), 5e-3, 10.01) is None
    assert top_up_time(_running(None, 10.0), 4e-3, 10.01) is None


def test_the_chunks_of_a_complete_map_are_left_to_the_caller() -> None:
    """Once the last chunk is in, the chunks not yet unpickled are the waking
    caller's: the supervisor's unpickling ahead skips them (two threads would hand
    the GIL back and forth), and get() unpickles them, in order."""
    runner = CallbackRunner()
    result = MapResult(None, None, runner)
    first, second, third = _chunk([0, 1]), _chunk([2]), _chunk([3, 4])
    result.complete_chunk(0, first)
    first.preload()
    assert first.loaded()
    result.complete_chunk(2, third)
    result.set_length(3)
    result.complete_chunk(1, second)
    second.preload()
    third.preload()
    assert not second.loaded()
    assert not third.loaded()
    assert result.get(1.0) == [0, 1, 2, 3, 4]
    runner.stop()


class _Int(int):
    """An int subclass: must come back as itself, so it goes by pickle."""


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0, 1, -1, 255, 256, -5, 2**31 - 1, -(2**31)],
        [2**31, -(2**31) - 1, 2**63 - 1, -(2**63), 7],
    ],
)
def test_a_map_chunk_of_plain_ints_travels_packed_and_comes_back_equal(values: list[int]) -> None:
    packed = pack_result(Kind.MAP, values)
    assert packed.payload[:5] == b"SRTKI"
    loaded = load_result(packed.payload, [])
    assert loaded == values
    assert all(type(value) is int for value in loaded)


@pytest.mark.parametrize(
    "values",
    [[1, True], [1, 2**63], [1, -(2**63) - 1], [1, _Int(3)], [1, 2.0], (1, 2), [1, None]],
)
def test_anything_but_a_list_of_plain_int64s_is_pickled(values: Any) -> None:
    """bools, int subclasses, ints past int64, other items, other containers: the
    reader must get back exactly what the worker returned, type for type."""
    packed = pack_result(Kind.MAP, values)
    assert packed.payload[:1] == b"\x80"  # a pickle's PROTO opcode
    loaded = load_result(packed.payload, [])
    assert loaded == values
    assert [type(value) for value in loaded] == [type(value) for value in values]


def test_an_apply_returning_a_list_of_ints_is_pickled() -> None:
    assert pack_result(Kind.APPLY, [1, 2]).payload[:1] == b"\x80"
