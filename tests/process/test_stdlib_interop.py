"""Objects of the stdlib's multiprocessing given to serentak's processes: they work, or
fail at once with a TypeError naming the fix; never a hang or a lost item."""

from __future__ import annotations

import multiprocessing
import socket
from typing import Any

import pytest

import _process_targets

PATIENCE = 20.0


def test_a_stdlib_queue_written_by_a_child_keeps_the_item(ctx: Any) -> None:
    """Under fork the child inherits the queue and flushes it at exit, as the stdlib's own
    child does; under spawn and forkserver the start fails with a TypeError that names
    serentak's Queue."""
    queue = multiprocessing.get_context("fork").Queue()
    try:
        queue.put("from the parent")  # the parent's feeder thread exists before the fork
        process = ctx.Process(
            target=_process_targets.child_queue_put, args=(queue, "from the child")
        )
        if ctx.get_start_method() != "fork":
            with pytest.raises(TypeError, match="use serentak's Queue"):
                process.start()
            return
        process.start()
        process.join(PATIENCE)
        assert process.exitcode == 0
        assert {queue.get(timeout=PATIENCE), queue.get(timeout=PATIENCE)} == {
            "from the parent",
            "from the child",
        }
        process.close()
    finally:
        queue.close()
        queue.join_thread()


def test_a_stdlib_pipe_end_works_in_a_child(ctx: Any) -> None:
    reader, writer = multiprocessing.Pipe()
    with reader, writer:
        process = ctx.Process(
            target=_process_targets.child_send_on, args=(writer, "through the stdlib")
        )
        process.start()
        assert reader.poll(PATIENCE)
        assert reader.recv() == "through the stdlib"
        process.join(PATIENCE)
        assert process.exitcode == 0
        process.close()


def test_sockets_and_connections_travel_between_running_processes(ctx: Any) -> None:
    """Sent over a Connection to a process already running, a socket or a Connection
    arrives alive, even when the sender closes its own right after sending."""
    control, theirs = ctx.Pipe()
    process = ctx.Process(target=_process_targets.child_pass_handles, args=(theirs,))
    process.start()
    theirs.close()
    ours, given = socket.socketpair()
    with control, ours:
        control.send(given)
        given.close()
        assert ours.recv(100) == b"written by the child"
        with control.recv() as sock:
            assert sock.recv(100) == b"through a socket made by the child"
        with control.recv() as conn:
            assert conn.recv() == "through a Connection made by the child"
    process.join(PATIENCE)
    assert process.exitcode == 0
    process.close()
