"""A process's side of its managers: one connection per thread, and its references.

Connections::

    thread T1 ── connection (T1, manager A) ──▶ manager A: a server thread for it
    thread T2 ── connection (T2, manager A) ──▶ manager A: another server thread
    thread T1 ── connection (T1, manager B) ──▶ manager B

Each thread talks to each manager over a connection of its own, made (and
authenticated) on first use and closed when the thread ends, so proxies are
used from many threads at once without a lock, and a call blocked in the
manager (``queue.get()``) holds up no other thread. A forked child closes the
copies of its parent's connections it inherited and makes its own.

References: the manager deletes a referent when no process holds a reference
to it. Each process takes **one** reference per referent however many proxies
it holds, and counts its proxies here:

* a proxy made by ``Create`` or returned by a method adopts the reference the
  manager took for the reply; a proxy unpickled from a queue or pipe asks for
  one (``IncRef``) unless the process already holds one; a proxy given to a
  child at start-up borrows its parent's (as the stdlib's, the parent keeps
  the Process's arguments, and so the proxy, until the child has ended);
* a proxy's finalizer only appends to ``_dropped`` (it runs inside garbage
  collection, possibly in the middle of this thread's own request, so it may
  neither lock nor talk); the next request, from any thread, settles the
  counts, and the references that reached zero ride in front of it as one
  ``Release`` message, with no reply to wait for;
* a fork child first borrows everything its parent held, then (a serentak
  Process, before its target runs) takes references of its own; every process
  gives back what it still holds when it exits.

Inside a manager's own server process, proxies of its own referents (nested
ones: a list proxy stored in a managed dict) count directly on the server's
table, and a reply carrying one takes the reference for the receiver before
it leaves, so the referent cannot vanish while the reply is in flight.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Final, Protocol

from serentak import _logging
from serentak._ipc.connection import Connection
from serentak._process import process as _process
from serentak._process.listener import Client

from .protocol import Address, IncRef, RefMode, Release, Reply, Returned, Token
from .serializers import PICKLE, adapt, check_serializer

Key = tuple[Address, str]


class LocalServer(Protocol):
    """The manager server running in this process, as its own proxies see it."""

    def incref(self, idents: Sequence[str]) -> list[str]:
        """Take a reference to each referent; return the ids that do not exist."""

    def release(self, idents: Sequence[str]) -> None:
        """Give back a reference to each referent."""


_local_servers: dict[Address, LocalServer] = {}


def serve_locally(address: Address, server: LocalServer | None) -> None:
    """Make this process's proxies of ``address`` count on ``server`` (None: stop)."""
    if server is None:
        _local_servers.pop(address, None)
    else:
        _local_servers[address] = server


# ---- connections ---------------------------------------------------------------------

# The serializer of each manager this process talks to (told by its managers and
# proxies, which carry it); one not told of speaks pickle.
_serializers: dict[Address, str] = {}


def use_serializer(address: Address, serializer: str) -> None:
    """Talk to the manager at ``address`` with ``serializer`` (connections made from now on).

    Raises:
        ValueError: serentak's managers have no such serializer.
    """
    _serializers[address] = check_serializer(serializer)


def open_connection(address: Address, authkey: bytes) -> Connection:
    """A new connection to the manager at ``address``, speaking its serializer."""
    return adapt(Client(address, authkey=bytes(authkey)), _serializers.get(address, PICKLE))


class _Sessions(threading.local):
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.connections: dict[Address, Connection] = {}
        # Addresses whose connection is in the middle of a request in this thread.
        self.busy: set[Address] = set()


_sessions: Final = _Sessions()
# Every connection made here, so a forked child can close the copies it inherits.
_every_connection: Final[weakref.WeakSet[Connection]] = weakref.WeakSet()


def _connection(address: Address, authkey: bytes) -> Connection:
    sessions = _sessions
    if sessions.pid != os.getpid():
        sessions.connections = {}
        sessions.busy = set()
        sessions.pid = os.getpid()
    conn = sessions.connections.get(address)
    if conn is None or conn.closed:
        conn = open_connection(address, authkey)
        sessions.connections[address] = conn
        _every_connection.add(conn)
        _logging.sub_debug("connected to the manager at %r", address)
    return conn


def close_connection(address: Address) -> None:
    """Close this thread's connection to ``address`` (other threads' go when they end)."""
    if _sessions.pid != os.getpid():
        return
    conn = _sessions.connections.pop(address, None)
    if conn is not None:
        conn.close()


def request(address: Address, authkey: bytes, message: object, *, what: str) -> Reply:
    """Send ``message`` to the manager at ``address`` and return its reply.

    Args:
        address: the manager's address.
        authkey: the key to authenticate with, if a connection must be made.
        message: the request.
        what: what is being done, for the error message.

    Raises:
        EOFError: the connection broke during the request (the manager died).
        OSError: no manager answers at ``address``.
        Exception: whatever pickling ``message`` or unpickling the reply raises.
    """
    table.settle()
    if address in _sessions.busy:
        # Unpickling this thread's reply from that manager made a proxy that
        # asks it for something: the connection is mid-reply, so use another.
        with open_connection(address, authkey) as spare:
            return _exchange(spare, address, message, what, [])
    conn = _connection(address, authkey)
    _sessions.busy.add(address)
    try:
        return _exchange(conn, address, message, what, table.take_pending(address))
    finally:
        _sessions.busy.discard(address)


def _exchange(
    conn: Connection, address: Address, message: object, what: str, releases: list[str]
) -> Reply:
    try:
        if releases:
            conn.send(Release(tuple(releases)))
        # Connection.send pickles before it writes: an argument that cannot be
        # pickled raises here (not an OSError) and leaves the connection in step.
        conn.send(message)
        reply: Reply = conn.recv()
    except (EOFError, OSError) as exc:
        _forget_connection(address, conn)
        raise EOFError(
            f"lost the connection to the manager at {address!r} during {what}: "
            "the manager process has exited or was killed"
        ) from exc
    except Exception:
        raise  # pickling the request or unpickling the reply: nothing half done
    except BaseException:
        # Interrupted half way (Ctrl-C while the manager works): the reply would
        # come out of step, so the connection goes.
        _forget_connection(address, conn)
        raise
    return reply


def _forget_connection(address: Address, conn: Connection) -> None:
    if _sessions.connections.get(address) is conn:
        del _sessions.connections[address]
    conn.close()


def _send_release(address: Address, authkey: bytes, idents: Sequence[str]) -> None:
    conn = _connection(address, authkey)
    conn.send(Release(tuple(idents)))


def _incref(address: Address, authkey: bytes, idents: Sequence[str]) -> list[str]:
    """Take a reference to each referent; the ids that no longer exist."""
    server = _local_servers.get(address)
    if server is not None:
        return server.incref(idents)
    reply = request(address, authkey, IncRef(tuple(idents)), what="taking a reference")
    if not isinstance(reply, Returned):
        raise TypeError(f"unexpected reply to IncRef: {reply!r}")
    missing: list[str] = reply.value
    return missing


# ---- references --------------------------------------------------------------------------


class RefTable:
    """This process's references to manager referents, and its proxies' counts of them.

    Every method but :meth:`dropped` may talk to a manager and must not be
    called from a finalizer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owned: dict[Key, int] = {}  # proxies counting on our own reference
        self._borrowed: dict[Key, int] = {}  # fork: proxies counting on the parent's
        self._pending: dict[Address, list[str]] = {}  # references to give back
        self._dropped: collections.deque[Key] = collections.deque()
        self._authkeys: dict[Address, bytes] = {}
        self._dead: set[Address] = set()
        self._exit_hook_pid = 0

    def acquire(self, token: Token, authkey: bytes, mode: RefMode) -> bool:
        """Count a new proxy of ``token``; True if it holds a count (and must call :meth:`dropped`).

        Raises:
            RemoteError: the manager no longer has the referent.
        """
        if mode is RefMode.BORROW:
            return False
        key = (token.address, token.id)
        need_incref = False
        with self._lock:
            self._authkeys[token.address] = bytes(authkey)
            self._hook_exit()
            count = self._owned.get(key, 0)
            pending = self._pending.get(token.address, [])
            if count:
                self._owned[key] = count + 1
                if mode is RefMode.ADOPT:
                    pending.append(token.id)  # one reference per process is enough
                    self._pending[token.address] = pending
            elif mode is RefMode.ADOPT:
                self._owned[key] = 1
            elif token.id in pending:
                pending.remove(token.id)  # take back the one about to be given back
                self._owned[key] = 1
            else:
                self._owned[key] = 1
                need_incref = True
        if need_incref:
            try:
                missing = _incref(token.address, authkey, [token.id])
            except BaseException:
                self._uncount(key)
                raise
            if missing:
                self._uncount(key)
                from .protocol import RemoteError

                raise RemoteError(
                    f"the manager at {token.address!r} has no object {token.id!r} "
                    f"(typeid {token.typeid!r}): its last proxy was released\n"
                )
        return True

    def _uncount(self, key: Key) -> None:
        with self._lock:
            count = self._owned.get(key, 0) - 1
            if count > 0:
                self._owned[key] = count
            else:
                self._owned.pop(key, None)

    def dropped(self, key: Key) -> None:
        """A proxy holding a count is gone (called from its finalizer: no lock, no I/O)."""
        self._dropped.append(key)

    def settle(self) -> None:
        """Apply the dropped proxies; give local references back now, remote ones with the
        next request."""
        while True:
            local: dict[Address, list[str]] = {}
            with self._lock:
                while self._dropped:
                    self._drop_one(self._dropped.popleft())
                for address in [a for a in self._pending if a in _local_servers]:
                    local[address] = self._pending.pop(address)
            if not local:
                return
            for address, idents in local.items():
                server = _local_servers.get(address)
                if server is not None:
                    # May delete referents, whose nested proxies drop in turn: loop.
                    server.release(idents)

    def _drop_one(self, key: Key) -> None:
        for counts, owned in ((self._borrowed, False), (self._owned, True)):
            count = counts.get(key, 0)
            if count:
                if count > 1:
                    counts[key] = count - 1
                else:
                    del counts[key]
                    if owned:
                        self._pending.setdefault(key[0], []).append(key[1])
                return

    def give_back(self, token: Token) -> None:
        """A reference taken for this process that no proxy counts on: give it back."""
        with self._lock:
            self._pending.setdefault(token.address, []).append(token.id)

    def take_pending(self, address: Address) -> list[str]:
        """The references to give back to ``address`` (the caller sends them)."""
        with self._lock:
            return self._pending.pop(address, [])

    def forget(self, address: Address) -> None:
        """The manager at ``address`` has shut down: nothing is owed to it any more."""
        with self._lock:
            self._dead.add(address)
            self._pending.pop(address, None)
            for counts in (self._owned, self._borrowed):
                for key in [k for k in counts if k[0] == address]:
                    del counts[key]

    def _hook_exit(self) -> None:
        if self._exit_hook_pid != os.getpid():
            self._exit_hook_pid = os.getpid()
            _process.register_before_exit(self.release_all)

    def release_all(self) -> None:
        """At exit: give back every reference this process holds (managers that still run)."""
        self.settle()
        with self._lock:
            for (address, ident), _count in self._owned.items():
                self._pending.setdefault(address, []).append(ident)
            self._owned = {}
            self._borrowed = {}
            pending, self._pending = self._pending, {}
        for address, idents in pending.items():
            if address in self._dead or address in _local_servers:
                continue
            try:
                _send_release(address, self._authkeys[address], idents)
            except Exception as exc:
                _logging.sub_debug("could not release references at %r: %r", address, exc)

    # ---- fork ------------------------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """The child's proxies are copies of the parent's: they borrow its references."""
        self._lock = threading.Lock()
        for key, count in self._owned.items():
            self._borrowed[key] = self._borrowed.get(key, 0) + count
        self._owned = {}
        self._pending = {}
        while self._dropped:
            self._drop_one(self._dropped.popleft())
        self._exit_hook_pid = 0

    def adopt_inherited(self) -> None:
        """In a forked serentak child, before its target: take references of our own.

        Best effort: a manager that has gone away leaves those proxies
        borrowing (their calls will fail, as they would have anyway).
        """
        with self._lock:
            borrowed, self._borrowed = self._borrowed, {}
        by_address: dict[Address, list[str]] = {}
        for address, ident in borrowed:
            if address not in self._dead:
                by_address.setdefault(address, []).append(ident)
        for address, idents in by_address.items():
            try:
                missing = set(_incref(address, self._authkeys[address], idents))
            except Exception as exc:
                _logging.sub_debug("could not take references at %r: %r", address, exc)
                missing = set(idents)
            with self._lock:
                self._hook_exit()
                for ident in idents:
                    key = (address, ident)
                    target = self._borrowed if ident in missing else self._owned
                    target[key] = target.get(key, 0) + borrowed[key]


table: Final = RefTable()


def _after_fork_in_child() -> None:
    for conn in list(_every_connection):
        conn.close()  # the child's copy only: the parent's session goes on
    _every_connection.clear()
    _local_servers.clear()  # a child of a manager's server process is not that server
    table.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
_process.register_after_start(table.adopt_inherited)


# ---- replies that carry proxies ------------------------------------------------------------


class _Replying(threading.local):
    def __init__(self) -> None:
        self.address: Address | None = None
        self.server: LocalServer | None = None
        self.taken: list[str] = []


_replying: Final = _Replying()


@contextlib.contextmanager
def replying(address: Address, server: LocalServer) -> Iterator[None]:
    """While the server pickles a reply: proxies of its own referents take a reference for
    the receiver (see :func:`reference_for_reply`); given back if the reply cannot be sent."""
    state = _replying
    state.address, state.server, state.taken = address, server, []
    try:
        yield
    except BaseException:
        if state.taken:
            server.release(state.taken)
        raise
    finally:
        state.address, state.server, state.taken = None, None, []


def reference_for_reply(token: Token) -> bool:
    """True if ``token`` is pickled into its own server's reply, a reference now taken for it."""
    state = _replying
    if state.server is None or state.address != token.address:
        return False
    if state.server.incref([token.id]):
        return False  # gone already: the receiver's IncRef will say so
    state.taken.append(token.id)
    return True
