"""Connections: framed messages over a Unix socket, with fds riding along.

Wire format, one frame per message::

    u32 little-endian word   bit 31: SCM_RIGHTS fds came with this frame
                             bits 0-30: payload length, or 0x7FFFFFFF when
                             a u64 length follows (messages of 2 GiB and more)
    [u64 length]
    payload

Reading is buffered: one ``recvmsg`` usually brings in several small frames,
so a stream of small messages costs one system call per batch, not two per
message. Big payloads are read straight into their own buffer, which grows as
the bytes arrive: a length is only the peer's word, so nothing is allocated on
it alone (a peer announcing 2 GiB and sending nothing costs nothing), and
``recv_bytes(maxlength)`` refuses a longer message on reading its header.

Sending costs one system call per message, and a small plain message (see
buffers.plain) one call into C: check, pickle, header and payload in one
``send``. Over a socket that call never waits; a frame that did not fit whole
is finished here, in spans in the main thread (so that a Ctrl-C taken by
another thread ends the wait). The sender is what limits a stream of small
messages: the reader takes several frames per ``recvmsg`` and, with a whole
frame buffered, unpickles it straight from the read buffer.

A malformed frame (a length no message can have, fds announced that never
came) raises OSError and leaves the connection unreadable, as a refused
message does: its bytes are still in the stream.

File descriptors: the sender attaches them to the ``sendmsg`` that carries the
frame's header. The kernel hands them over with the ``recvmsg`` that reads the
first byte of that ``sendmsg`` and never joins two fd-carrying sends in one
read, so each read yields at most one group of fds. Groups queue in arrival
order and a frame flagged in bit 31 takes the oldest; that holds however the
frames fall across reads.

A Connection is not thread-safe, as the stdlib's is not: one reader and one
writer at a time (the queue and pool layers add their own locks).
"""

from __future__ import annotations

import array
import collections
import os
import pickle
import select
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, NoReturn, TypeVar

from serentak._exceptions import BufferTooShort
from serentak._os import _native
from serentak._os import posix as _posix
from serentak._os.waiting import SIGNAL_SPAN, in_main_thread

from .buffers import PLAIN_BUDGET, pack, plain, unpack
from .serialize import PROTOCOL, fd_received, fd_to_send

_WORD: Final = struct.Struct("<I")
_LONG: Final = struct.Struct("<Q")
_HAS_FDS: Final = 0x8000_0000
_LONG_FOLLOWS: Final = 0x7FFF_FFFF
_BUFFER_SIZE: Final = 256 * 1024
# A payload's own buffer starts at most this big and grows by what it holds, at most
# _GROWTH_STEP at a time, as the bytes arrive.
_BIG_START: Final = 1024 * 1024
_GROWTH_STEP: Final = 4 * 1024 * 1024
_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
# The kernel passes at most SCM_MAX_FD (253) descriptors in one message.
MAX_FDS: Final = 253


def _header(length: int, has_fds: bool) -> bytes:
    flag = _HAS_FDS if has_fds else 0
    if length < _LONG_FOLLOWS:
        return _WORD.pack(length | flag)
    return _WORD.pack(_LONG_FOLLOWS | flag) + _LONG.pack(length)


def _send_in_spans(sock: socket.socket, chunks: list[Any], fds: Sequence[int]) -> None:
    """Send ``chunks`` (one frame) whole, ``fds`` with its first byte, waiting for room
    in the socket in spans (see _waiting)."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    while chunks:
        try:
            if ancillary or len(chunks) > 1:
                sent = sock.sendmsg(chunks, ancillary, _DONTWAIT)
            else:
                sent = sock.send(chunks[0], _DONTWAIT)
        except BlockingIOError:
            _posix.fd_writable(sock.fileno(), None)
            continue
        ancillary = []
        rest = []
        for chunk in chunks:
            if sent >= len(chunk):
                sent -= len(chunk)
            else:
                rest.append(memoryview(chunk)[sent:])
                sent = 0
        chunks = rest


_C = TypeVar("_C", bound="Connection")


def frame(payload: bytes, has_fds: bool = False) -> bytes:
    """``payload`` with its frame header: what :meth:`Connection.send_some` writes."""
    return _header(len(payload), has_fds) + payload


class Connection:
    """One end of a connection: send and receive picklable objects or bytes.

    Args:
        handle: a connected ``AF_UNIX`` stream socket's file descriptor (or a
            pipe end), owned by the Connection from now on.
        readable: whether this end may receive.
        writable: whether this end may send.
    """

    _fd: int | None = None  # so that __del__ of a half-built Connection has nothing to do
    # What a receive says once this end may not read (see _refuse).
    _unreadable = "connection is write-only"

    def __init__(self, handle: int, readable: bool = True, writable: bool = True) -> None:
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        if handle < 0:
            raise ValueError(f"invalid handle {handle!r}")
        self._fd = handle
        self._readable = readable
        self._writable = writable
        # The fd while this end may send (receive), else None: the one test a
        # send (receive) makes on its fast path; _check_writable says what is wrong.
        self._write_fd: int | None = handle if writable else None
        self._read_fd: int | None = handle if readable else None
        self._socket: socket.socket | None = None
        try:
            self._socket = _posix.adopt_socket(handle)
        except OSError:
            self._socket = None  # a pipe end: plain read/write, no fds
        self._is_socket = self._socket is not None
        self._buffer = bytearray(_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self._fd_groups: collections.deque[list[int]] = collections.deque()

    # ---- state -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True if the connection is closed."""
        return self._fd is None

    @property
    def readable(self) -> bool:
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if the connection is writable."""
        return self._writable

    def fileno(self) -> int:
        """The file descriptor used by the connection."""
        return self._check_open()

    def close(self) -> None:
        """Close the connection; further use raises OSError."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        self._write_fd = self._read_fd = None
        while self._fd_groups:
            for unclaimed in self._fd_groups.popleft():
                _posix.close_quietly(unclaimed)
        if self._socket is not None:
            self._socket.close()
        else:
            os.close(fd)

    def detach(self) -> int:
        """Give up ownership of the descriptor and return it; the Connection is closed."""
        fd = self._check_open()
        self._fd = self._write_fd = self._read_fd = None
        if self._socket is not None:
            self._socket.detach()
        return fd

    def __del__(self) -> None:
        self.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"fd={self._fd}"
        return f"<{type(self).__name__} {state}>"

    def _check_open(self) -> int:
        if self._fd is None:
            raise OSError("handle is closed")
        return self._fd

    def _check_readable(self) -> int:
        fd = self._check_open()
        if not self._readable:
            raise OSError(self._unreadable)
        return fd

    def _check_writable(self) -> int:
        fd = self._check_open()
        if not self._writable:
            raise OSError("connection is read-only")
        return fd

    # ---- sending -----------------------------------------------------------

    def send(self, obj: Any) -> None:
        """Send a picklable object (and the fds of any handles in it, over a socket)."""
        fd = self._write_fd
        if fd is not None:
            # Small plain data (most messages): checked, pickled and sent in one call.
            left = _native.send_plain(fd, obj, self._is_socket, PLAIN_BUDGET, PROTOCOL)
            if left is None:
                return
            if left is not False:
                payload, unsent = left  # the socket was full
                self._send_rest(fd, payload, unsent)
                return
        if plain(obj):
            # Small plain data (most messages): no Packed, no fds to own.
            self._send_plain(pickle.dumps(obj, PROTOCOL))
            return
        packed = pack(obj)
        if not packed.fds:
            self.send_frame(packed.payload)
            return
        try:
            self.send_frame(packed.payload, packed.fds)
        finally:
            packed.close()

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Send bytes from a bytes-like object as one message.

        Args:
            buf: any object supporting the buffer protocol.
            offset: where in ``buf`` to start.
            size: how many bytes to send; by default all after ``offset``.
        """
        self._check_writable()
        view = memoryview(buf).cast("B")
        length = len(view)
        if offset < 0:
            raise ValueError("offset is negative")
        if length < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = length - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > length:
            raise ValueError("buffer length < offset + size")
        self.send_frame(view[offset : offset + size])

    def send_frame(self, payload: Any, fds: Sequence[int] = ()) -> None:
        """Send one frame: ``payload`` (bytes-like) with ``fds`` attached."""
        fd = self._check_writable()
        sock = self._socket
        if type(payload) is not bytes:
            payload = memoryview(payload).cast("B")
        if not fds:
            self._send_plain(payload)
            return
        if len(fds) > MAX_FDS:
            raise ValueError(f"a message can carry at most {MAX_FDS} file descriptors")
        if sock is None:
            raise TypeError("file descriptors can only travel over a socket connection")
        header = _header(len(payload), True)
        if in_main_thread():
            _send_in_spans(sock, [header, payload], fds)  # see _send_rest
            return
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sent = sock.sendmsg([header, payload], ancillary)
        self._write_rest(fd, header, payload, sent)

    def _send_plain(self, payload: bytes | memoryview) -> None:
        """Send a frame without fds: most often one call into C, which writes header
        and payload at once and, over a socket, never waits."""
        fd = self._write_fd
        if fd is None:
            fd = self._check_writable()  # raises
        unsent = _native.send_frame(fd, payload, self._is_socket)
        if unsent:
            self._send_rest(fd, payload, unsent)

    def _send_rest(self, fd: int, payload: bytes | memoryview, unsent: int) -> None:
        """Write the last ``unsent`` bytes of ``payload``'s frame (no fds), waiting for room."""
        header = _header(len(payload), False)
        sent = len(header) + len(payload) - unsent
        sock = self._socket
        if sock is not None and in_main_thread():
            # A send to a peer that does not read would block the main thread for
            # good, and a Ctrl-C another thread took with it (see _waiting).
            if sent < len(header):
                chunks: list[Any] = [header[sent:], payload]
            else:
                chunks = [memoryview(payload)[sent - len(header) :]]
            _send_in_spans(sock, chunks, ())
            return
        self._write_rest(fd, header, payload, sent)

    def send_some(self, data: memoryview, fds: Sequence[int] = ()) -> int:
        """Write as much of ``data`` (framed bytes, see :func:`frame`) as fits now.

        Never blocks: returns how many bytes went, 0 if the socket is full.
        ``fds`` go with the first byte, so pass them only on the first call.
        """
        self._check_writable()
        if self._socket is None:
            raise TypeError("non-blocking writes need a socket connection")
        try:
            if fds:
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                return self._socket.sendmsg([data], ancillary, socket.MSG_DONTWAIT)
            return self._socket.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    @staticmethod
    def _write_rest(fd: int, header: bytes, payload: bytes | memoryview, sent: int) -> None:
        total = len(header) + len(payload)
        while sent < total:
            if sent < len(header):
                sent += os.writev(fd, [header[sent:], payload])
            else:
                sent += os.write(fd, payload[sent - len(header) :])

    # ---- receiving ---------------------------------------------------------

    def recv(self) -> Any:
        """Receive an object sent with :meth:`send`.

        Raises:
            EOFError: the other end is closed and nothing is left to read.
        """
        if self._read_fd is not None:
            # The common case: a whole frame without fds already read ahead,
            # unpickled in place by one call.
            try:
                got = _native.load_frame(self._buffer, self._start, self._end)
            except BaseException:
                self._skip_frame()  # consumed, as recv_frame's frames are once read
                raise
            if got is not None:
                obj, end = got
                if end == self._end:
                    self._start = self._end = 0
                else:
                    self._start = end
                return obj
        payload, fds = self.recv_frame()
        return unpack(payload, fds)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one message as bytes.

        Raises:
            EOFError: the other end is closed and nothing is left to read.
            OSError: the message is longer than ``maxlength``: refused on reading
                its header, as the stdlib does; its bytes are still in the stream,
                so this end is no longer readable (closed if it is read-only).
        """
        self._check_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        payload, fds = self.recv_frame(maxlength)
        for fd in fds:
            os.close(fd)
        return bytes(payload)

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receive one message into ``buf`` at ``offset``; return its length.

        Raises:
            BufferTooShort: the message does not fit; it is in ``args[0]``.
        """
        self._check_readable()
        view = memoryview(buf).cast("B")
        if offset < 0:
            raise ValueError("negative offset")
        if offset > len(view):
            raise ValueError("offset too large")
        payload, fds = self.recv_frame()
        for fd in fds:
            os.close(fd)
        size = len(payload)
        if size > len(view) - offset:
            raise BufferTooShort(bytes(payload))
        view[offset : offset + size] = payload
        return size

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is anything to read, waiting up to ``timeout`` seconds.

        ``None`` waits forever. True also when the other end has closed, so that
        the next receive raises EOFError instead of blocking.
        """
        fd = self._check_readable()
        if self._end > self._start:
            return True
        return _posix.fd_readable(fd, timeout)

    def has_buffered_data(self) -> bool:
        """True if a message (or part of one) was read ahead and awaits a receive."""
        return self._end > self._start

    def recv_frame(self, maxlength: int | None = None) -> tuple[memoryview, list[int]]:
        """Receive one frame: its payload and the fds that came with it (the caller owns them).

        The payload may be a view of the connection's read buffer: use it
        before the next receive on this connection.

        Raises:
            EOFError: the other end is closed and nothing is left to read.
            OSError: the frame is malformed, or longer than ``maxlength``: this
                end is no longer readable (see :meth:`recv_bytes`).
        """
        fd = self._check_readable()
        if self._end - self._start < _WORD.size:
            self._fill(fd, _WORD.size, first=True)
        word = _WORD.unpack_from(self._buffer, self._start)[0]
        header = _WORD.size
        length = word & _LONG_FOLLOWS
        if length == _LONG_FOLLOWS:
            header += _LONG.size
            self._fill(fd, header)
            length = _LONG.unpack_from(self._buffer, self._start + _WORD.size)[0]
            if length > sys.maxsize:
                self._refuse(f"bad message length: {length} bytes announced")
        if maxlength is not None and length > maxlength:
            self._refuse("bad message length")
        total = header + length
        if total > len(self._buffer):
            self._start += header
            payload = self._read_big(fd, length)
        else:
            if self._end - self._start < total:
                self._fill(fd, total)
            start = self._start + header
            self._start += total
            if self._start == self._end:
                self._start = self._end = 0  # the view stays valid until the next read
            payload = self._view[start : start + length]
        # The fds came with the frame's first byte. They are taken once the payload is
        # in: if it never comes, they stay queued and are closed with the connection.
        try:
            return payload, self._fd_groups.popleft() if word & _HAS_FDS else []
        except IndexError:
            self._refuse("malformed frame: it announced file descriptors that did not come")

    def _skip_frame(self) -> None:
        """Drop the whole frame without fds at the read position (see recv)."""
        self._start += _WORD.size + _WORD.unpack_from(self._buffer, self._start)[0]
        if self._start == self._end:
            self._start = self._end = 0

    def _refuse(self, message: str) -> NoReturn:
        """Raise OSError(``message``) for a frame not to be read: its bytes are still in the
        stream, so this end reads no more (as the stdlib's does after a bad length)."""
        if self._writable:
            self._readable = False
            self._read_fd = None
            self._unreadable = f"connection is not readable any more: {message}"
        else:
            self.close()
        raise OSError(message)

    def _fill(self, fd: int, size: int, *, first: bool = False) -> None:
        """Read until at least ``size`` bytes are buffered."""
        if self._start + size > len(self._buffer):
            # Not enough room after the buffered bytes: move them to the front.
            available = self._end - self._start
            self._buffer[:available] = self._buffer[self._start : self._end]
            self._start, self._end = 0, available
        while self._end - self._start < size:
            got = self._read_into(fd, self._view[self._end :])
            if got == 0:
                self._eof(first and self._end == self._start)
            self._end += got

    def _read_big(self, fd: int, size: int) -> memoryview:
        """A payload too big for the read buffer, read into a buffer of its own.

        ``size`` is the peer's word: the buffer grows as the bytes arrive, never
        more than it holds already (and at most _GROWTH_STEP) ahead of them.
        """
        out = bytearray(min(size, _BIG_START))  # more than the read buffer can hold
        available = min(self._end - self._start, size)
        out[:available] = self._view[self._start : self._start + available]
        self._start += available
        if self._start == self._end:
            self._start = self._end = 0
        filled = available
        while filled < size:
            if filled == len(out):
                # Zeros from calloc'd pages: only the bytes appended are written.
                out += bytes(min(len(out), _GROWTH_STEP, size - len(out)))
            # A view for this read only: a bytearray with a view cannot grow.
            got = self._read_into(fd, memoryview(out)[filled:])
            if got == 0:
                self._eof(False)
            filled += got
        return memoryview(out)

    def _read_into(self, fd: int, view: memoryview) -> int:
        # The main thread must not sleep in a read that a signal taken by another
        # thread cannot end (see _waiting): it waits for bytes in spans.
        main = in_main_thread()
        if self._socket is None:
            if main:
                _posix.fd_readable(fd, None)  # a pipe read cannot be told not to wait
            return os.readv(fd, [view])
        got = _native.recv_into(fd, view, SIGNAL_SPAN if main else None)
        if isinstance(got, int):
            return got
        nbytes, fds = got
        self._fd_groups.append(fds)
        return nbytes

    @staticmethod
    def _eof(clean: bool) -> None:
        if clean:
            raise EOFError
        raise OSError("got end of file during message")

    # ---- travelling to a child -----------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        index = fd_to_send(self._check_open(), type(self).__name__, inheritance_only=False)
        return _rebuild_connection, (index, self._readable, self._writable)


def _rebuild_connection(index: int, readable: bool, writable: bool) -> Connection:
    return Connection(os.dup(fd_received(index)), readable, writable)


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """A pair of connected :class:`Connection` objects.

    Args:
        duplex: if False, the first end can only receive and the second only send.

    Returns:
        ``(conn1, conn2)``.
    """
    left, right = _posix.socketpair()
    left_fd, right_fd = left.detach(), right.detach()
    if duplex:
        return Connection(left_fd), Connection(right_fd)
    return Connection(left_fd, writable=False), Connection(right_fd, readable=False)


def wait(object_list: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """Wait until one or more of the objects is ready; return the ready ones.

    Args:
        object_list: Connections, objects with ``fileno()``, or integer fds
            (a Process's ``sentinel``).
        timeout: seconds to wait; None waits forever.

    Returns:
        The ready objects, in the order given; empty on timeout.
    """
    objects = list(object_list)
    ready = [o for o in objects if isinstance(o, Connection) and o.has_buffered_data()]
    if ready:
        return ready
    if not objects:
        if timeout is not None and timeout > 0:
            time.sleep(timeout)  # an empty wait still waits its timeout, as the stdlib's does
        return []

    poller = select.poll()
    by_fd: dict[int, list[Any]] = {}
    for obj in objects:
        fd = obj if isinstance(obj, int) else obj.fileno()
        by_fd.setdefault(fd, []).append(obj)
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    events = _posix.poll(poller, timeout)
    ready_fds = {fd for fd, _event in events}
    return [o for o in objects if (o if isinstance(o, int) else o.fileno()) in ready_fds]
