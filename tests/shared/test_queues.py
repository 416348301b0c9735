"""Queue, JoinableQueue and SimpleQueue (serentak._shared.queues).

The first part checks the semantics within one process; the second runs
producers and consumers in children under every start method (the ``ctx``
fixture); then Ctrl-C in the middle of every blocking wait; the last part kills
processes in the middle of puts and gets and checks that the queue goes on
delivering.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import _shared_targets
from _scripts import interrupted_in_futex
from _signals import interrupted_by_a_signal_to_another_thread
from serentak._os import _native
from serentak._shared import queues as _queues
from serentak.connection import Pipe

# How late a timed wait may return: generous, CI machines are slow and busy.
LATE = 1.0
# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0
MB = 1_000_000


def raises_within(exception: type[BaseException], call: Callable[[], object]) -> float:
    start = time.monotonic()
    with pytest.raises(exception):
        call()
    return time.monotonic() - start


def channel_of(q: Any) -> _queues._Channel:
    channel = q._channel
    assert isinstance(channel, _queues._Channel)
    return channel


def ring_capacity(q: Any) -> int:
    """Bytes the queue's ring holds before a put falls back on the feeder."""
    return channel_of(q)._ring.capacity


# Messages of this size fill the ring in a few hundred puts.
BULKY = 64 * 1024


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, threading.Event]:
    """Run ``call`` in a daemon thread; the event is set when it returns."""
    returned = threading.Event()

    def target() -> None:
        call()
        returned.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, returned


def run(ctx: Any, target: Callable[..., object], *args: Any) -> Any:
    process = ctx.Process(target=target, args=args)
    process.start()
    return process


def finish(process: Any, exitcode: int = 0) -> None:
    process.join(PATIENCE)
    assert process.exitcode == exitcode, f"{process!r} ended with {process.exitcode}"
    process.close()


@pytest.fixture
def q() -> Iterator[_queues.Queue]:
    made = _queues.Queue()
    yield made
    made.close()


# ---- one process ------------------------------------------------------------------------


def test_a_put_after_the_ring_was_full_moves_the_feeders_backlog_itself(
    q: _queues.Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the ring was full for a moment (its reader late), later puts must not all
    go through the feeder thread: that thread and the putting one then handed the GIL
    back and forth for every message, ten times slower, for as long as the producer
    went on. A put that finds room moves the backlog itself, in order, then its own."""
    held = threading.Event()
    feed = _queues._Channel._feed

    def held_feed(channel: _queues._Channel, local: Any) -> None:
        held.wait(PATIENCE)
        feed(channel, local)

    monkeypatch.setattr(_queues._Channel, "_feed", held_feed)
    count = ring_capacity(q) // BULKY + 4  # the ring's worth, and a backlog
    for index in range(count):
        q.put(index.to_bytes(4, "little") + bytes(BULKY))
    local = channel_of(q)._local_state
    backlog = len(local.buffer)
    assert backlog > 0
    try:
        for index in range(backlog + 1):  # room for the backlog and one more
            assert int.from_bytes(q.get(timeout=PATIENCE)[:4], "little") == index
        q.put(count.to_bytes(4, "little") + bytes(BULKY))
        assert not local.buffer, "the backlog was left to the feeder thread"
    finally:
        held.set()
    for index in range(backlog + 1, count + 1):
        assert int.from_bytes(q.get(timeout=PATIENCE)[:4], "little") == index


def test_put_get_fifo_of_any_picklable(q: _queues.Queue) -> None:
    items: list[Any] = [
        1,
        "two",
        b"three",
        bytearray(b"four"),
        None,
        (5, [6, {"seven": 8.0}]),
        b"",
        bytearray(),
    ]
    for item in items:
        q.put(item)
    assert q.qsize() == len(items)
    assert not q.empty()
    got = [q.get() for _ in items]
    assert got == items
    assert type(got[3]) is bytearray
    assert q.empty()
    assert q.qsize() == 0


def test_functions_travel_by_value(q: _queues.Queue) -> None:
    offset = 10
    q.put(lambda x: x + offset)
    assert q.get(timeout=PATIENCE)(1) == 11


def test_get_timeouts_raise_empty_in_time(q: _queues.Queue) -> None:
    elapsed = raises_within(queue.Empty, lambda: q.get(timeout=0.2))
    assert 0.2 <= elapsed < 0.2 + LATE
    assert raises_within(queue.Empty, q.get_nowait) < LATE
    assert raises_within(queue.Empty, lambda: q.get(False, 10)) < LATE  # block=False ignores it
    assert raises_within(queue.Empty, lambda: q.get(timeout=-1)) < LATE
    q.put("late")
    assert q.get_nowait() == "late"


def test_bounded_queue_full_and_put_timeouts() -> None:
    bounded = _queues.Queue(2)
    assert not bounded.full()
    bounded.put(1)
    bounded.put_nowait(2)
    assert bounded.full()
    assert bounded.qsize() == 2
    elapsed = raises_within(queue.Full, lambda: bounded.put(3, timeout=0.2))
    assert 0.2 <= elapsed < 0.2 + LATE
    assert raises_within(queue.Full, lambda: bounded.put_nowait(3)) < LATE
    assert raises_within(queue.Full, lambda: bounded.put(3, False, 10)) < LATE
    assert bounded.get() == 1
    assert not bounded.full()
    bounded.put(3, timeout=0)
    assert [bounded.get(), bounded.get()] == [2, 3]
    bounded.close()


def test_blocked_put_wakes_when_a_get_frees_a_slot() -> None:
    bounded = _queues.Queue(1)
    bounded.put("first")
    done = threading.Event()

    def put_second() -> None:
        bounded.put("second", timeout=PATIENCE)
        done.set()

    thread = threading.Thread(target=put_second)
    thread.start()
    assert not done.wait(0.1)  # it is blocked...
    assert bounded.get() == "first"
    assert done.wait(PATIENCE)  # ...until the get
    thread.join()
    assert bounded.get(timeout=PATIENCE) == "second"
    bounded.close()


def test_unbounded_queue_defaults(q: _queues.Queue) -> None:
    assert not q.full()
    assert q._maxsize == _native.SEM_VALUE_MAX
    negative = _queues.Queue(-3)
    assert negative._maxsize == _native.SEM_VALUE_MAX
    negative.close()


def test_put_beyond_the_ring_never_blocks_and_keeps_order(q: _queues.Queue) -> None:
    count = 2 * ring_capacity(q) // BULKY + 10  # well past what the ring holds
    start = time.monotonic()
    for index in range(count):
        q.put((index, b"b" * BULKY))
    elapsed = time.monotonic() - start
    assert elapsed < PATIENCE
    assert q.qsize() == count
    assert [q.get(timeout=PATIENCE)[0] for _ in range(count)] == list(range(count))
    assert q.qsize() == 0


def test_put_many_and_get_many(q: _queues.Queue) -> None:
    q.put_many(range(100))
    q.put_many(["a", b"b"])
    assert q.get_many(60) == list(range(60))
    assert q.get_many(1000, timeout=PATIENCE) == [*range(60, 100), "a", b"b"]
    assert raises_within(queue.Empty, lambda: q.get_many(5, timeout=0.1)) < LATE
    bounded = _queues.Queue(3)
    with pytest.raises(queue.Full):
        bounded.put_many(range(5), timeout=0.1)
    assert bounded.get_many(10, block=False) == [0, 1, 2]
    bounded.close()


def test_unpicklable_object_raises_in_put_and_the_queue_still_works(q: _queues.Queue) -> None:
    with pytest.raises(TypeError, match="lock"):
        q.put(threading.Lock())
    with pytest.raises(TypeError):
        q.put([1, threading.Lock()])
    assert q.qsize() == 0
    q.put("fine")
    assert q.get(timeout=PATIENCE) == "fine"


def test_closed_queue_raises_value_error(q: _queues.Queue) -> None:
    with pytest.raises(AssertionError, match="not closed"):
        q.join_thread()
    q.close()
    q.close()  # twice is fine
    with pytest.raises(ValueError, match=r"^Queue .* is closed$"):
        q.put(1)
    with pytest.raises(ValueError, match=r"^Queue .* is closed$"):
        q.get()
    with pytest.raises(ValueError, match="is closed"):
        q.put_nowait(1)
    with pytest.raises(ValueError, match="is closed"):
        q.get_nowait()
    q.join_thread()  # nothing buffered: returns at once


@pytest.mark.parametrize("kind", [_queues.Queue, _queues.JoinableQueue])
def test_empty_after_close_raises_oserror_once_the_queue_was_used(
    ctx: Any, kind: type[_queues.Queue]
) -> None:
    """The stdlib's rule: close() of a queue never put to changes nothing; after
    a put, empty() raises OSError (qsize() and full() still answer)."""
    unused = kind()
    unused.close()
    unused.join_thread()
    assert unused.empty()
    used = kind()
    ours, theirs = Pipe()
    process = run(ctx, _shared_targets.queue_sizes_after_close, used, theirs)
    answers = ours.recv()
    finish(process)
    assert answers == {"empty": ("OSError", "handle is closed"), "full": False, "qsize": 1}
    assert used.get(timeout=PATIENCE) == "item"
    used.put("mine")
    used.close()
    used.join_thread()
    with pytest.raises(OSError, match="is closed"):
        used.empty()
    assert used.qsize() == 1
    assert not used.full()
    for end in (ours, theirs):
        end.close()


def test_big_messages_in_one_process(q: _queues.Queue) -> None:
    in_ring_max = _queues._IN_RING_MAX
    for size in (in_ring_max - 100, in_ring_max + 100, 10 * MB):
        q.put(b"b" * size)
        q.put(bytearray(b"a" * size))
        q.put(["list", b"l" * size])  # pickled, not raw
        assert q.get(timeout=PATIENCE) == b"b" * size
        got = q.get(timeout=PATIENCE)
        assert type(got) is bytearray
        assert got == b"a" * size
        assert q.get(timeout=PATIENCE) == ["list", b"l" * size]


def test_big_plain_messages_in_one_process(q: _queues.Queue) -> None:
    """A str, or a plain tuple, whose pickle does not fit the ring travels beside it."""
    big = 2 * _queues._IN_RING_MAX
    messages = ["s" * big, ("t", b"u" * big), {"k": 3.5, "v": "w" * big}]
    for message in messages:
        q.put(message)
    for message in messages:
        assert q.get(timeout=PATIENCE) == message


@pytest.mark.parametrize(
    "message",
    [
        (7, b"x" * 100),
        {"id": 7, "name": "alice", "score": 3.5, "ok": True, "tags": None},
        (1.5, 2.5, 3.5),
        [1, (2, 3.0), {4, 5}, frozenset({"six"}), None, 7j, True],
        list(range(1000)),  # beyond the plain-data budget: the full pickler
        ({"nested": [[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]},),
    ],
)
def test_containers_of_plain_data_round_trip(q: _queues.Queue, message: object) -> None:
    q.put(message)
    got = q.get(timeout=PATIENCE)
    assert got == message
    assert type(got) is type(message)


def test_threads_share_a_queue(q: _queues.Queue) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def consume() -> None:
        while (item := q.get(timeout=PATIENCE)) is not None:
            with lock:
                got.append(item)

    def produce(base: int) -> None:
        for index in range(2000):
            q.put(base + index)

    consumers = [threading.Thread(target=consume) for _ in range(3)]
    producers = [threading.Thread(target=produce, args=(base,)) for base in (0, 10_000, 20_000)]
    for thread in consumers + producers:
        thread.start()
    for thread in producers:
        thread.join()
    for _ in consumers:
        q.put(None)
    for thread in consumers:
        thread.join()
    assert sorted(got) == sorted(b + i for b in (0, 10_000, 20_000) for i in range(2000))


def test_pickling_outside_a_child_start_raises() -> None:
    for made in (_queues.Queue(), _queues.JoinableQueue(), _queues.SimpleQueue()):
        name = type(made).__name__
        with pytest.raises(
            RuntimeError,
            match=rf"^{name} objects should only be shared between processes through inheritance$",
        ):
            pickle.dumps(made)
        made.close()


def test_joinable_queue_in_one_process() -> None:
    joinable = _queues.JoinableQueue()
    with pytest.raises(ValueError, match=r"^task_done\(\) called too many times$"):
        joinable.task_done()
    joinable.put(1)
    joinable.put(2)
    thread, joined = in_thread(joinable.join)
    assert joinable.get() == 1
    joinable.task_done()
    assert not joined.wait(0.1)  # one task left
    assert joinable.get() == 2
    joinable.task_done()
    assert joined.wait(PATIENCE)
    thread.join()
    with pytest.raises(ValueError, match="too many times"):
        joinable.task_done()
    joinable.join()  # nothing unfinished: returns at once
    joinable.close()


def test_simple_queue_in_one_process() -> None:
    simple = _queues.SimpleQueue()
    assert simple.empty()
    simple.put([1, 2])
    assert not simple.empty()
    assert simple.get() == [1, 2]
    with pytest.raises(TypeError):
        simple.put(threading.Lock())
    simple.close()
    simple.close()
    for call in (simple.get, simple.empty, lambda: simple.put(1)):
        with pytest.raises(OSError, match="handle is closed"):
            call()


def test_queues_are_subscriptable() -> None:
    assert _queues.Queue[int].__origin__ is _queues.Queue  # type: ignore[misc]
    assert _queues.SimpleQueue[str].__origin__ is _queues.SimpleQueue  # type: ignore[misc]


# ---- across processes -----------------------------------------------------------------------


def test_seed_section_7_1(ctx: Any) -> None:
    shared = ctx.Queue()
    process = run(ctx, _shared_targets.queue_seed_worker, shared)
    finish(process)  # joined before the get, as in the seed
    assert shared.get(timeout=PATIENCE) == "Data dari proses!"


def test_child_gets_what_the_parent_put(ctx: Any) -> None:
    to_child, from_child = ctx.Queue(), ctx.Queue()
    process = run(ctx, _shared_targets.queue_consume, to_child, from_child)
    for item in ("a", 2, None):
        to_child.put(item)
    assert [from_child.get(timeout=PATIENCE) for _ in range(2)] == ["a", 2]
    finish(process)


def test_qsize_and_empty_see_other_processes(ctx: Any) -> None:
    shared = ctx.Queue(5)
    assert shared.empty()
    finish(run(ctx, _shared_targets.queue_put_items, shared, [1, 2, 3]))
    assert shared.qsize() == 3
    assert not shared.empty()
    assert not shared.full()
    shared.put(4)
    shared.put(5)
    assert shared.full()
    assert [shared.get() for _ in range(5)] == [1, 2, 3, 4, 5]
    assert shared.empty()
    assert shared.qsize() == 0


def test_fifo_per_producer(ctx: Any) -> None:
    shared = ctx.Queue()
    producers = [run(ctx, _shared_targets.queue_produce, shared, tag, 5000) for tag in (1, 2)]
    seen: dict[int, list[int]] = {1: [], 2: []}
    for _ in range(10_000):
        tag, index = shared.get(timeout=PATIENCE)
        seen[tag].append(index)
    for process in producers:
        finish(process)
    assert seen[1] == list(range(5000))
    assert seen[2] == list(range(5000))
    with pytest.raises(queue.Empty):
        shared.get(timeout=0.05)


def test_many_producers_and_consumers_lose_and_duplicate_nothing(ctx: Any) -> None:
    tasks, results = ctx.Queue(50), ctx.Queue()
    consumers = [run(ctx, _shared_targets.queue_consume, tasks, results) for _ in range(3)]
    producers = [run(ctx, _shared_targets.queue_produce, tasks, tag, 400) for tag in range(4)]
    got = [results.get(timeout=PATIENCE) for _ in range(4 * 400)]
    for process in producers:
        finish(process)
    for _ in consumers:
        tasks.put(None)
    for process in consumers:
        finish(process)
    assert sorted(got) == [(tag, index) for tag in range(4) for index in range(400)]
    assert results.empty()


@pytest.mark.parametrize("size", [10 * MB, 100 * MB])
def test_big_messages_between_processes(ctx: Any, size: int) -> None:
    shared = ctx.Queue()
    process = run(ctx, _shared_targets.queue_put_and_exit, shared, 2, size)
    for index in range(2):
        got_index, payload = shared.get(timeout=PATIENCE)
        assert got_index == index
        assert len(payload) == size
        assert payload[:1] == payload[-1:] == b"f"
        del payload
    finish(process)


def test_big_messages_reusing_the_senders_segments_arrive_intact(ctx: Any) -> None:
    """Messages too big for the ring go in segments the sender refills once read: each
    message still arrives as it was put, whether the reader keeps up or falls behind."""
    shared = ctx.Queue()
    size, count = 2 * _queues._IN_RING_MAX, 12
    process = run(ctx, _shared_targets.queue_put_distinct, shared, count, size)
    got = [shared.get(timeout=PATIENCE) for _ in range(count)]
    finish(process)
    for index, payload in enumerate(got):
        assert payload == bytes([index]) * size, f"message {index} changed"


def test_child_exit_flushes_more_than_the_ring_holds(ctx: Any) -> None:
    shared = ctx.Queue()
    size = BULKY
    count = 3 * ring_capacity(shared) // size + 10
    process = run(ctx, _shared_targets.queue_put_and_exit, shared, count, size)
    indexes = [shared.get(timeout=PATIENCE)[0] for _ in range(count)]
    finish(process)
    assert indexes == list(range(count))


def test_cancel_join_thread_lets_the_child_exit_without_flushing(ctx: Any) -> None:
    shared = ctx.Queue()
    size = BULKY
    count = 3 * ring_capacity(shared) // size + 10
    process = run(ctx, _shared_targets.queue_put_cancel_and_exit, shared, count, size)
    finish(process)  # nobody read, and yet it exited
    indexes = []
    while True:
        try:
            indexes.append(shared.get(timeout=0.2)[0])
        except queue.Empty:
            break
    assert indexes == list(range(len(indexes)))  # what arrived is a prefix, in order
    assert 0 < len(indexes) < count


def test_joinable_queue_across_processes(ctx: Any) -> None:
    tasks, results = ctx.JoinableQueue(), ctx.Queue()
    workers = [run(ctx, _shared_targets.queue_joinable_worker, tasks, results) for _ in range(2)]
    for number in range(100):
        tasks.put(number)
    tasks.join()  # every task_done() arrived
    assert sorted(results.get(timeout=PATIENCE) for _ in range(100)) == [n * n for n in range(100)]
    for _ in workers:
        tasks.put(None)
    tasks.join()
    for process in workers:
        finish(process)
    with pytest.raises(ValueError, match="too many times"):
        tasks.task_done()


def test_simple_queue_across_processes(ctx: Any) -> None:
    simple = ctx.SimpleQueue()
    process = run(ctx, _shared_targets.queue_simple_put, simple, ["x", {"y": 1}, b"z" * MB])
    assert simple.get() == "x"
    assert simple.get() == {"y": 1}
    assert simple.get() == b"z" * MB
    finish(process)
    assert simple.empty()
    simple.close()


def test_a_connection_travels_through_a_queue(ctx: Any) -> None:
    shared = ctx.Queue()
    process = run(ctx, _shared_targets.queue_reply_on_connection, shared)
    ours, theirs = Pipe()
    shared.put(theirs)
    theirs.close()  # the queue carried a descriptor of its own
    assert ours.poll(PATIENCE)
    assert ours.recv() == "hello through a queued connection"
    ours.close()
    finish(process)


# ---- Ctrl-C while blocked ----------------------------------------------------------------

# How soon after SIGINT a blocked wait must raise KeyboardInterrupt: the sleeps are
# cut in 50 ms slices, so a signal that went to another thread is seen within one.
PROMPT = 0.5
BLOCKING_WAITS = [
    "Queue.get",
    "Queue.put",
    "SimpleQueue.get",
    "JoinableQueue.get",
    "JoinableQueue.join",
]


def blocked_queue(ctx: Any, wait: str) -> tuple[Any, Callable[[], object]]:
    """A queue that a child (started with ``ctx``) set up so that ``wait`` blocks: a full
    Queue(2), a JoinableQueue with a task unfinished, an empty queue whose last item (put by
    the child) was taken; and the call that blocks."""
    name, call = wait.split(".")
    shared = ctx.Queue(2) if wait == "Queue.put" else getattr(ctx, name)()
    finish(run(ctx, _shared_targets.queue_ctrl_c_set_up, shared, wait))
    if call == "get":
        assert shared.get() == "from the child"
        if name == "JoinableQueue":
            shared.task_done()
        return shared, shared.get
    if call == "put":
        assert shared.full()
        return shared, lambda: shared.put(2)
    return shared, shared.join


def check_usable_after_ctrl_c(shared: Any, wait: str) -> None:
    """Nothing was put, taken or counted for the interrupted call; a round trip works."""
    simple = wait.startswith("SimpleQueue")
    joinable = wait.startswith("JoinableQueue")
    if wait == "Queue.put":
        assert shared.qsize() == 2
        assert [shared.get(timeout=PATIENCE), shared.get(timeout=PATIENCE)] == [0, 1]
    elif wait == "JoinableQueue.join":
        assert shared.qsize() == 1
        assert shared.get(timeout=PATIENCE) == 0
        shared.task_done()
        shared.join()  # nothing unfinished: returns at once
    if simple:
        assert shared.empty()
    else:
        assert shared.qsize() == 0
    shared.put("after")
    if simple:
        assert not shared.empty()
    else:
        assert shared.qsize() == 1
    assert shared.get() == "after"
    if joinable:
        shared.task_done()
        shared.join()
        with pytest.raises(ValueError, match="too many times"):
            shared.task_done()
    if simple:
        assert shared.empty()
    else:
        assert shared.qsize() == 0
    shared.close()


@pytest.mark.parametrize("wait", BLOCKING_WAITS)
def test_ctrl_c_interrupts_every_blocking_wait_promptly(ctx: Any, wait: str) -> None:
    """A SIGINT while the main thread is blocked in a queue's get/put/join raises
    KeyboardInterrupt within a slice, and leaves the queue consistent."""
    shared, block = blocked_queue(ctx, wait)
    sent: list[float] = []

    def interrupt() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    # The signal may land on the timer's thread: the sleeper must notice anyway.
    timer = threading.Timer(0.1, interrupt)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            block()
        interrupted = time.monotonic()
    finally:
        timer.join(PATIENCE)
    assert interrupted - sent[0] < PROMPT
    check_usable_after_ctrl_c(shared, wait)


def release_of(shared: Any, wait: str) -> Callable[[], object]:
    """What ends ``wait`` blocked on ``shared`` (as :func:`blocked_queue` set it up)."""
    if wait.endswith(".get"):
        return lambda: shared.put("released")
    if wait == "Queue.put":
        take: Callable[[], object] = shared.get
        return take

    def finish_the_task() -> None:
        shared.get()
        shared.task_done()

    return finish_the_task


@pytest.mark.parametrize("wait", BLOCKING_WAITS)
def test_a_signal_taken_by_another_thread_interrupts_every_blocking_wait(
    ctx: Any, wait: str
) -> None:
    """The kernel may hand a process's SIGINT to any thread. One taken by another thread
    (for certain, not as the timer's above may be) must still interrupt the main thread's
    wait: the ring's sleeps are cut in slices."""
    shared, block = blocked_queue(ctx, wait)
    with interrupted_by_a_signal_to_another_thread(release_of(shared, wait)):
        block()
    shared.close()


def test_a_signal_taken_by_another_thread_interrupts_join_thread(ctx: Any) -> None:
    """join_thread() waits for the feeder, which waits for a reader: for ever if none comes.
    A signal taken by another thread must still interrupt it."""
    shared, go = ctx.Queue(), ctx.Event()
    count = 12  # of 1 MB: more than the ring holds, so the feeder keeps some
    consumer = run(ctx, _shared_targets.queue_take_when_told, shared, go, count)
    for _ in range(count):
        shared.put(bytes(MB))
    shared.close()
    with interrupted_by_a_signal_to_another_thread(go.set):
        shared.join_thread()
    shared.join_thread()  # the consumer took them
    finish(consumer)


def interrupted_as_it_returns(inner: Any, method: str) -> Any:
    """``inner`` with its ``method`` interrupted by Ctrl-C as it returns: CPython runs a
    signal's handler right after a C call, and the call's result is dropped."""

    class Proxy:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

    def interrupted(*args: Any) -> None:
        getattr(inner, method)(*args)
        raise KeyboardInterrupt

    proxy = Proxy()
    setattr(proxy, method, interrupted)
    return proxy


@pytest.mark.parametrize("where", ["_ring.get", "_reader.recv"])
def test_ctrl_c_as_get_takes_a_message_with_fds_loses_nothing(ctx: Any, where: str) -> None:
    """Ctrl-C landing as get() has taken a record whose fds travel beside the ring (with
    the reader lock held), or as it looks for them: the message stays for the next reader
    (here another process), and the reader lock is not kept."""
    shared = ctx.JoinableQueue()
    ours, theirs = Pipe()
    shared.put(theirs)
    theirs.close()
    channel = channel_of(shared)
    attribute, method = where.split(".")
    real = getattr(channel, attribute)
    setattr(channel, attribute, interrupted_as_it_returns(real, method))
    try:
        with pytest.raises(KeyboardInterrupt):
            shared.get(timeout=PATIENCE)
    finally:
        setattr(channel, attribute, real)
    assert shared.qsize() == 1
    process = run(ctx, _shared_targets.queue_reply_on_connection, shared)
    assert ours.poll(PATIENCE)
    assert ours.recv() == "hello through a queued connection"
    finish(process)
    ours.close()
    shared.put("after")
    assert shared.get(timeout=PATIENCE) == "after"
    shared.task_done()
    shared.task_done()
    check_all_tasks_done(shared)
    shared.close()


CTRL_C_SCRIPT = """
import sys
import time

import serentak


def set_up(queue, wait, ready, done):
    if wait == "Queue.put":
        queue.put(0)
        queue.put(1)
    elif wait == "JoinableQueue.join":
        queue.put(0)
    else:
        queue.put("from the child")
    ready.set()
    done.wait(30)


if __name__ == "__main__":
    method, wait = sys.argv[1:]
    name, call = wait.split(".")
    ctx = serentak.get_context(method)
    queue = ctx.Queue(2) if wait == "Queue.put" else getattr(ctx, name)()
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=set_up, args=(queue, wait, ready, done))
    child.start()
    assert ready.wait(30)
    if call == "get":
        assert queue.get() == "from the child"
        if name == "JoinableQueue":
            queue.task_done()
    print("blocking", flush=True)
    try:
        if call == "put":
            queue.put(2)
        else:
            getattr(queue, call)()
        print("returned", flush=True)
    except KeyboardInterrupt:
        print("interrupted", time.monotonic(), flush=True)
    done.set()
    child.join(30)
    if call == "put":
        assert [queue.get(), queue.get()] == [0, 1]
    elif call == "join":
        assert queue.get() == 0
        queue.task_done()
        queue.join()
    queue.put("after")
    size = "-" if name == "SimpleQueue" else queue.qsize()
    got = queue.get()
    if name == "JoinableQueue":
        queue.task_done()
        queue.join()
    print("then", child.exitcode, got, size, queue.empty(), flush=True)
"""


@pytest.mark.parametrize("wait", BLOCKING_WAITS)
def test_ctrl_c_interrupts_a_queue_wait_held_up_by_a_child(
    start_method: str, tmp_path: Path, wait: str
) -> None:
    """A program blocked on a queue its child set up (passed in the Process args) gets
    KeyboardInterrupt promptly on SIGINT, and can go on using the queue after."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    lines, stderr, sent, status = interrupted_in_futex(script, start_method, wait)
    label, stamp = lines[0].split()
    assert label == "interrupted", [*lines, stderr]
    assert float(stamp) - sent < PROMPT
    size = "-" if wait.startswith("SimpleQueue") else "1"
    assert lines[1:] == [f"then 0 after {size} True"], [*lines, stderr]
    assert status == 0, stderr


# ---- crashes -------------------------------------------------------------------------------


def test_consumer_killed_while_blocked_in_get(ctx: Any) -> None:
    shared = ctx.Queue(3)
    ready = ctx.Event()
    process = run(ctx, _shared_targets.queue_block_in_get, shared, ready)
    assert ready.wait(PATIENCE)
    process.kill()
    finish(process, -signal.SIGKILL)
    for item in ("a", "b", "c"):
        shared.put(item, timeout=PATIENCE)  # the whole capacity is there
    results = ctx.Queue()
    consumer = run(ctx, _shared_targets.queue_consume, shared, results)
    assert [results.get(timeout=PATIENCE) for _ in range(3)] == ["a", "b", "c"]
    shared.put(None)
    finish(consumer)


def test_consumer_killed_right_after_taking_an_item(ctx: Any) -> None:
    shared, results = ctx.Queue(4), ctx.Queue()
    for item in range(4):
        shared.put(item)
    took = ctx.Event()
    process = run(ctx, _shared_targets.queue_get_then_wait, shared, took, results)
    assert took.wait(PATIENCE)
    process.kill()
    finish(process, -signal.SIGKILL)
    assert results.get(timeout=PATIENCE) == 0
    consumer = run(ctx, _shared_targets.queue_consume, shared, results)
    assert [results.get(timeout=PATIENCE) for _ in range(3)] == [1, 2, 3]
    for item in range(4, 8):
        shared.put(item, timeout=PATIENCE)
    assert [results.get(timeout=PATIENCE) for _ in range(4)] == [4, 5, 6, 7]
    shared.put(None)
    finish(consumer)


def test_consumer_killed_in_the_middle_of_a_get(ctx: Any) -> None:
    """A reader dies holding the reader lock, the record half copied out: it is taken again."""
    shared = ctx.JoinableQueue(2)
    shared.put("taken by the dead, and again")
    shared.put("next")
    finish(run(ctx, _shared_targets.queue_die_in_get, shared, False), -signal.SIGKILL)
    start = time.monotonic()
    assert shared.get(timeout=PATIENCE) == "taken by the dead, and again"
    assert time.monotonic() - start < LATE  # the lock was taken over from the dead
    assert shared.get(timeout=PATIENCE) == "next"
    shared.task_done()
    shared.task_done()
    shared.join()
    shared.put_many(["one", "two"], timeout=PATIENCE)  # the whole capacity is there
    assert shared.full()
    assert shared.get_many(2) == ["one", "two"]


def test_consumer_killed_after_taking_the_fds_of_a_message(ctx: Any) -> None:
    """Only the message in flight is lost; the queue and join() go on."""
    shared = ctx.JoinableQueue()
    ours, theirs = Pipe()
    shared.put(theirs)  # a Connection: its fd travels beside the ring
    theirs.close()
    shared.put("after")
    finish(run(ctx, _shared_targets.queue_die_in_get, shared, True), -signal.SIGKILL)
    assert shared.get(timeout=PATIENCE) == "after"
    shared.task_done()
    thread, joined = in_thread(shared.join)
    assert joined.wait(PATIENCE)  # the lost message is no task to wait for
    thread.join()
    assert shared.qsize() == 0
    ours.close()


@pytest.mark.parametrize("size", [100, MB, 3 * MB])
def test_producer_killed_in_a_put_loop(ctx: Any, size: int) -> None:
    shared = ctx.Queue(8)
    started = ctx.Event()
    process = run(ctx, _shared_targets.queue_put_forever, shared, size, started)
    indexes = []
    for _ in range(30):
        index, payload = shared.get(timeout=PATIENCE)
        indexes.append(index)
        assert len(payload) == size
    assert started.wait(PATIENCE)
    process.kill()
    finish(process, -signal.SIGKILL)
    while True:
        try:
            index, payload = shared.get(timeout=0.2)
        except queue.Empty:
            break
        indexes.append(index)
        assert len(payload) == size
    # Everything it put arrived whole and in order; at most the message in flight is lost.
    assert indexes == list(range(len(indexes)))
    # The queue is whole: all of its capacity, and FIFO.
    for index in range(8):
        shared.put_nowait(index)
    assert shared.full()
    assert [shared.get_nowait() for _ in range(8)] == list(range(8))
    assert shared.qsize() == 0


@pytest.mark.parametrize("how", ["half record", "side datagram"])
def test_producer_killed_in_the_middle_of_a_put(ctx: Any, how: str) -> None:
    """A writer dies holding the writer lock, its record half written or its fds sent."""
    tasks = ctx.JoinableQueue(2)
    tasks.put("before")
    finish(run(ctx, _shared_targets.queue_die_in_put, tasks, how), -signal.SIGKILL)
    # The next writer takes the lock over from the dead one and overwrites its half record.
    start = time.monotonic()
    ours, theirs = Pipe()
    tasks.put(theirs, timeout=PATIENCE)  # fds beside the ring: the dead one's are skipped
    theirs.close()
    assert time.monotonic() - start < LATE
    assert tasks.full()
    assert tasks.get(timeout=PATIENCE) == "before"
    sent = tasks.get(timeout=PATIENCE)
    sent.send("through")
    assert ours.recv() == "through"
    sent.close()
    ours.close()
    tasks.task_done()
    tasks.task_done()
    # Nothing the dead writer started counts as a task: join() returns.
    thread, joined = in_thread(tasks.join)
    assert joined.wait(PATIENCE)
    thread.join()
    assert tasks.qsize() == 0


def test_producer_killed_with_messages_in_its_feeder(ctx: Any) -> None:
    """What a dead producer still buffered is lost, and its share of the count is reclaimed."""
    shared = ctx.JoinableQueue()
    size = BULKY
    count = 3 * ring_capacity(shared) // size + 10
    done = ctx.Event()
    process = run(ctx, _shared_targets.queue_put_then_wait, shared, count, size, done)
    assert done.wait(PATIENCE)
    assert shared.qsize() == count  # the ring's share and the feeder's
    process.kill()
    finish(process, -signal.SIGKILL)
    received = 0
    while True:
        try:
            index, _ = shared.get(timeout=0.2)
        except queue.Empty:
            break
        assert index == received
        received += 1
        shared.task_done()
    assert 0 < received < count
    thread, joined = in_thread(shared.join)
    assert joined.wait(PATIENCE)  # the dead producer's buffered messages are not waited for
    thread.join()
    assert shared.qsize() == 0


# ---- crashes: SimpleQueue and JoinableQueue -------------------------------------------------

QUEUE_KINDS = ["SimpleQueue", "JoinableQueue"]


def check_all_tasks_done(shared: Any) -> None:
    """join() returns (nothing lost is waited for) and no task is left to finish."""
    thread, joined = in_thread(shared.join)
    assert joined.wait(PATIENCE)
    thread.join()
    assert shared.qsize() == 0
    with pytest.raises(ValueError, match="too many times"):
        shared.task_done()


@pytest.mark.parametrize("how", ["half record", "side datagram"])
@pytest.mark.parametrize("kind", QUEUE_KINDS)
def test_producer_killed_mid_put_does_not_wedge_a_waiting_consumer(
    ctx: Any, kind: str, how: str
) -> None:
    """A writer dies holding the writer lock while a consumer waits in get(): the next
    writer takes over, the consumer gets what follows, and join() counts nothing of the dead."""
    joinable = kind == "JoinableQueue"
    shared, results = getattr(ctx, kind)(), ctx.Queue()
    consumer = run(ctx, _shared_targets.queue_relay, shared, results, joinable)
    shared.put("before")
    assert results.get(timeout=PATIENCE) == "before"  # it now waits in get() for the next
    finish(run(ctx, _shared_targets.queue_die_in_put, shared, how), -signal.SIGKILL)
    start = time.monotonic()
    shared.put(b"m" * (3 * MB))  # a memfd beside the ring: the dead one's datagram is skipped
    assert time.monotonic() - start < LATE  # the lock was taken over from the dead
    shared.put("after")
    assert results.get(timeout=PATIENCE) == ("bytes", 3 * MB, b"m")
    assert results.get(timeout=PATIENCE) == "after"
    if joinable:
        thread, joined = in_thread(shared.join)  # returns once the consumer's task_done()s came
        assert joined.wait(PATIENCE)
        thread.join()
    shared.put(None)
    assert results.get(timeout=PATIENCE) is None
    finish(consumer)
    if joinable:
        check_all_tasks_done(shared)
    assert shared.empty()
    shared.close()


@pytest.mark.parametrize("side", [False, True], ids=["in the ring", "fds beside"])
@pytest.mark.parametrize("kind", QUEUE_KINDS)
def test_consumer_killed_mid_get_does_not_wedge_a_waiting_producer(
    ctx: Any, kind: str, side: bool
) -> None:
    """A reader dies holding the reader lock (``side``: after taking the fds of the message):
    a producer waiting for room and the next reader go on; only a message whose fds went
    with the dead is lost, and join() does not wait for it."""
    joinable = kind == "JoinableQueue"
    shared = ctx.JoinableQueue(2) if joinable else ctx.SimpleQueue()
    ours, theirs = Pipe()
    shared.put(theirs if side else "first")
    theirs.close()
    finish(run(ctx, _shared_targets.queue_die_in_get, shared, side), -signal.SIGKILL)
    # A JoinableQueue(2) is full once it has put "a": it then waits for room.
    producer = run(ctx, _shared_targets.queue_put_items, shared, ["a", "b", "c"])
    expected = ["a", "b", "c"] if side else ["first", "a", "b", "c"]
    got = []
    for _ in expected:
        got.append(shared.get())
        if joinable:
            shared.task_done()
    assert got == expected
    finish(producer)
    if joinable:
        check_all_tasks_done(shared)  # the lost message counts once, not twice
    assert shared.empty()
    ours.close()
    shared.close()


@pytest.mark.parametrize("size", [100, 3 * MB])
@pytest.mark.parametrize("kind", QUEUE_KINDS)
def test_producer_killed_in_a_put_loop_of_simple_and_joinable_queues(
    ctx: Any, kind: str, size: int
) -> None:
    """Killed at whatever point of a put: what it put arrives whole and in order, at most
    the message in flight is lost, and join() returns once the arrivals are task_done()."""
    joinable = kind == "JoinableQueue"
    shared = ctx.JoinableQueue(8) if joinable else ctx.SimpleQueue()
    started = ctx.Event()
    process = run(ctx, _shared_targets.queue_put_forever, shared, size, started)
    indexes = []

    def take() -> None:
        index, payload = shared.get()
        assert len(payload) == size
        indexes.append(index)
        if joinable:
            shared.task_done()

    for _ in range(30):
        take()
    assert started.wait(PATIENCE)
    process.kill()
    finish(process, -signal.SIGKILL)
    while not shared.empty():
        take()
    assert indexes == list(range(len(indexes)))
    if joinable:
        check_all_tasks_done(shared)
    for index in range(8):
        shared.put(index)
    assert [shared.get() for _ in range(8)] == list(range(8))
    assert shared.empty()
    shared.close()


@pytest.mark.parametrize("kind", QUEUE_KINDS)
def test_consumer_killed_in_a_get_loop_of_simple_and_joinable_queues(ctx: Any, kind: str) -> None:
    """Killed at whatever point of a get: nothing is taken twice, at most the message in
    flight is lost, and join() returns once a supervisor finishes the dead one's task."""
    joinable = kind == "JoinableQueue"
    shared, results = getattr(ctx, kind)(), ctx.Queue()
    count = 20_000  # small: all in the ring at once, and more than the consumer relays at once
    for index in range(count):
        shared.put(index)
    consumer = run(ctx, _shared_targets.queue_relay, shared, results, joinable)
    reported = [results.get(timeout=PATIENCE) for _ in range(50)]
    consumer.kill()
    finish(consumer, -signal.SIGKILL)
    while not results.empty():
        reported.append(results.get(timeout=PATIENCE))
    drained = []
    while not shared.empty():
        drained.append(shared.get())
        if joinable:
            shared.task_done()
    # Each side saw its share in order, and nothing twice.
    assert reported == list(range(len(reported)))
    assert drained == sorted(drained)
    assert not set(reported) & set(drained)
    missing = set(range(count)) - set(reported) - set(drained)
    assert len(missing) <= 1, sorted(missing)
    if joinable:
        if missing:
            shared.task_done()  # the dead took it and finished nothing of it
        else:
            try:  # it may have died between its report and its task_done()
                shared.task_done()
            except ValueError:
                pass
        check_all_tasks_done(shared)
    shared.put("after")
    assert shared.get() == "after"
    assert shared.empty()
    results.close()
    shared.close()


@pytest.mark.parametrize("size", [10, 1 << 20], ids=["in the ring", "beside the ring"])
def test_writer_lock_of_a_dead_owner_whose_pid_was_reused_is_taken_over(
    ctx: Any, size: int
) -> None:
    """The writer lock's word names a live process (our parent) beside another
    start stamp than the parent's (as if a process that died had held it, and
    its pid went to the parent): put() takes it over instead of waiting for the
    parent to exit."""
    from serentak._os import _native

    impostor = os.getppid()
    with open(f"/proc/{impostor}/stat") as stat:
        # Field 22, the start time; counted after the name, which ends at the last ")".
        started = int(stat.read().rpartition(")")[2].split()[19])

    queue = ctx.Queue()
    try:
        view = queue._channel._ring_view
        words = view[_native.RING_WRITER_LOCK : _native.RING_WRITER_LOCK + 4].cast("I")
        stamps = view[_native.RING_WRITER_STAMP : _native.RING_WRITER_STAMP + 4].cast("I")
        words[0] = impostor
        stamps[0] = (started + 1) & 0xFFFF_FFFF or 1
        began = time.monotonic()
        queue.put(b"x" * size)
        assert queue.get(timeout=PATIENCE) == b"x" * size
        assert time.monotonic() - began < LATE
        del words, stamps, view
    finally:
        queue.close()
        queue.join_thread()
