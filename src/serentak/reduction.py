"""Pickling between processes: the stdlib's ``multiprocessing.reduction``.

``ForkingPickler`` is serentak's pickler (``serentak._ipc.serialize``: callables
the receiver cannot import go by value) with a table of extra reducers that
``register()`` fills. File descriptors travel beside a pickle, not in it::

    sender                                         receiver
    DupFd(fd).__reduce__                           _rebuild_dup_fd(index)
      index = fd_to_send(dup, ...)  ── the fd ──▶    DupFd holding os.dup(fd_received(index))
    (over a Connection: SCM_RIGHTS;                .detach() -> the fd, now the caller's
     to a child being started: with its start-up data)

``send_handle``/``recv_handle`` pass one fd over a Connection by itself;
``sendfds``/``recvfds`` do the same on a bare AF_UNIX socket.
"""

from __future__ import annotations

import collections
import copyreg
import io
import os
import pickle
import socket
import weakref
from collections.abc import Callable, Sequence
from typing import IO, Any, ClassVar, Final

from ._ipc.connection import Connection
from ._ipc.serialize import PROTOCOL, Pickler, fd_received, fd_to_send
from ._os import posix as _posix
from ._public import publish

__all__ = [
    "DupFd",
    "ForkingPickler",
    "dump",
    "recv_handle",
    "recvfds",
    "register",
    "send_handle",
    "sendfds",
]

HAVE_SEND_HANDLE: Final = True
# Whether the receiver of fds must acknowledge them (only macOS needs it; not here).
ACKNOWLEDGE: Final = False
_HANDLE_MARK: Final = b"handle"

Reducer = Callable[[Any], Any]


class ForkingPickler(Pickler):
    """serentak's pickler, with the reducers given to :meth:`register` for extra types.

    Args:
        file: where to write.
        protocol: the pickle protocol; serentak's (5) by default.
    """

    _extra_reducers: ClassVar[dict[type, Reducer]] = {}

    def __init__(self, file: IO[bytes], protocol: int | None = None, **kwargs: Any) -> None:
        super().__init__(file, PROTOCOL if protocol is None else protocol, **kwargs)
        table: Any = collections.ChainMap(self._extra_reducers, copyreg.dispatch_table)
        self.dispatch_table = table

    @classmethod
    def register(cls, type: type, reduce: Reducer) -> None:
        """Pickle instances of ``type`` with ``reduce`` (as a ``__reduce__`` would)."""
        cls._extra_reducers[type] = reduce

    @classmethod
    def dumps(cls, obj: Any, protocol: int | None = None) -> memoryview:
        """``obj`` pickled, as a memoryview of the bytes."""
        buffer = io.BytesIO()
        cls(buffer, protocol).dump(obj)
        return buffer.getbuffer()

    loads = staticmethod(pickle.loads)


register = ForkingPickler.register


def dump(obj: Any, file: IO[bytes], protocol: int | None = None) -> None:
    """Pickle ``obj`` to ``file`` with :class:`ForkingPickler`."""
    ForkingPickler(file, protocol).dump(obj)


# ---- file descriptors ---------------------------------------------------------------------


class DupFd:
    """A duplicate of a file descriptor that can be pickled to another process.

    Pickled over a Connection, or for a child being started, the receiver gets
    a DupFd of its own; ``detach()`` hands the descriptor over.

    Args:
        fd: the descriptor to duplicate (it stays the caller's).
    """

    def __init__(self, fd: int) -> None:
        self._own(os.dup(fd))

    def _own(self, fd: int) -> None:
        self._fd = fd
        self._finalizer = weakref.finalize(self, _posix.close_quietly, fd)

    def detach(self) -> int:
        """The descriptor, now the caller's to close.

        Raises:
            ValueError: it was detached already.
        """
        if not self._finalizer.alive:
            raise ValueError("the descriptor was already detached")
        self._finalizer.detach()
        return self._fd

    def __reduce__(self) -> tuple[Any, ...]:
        if not self._finalizer.alive:
            raise ValueError("the descriptor was already detached")
        return _rebuild_dup_fd, (fd_to_send(self._fd, type(self).__name__, inheritance_only=False),)

    def __repr__(self) -> str:
        state = f"fd={self._fd}" if self._finalizer.alive else "detached"
        return f"<{type(self).__name__} {state}>"


def _rebuild_dup_fd(index: int) -> DupFd:
    dup_fd = DupFd.__new__(DupFd)
    dup_fd._own(os.dup(fd_received(index)))
    return dup_fd


def send_handle(conn: Connection, handle: int, destination_pid: int) -> None:
    """Send file descriptor ``handle`` over ``conn`` (an AF_UNIX Connection); it stays ours.

    ``destination_pid`` is accepted for the stdlib's signature (Windows needs it).
    """
    conn.send_frame(_HANDLE_MARK, [handle])


def recv_handle(conn: Connection) -> int:
    """Receive a file descriptor sent with :func:`send_handle`; it is the caller's to close.

    Raises:
        RuntimeError: the message was not one descriptor.
    """
    payload, fds = conn.recv_frame()
    if bytes(payload) != _HANDLE_MARK or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"expected one file descriptor, got {len(fds)}")
    return fds[0]


def sendfds(sock: socket.socket, fds: Sequence[int]) -> None:
    """Send ``fds`` over the AF_UNIX socket ``sock`` (one byte, their count, goes with them)."""
    socket.send_fds(sock, [bytes([len(fds) % 256])], list(fds))


def recvfds(sock: socket.socket, size: int) -> list[int]:
    """Receive ``size`` descriptors sent with :func:`sendfds` on ``sock``.

    Raises:
        EOFError: the peer closed the socket.
        RuntimeError: a different number of descriptors arrived (those are closed).
    """
    message, fds, _flags, _address = socket.recv_fds(sock, 1, size)
    if not message and not fds:
        raise EOFError
    if len(fds) != size or message[0] != size % 256:
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"received {len(fds)} file descriptors, expected {size}")
    return list(fds)


# Sockets need no registration here: serentak's pickler sends them as their fds.


class AbstractReducer:
    """The stdlib's base for a replacement reducer: the functions above, as attributes."""

    ForkingPickler = ForkingPickler
    register = staticmethod(register)
    dump = staticmethod(dump)
    send_handle = staticmethod(send_handle)
    recv_handle = staticmethod(recv_handle)
    DupFd = DupFd
    sendfds = staticmethod(sendfds)
    recvfds = staticmethod(recvfds)

    def __init__(self, *args: object) -> None:
        pass


publish(__name__, globals())
