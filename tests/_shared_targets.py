"""Worker functions for the tests of locks, Value/Array, named shared memory and queues.

A spawned or forkserver child imports them from here by name.

Append; each test module keeps its functions in a section of its own.
"""

from __future__ import annotations

from typing import Any

# ---- test_sync ------------------------------------------------------------------


def sync_increment(lock: Any, block: Any, times: int) -> None:
    """Add 1 to the C int at the start of ``block``, ``times`` times, under ``lock``."""
    import ctypes

    counter = ctypes.c_int.from_buffer(block.buffer)
    for _ in range(times):
        with lock:
            counter.value += 1


def sync_hold_until_killed(lock: Any, holding: Any) -> None:
    """Take ``lock``, say so, and wait to be killed."""
    import signal

    lock.acquire()
    holding.set()
    while True:
        signal.pause()


def sync_hold_until_told(lock: Any, holding: Any, release: Any) -> None:
    """Take ``lock``, say so, and release it when ``release`` is set."""
    with lock:
        holding.set()
        if not release.wait(30):
            raise RuntimeError("never told to release")


def sync_zombie_owner(lock: Any, block: Any, holding: Any, reap: Any) -> None:
    """Fork a grandchild that takes ``lock`` and is then killed; reap it only when told.

    The grandchild stays a zombie until ``reap`` is set, since only its parent
    (this process) may reap it. Its pid goes in the C int at ``block``.
    """
    import ctypes
    import os
    import signal

    from serentak._os import posix as _posix

    pid = _posix.fork()
    if pid == 0:
        try:
            lock.acquire()
            holding.set()
            while True:
                signal.pause()
        finally:
            os._exit(1)
    ctypes.c_int.from_buffer(block.buffer).value = pid
    if not holding.wait(30):
        raise RuntimeError("the grandchild never took the lock")
    os.kill(pid, signal.SIGKILL)
    try:
        if not reap.wait(30):
            raise RuntimeError("never told to reap")
    finally:
        os.waitpid(pid, 0)


def sync_semaphore_worker(sem: Any, lock: Any, block: Any, rounds: int) -> None:
    """Count how many processes are inside ``sem`` at once; keep the highest count seen.

    ``block`` holds two C ints: inside now, most ever inside.
    """
    import ctypes

    inside = (ctypes.c_int * 2).from_buffer(block.buffer)
    for _ in range(rounds):
        with sem:
            with lock:
                inside[0] += 1
                inside[1] = max(inside[1], inside[0])
            for _ in range(1000):  # stay inside a little while others try to enter
                pass
            with lock:
                inside[0] -= 1


def sync_release_times(sem: Any, times: int) -> None:
    for _ in range(times):
        sem.release()


def sync_condition_waiter(cond: Any, ready: Any, woken: Any) -> None:
    """Wait on ``cond`` once; exit 0 only if woken by a notify (not a timeout)."""
    import sys

    with cond:
        ready.release()  # the parent takes cond's lock only once we sleep in wait()
        notified = cond.wait(30)
    woken.release()
    sys.exit(0 if notified else 3)


def sync_event_relay(first: Any, second: Any) -> None:
    """Set ``second`` once ``first`` is set."""
    if not first.wait(30):
        raise RuntimeError("first was never set")
    second.set()


def sync_barrier_party(barrier: Any) -> None:
    """Wait at ``barrier``; the exit code is 10 + this party's index."""
    import sys

    sys.exit(10 + barrier.wait(30))


def sync_bump(block: Any) -> None:
    """A barrier action: add 1 to the C int at ``block``."""
    import ctypes

    ctypes.c_int.from_buffer(block.buffer).value += 1


# ---- test_sharedctypes ----------------------------------------------------------

import ctypes as _ctypes  # noqa: E402 (this section's own import, kept with it)


class SctPoint(_ctypes.Structure):
    """A Structure for Value(SctPoint, ...) in a child."""

    _fields_ = (("x", _ctypes.c_int), ("y", _ctypes.c_double))


def sct_increment(value: Any) -> None:
    """The seed's 6.1: add 1 to a Value under its lock."""
    with value.get_lock():
        value.value += 1


def sct_bump_first(array: Any) -> None:
    """The seed's 6.2: add 1 to the first item of an Array."""
    array[0] += 1


def sct_add_many(value: Any, times: int) -> None:
    """Add 1 to ``value`` ``times`` times, each under its lock."""
    for _ in range(times):
        with value.get_lock():
            value.value += 1


def sct_add_many_beside(value: Any, array: Any, times: int) -> None:
    """Add 1 to ``value`` and to each item of ``array`` ``times`` times, each under its lock,
    the array's accesses in and out of ``with``."""
    for turn in range(times):
        with value.get_lock():
            value.value += 1
        if turn % 2:
            with array.get_lock():
                for index in range(len(array)):
                    array[index] += 1
        else:
            for index in range(len(array)):
                with array.get_lock():
                    array[index] += 1


def sct_hog_value_lock(value: Any, stop: Any) -> None:
    """Take and give back ``value``'s lock in a tight loop until ``stop`` is set."""
    lock = value.get_lock()
    while not stop.is_set():
        for _ in range(1000):
            with lock:
                value.value += 1


def sct_take_lock_beside_a_hog(value: Any, times: int, stop: Any) -> None:
    """Take ``value``'s lock ``times`` times while another process hogs it; then stop the hog."""
    try:
        for _ in range(times):
            with value.get_lock():
                value.value += 1
    finally:
        stop.set()


def sct_swap_values(conn: Any, objects: list[Any], new_values: list[Any]) -> None:
    """Send the ``.value`` of each object as the child sees it, then store ``new_values``."""
    conn.send([obj.value for obj in objects])
    for obj, new in zip(objects, new_values, strict=True):
        obj.value = new
    conn.close()


def sct_try_lock(conn: Any, value: Any) -> None:
    """Send whether the child can take ``value``'s lock without waiting, and with ``with value``."""
    took = value.get_lock().acquire(False)
    if took:
        value.get_lock().release()
    conn.send(took)
    conn.close()


def sct_raw_add(raw: Any, array: Any) -> None:
    """Add 1 to a raw value and to each item of a raw array (no lock: the parent waits)."""
    raw.value += 1
    for index in range(len(array)):
        array[index] += 1


def sct_chars(conn: Any, chars: Any) -> None:
    """Send a char array's value and raw bytes, then set its value to b'bye'."""
    conn.send(chars.value)
    conn.send(chars.raw)
    chars.value = b"bye"
    conn.close()


def sct_move_point(point: Any, points: Any) -> None:
    """Move a synchronized SctPoint and each point of a raw array of them."""
    with point.get_lock():
        point.x += 1
        point.y *= 2
    for item in points:
        item.x += 10


# ---- test_shared_memory -----------------------------------------------------------


def shm_attach_and_write(name: str, data: bytes) -> None:
    """Attach to the segment called ``name`` and write ``data`` at its start."""
    from serentak.shared_memory import SharedMemory

    shm = SharedMemory(name)
    try:
        buf = shm.buf
        if buf is None:
            raise RuntimeError("attached segment has no buffer")
        buf[: len(data)] = data
    finally:
        shm.close()


def shm_write(shm: Any, data: bytes) -> None:
    """Write ``data`` at the start of a SharedMemory the child was given."""
    shm.buf[: len(data)] = data
    shm.close()


def shm_create_and_report(conn: Any, link: Any) -> None:
    """Create a segment holding b'made', send its name, and exit without unlinking it.

    ``link`` (a SharedMemory or None) is there for what it carries: the
    parent's tracker link.
    """
    from serentak.shared_memory import SharedMemory

    shm = SharedMemory(create=True, size=64)
    shm.buf[:4] = b"made"
    conn.send(shm.name)
    shm.close()
    if link is not None:
        link.close()
    conn.close()


def shm_link_report(conn: Any) -> None:
    """Send whether this process is linked to a tracker, before and after receiving a segment."""
    from serentak._process import tracker as _tracker

    conn.send(_tracker.is_linked())
    shm = conn.recv()
    conn.send(_tracker.is_linked())
    conn.send(bytes(shm.buf[:4]))
    shm.close()
    conn.close()


def shm_create_and_wait(conn: Any, link: Any) -> None:
    """Create a tracked and an untracked segment, send what the parent checks, wait for SIGKILL."""
    import signal

    from serentak._process import tracker as _tracker
    from serentak.shared_memory import SharedMemory

    conn.send(_tracker.is_linked())
    tracked = SharedMemory(create=True, size=64)
    untracked = SharedMemory(create=True, size=64, track=False)
    conn.send(tracked.name)
    conn.send(untracked.name)
    while True:
        signal.pause()


def shm_list_update(shareable: Any, name: str) -> None:
    """Change items of a ShareableList received pickled, and of one attached by ``name``."""
    from serentak.shared_memory import ShareableList

    shareable[0] = "changed"
    shareable[1] += 1
    shareable.shm.close()
    attached: Any = ShareableList(name=name)
    attached[2] = None
    attached[-1] = b"x\x00"
    attached.shm.close()


# ---- test_queues ----------------------------------------------------------------


def queue_put_items(queue: Any, items: Any) -> None:
    """Put each of ``items`` in ``queue``, in order."""
    for item in items:
        queue.put(item)


def queue_seed_worker(queue: Any) -> None:
    """The seed's section 7.1 worker."""
    queue.put("Data dari proses!")


def queue_produce(queue: Any, tag: int, count: int) -> None:
    """Put ``(tag, 0)`` ... ``(tag, count - 1)``."""
    for index in range(count):
        queue.put((tag, index))


def queue_consume(queue: Any, results: Any) -> None:
    """Move items from ``queue`` to ``results`` until a None arrives."""
    while True:
        item = queue.get(timeout=30)
        if item is None:
            return
        results.put(item)


def queue_joinable_worker(queue: Any, results: Any) -> None:
    """Take tasks (numbers) until None; put each squared in ``results``; task_done() each."""
    while True:
        item = queue.get(timeout=30)
        try:
            if item is None:
                return
            results.put(item * item)
        finally:
            queue.task_done()


def queue_sizes_after_close(queue: Any, conn: Any) -> None:
    """Put, close and join the feeder; send what empty(), full() and qsize() give then
    (a value, or the exception's type name and message)."""
    queue.put("item")
    queue.close()
    queue.join_thread()
    answers = {}
    for name in ("empty", "full", "qsize"):
        try:
            answers[name] = getattr(queue, name)()
        except Exception as exc:
            answers[name] = (type(exc).__name__, str(exc))
    conn.send(answers)


def queue_block_in_get(queue: Any, ready: Any) -> None:
    """Say so, then wait in get() to be killed."""
    ready.set()
    queue.get()
    raise RuntimeError("got an item; should have been killed first")


def queue_get_then_wait(queue: Any, took: Any, results: Any) -> None:
    """Take one item, report it, then wait to be killed."""
    import signal

    results.put(queue.get(timeout=30))
    took.set()
    while True:
        signal.pause()


def queue_die_in_get(queue: Any, with_side_datagram: bool) -> None:
    """Die inside a get: holding the reader lock (as in the middle of a copy out of the ring),
    and, if ``with_side_datagram``, after taking the fds that travel beside the record."""
    import os
    import signal

    from serentak._os import _native

    channel = queue._channel
    lock = _native.Futex(channel._ring_view[_native.RING_READER_LOCK :])
    while not lock.compare_exchange(0, os.getpid()):
        pass
    if with_side_datagram:
        channel._reader.recvmsg(16, 4096)
    os.kill(os.getpid(), signal.SIGKILL)


def queue_die_in_put(queue: Any, how: str) -> None:
    """Die inside a put, holding the writer lock: after writing half a record past tail
    (``"half record"``), or after sending a record's fds beside the ring (``"side datagram"``)."""
    import array
    import os
    import signal
    import socket

    from serentak._os import _native

    channel = queue._channel
    view = channel._ring_view
    lock = _native.Futex(view[_native.RING_WRITER_LOCK :])
    while not lock.compare_exchange(0, os.getpid()):
        pass
    if how == "half record":
        tail = int.from_bytes(view[8:16], "little") & 0xFFFF_FFFF
        start = _native.RING_HEADER + tail % (len(view) - _native.RING_HEADER)
        view[start : start + 8] = (1000).to_bytes(4, "little") + (0).to_bytes(4, "little")
        view[start + 8 : start + 508] = b"\x80half" * 100
    else:
        tag = _native.Futex(view[_native.RING_SIDE_TAG :]).add(1)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [os.dup(0)]))]
        channel._writer.sendmsg([tag.to_bytes(4, "little")], rights)
    os.kill(os.getpid(), signal.SIGKILL)


def queue_put_forever(queue: Any, size: int, started: Any) -> None:
    """Put ``(i, bytes of size)`` for i = 0, 1, 2, ... until killed."""
    payload = b"p" * size
    index = 0
    while True:
        queue.put((index, payload))
        if index == 10:
            started.set()
        index += 1


def queue_put_and_exit(queue: Any, count: int, size: int) -> None:
    """Put ``count`` items of ``size`` bytes (more than the ring holds) and return at once."""
    payload = b"f" * size
    for index in range(count):
        queue.put((index, payload))


def queue_put_then_wait(queue: Any, count: int, size: int, done: Any) -> None:
    """Put ``count`` items (more than the ring holds: the rest wait in the feeder), say so,
    and wait to be killed."""
    import signal

    queue_put_and_exit(queue, count, size)
    done.set()
    while True:
        signal.pause()


def queue_put_cancel_and_exit(queue: Any, count: int, size: int) -> None:
    """Like queue_put_and_exit, but do not wait for the feeder at exit."""
    queue_put_and_exit(queue, count, size)
    queue.cancel_join_thread()


def queue_reply_on_connection(queue: Any) -> None:
    """Get a Connection from ``queue`` and send a greeting on it."""
    connection = queue.get(timeout=30)
    connection.send("hello through a queued connection")
    connection.close()


def queue_take_when_told(queue: Any, go: Any, count: int) -> None:
    """Wait for ``go`` (an Event), then take ``count`` items."""
    if not go.wait(30):
        raise RuntimeError("never told to take the items")
    for _ in range(count):
        queue.get(timeout=30)


def queue_simple_put(queue: Any, items: Any) -> None:
    """SimpleQueue: put each of ``items``."""
    for item in items:
        queue.put(item)


# ---- test_sync, test_sharedctypes: every primitive and ctypes type in a child ------------


def sync_hold_deep_until_killed(lock: Any, holding: Any, depth: int) -> None:
    """Take the RLock ``lock`` ``depth`` times, say so, and wait to be killed."""
    import signal

    for _ in range(depth):
        lock.acquire()
    holding.set()
    while True:
        signal.pause()


def sync_use_every_primitive(conn: Any, primitives: dict[str, Any]) -> None:
    """Use each primitive the parent passed (it holds the lock and the RLock, and has
    taken the bounded semaphore): report on ``conn`` what this process saw."""
    seen: dict[str, Any] = {}
    lock, rlock = primitives["Lock"], primitives["RLock"]
    # Held by the parent: not ours, whichever way acquire() is called.
    seen["Lock"] = [lock.acquire(False), lock.acquire(True, 0.05), lock.acquire(timeout=0)]
    seen["RLock"] = [rlock.acquire(False), rlock.acquire(block=True, timeout=0.05)]
    sem = primitives["Semaphore"]
    with sem as entered:
        seen["Semaphore"] = [entered, sem.acquire(True, 1), sem.acquire(False), sem.get_value()]
    bounded = primitives["BoundedSemaphore"]
    bounded.release()  # the parent's acquire, undone here
    try:
        bounded.release()
    except ValueError as exc:
        seen["BoundedSemaphore"] = [bounded.get_value(), str(exc)]
    condition = primitives["Condition"]
    with condition:
        seen["Condition"] = [condition.wait(0.01), condition.wait_for(lambda: True, 1)]
    primitives["Event"].set()
    seen["Barrier"] = primitives["Barrier"].wait(30)
    conn.send(seen)
    conn.close()


class SctUnion(_ctypes.Union):
    """A Union for Value(SctUnion) in a child."""

    _fields_ = (("i", _ctypes.c_int32), ("f", _ctypes.c_float))


def sct_set_fields(conn: Any, union: Any, grid: Any, array: Any) -> None:
    """Report what the child sees, then write through each object (a slice included)."""
    conn.send((union.i, [list(row) for row in grid], array[1:3], array.get_obj()[:]))
    union.f = 1.5
    grid[1][0] = 9.25
    with array:  # a synchronized array is its own context manager, on its lock
        array[1:3] = [20, 30]
    conn.close()


def sct_hold_value_lock_until_killed(value: Any, holding: Any) -> None:
    """Enter ``value``'s lock, half-update it, say so, and wait to be killed."""
    import signal

    value.get_lock().acquire()
    value.value = -1  # the critical section's work, interrupted for good
    holding.set()
    while True:
        signal.pause()


# ---- test_queues: Ctrl-C and crashes of SimpleQueue / JoinableQueue ---------------------


def queue_ctrl_c_set_up(queue: Any, wait: str) -> None:
    """Put what makes ``wait`` (e.g. ``"Queue.put"``) block in the parent: fill a Queue(2),
    leave one task unfinished for join(), or give a get() one item to take first."""
    if wait == "Queue.put":
        queue.put(0)
        queue.put(1)
    elif wait == "JoinableQueue.join":
        queue.put(0)
    else:
        queue.put("from the child")


def queue_relay(queue: Any, results: Any, joinable: bool) -> None:
    """get() (no timeout: works for SimpleQueue) until None; forward each item to
    ``results`` (bytes as their length and first byte); task_done() each if ``joinable``."""
    while True:
        item = queue.get()
        if isinstance(item, bytes):
            item = ("bytes", len(item), item[:1])
        results.put(item)
        if joinable:
            queue.task_done()
        if item is None:
            return


def queue_put_distinct(queue: Any, count: int, size: int) -> None:
    """Put ``count`` messages of ``size`` bytes, the i-th made of byte i."""
    for index in range(count):
        queue.put(bytes([index]) * size)
