"""Hostile frames: random and truncated frames, huge and negative lengths, fds
announced that never come, random bytes in place of the handshake; on a Pipe, a
Listener with and without a key, and a manager's server.

Whatever arrives, a reader raises OSError or EOFError (AuthenticationError during
the handshake), never an internal error; it allocates no more than what has
arrived (plus its fixed buffers), whatever length the peer announced; and a
server goes on serving the next client. The inputs come from a seeded
``random.Random``: a failure names the input, and the same seed gives it again.

The servers run in children, under every start method; their peak memory is
``VmHWM`` from /proc, checked after each input so that a reader which allocates
what it is told fails on the first such input (the inputs are chosen so that
such a reader cannot fill the machine first: see _hostile).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

import _hostile
from serentak.connection import Client, Pipe
from serentak.managers import SyncManager

SEED = 1414
PATIENCE = 20.0
# How far a server's (or this process's) peak memory may rise over a run: the
# read buffer of a connection or two, never an announced length.
MEMORY_BOUND_KIB = 6 * 1024
REFUSALS = frozenset(
    {"AuthenticationError", "EOFError", "OSError", "ConnectionResetError", "BrokenPipeError"}
)


@contextlib.contextmanager
def _stopped_at_the_end(child: Any) -> Iterator[None]:
    """Kill ``child`` if it is still running when the block ends (a failed assertion)."""
    try:
        yield
    finally:
        if child.is_alive():
            child.kill()
        child.join(PATIENCE)


def _receive(conn: Any, reader: str) -> Any:
    if reader == "recv":
        return conn.recv()
    if reader == "recv_bytes":
        return conn.recv_bytes()
    if reader == "recv_bytes_max":
        return conn.recv_bytes(256)
    return conn.recv_bytes_into(bytearray(4096))


@pytest.mark.parametrize("reader", ["recv", "recv_bytes", "recv_bytes_max", "recv_bytes_into"])
def test_pipe(reader: str) -> None:
    rng = random.Random(SEED)
    inputs = _hostile.hostile_inputs(rng, 300)
    tracemalloc.start()
    try:
        for index, data in enumerate(inputs):
            a, b = Pipe()
            with a, b:
                sock = socket.socket(fileno=os.dup(b.fileno()))
                with sock, open(os.devnull, "rb") as stray:
                    # Some inputs carry a descriptor: it must be closed with the connection.
                    if rng.random() < 0.3:
                        socket.send_fds(sock, [data], [stray.fileno()])
                    else:
                        sock.sendall(data)
                b.close()
                tracemalloc.reset_peak()
                start = tracemalloc.get_traced_memory()[0]
                try:
                    while True:
                        _receive(a, reader)
                except (OSError, EOFError):
                    pass
                except Exception as exc:
                    # Only a whole frame's payload reaches the unpickler, whose errors are its own.
                    if not (reader == "recv" and _hostile.is_complete_frame(data)):
                        raise AssertionError(f"input {index} {data[:40]!r}: {exc!r}") from exc
                peak = tracemalloc.get_traced_memory()[1] - start
                assert peak < MEMORY_BOUND_KIB * 1024, f"input {index} {data[:40]!r}: {peak} bytes"
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("authkey", [b"key", None], ids=["authkey", "no-authkey"])
def test_listener(ctx: Any, authkey: bytes | None) -> None:
    inputs = _hostile.hostile_inputs(random.Random(SEED), 60)
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_hostile.listener_server, args=(theirs, authkey, len(inputs) + 1))
    child.start()
    theirs.close()
    with ours, _stopped_at_the_end(child):
        assert ours.poll(PATIENCE)
        pid, address = ours.recv()
        start = _hostile.vm_hwm_kib(pid)
        for index, data in enumerate(inputs):
            _hostile.send_and_hang_up(address, data, PATIENCE)
            assert ours.poll(PATIENCE)
            outcome = ours.recv()
            refusal = outcome[2] if authkey is None else outcome
            assert refusal in REFUSALS, f"input {index} {data[:40]!r}: {outcome!r}"
            growth = _hostile.vm_hwm_kib(pid) - start
            assert growth < MEMORY_BOUND_KIB, f"input {index} {data[:40]!r}: +{growth} KiB"
        # The listener still serves a client that follows the protocol.
        with Client(address, authkey=authkey) as client:
            client.send_bytes(b"still serving")
        assert ours.poll(PATIENCE)
        assert ours.recv() == ("served", [b"still serving"], "EOFError")
        child.join(PATIENCE)
        assert child.exitcode == 0


def test_manager(ctx: Any) -> None:
    inputs = _hostile.hostile_inputs(random.Random(SEED), 60)
    ours, theirs = ctx.Pipe()
    manager = SyncManager(ctx=ctx)
    manager.start(_hostile.report_pid, (theirs,))
    theirs.close()
    try:
        with ours:
            assert ours.poll(PATIENCE)
            pid = ours.recv()
        start = _hostile.vm_hwm_kib(pid)
        for index, data in enumerate(inputs):
            # Returns when the server has closed the connection: it refused the input.
            _hostile.send_and_hang_up(manager.address, data, PATIENCE)
            growth = _hostile.vm_hwm_kib(pid) - start
            assert growth < MEMORY_BOUND_KIB, f"input {index} {data[:40]!r}: +{growth} KiB"
        shared = manager.dict(answer=42)
        assert shared["answer"] == 42
    finally:
        manager.shutdown()


@pytest.mark.parametrize("server", ["listener", "manager"])
def test_a_huge_frame_before_the_handshake_is_refused_at_once(ctx: Any, server: str) -> None:
    """A client without the key that announces 1 GiB and then holds its connection
    open is refused on reading the header: nothing allocated, nothing waited for."""
    ours, theirs = ctx.Pipe()
    with contextlib.ExitStack() as stack:
        stack.enter_context(ours)
        if server == "listener":
            child = ctx.Process(target=_hostile.listener_server, args=(theirs, b"key", 1))
            child.start()
            stack.enter_context(_stopped_at_the_end(child))
            theirs.close()
            assert ours.poll(PATIENCE)
            pid, address = ours.recv()
        else:
            manager = SyncManager(ctx=ctx)
            manager.start(_hostile.report_pid, (theirs,))
            stack.callback(manager.shutdown)
            theirs.close()
            assert ours.poll(PATIENCE)
            pid, address = ours.recv(), manager.address
        start = _hostile.vm_hwm_kib(pid)
        _hostile.send_and_hang_up(address, _hostile.header(1 << 30), PATIENCE, hang_up=False)
        assert _hostile.vm_hwm_kib(pid) - start < MEMORY_BOUND_KIB
        if server == "listener":
            assert ours.poll(PATIENCE)
            assert ours.recv() == "AuthenticationError"
