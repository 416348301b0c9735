"""Listener and Client (serentak.connection), the HMAC challenge, and serentak.reduction.

Processes find each other by address over AF_UNIX and AF_INET (127.0.0.1
only), under every start method; a client with the wrong key is refused
with AuthenticationError, and nothing it sends is unpickled.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

import pytest

import _managers_targets
import serentak
from _signals import interrupted_by_a_signal_to_another_thread
from serentak import _logging, reduction
from serentak._process import launch as _launch
from serentak.connection import (
    Client,
    Listener,
    Pipe,
    address_type,
    answer_challenge,
    arbitrary_address,
    deliver_challenge,
)

PATIENCE = 20.0


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a thread; its result or exception lands in the returned list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize(("family", "address"), [("AF_UNIX", None), ("AF_INET", ("127.0.0.1", 0))])
def test_child_clients(ctx: Any, family: str, address: Any) -> None:
    with Listener(address, family=family, authkey=b"key") as listener:
        children = [
            ctx.Process(target=_managers_targets.lst_client, args=(listener.address, b"key", n))
            for n in range(2)
        ]
        for child in children:
            child.start()
        seen = []
        for _ in children:
            with listener.accept() as conn:
                message = conn.recv()
                conn.send(message * 10)
                assert conn.recv() == ("echo", message * 10)
                seen.append(message)
        for child in children:
            child.join(PATIENCE)
            assert child.exitcode == 0
        assert sorted(seen) == [0, 1]


@pytest.mark.parametrize("family", ["AF_UNIX", "AF_INET"])
def test_child_listener(ctx: Any, family: str) -> None:
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_managers_targets.lst_server, args=(theirs, family, None))
    child.start()
    theirs.close()
    assert ours.poll(PATIENCE)
    address = ours.recv()
    assert address_type(address) == family
    with Client(address) as conn:
        conn.send({"from": "parent"})
        assert conn.recv() == ("served", {"from": "parent"})
    child.join(PATIENCE)
    assert child.exitcode == 0
    ours.close()


@pytest.mark.parametrize(("family", "address"), [("AF_UNIX", None), ("AF_INET", ("127.0.0.1", 0))])
def test_wrong_key_is_refused_and_the_listener_goes_on(ctx: Any, family: str, address: Any) -> None:
    with Listener(address, family=family, authkey=b"right") as listener:
        child = ctx.Process(
            target=_managers_targets.lst_client, args=(listener.address, b"wrong", "x")
        )
        child.start()
        with pytest.raises(serentak.AuthenticationError, match="digest received was wrong"):
            listener.accept()
        child.join(PATIENCE)
        assert child.exitcode == 1  # its Client raised AuthenticationError
        thread, outcome = in_thread(
            lambda: _managers_targets.lst_client(listener.address, b"right", "y")
        )
        with listener.accept() as conn:
            assert conn.recv() == "y"
            conn.send("ok")
            assert conn.recv() == ("echo", "ok")
        thread.join()
        assert outcome == [None]


def test_a_client_without_the_key_gets_nothing_unpickled(tmp_path: Any) -> None:
    marker = tmp_path / "unpickled"
    with Listener(authkey=b"key") as listener:

        def intrude() -> bytes:
            with Client(listener.address) as raw:  # no key: it skips the challenge
                raw.recv_bytes()
                raw.send(_managers_targets.MgrMarker(str(marker)))
                return raw.recv_bytes()

        thread, outcome = in_thread(intrude)
        with pytest.raises(serentak.AuthenticationError):
            listener.accept()
        thread.join()
        assert outcome == [b"#FAILURE#"]
        assert not marker.exists()


def test_wrong_key_client_side() -> None:
    with Listener(authkey=b"right") as listener:
        thread, outcome = in_thread(listener.accept)
        with pytest.raises(serentak.AuthenticationError, match="rejected"):
            Client(listener.address, authkey=b"wrong")
        thread.join()
        assert isinstance(outcome[0], serentak.AuthenticationError)


def test_challenge_over_a_pipe() -> None:
    left, right = Pipe()
    with left, right:
        thread, outcome = in_thread(lambda: deliver_challenge(left, b"k"))
        answer_challenge(right, b"k")
        thread.join()
        assert outcome == [None]
        thread, outcome = in_thread(lambda: deliver_challenge(left, b"k"))
        with pytest.raises(serentak.AuthenticationError):
            answer_challenge(right, b"other")
        thread.join()
        assert isinstance(outcome[0], serentak.AuthenticationError)
        right.send_bytes(b"not a challenge")
        with pytest.raises(serentak.AuthenticationError, match="expected challenge"):
            answer_challenge(left, b"k")
        right.send_bytes(b"x" * 1000)  # a peer without the key may not send much
        with pytest.raises(serentak.AuthenticationError):
            answer_challenge(left, b"k")


def test_addresses_and_arguments() -> None:
    path = arbitrary_address("AF_UNIX")
    assert isinstance(path, str)
    directory = os.path.dirname(path)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert arbitrary_address("AF_INET") == ("localhost", 0)
    assert address_type(("127.0.0.1", 80)) == "AF_INET"
    assert address_type("/tmp/x") == "AF_UNIX"
    with pytest.raises(ValueError):
        Listener(family="AF_PIPE")
    with pytest.raises(ValueError):
        address_type(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Listener(authkey="text")  # type: ignore[arg-type]
    with Listener(path) as listener:
        assert listener.address == path
        assert os.path.exists(path)
        assert repr(listener).startswith("<Listener AF_UNIX address=")
    assert not os.path.exists(path)  # close() removes the socket file
    with pytest.raises(OSError):
        listener.accept()
    with pytest.raises(FileNotFoundError):
        Client(path)


def test_abstract_unix_address_and_last_accepted() -> None:
    name = f"\0serentak-test-{os.getpid()}"
    with Listener(name) as listener:
        thread, outcome = in_thread(lambda: Client(name))
        with listener.accept() as conn:
            thread.join()
            client = outcome[0]
            client.send("abstract")
            assert conn.recv() == "abstract"
            client.close()
    with Listener(("127.0.0.1", 0)) as listener:
        thread, outcome = in_thread(lambda: Client(listener.address))
        with listener.accept():
            thread.join()
            assert listener.last_accepted is not None
            assert listener.last_accepted[0] == "127.0.0.1"
            outcome[0].close()


# ---- the fork server ------------------------------------------------------------------------

SO_ACCEPTCON = 0x10000  # /proc/net/unix's flag of a listening socket


def test_the_fork_server_has_no_address_to_connect_to() -> None:
    """The stdlib's fork server listens on a path and checks an authkey; ours is reached only
    through the socketpair it was started with, so no other process can connect to it."""
    server = _launch.ensure_fork_server()
    inodes = set()
    for fd in os.listdir(f"/proc/{server}/fd"):
        try:
            target = os.readlink(f"/proc/{server}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    assert inodes, "the fork server's control connection"
    unix: dict[int, tuple[int, str]] = {}
    with open("/proc/net/unix", encoding="utf-8") as table:
        next(table)  # Num RefCount Protocol Flags Type St Inode Path
        for line in table:
            fields = line.split()
            unix[int(fields[6])] = (int(fields[3], 16), fields[7] if len(fields) > 7 else "")
    for inode in inodes:
        assert inode in unix, "a socket of the fork server that is not AF_UNIX"
        flags, path = unix[inode]
        assert not flags & SO_ACCEPTCON, "the fork server listens"
        assert path == "", f"the fork server's socket has an address: {path}"


# ---- serentak.reduction ---------------------------------------------------------------------


def test_handles_and_dup_fds_over_a_connection() -> None:
    left, right = Pipe()
    read_end, write_end = os.pipe()
    try:
        reduction.send_handle(left, write_end, os.getpid())
        received = reduction.recv_handle(right)
        os.write(received, b"through a handle")
        os.close(received)
        assert os.read(read_end, 100) == b"through a handle"
        left.send(reduction.DupFd(write_end))
        dup_fd = right.recv()
        fd = dup_fd.detach()
        os.write(fd, b"dup")
        os.close(fd)
        assert os.read(read_end, 100) == b"dup"
    finally:
        os.close(read_end)
        os.close(write_end)
        left.close()
        right.close()


def test_sendfds_and_forking_pickler() -> None:
    one, two = socket.socketpair()
    read_end, write_end = os.pipe()
    try:
        reduction.sendfds(one, [write_end])
        (fd,) = reduction.recvfds(two, 1)
        os.write(fd, b"x")
        os.close(fd)
        assert os.read(read_end, 1) == b"x"
    finally:
        for closing in (one, two):
            closing.close()
        os.close(read_end)
        os.close(write_end)

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    reduction.register(Point, lambda point: (int, (point.x,)))
    assert reduction.ForkingPickler.loads(reduction.ForkingPickler.dumps(Point(5))) == 5
    assert serentak.reducer is reduction
    serentak.allow_connection_pickling()


def test_logger() -> None:
    import logging

    logger = serentak.get_logger()
    assert logger.name == "multiprocessing"
    assert logger is logging.getLogger("multiprocessing")
    assert not logger.propagate
    assert logging.getLevelName(serentak.SUBDEBUG) == "SUBDEBUG"
    assert logging.getLevelName(serentak.SUBWARNING) == "SUBWARNING"
    level, handlers = logger.level, list(logger.handlers)
    try:
        assert serentak.log_to_stderr(logging.INFO) is logger
        added = list(logger.handlers)
        assert len(added) == len(handlers) + 1
        serentak.log_to_stderr()
        assert logger.handlers == added  # no second handler
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(level)
        for handler in set(logger.handlers) - set(handlers):
            logger.removeHandler(handler)
        _logging._stderr_handler = None


# ---- a signal taken by another thread ----------------------------------------------------


def test_a_signal_taken_by_another_thread_interrupts_accept(ctx: Any) -> None:
    """The kernel may hand a process's SIGINT to any thread. One taken by another thread
    must still interrupt the main thread waiting in accept() for a client."""
    go = ctx.Event()
    with Listener(authkey=b"key") as listener:
        child = ctx.Process(
            target=_managers_targets.lst_client_when_told,
            args=(go, listener.address, b"key", "hello"),
        )
        child.start()
        with interrupted_by_a_signal_to_another_thread(go.set):
            listener.accept()
        with listener.accept() as conn:
            assert conn.recv() == "hello"
            conn.send("back")
            assert conn.recv() == ("echo", "back")
        child.join(PATIENCE)
    assert child.exitcode == 0
