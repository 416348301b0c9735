"""Pipe, Connection and wait() (serentak.connection, serentak._ipc.connection).

The first part uses both ends of a Pipe in this process; the second hands one
end to a child under every start method (the ``ctx`` fixture).
"""

from __future__ import annotations

import array
import math
import os
import pickle
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import _hostile
import _ipc_targets
import serentak
from _signals import interrupted_by_a_signal_to_another_thread
from _watch import until, waiting_in_kernel
from serentak import BufferTooShort, ProcessError
from serentak.connection import Connection, Pipe, wait

# How late a timed wait may return: generous, CI machines are slow and busy.
LATE = 1.0
# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0
BIG = 50 * 1024 * 1024


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    a, b = Pipe()
    with a, b:
        yield a, b


@pytest.fixture
def one_way() -> Iterator[tuple[Connection, Connection]]:
    reader, writer = Pipe(duplex=False)
    with reader, writer:
        yield reader, writer


class Unequal:
    """A class of this module, found again by import when unpickled."""

    def __init__(self, value: int) -> None:
        self.value = value


# ---- in one process -------------------------------------------------------------------


OBJECTS = [
    None,
    True,
    0,
    -(2**100),
    1.5,
    complex(1, -2),
    "",
    "text with ünïcode ✓",
    b"",
    b"\x00\xff" * 10,
    bytearray(b"mutable"),
    (1, (2, (3,))),
    [1, "two", [3.0]],
    {"key": [1, 2], 3: {"nested": None}},
    {1, 2, 3},
    frozenset({"a"}),
    range(3, 30, 3),
    _ipc_targets.ConnPoint(1, 2),
    list(range(10_000)),  # small enough for the socket buffer: nobody reads meanwhile
]


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda obj: type(obj).__name__)
def test_send_recv_round_trip(pipe: tuple[Connection, Connection], obj: Any) -> None:
    a, b = pipe
    a.send(obj)
    received = b.recv()
    assert received == obj
    assert type(received) is type(obj)


def test_send_recv_exceptions_functions_and_classes(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    a.send(ValueError("bad", 3))
    error = b.recv()
    assert type(error) is ValueError
    assert error.args == ("bad", 3)

    a.send(math.nan)
    assert math.isnan(b.recv())

    a.send((len, _ipc_targets.ConnPoint, Unequal))
    assert b.recv() == (len, _ipc_targets.ConnPoint, Unequal)

    instance = Unequal(7)
    a.send([instance, instance])
    first, second = b.recv()
    assert first is second  # shared references stay shared
    assert first.value == 7

    offset = 10
    a.send(lambda x: x + offset)  # by value: serentak ships lambdas and closures
    assert b.recv()(1) == 11


def test_both_directions_of_a_duplex_pipe(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    for end in pipe:
        assert end.readable
        assert end.writable
    a.send("to b")
    b.send("to a")
    assert b.recv() == "to b"
    assert a.recv() == "to a"


def test_one_way_pipe(one_way: tuple[Connection, Connection]) -> None:
    reader, writer = one_way
    assert (reader.readable, reader.writable) == (True, False)
    assert (writer.readable, writer.writable) == (False, True)
    writer.send("one way")
    assert reader.recv() == "one way"
    with pytest.raises(OSError, match="connection is read-only"):
        reader.send("back")
    with pytest.raises(OSError, match="connection is read-only"):
        reader.send_bytes(b"back")
    with pytest.raises(OSError, match="connection is write-only"):
        writer.recv()
    with pytest.raises(OSError, match="connection is write-only"):
        writer.recv_bytes()
    with pytest.raises(OSError, match="connection is write-only"):
        writer.recv_bytes_into(bytearray(10))
    with pytest.raises(OSError, match="connection is write-only"):
        writer.poll()


def test_many_messages_keep_their_order(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    received: list[Any] = []

    def read() -> None:
        for _ in range(2000):
            received.append(b.recv())
            received.append(b.recv_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    for number in range(2000):
        a.send(number)
        a.send_bytes(b"x" * (number % 700))
    reader.join(PATIENCE)
    assert not reader.is_alive()
    expected: list[Any] = []
    for number in range(2000):
        expected += [number, b"x" * (number % 700)]
    assert received == expected


@pytest.mark.parametrize("sender_is_main", [True, False], ids=["main-thread", "other-thread"])
def test_small_messages_through_a_full_socket_arrive_whole(
    pipe: tuple[Connection, Connection], sender_is_main: bool
) -> None:
    """Plain tuples sent faster than they are read fill the socket: the sends that
    find it full finish once there is room, whole and in order."""
    a, b = pipe
    count = 20_000  # a few MB: many times the socket buffer
    messages = [(number, b"x" * (number % 300)) for number in range(count)]
    received: list[Any] = []

    def send_all() -> None:
        for message in messages:
            a.send(message)

    def receive_all() -> None:
        for _ in range(count):
            received.append(b.recv())

    worker = threading.Thread(target=receive_all if sender_is_main else send_all)
    worker.start()
    (send_all if sender_is_main else receive_all)()
    worker.join(PATIENCE)
    assert not worker.is_alive()
    assert received == messages


def test_a_plain_message_bigger_than_a_small_frame(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    message = (1, b"y" * 100_000, {"z": "w" * 70_000})
    reader_got: list[Any] = []
    reader = threading.Thread(target=lambda: reader_got.append(b.recv()))
    reader.start()
    a.send(message)
    reader.join(PATIENCE)
    assert reader_got == [message]


# Payload sizes around the sender's copy into one buffer with its header (2 KiB)
# and around 64 KiB, where a send gives up the GIL.
EDGE_SIZES = [0, 1, 2047, 2048, 2049, 4096, 65535, 65536, 65537, 200_000]


def _small_send_buffer(conn: Connection) -> None:
    """Shrink ``conn``'s socket buffer (the kernel's minimum), so that sends of a few
    KiB find it full and are written in parts."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)


@pytest.mark.parametrize("sender_is_main", [True, False], ids=["main-thread", "other-thread"])
def test_frames_written_in_parts_arrive_whole(
    pipe: tuple[Connection, Connection], sender_is_main: bool
) -> None:
    """Plain messages and byte messages at the sender's size boundaries, through a
    socket too small for most of them: each send writes what fits, then the rest."""
    a, b = pipe
    _small_send_buffer(a)
    messages: list[Any] = []
    for size in EDGE_SIZES:
        messages += [b"p" * size, (size, "q" * min(size, 60_000))]
    received: list[Any] = []

    def send_all() -> None:
        for message in messages:
            if type(message) is bytes:
                a.send_bytes(message)
            else:
                a.send(message)

    def receive_all() -> None:
        for message in messages:
            received.append(b.recv_bytes() if type(message) is bytes else b.recv())

    worker = threading.Thread(target=receive_all if sender_is_main else send_all)
    worker.start()
    (send_all if sender_is_main else receive_all)()
    worker.join(PATIENCE)
    assert not worker.is_alive()
    assert received == messages


def test_a_connection_on_os_pipe_ends() -> None:
    """Connections over plain pipe ends (no socket): every size, both ways of sending."""
    read_end, write_end = os.pipe()
    with (
        Connection(read_end, writable=False) as reader,
        Connection(write_end, readable=False) as writer,
    ):
        messages: list[Any] = []
        for size in EDGE_SIZES:
            messages += [b"p" * size, {"size": size, "text": "q" * min(size, 60_000)}]
        received: list[Any] = []

        def receive_all() -> None:
            for message in messages:
                received.append(reader.recv_bytes() if type(message) is bytes else reader.recv())

        worker = threading.Thread(target=receive_all)
        worker.start()
        for message in messages:
            if type(message) is bytes:
                writer.send_bytes(message)
            else:
                writer.send(message)
        worker.join(PATIENCE)
        assert not worker.is_alive()
        assert received == messages
        with pytest.raises(OSError, match="read-only"):
            reader.send(1)
        with pytest.raises(OSError, match="write-only"):
            writer.recv()


def test_fds_and_small_messages_interleaved(pipe: tuple[Connection, Connection]) -> None:
    """Frames with fds between small frames read ahead in one batch: each fd group
    goes with its own frame, and the small ones around it are read as they were."""
    a, b = pipe
    read_end, write_end = os.pipe()
    try:
        for number in range(50):
            a.send(number)
            a.send_frame(b"with fds %d" % number, [read_end, write_end])
            a.send(("after", number))
        for number in range(50):
            assert b.recv() == number
            payload, fds = b.recv_frame()
            try:
                assert bytes(payload) == b"with fds %d" % number
                assert [os.fstat(fd).st_ino for fd in fds] == [
                    os.fstat(read_end).st_ino,
                    os.fstat(write_end).st_ino,
                ]
            finally:
                for fd in fds:
                    os.close(fd)
            assert b.recv() == ("after", number)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_message_that_fails_to_unpickle_is_consumed(pipe: tuple[Connection, Connection]) -> None:
    """Its error is raised; the messages read ahead with it are still received."""
    a, b = pipe
    a.send(1)
    a.send_bytes(b"\x80\x05not a pickle")
    a.send_bytes(b"")
    a.send(("after", 2))
    assert b.recv() == 1
    with pytest.raises(pickle.UnpicklingError):
        b.recv()
    with pytest.raises(EOFError):  # an empty payload: what pickle.loads(b"") raises
        b.recv()
    assert b.recv() == ("after", 2)


def test_a_closed_or_refused_end_is_not_read_from_its_buffer(
    pipe: tuple[Connection, Connection],
) -> None:
    """Messages read ahead are not handed out once the end is closed or unreadable."""
    a, b = pipe
    a.send_bytes(b"x" * 100)  # refused below: longer than maxlength
    a.send(1)
    a.send(2)
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(10)
    with pytest.raises(OSError, match="not readable any more"):
        b.recv()
    b.close()
    with pytest.raises(OSError, match="closed"):
        b.recv()
    with pytest.raises(OSError, match="closed"):
        b.send(1)


def test_send_bytes_with_offset_and_size(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    a.send_bytes(b"abcdef")
    a.send_bytes(b"abcdef", 2)
    a.send_bytes(b"abcdef", 1, 3)
    a.send_bytes(b"abcdef", 6)
    a.send_bytes(bytearray(b"abcdef"), 0, 0)
    a.send_bytes(memoryview(b"abcdef")[1:], 1, 2)
    numbers = array.array("i", [1, 2, 3, 4])
    a.send_bytes(numbers, numbers.itemsize, 2 * numbers.itemsize)  # offsets count bytes
    assert [b.recv_bytes() for _ in range(6)] == [b"abcdef", b"cdef", b"bcd", b"", b"", b"cd"]
    assert array.array("i", b.recv_bytes()) == array.array("i", [2, 3])


@pytest.mark.parametrize(
    ("offset", "size", "message"),
    [
        (-1, None, "offset is negative"),
        (7, None, "buffer length < offset"),
        (0, -1, "size is negative"),
        (2, 5, "buffer length < offset \\+ size"),
    ],
)
def test_send_bytes_refuses_bad_offset_and_size(
    pipe: tuple[Connection, Connection], offset: int, size: int | None, message: str
) -> None:
    a, b = pipe
    with pytest.raises(ValueError, match=message):
        a.send_bytes(b"abcdef", offset, size)
    a.send_bytes(b"still usable")
    assert b.recv_bytes() == b"still usable"


def test_recv_bytes_maxlength(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    a.send_bytes(b"12345")
    assert b.recv_bytes(5) == b"12345"
    with pytest.raises(ValueError):
        b.recv_bytes(-1)
    a.send_bytes(b"123456")
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(5)


def _peak_while(action: Callable[[], object]) -> int:
    """The most memory (bytes, by tracemalloc) that ``action`` had allocated at once."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        action()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_recv_bytes_refuses_a_long_message_before_reading_it(
    pipe: tuple[Connection, Connection],
) -> None:
    a, b = pipe
    os.write(b.fileno(), _hostile.header(1 << 30))  # announced, never sent

    def refused() -> None:
        with pytest.raises(OSError, match="bad message length"):
            a.recv_bytes(100)

    assert _peak_while(refused) < 1024 * 1024
    # The rest of the message is still in the stream: as with the stdlib, this end is
    # no longer readable rather than out of step.
    assert not a.readable
    with pytest.raises(OSError, match="not readable"):
        a.recv_bytes()
    a.send_bytes(b"this end still writes")
    assert b.recv_bytes() == b"this end still writes"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff" * 12, "bad message length"),  # fds flagged too, a u64 length of 2**64-1
        (_hostile.header(5, has_fds=True) + b"hello", "file descriptors"),
        (_hostile.header(1 << 62) + b"x", "end of file during message"),
        (_hostile.header(1 << 63), "bad message length"),
        (_hostile.header((1 << 64) - 1), "bad message length"),
    ],
)
@pytest.mark.parametrize("reader", ["recv", "recv_bytes", "recv_bytes_into"])
def test_malformed_frames_raise_oserror(
    pipe: tuple[Connection, Connection], data: bytes, message: str, reader: str
) -> None:
    a, b = pipe
    os.write(b.fileno(), data)
    b.close()
    receive = getattr(a, reader)
    args = (bytearray(10),) if reader == "recv_bytes_into" else ()
    with pytest.raises(OSError, match=message):
        receive(*args)


def test_a_frame_is_read_as_it_arrives(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    os.write(b.fileno(), _hostile.header(256 * 1024 * 1024))
    b.send_bytes(b"x" * 100_000)  # the start of the announced payload, then the end
    b.close()

    def truncated() -> None:
        with pytest.raises(OSError, match="end of file during message"):
            a.recv_bytes()

    assert _peak_while(truncated) < 4 * 1024 * 1024


def test_a_big_message_grows_its_buffer_to_its_exact_size(
    pipe: tuple[Connection, Connection],
) -> None:
    a, b = pipe
    for size in (3 * 1024 * 1024 + 7, 64 * 1024 * 1024 + 1):
        message = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        thread = threading.Thread(target=b.send_bytes, args=(message,))
        thread.start()
        assert a.recv_bytes() == message
        thread.join()


def test_recv_bytes_into(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    buffer = bytearray(b"." * 10)
    a.send_bytes(b"hello")
    assert b.recv_bytes_into(buffer) == 5
    assert buffer == b"hello....."
    a.send_bytes(b"abc")
    assert b.recv_bytes_into(buffer, 7) == 3
    assert buffer == b"hello..abc"
    a.send_bytes(b"")
    assert b.recv_bytes_into(buffer, 10) == 0
    view = memoryview(bytearray(4))
    a.send_bytes(b"wxyz")
    assert b.recv_bytes_into(view) == 4
    assert view.tobytes() == b"wxyz"


def test_recv_bytes_into_an_array_as_documented(pipe: tuple[Connection, Connection]) -> None:
    """The example of the multiprocessing documentation."""
    a, b = pipe
    arr1 = array.array("i", range(5))
    arr2 = array.array("i", [0] * 10)
    a.send_bytes(arr1)
    count = b.recv_bytes_into(arr2)
    assert count == len(arr1) * arr1.itemsize
    assert arr2 == array.array("i", [0, 1, 2, 3, 4, 0, 0, 0, 0, 0])


def test_recv_bytes_into_a_buffer_too_short(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    a.send_bytes(b"too long for it")
    with pytest.raises(BufferTooShort) as caught:
        b.recv_bytes_into(bytearray(4))
    assert caught.value.args[0] == b"too long for it"
    assert isinstance(caught.value, ProcessError)
    assert serentak.BufferTooShort is BufferTooShort

    a.send_bytes(b"abc")
    with pytest.raises(BufferTooShort) as caught:
        b.recv_bytes_into(bytearray(4), 2)  # fits the buffer, not after the offset
    assert caught.value.args[0] == b"abc"
    a.send_bytes(b"after")
    assert b.recv_bytes() == b"after"  # the stream stays in step


@pytest.mark.parametrize("offset", [-1, 11])
def test_recv_bytes_into_refuses_a_bad_offset(
    pipe: tuple[Connection, Connection], offset: int
) -> None:
    _a, b = pipe
    with pytest.raises(ValueError):
        b.recv_bytes_into(bytearray(10), offset)


def test_poll(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    assert b.poll() is False
    started = time.monotonic()
    assert b.poll(0.2) is False
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 0.2 + LATE

    a.send("something")
    assert b.poll() is True
    assert b.poll(0.2) is True
    assert b.poll(None) is True
    assert b.recv() == "something"
    assert b.poll() is False


def test_poll_wakes_up_when_a_message_arrives(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    go = threading.Event()

    def send_later() -> None:
        go.wait(PATIENCE)
        a.send("late")

    sender = threading.Thread(target=send_later)
    sender.start()
    go.set()
    started = time.monotonic()
    assert b.poll(PATIENCE) is True
    assert time.monotonic() - started < LATE
    assert b.recv() == "late"
    sender.join()


def test_messages_already_read_ahead_count_as_ready(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    for number in range(3):
        a.send(number)
    assert b.recv() == 0  # the others may be buffered in b by now
    assert b.poll() is True
    assert wait([b], timeout=0) == [b]
    assert b.recv() == 1
    assert wait([b], timeout=0) == [b]
    assert b.recv() == 2
    assert wait([b], timeout=0) == []


def test_eof_when_the_other_end_is_closed(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    a.send("last words")
    a.close()
    assert b.poll(PATIENCE) is True
    assert b.recv() == "last words"
    assert b.poll(PATIENCE) is True  # readable: recv will not block, it raises
    with pytest.raises(EOFError):
        b.recv()
    with pytest.raises(EOFError):
        b.recv_bytes()
    with pytest.raises(EOFError):
        b.recv_bytes_into(bytearray(4))


def test_send_to_a_closed_end_raises(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    b.close()
    with pytest.raises(BrokenPipeError):
        a.send("nobody listens")
    with pytest.raises(BrokenPipeError):
        a.send_bytes(b"nobody listens")


def test_unpicklable_object_is_not_sent(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    with pytest.raises(TypeError, match="lock"):
        a.send(threading.Lock())
    a.send("next")
    assert b.recv() == "next"  # nothing half-sent is in the way


def test_fileno_closed_and_close(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    assert isinstance(a.fileno(), int)
    assert a.fileno() >= 0
    assert a.fileno() != b.fileno()
    assert (a.closed, b.closed) == (False, False)
    a.close()
    assert (a.closed, b.closed) == (True, False)
    a.close()  # closing twice is harmless
    assert (a.closed, b.closed) == (True, False)


def test_a_closed_connection_refuses_use(pipe: tuple[Connection, Connection]) -> None:
    a, _b = pipe
    a.close()
    calls = [
        lambda: a.send(1),
        lambda: a.send_bytes(b"1"),
        a.recv,
        a.recv_bytes,
        lambda: a.recv_bytes_into(bytearray(1)),
        a.poll,
        a.fileno,
    ]
    for call in calls:
        with pytest.raises(OSError, match="handle is closed"):
            call()


def test_context_manager_closes() -> None:
    a, b = Pipe()
    with a as entered, b:
        assert entered is a
        assert (a.closed, b.closed) == (False, False)
    assert (a.closed, b.closed) == (True, True)


def test_pipe_of_a_context_and_of_the_module() -> None:
    for make in (serentak.Pipe, serentak.get_context("spawn").Pipe):
        a, b = make(duplex=False)
        with a, b:
            assert isinstance(a, Connection)
            b.send_bytes(b"x")
            assert a.recv_bytes() == b"x"


def test_wait_on_connections(pipe: tuple[Connection, Connection]) -> None:
    a, b = pipe
    c, d = Pipe()
    with c, d:
        started = time.monotonic()
        assert wait([b, d], timeout=0.2) == []
        assert 0.19 <= time.monotonic() - started < 0.2 + LATE
        assert wait([b, d], timeout=0) == []

        c.send("to d")
        assert wait([b, d]) == [d]
        a.send("to b")
        ready = wait([b, d], timeout=PATIENCE)
        assert ready == [b, d]
        assert ready[0] is b
        assert b.recv() == "to b"
        assert d.recv() == "to d"

        c.close()
        assert wait([b, d], timeout=PATIENCE) == [d]  # the other end closed: ready, for EOFError
    assert wait([], timeout=0) == []


def test_wait_on_anything_with_a_fileno(pipe: tuple[Connection, Connection]) -> None:
    _a, b = pipe
    left, right = socket.socketpair()
    with left, right:
        assert wait([b, right], timeout=0) == []
        left.send(b"x")
        assert wait([b, right], timeout=PATIENCE) == [right]
        assert wait([b, right.fileno()], timeout=PATIENCE) == [right.fileno()]


# ---- with children under every start method ------------------------------------------------


def test_connection_as_a_process_argument(ctx: Any) -> None:
    """The seed's example 7.2, then EOF once the child has exited and our copy is closed."""
    parent_conn, child_conn = ctx.Pipe()
    with parent_conn, child_conn:
        process = ctx.Process(target=_ipc_targets.conn_hello, args=(child_conn,))
        process.start()
        process.join(PATIENCE)
        assert process.exitcode == 0
        assert parent_conn.recv() == "Hello from child process"
        child_conn.close()
        with pytest.raises(EOFError):
            parent_conn.recv()


def test_objects_round_trip_through_a_child(ctx: Any) -> None:
    objects = [
        None,
        "text",
        b"bytes",
        [1, {2: (3,)}],
        _ipc_targets.ConnPoint(3, 4),
        ValueError("sent back"),
        {"x" * 1000: list(range(1000))},
    ]
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(target=_ipc_targets.conn_echo, args=(there, len(objects)))
        process.start()
        there.close()
        echoed = []
        for obj in objects:
            here.send(obj)
            echoed.append(here.recv())
        process.join(PATIENCE)
    assert process.exitcode == 0
    assert echoed[:5] == objects[:5]
    assert type(echoed[5]) is ValueError
    assert echoed[5].args == ("sent back",)
    assert echoed[6] == objects[6]


def test_50_megabytes_through_a_child(ctx: Any) -> None:
    big = bytes(range(256)) * (BIG // 256)
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(target=_ipc_targets.conn_echo_bytes_then_object, args=(there,))
        process.start()
        there.close()
        here.send_bytes(big)
        assert here.recv_bytes() == big
        here.send({"big": big})
        assert here.recv() == {"big": big}
        process.join(PATIENCE)
    assert process.exitcode == 0


def test_many_messages_from_a_child_in_order(ctx: Any) -> None:
    count = 10_000
    here, there = ctx.Pipe(duplex=False)
    with here, there:
        process = ctx.Process(target=_ipc_targets.conn_send_many, args=(there, count))
        process.start()
        there.close()
        received = [here.recv() for _ in range(count)]
        with pytest.raises(EOFError):
            here.recv()
        process.join(PATIENCE)
    assert received == list(range(count))
    assert process.exitcode == 0


def test_messages_of_every_size_from_a_child(ctx: Any) -> None:
    """Sizes around the reader's internal buffer and the frame header's boundaries."""
    sizes = [0, 1, 3, 4, 5, 1000, 65535, 65536, 65537, 262139, 262140, 262144, 262145, 10**6]
    sizes += [7, 0, 262144 * 3 + 1, 2]
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(target=_ipc_targets.conn_send_sizes, args=(there, sizes))
        process.start()
        there.close()
        for index, size in enumerate(sizes):
            assert here.recv_bytes() == bytes([index % 256]) * size, f"message {index}"
        process.join(PATIENCE)
    assert process.exitcode == 0


def test_connections_among_small_messages_from_a_child(ctx: Any) -> None:
    """Messages carrying fds (a Pipe's end) among a stream of small plain ones."""
    count, every = 2000, 97
    here, there = ctx.Pipe(duplex=False)
    with here, there:
        process = ctx.Process(
            target=_ipc_targets.conn_send_with_connections, args=(there, count, every)
        )
        process.start()
        there.close()
        for number in range(count):
            assert here.recv() == (number, b"x" * (number % 300))
            if number % every == 0:
                with here.recv() as passed:
                    assert passed.recv() == ("through", number)
        with pytest.raises(EOFError):
            here.recv()
        process.join(PATIENCE)
    assert process.exitcode == 0


def test_wait_on_connections_and_sentinels(ctx: Any) -> None:
    go_here, go_there = ctx.Pipe()
    out_here, out_there = ctx.Pipe()
    with go_here, go_there, out_here, out_there:
        process = ctx.Process(
            target=_ipc_targets.conn_send_when_told, args=(go_there, out_there, "result")
        )
        process.start()
        go_there.close()
        out_there.close()
        objects = [out_here, process.sentinel]
        assert wait(objects, timeout=0.1) == []

        go_here.send("go")
        ready = wait(objects, timeout=PATIENCE)
        assert out_here in ready
        assert out_here.recv() == "result"
        assert wait([process.sentinel], timeout=PATIENCE) == [process.sentinel]
        # The child has ended and closed its end: both are ready now.
        assert wait(objects, timeout=PATIENCE) == objects
        with pytest.raises(EOFError):
            out_here.recv()
        process.join(PATIENCE)
    assert process.exitcode == 0


def test_connection_sent_over_a_connection(ctx: Any) -> None:
    channel_here, channel_there = ctx.Pipe()
    a, b = ctx.Pipe()
    with channel_here, channel_there, a, b:
        process = ctx.Process(target=_ipc_targets.conn_relay_received, args=(channel_there,))
        process.start()
        channel_there.close()
        channel_here.send(b)
        b.close()
        assert a.recv() == "relayed"
        with pytest.raises(EOFError):
            a.recv()
        process.join(PATIENCE)
    assert process.exitcode == 0


# ---- a signal taken by another thread ----------------------------------------------------

CONNECTION_WAITS = ["recv", "recv on a pipe end", "poll", "wait", "send"]


@pytest.mark.parametrize("call", CONNECTION_WAITS)
def test_a_signal_taken_by_another_thread_interrupts_a_wait(ctx: Any, call: str) -> None:
    """The kernel may hand a process's SIGINT to any thread. One taken by another thread
    must still interrupt the main thread waiting on a connection: for a message from a
    child that sends only when told, or for room to send to one that reads only when told."""
    go_here, go_there = ctx.Pipe()
    if call == "recv on a pipe end":
        reader, writer = os.pipe()
        here, there = Connection(reader, writable=False), Connection(writer, readable=False)
    else:
        here, there = ctx.Pipe()
    with go_here, go_there, here, there:
        if call == "send":
            process = ctx.Process(
                target=_ipc_targets.conn_drain_when_told, args=(go_there, there, here)
            )
        else:
            process = ctx.Process(
                target=_ipc_targets.conn_send_when_told, args=(go_there, there, "released")
            )
        process.start()
        go_there.close()
        there.close()
        blocking_calls: dict[str, Callable[[], object]] = {
            "recv": here.recv,
            "recv on a pipe end": here.recv,
            "poll": lambda: here.poll(None),
            "wait": lambda: wait([here]),
            "send": lambda: here.send_bytes(bytes(BIG)),  # far more than the socket holds
        }
        with interrupted_by_a_signal_to_another_thread(lambda: go_here.send("go")):
            blocking_calls[call]()
        if call != "send":
            assert here.recv() == "released"
        here.close()  # the draining child reads to the end
        process.join(PATIENCE)
    assert process.exitcode == 0


TIMEVAL = struct.Struct("ll")


def receive_timeout(conn: Connection) -> tuple[int, int]:
    """The SO_RCVTIMEO of ``conn``'s socket (seconds, microseconds)."""
    with socket.socket(fileno=os.dup(conn.fileno())) as view:
        packed = view.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL.size)
    seconds, micros = TIMEVAL.unpack(packed)
    return seconds, micros


def test_a_wait_in_the_main_thread_leaves_no_timeout_on_the_socket(
    pipe: tuple[Connection, Connection],
) -> None:
    """The main thread waits for bytes in recvmsg with the socket's receive timeout set to
    a span; the timeout is cleared once the message is in (and was never set for a message
    that was there already)."""
    a, b = pipe
    b.send("there already")
    assert a.recv() == "there already"
    assert receive_timeout(a) == (0, 0)

    def send_once_waited_for() -> None:
        if waiting_in_kernel(threading.main_thread()):
            b.send("came later")

    sender = threading.Thread(target=send_once_waited_for)
    sender.start()
    try:
        assert a.recv() == "came later"
    finally:
        sender.join(PATIENCE)
    assert receive_timeout(a) == (0, 0)


def test_a_timeout_left_on_the_socket_does_not_end_another_threads_receive(
    pipe: tuple[Connection, Connection],
) -> None:
    """A process killed while its main thread waited leaves the socket's receive timeout
    set (see recv_into in src/native/proc.c): a receive in another thread, which gives no
    span, still waits for the message."""
    a, b = pipe
    with socket.socket(fileno=os.dup(a.fileno())) as view:
        view.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, TIMEVAL.pack(0, 10_000))
    received: list[Any] = []
    receiver = threading.Thread(target=lambda: received.append(a.recv()))
    receiver.start()
    try:
        timed_out = time.monotonic() + 0.1  # ten of the socket's timeouts
        assert until(lambda: time.monotonic() > timed_out)
        assert receiver.is_alive(), "the receive ended without a message"
        b.send("worth the wait")
    finally:
        receiver.join(PATIENCE)
    assert received == ["worth the wait"]
