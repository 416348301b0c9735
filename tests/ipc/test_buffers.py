"""Big buffers out of band: numpy arrays, bytes, bytearrays and memoryviews of 64 KiB or
more travel through shared memory (pickle protocol 5), in both directions, through Pipes
and pool tasks; what is received stays valid as long as it is held, whoever dies; arrays
born shared (serentak.shared_memory.empty and friends) travel without any copy."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import _buffer_targets as targets
import serentak
from serentak import shared_memory

PATIENCE = 20.0
MIB = 1 << 20


def receive(conn: Any) -> Any:
    assert conn.poll(PATIENCE), "nothing arrived in time"
    return conn.recv()


def started(ctx: Any, target: Any, *args: Any) -> tuple[Any, Any]:
    """A child running ``target(child_end, *args)``, and our end of its Pipe."""
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=target, args=(theirs, *args))
    process.start()
    theirs.close()
    return process, ours


def test_big_buffers_round_trip_through_a_pipe(ctx: Any) -> None:
    process, conn = started(ctx, targets.echo_until_none)
    try:
        array = np.random.default_rng(1).random((1024, 1024))  # 8 MiB
        grid = memoryview(bytearray(np.arange(64 * 1024, dtype=np.float64).tobytes()))
        shaped = grid.cast("B").cast("d", (256, 256))
        messages: list[Any] = [
            array,
            bytes(range(256)) * 4096,  # 1 MiB
            bytearray(b"x" * MIB),
            np.arange(10),  # small: in band
            {"nested": [array[::2], b"y" * (2 * MIB)]},  # a strided view: copied whole
        ]
        for message in messages:
            conn.send(message)
            back = receive(conn)
            assert type(back) is type(message)
            if isinstance(message, np.ndarray):
                np.testing.assert_array_equal(back, message)
            elif isinstance(message, dict):
                np.testing.assert_array_equal(back["nested"][0], message["nested"][0])
                assert back["nested"][1] == message["nested"][1]
            else:
                assert back == message
        conn.send(shaped)
        view = receive(conn)
        assert (view.format, view.shape) == ("d", (256, 256))
        assert view.tobytes() == shaped.tobytes()
        conn.send(None)
        process.join(PATIENCE)
        assert process.exitcode == 0
    finally:
        conn.close()
        process.kill()
        process.join()


def test_held_arrays_stay_valid_while_the_sender_sends_more(ctx: Any) -> None:
    """The sender reuses a segment only once the receiver has let go of what it sent there."""
    process, conn = started(ctx, targets.send_filled, 12, MIB // 8)  # 12 x 1 MiB
    try:
        held = [receive(conn) for _ in range(12)]
        for i, array in enumerate(held):
            assert array.shape == (MIB // 8,)
            assert (array == float(i)).all(), f"array {i} was overwritten"
        conn.send(None)
        process.join(PATIENCE)
        assert process.exitcode == 0
    finally:
        conn.close()
        process.kill()
        process.join()


def test_a_received_array_outlives_its_sender(ctx: Any) -> None:
    process, conn = started(ctx, targets.send_one_and_exit, MIB)
    try:
        array = receive(conn)
        process.join(PATIENCE)
        assert process.exitcode == 0
        assert array.sum() == float(sum(range(MIB)))
    finally:
        conn.close()


def test_a_receiver_killed_while_holding_an_array_costs_nothing(ctx: Any) -> None:
    """Its segment stays busy in the sender, which takes another; nothing leaks (the leak
    check runs after the test)."""
    process, conn = started(ctx, targets.hold_until_killed)
    try:
        array = np.ones(MIB)
        conn.send(array)
        assert receive(conn) == float(MIB)
        process.kill()
        process.join(PATIENCE)
        assert process.exitcode == -signal.SIGKILL
        other, conn2 = started(ctx, targets.echo_until_none)
        try:
            conn2.send(array * 3)
            np.testing.assert_array_equal(receive(conn2), array * 3)
            conn2.send(None)
            other.join(PATIENCE)
        finally:
            conn2.close()
            other.kill()
            other.join()
    finally:
        conn.close()


def test_pool_tasks_take_and_return_big_arrays(ctx: Any) -> None:
    arrays = [np.full((256, 1024), float(i)) for i in range(6)]  # 2 MiB each
    with ctx.Pool(2) as pool:
        assert pool.map(targets.total, arrays) == [float(i * 256 * 1024) for i in range(6)]
        for i, doubled in enumerate(pool.map(targets.double, arrays, chunksize=1)):
            assert doubled.shape == (256, 1024)
            assert (doubled == 2.0 * i).all()
        result = pool.apply_async(targets.double, (arrays[5],)).get(PATIENCE)
        assert (result == 10.0).all()


def test_an_array_born_shared_is_the_same_memory_in_the_worker(ctx: Any) -> None:
    shared = shared_memory.full((512, 1024), 1.0)  # 4 MiB
    assert shared.dtype == np.float64
    with ctx.Pool(2) as pool:
        pool.apply(targets.fill, (shared, 7.0))
        assert (shared == 7.0).all(), "the worker wrote to a copy"
        # Sent back, it is still the same memory.
        back = pool.apply(targets.same, (shared[100:200],))
        back[0, 0] = -1.0
        assert shared[100, 0] == -1.0
        assert pool.map(targets.total, [shared] * 4) == [float(shared.sum())] * 4


def test_shared_array_helpers() -> None:
    zeros = shared_memory.zeros((3, 4), dtype="int32")
    assert zeros.shape == (3, 4)
    assert zeros.dtype == np.int32
    assert not zeros.any()
    copied = shared_memory.copy_of(np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(copied, np.arange(6).reshape(2, 3))
    assert shared_memory.empty(5).shape == (5,)
    assert shared_memory.empty(0).size == 0
    with pytest.raises(ValueError, match="shape"):
        shared_memory.empty((-1, 2))
    assert serentak.shared_memory.full(2, 3).tolist() == [3, 3]


BIG_BYTES_MESSAGES: dict[str, Callable[[], Any]] = {
    "bytes": lambda: b"b" * MIB,
    "bytearray": lambda: bytearray(b"a" * MIB),
    "in a tuple": lambda: (1, b"b" * MIB),
    "a task's arguments": lambda: ((b"b" * MIB, "name"), {"data": bytearray(MIB)}),
    "a starmap chunk": lambda: [(i, b"b" * MIB) for i in range(3)],
}


@pytest.mark.parametrize("shape", list(BIG_BYTES_MESSAGES))
def test_big_bytes_and_bytearrays_travel_beside_the_pickle(shape: str) -> None:
    """On every Python: the C pickler writes bytes and bytearray itself, in band,
    unless they are handed to it wrapped (see buffers._lift)."""
    from serentak._ipc.buffers import pack, unpack

    message = BIG_BYTES_MESSAGES[shape]()
    packed = pack(message)
    try:
        assert packed.buffered >= MIB, packed
        assert len(packed.payload) < 4096, packed
        back = unpack(packed.payload, list(packed.fds))
        packed.fds = ()  # unpack took them
    finally:
        packed.close()
    assert back == message
    assert repr(back) == repr(message)  # the same types, bytes and bytearray alike


def test_pool_tasks_take_and_return_big_bytes(ctx: Any) -> None:
    data, mutable = b"b" * (2 * MIB), bytearray(b"a" * MIB)
    with ctx.Pool(2) as pool:
        assert pool.apply(targets.same, (data,)) == data
        back = pool.apply(targets.same, (mutable,))
        assert type(back) is bytearray
        assert back == mutable
        assert pool.map(len, [data, mutable]) == [2 * MIB, MIB]


def test_results_kept_from_one_map_are_not_overwritten_by_the_next(ctx: Any) -> None:
    """The workers reuse their segments for later results only once the parent has let
    go of the earlier ones: no result aliases memory that is filled again."""
    sizes = [MIB // 8, 4 * MIB // 8]  # two segment sizes: small results, then big
    with ctx.Pool(2) as pool:
        kept = []
        for turn in range(4):
            arrays = [np.full(sizes[i % 2], float(10 * turn + i)) for i in range(6)]
            kept.append(pool.map(targets.double, arrays, chunksize=1))
        for turn, results in enumerate(kept):
            for i, result in enumerate(results):
                assert result.shape == (sizes[i % 2],)
                assert (result == 2.0 * (10 * turn + i)).all(), f"result {turn}.{i} was overwritten"


def test_a_message_takes_the_smallest_free_segment_that_fits() -> None:
    """A small message must not take the big segment that the next big one needs (it
    would then pay for fresh pages): nothing new is created for either."""
    from serentak._ipc.buffers import pack, unpack

    def inode(packed: Any) -> int:
        return os.fstat(packed.fds[-1]).st_ino

    def round_trip(message: Any) -> tuple[int, Any]:
        packed = pack(message)
        try:
            number = inode(packed)
            back = unpack(packed.payload, list(packed.fds))
            packed.fds = ()  # unpack took them
        finally:
            packed.close()
        return number, back

    big, small = np.ones(4 * MIB // 8), np.ones(MIB // 8)
    big_first, back_big = round_trip(big)
    small_first, back_small = round_trip(small)  # big's segment is still held: a new one
    assert small_first != big_first
    del back_big, back_small  # both segments free
    small_again, back_small = round_trip(small)
    assert small_again == small_first
    big_again, back_big = round_trip(big)  # while the small message is held
    assert big_again == big_first
    np.testing.assert_array_equal(back_big, big)
    np.testing.assert_array_equal(back_small, small)


def test_results_of_a_worker_that_died_stay_valid(ctx: Any) -> None:
    """Arrays a worker returned live in its segments: they stay readable after it is
    killed, and nothing is left behind (the leak check runs after the test)."""
    arrays = [np.full(MIB // 8, float(i)) for i in range(4)]
    with ctx.Pool(2) as pool:
        results = pool.map(targets.double_or_die, arrays, chunksize=1)
        with pytest.raises(serentak.WorkerLostError, match="SIGKILL"):
            pool.map(targets.double_or_die, [None, None], chunksize=1)
        for i, result in enumerate(results):
            assert (result == 2.0 * i).all()
        assert (pool.apply(targets.double_or_die, (arrays[3],)) == 6.0).all()
