"""Listener and Client: Connections between processes that find each other by address.

::

    server process                                  client process
    --------------                                  --------------
    Listener(address, authkey=key)
      socket, bind, listen
    accept()  <------------- connect ------------  Client(address, authkey=key)
      deliver_challenge:                              answer_challenge:
        "#CHALLENGE#{sha256}" + 32 random bytes ->      HMAC-SHA256(key, "{sha256}" + bytes)
        check it (constant time) <----------------      "{sha256}" + digest
        "#WELCOME#" or "#FAILURE#" ----------------->   AuthenticationError on failure
      answer_challenge  <------ the same, the other way round ------  deliver_challenge
    Connection  <========== framed messages (serentak._ipc.connection) ==========>  Connection

Both sides prove they hold the key, the server first: it never answers a
challenge before the client has answered its own, so a client without the
key cannot make the server compute a digest for it. Nothing sent during the
handshake is unpickled, and each of its messages is capped at
``MESSAGE_LENGTH`` bytes: a peer without the key gets nothing executed.

Families: ``"AF_UNIX"`` (the default: a path in a private temporary directory
of this process, mode 0700, removed at exit; or an abstract-namespace name
starting with a NUL) and ``"AF_INET"`` (``(host, port)``; port 0 picks a free
one). File descriptors travel with a message only over AF_UNIX.
"""

from __future__ import annotations

import hmac
import os
import secrets
import shutil
import socket
import tempfile
import threading
import weakref
from typing import Any, Final, TypeVar

from serentak import _logging
from serentak._exceptions import AuthenticationError
from serentak._ipc.connection import Connection
from serentak._os import posix as _posix
from serentak._os.waiting import in_main_thread

from . import process as _process

__all__ = [
    "Client",
    "Listener",
    "answer_challenge",
    "arbitrary_address",
    "deliver_challenge",
]

Address = str | bytes | tuple[Any, ...]

FAMILIES: Final = ("AF_INET", "AF_UNIX")
DEFAULT_FAMILY: Final = "AF_UNIX"
# The cap on each handshake message: a peer without the key may send no more.
MESSAGE_LENGTH: Final = 256
_NONCE_SIZE: Final = 32
_CHALLENGE: Final = b"#CHALLENGE#"
_WELCOME: Final = b"#WELCOME#"
_FAILURE: Final = b"#FAILURE#"
DEFAULT_DIGEST: Final = "sha256"
# Digests a challenge may ask for; weaker ones (md5, sha1) are refused.
_DIGESTS: Final = frozenset({"sha256", "sha384", "sha512", "sha3_256", "sha3_384", "sha3_512"})


# ---- addresses -------------------------------------------------------------------


class _TempDir:
    """This process's private directory for socket files, made on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.path: str | None = None
        self.pid = os.getpid()

    def get(self) -> str:
        with self.lock:
            if self.path is None or self.pid != os.getpid():
                # A forked child makes its own: the parent removes its own at exit.
                self.path = tempfile.mkdtemp(prefix="serentak-")
                self.pid = os.getpid()
                _process.register_before_exit(self.remove)
                _logging.info("created temp directory %s", self.path)
            return self.path

    def remove(self) -> None:
        with self.lock:
            path, self.path = self.path, None
        if path is not None and self.pid == os.getpid():
            shutil.rmtree(path, ignore_errors=True)

    def reset_lock(self) -> None:
        self.lock = threading.Lock()


_temp_dir: Final = _TempDir()
os.register_at_fork(after_in_child=_temp_dir.reset_lock)


def get_temp_dir() -> str:
    """This process's private temporary directory (mode 0700), removed when it exits."""
    return _temp_dir.get()


def address_type(address: Address) -> str:
    """The family of ``address``: a tuple is AF_INET, a string (or bytes) AF_UNIX.

    Raises:
        ValueError: ``address`` is neither.
    """
    if isinstance(address, tuple):
        return "AF_INET"
    if isinstance(address, str) and address.startswith("\\\\"):
        return "AF_PIPE"  # refused by the family check: a Windows named pipe
    if isinstance(address, str | bytes):
        return "AF_UNIX"
    raise ValueError(f"address type of {address!r} unrecognized")


def arbitrary_address(family: str) -> Address:
    """A fresh address of ``family``: a new path in this process's temp dir, or a free port.

    Raises:
        ValueError: ``family`` is not recognized.
    """
    _validate_family(family)
    if family == "AF_INET":
        return ("localhost", 0)
    return os.path.join(get_temp_dir(), f"listener-{secrets.token_hex(8)}")


def _validate_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"Family {family} is not recognized.")


def _check_authkey(authkey: object) -> bytes | None:
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")
    return authkey


def _is_abstract(address: Address) -> bool:
    return isinstance(address, str | bytes) and address[:1] in ("\0", b"\0")


def _new_socket(family: str) -> socket.socket:
    sock = socket.socket(getattr(socket, family), socket.SOCK_STREAM)
    sock.settimeout(None)  # a default timeout the program set is for its own sockets
    if family == "AF_INET":
        # Frames are written whole: Nagle's delay only slows request-reply traffic.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# ---- Listener and Client ---------------------------------------------------------------

_L = TypeVar("_L", bound="Listener")


class Listener:
    """A bound, listening socket whose ``accept()`` returns serentak Connections.

    Args:
        address: where to listen: a path (or a NUL-prefixed abstract name)
            for AF_UNIX, ``(host, port)`` for AF_INET; by default a fresh
            address of ``family``.
        family: ``"AF_UNIX"`` or ``"AF_INET"``; by default the family of
            ``address``, else AF_UNIX.
        backlog: how many connections may wait to be accepted.
        authkey: if given, each accepted connection must pass the HMAC
            challenge with this key, both ways, before ``accept()`` returns it.

    Raises:
        TypeError: ``authkey`` is not bytes.
        ValueError: the family is not recognized.
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        address: Address | None = None,
        family: str | None = None,
        backlog: int = 1,
        authkey: bytes | None = None,
    ) -> None:
        if family is None:
            family = address_type(address) if address is not None else DEFAULT_FAMILY
        _validate_family(family)
        self._authkey = _check_authkey(authkey)
        if address is None:
            address = arbitrary_address(family)
        sock = _new_socket(family)
        try:
            if family == "AF_INET":
                # A server restarted on its port must not wait out TIME_WAIT.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
            bound: Address = sock.getsockname()
        except BaseException:
            sock.close()
            raise
        self._socket: socket.socket | None = sock
        self._family = family
        self._address = bound
        self._last_accepted: Address | None = None
        path = None
        if family == "AF_UNIX" and not _is_abstract(address):
            path = os.fsdecode(address)  # type: ignore[arg-type]
        # A Listener that is dropped unclosed still gives back its socket and path.
        self._finalizer = weakref.finalize(self, _release, sock, path, os.getpid())
        _logging.sub_debug("listener bound to %r", bound)

    @property
    def address(self) -> Address:
        """The address the listener is bound to (the actual port for AF_INET port 0)."""
        return self._address

    @property
    def last_accepted(self) -> Address | None:
        """The address of the last accepted connection's peer (empty for AF_UNIX clients)."""
        return self._last_accepted

    def accept_unauthenticated(self) -> Connection:
        """Accept a connection without the handshake (the manager's server runs it per client).

        Raises:
            OSError: the listener is closed.
        """
        sock = self._socket
        if sock is None:
            raise OSError("listener is closed")
        if in_main_thread():
            # accept() cannot be told not to wait, and a signal another thread took
            # would not end its sleep (see _waiting): wait for a client in spans first.
            # (If another process takes that client, accept() waits for the next.)
            _posix.fd_readable(sock.fileno(), None)
        client, peer = sock.accept()
        client.setblocking(True)
        self._last_accepted = peer
        return Connection(client.detach())

    def accept(self) -> Connection:
        """Wait for a client and return a Connection to it, authenticated if there is a key.

        Raises:
            OSError: the listener is closed.
            AuthenticationError: the client failed the challenge (its connection is closed).
        """
        conn = self.accept_unauthenticated()
        if self._authkey is not None:
            try:
                deliver_challenge(conn, self._authkey)
                answer_challenge(conn, self._authkey)
            except BaseException:
                conn.close()
                raise
        return conn

    def fileno(self) -> int:
        """The listening socket's fd (readable when a client is waiting)."""
        if self._socket is None:
            raise OSError("listener is closed")
        return self._socket.fileno()

    def close(self) -> None:
        """Stop listening, and remove the socket file of an AF_UNIX address."""
        self._socket = None
        self._finalizer()

    def __enter__(self: _L) -> _L:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._socket is None else f"address={self._address!r}"
        return f"<{type(self).__name__} {self._family} {state}>"


def _release(sock: socket.socket, path: str | None, pid: int) -> None:
    sock.close()
    if path is not None and pid == os.getpid():
        try:
            os.unlink(path)
        except OSError:
            pass  # already removed, e.g. with the temp dir


def Client(address: Address, family: str | None = None, authkey: bytes | None = None) -> Connection:
    """Connect to a :class:`Listener` and return the Connection, authenticated if there is a key.

    Args:
        address: the listener's address.
        family: by default the family of ``address``.
        authkey: if given, the HMAC challenge is run both ways with this key.

    Raises:
        TypeError: ``authkey`` is not bytes.
        ValueError: the family is not recognized.
        OSError: nobody listens there (ConnectionRefusedError, FileNotFoundError).
        AuthenticationError: the keys differ.
    """
    if family is None:
        family = address_type(address)
    _validate_family(family)
    key = _check_authkey(authkey)
    sock = _new_socket(family)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock.detach())
    if key is not None:
        try:
            answer_challenge(conn, key)
            deliver_challenge(conn, key)
        except BaseException:
            conn.close()
            raise
    return conn


# ---- the challenge ------------------------------------------------------------------


def deliver_challenge(
    connection: Connection, authkey: bytes, digest_name: str = DEFAULT_DIGEST
) -> None:
    """Challenge the peer to prove it holds ``authkey``; tell it whether it did.

    Raises:
        AuthenticationError: the peer's answer was wrong (or malformed).
        ValueError: ``digest_name`` is not an accepted digest.
    """
    key = _check_authkey(authkey)
    if key is None:
        raise TypeError("authkey should be a byte string")
    if digest_name not in _DIGESTS:
        raise ValueError(f"unsupported digest {digest_name!r}")
    nonce = b"{" + digest_name.encode("ascii") + b"}" + os.urandom(_NONCE_SIZE)
    connection.send_bytes(_CHALLENGE + nonce)
    response = _recv_handshake(connection, "answer to the challenge")
    expected = _answer(key, nonce)
    if hmac.compare_digest(response, expected):
        connection.send_bytes(_WELCOME)
        return
    connection.send_bytes(_FAILURE)
    raise AuthenticationError("digest received was wrong")


def answer_challenge(connection: Connection, authkey: bytes) -> None:
    """Answer the peer's challenge with ``authkey``.

    Raises:
        AuthenticationError: the peer rejected the answer, or sent no proper challenge.
    """
    key = _check_authkey(authkey)
    if key is None:
        raise TypeError("authkey should be a byte string")
    message = _recv_handshake(connection, "challenge")
    if not message.startswith(_CHALLENGE):
        raise AuthenticationError(f"Protocol error, expected challenge: {message[:40]!r}")
    connection.send_bytes(_answer(key, message[len(_CHALLENGE) :]))
    response = _recv_handshake(connection, "verdict on the answer")
    if response != _WELCOME:
        raise AuthenticationError("digest sent was rejected")


def _recv_handshake(connection: Connection, what: str) -> bytes:
    """One handshake message, read with ``MESSAGE_LENGTH`` as its cap: a longer one is
    refused on its header, before anything is allocated for it.

    Raises:
        AuthenticationError: the message was malformed or too long.
        EOFError: the peer closed the connection.
        OSError: the connection broke (the error has its errno).
    """
    try:
        return connection.recv_bytes(MESSAGE_LENGTH)
    except OSError as exc:
        if exc.errno is not None:
            raise  # the connection broke
        raise AuthenticationError(f"malformed {what}: {exc}") from None


def _answer(key: bytes, nonce: bytes) -> bytes:
    """``"{digest}" + HMAC(key, nonce)`` for a nonce that names its digest, as ``"{sha256}..."``."""
    end = nonce.find(b"}")
    name = nonce[1:end].decode("ascii", "replace") if nonce[:1] == b"{" and end > 0 else ""
    if name not in _DIGESTS:
        raise AuthenticationError(f"unsupported message digest {name!r}")
    return b"{" + name.encode("ascii") + b"}" + hmac.digest(key, nonce, name)
