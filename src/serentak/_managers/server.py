"""The manager's server: holds the referents and runs their methods for the proxies.

::

    main thread                      one thread per client connection (daemon)
    -----------                      ------------------------------------------
    select(listener, stop pipe)
      accept  ─── new connection ──▶ HMAC challenge both ways (nothing unpickled
                                     before it passes; a failed client is closed)
      shut down a connection still   (at most MAX_HANDSHAKES at a time; more are
      in the handshake after          closed at accept)
      HANDSHAKE_SECONDS
                                     loop: request = recv()
                                           reply = handler(request)   (under no lock
                                             while the referent's method runs, so a
                                             blocking get() holds up no other client)
                                           send(reply)
      stop pipe readable  ◀───────── Shutdown: reply, then stop()
    close the listener, drop every referent, return

State: ``_objects`` (id -> entry with the referent, its exposed methods and its
reference count) is shared by the client threads and guarded by ``_lock``;
the lock is never held while a referent's method runs or while a referent is
deleted (a Pool's finalizer joins its workers).

Reference counts: ``Create`` and methods in ``method_to_typeid`` make an entry
with one reference, the caller's; ``IncRef`` and ``Release`` change it, and
the entry goes at zero. Proxies that live in this process (nested in a
managed container) count directly, through ``_managers_client``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import selectors
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from serentak import _logging
from serentak._exceptions import AuthenticationError
from serentak._ipc.connection import Connection
from serentak._os import posix as _posix
from serentak._process.listener import Address, Listener, answer_challenge, deliver_challenge

from .client import replying, serve_locally, table
from .protocol import (
    FALLBACK_METHODS,
    GETVALUE,
    CallMethod,
    Create,
    Created,
    DebugInfo,
    Failed,
    GetMethods,
    IncRef,
    NumberOfObjects,
    Ping,
    Raised,
    Release,
    Reply,
    Returned,
    ReturnedProxy,
    Shutdown,
    Token,
    TypeSpec,
    public_methods,
)
from .serializers import adapt, check_serializer

# Connections a server keeps waiting to be accepted: many clients may start at once.
_BACKLOG: Final = 128
# A client proves its key within this many seconds of being accepted (an honest one
# takes milliseconds), or its connection is shut down: a peer that connects and says
# nothing holds a thread only this long.
HANDSHAKE_SECONDS: Final = 20.0
# At most this many clients between accept and a proven key; more are refused at
# once (closed), so connections that never authenticate cannot pile up threads.
MAX_HANDSHAKES: Final = 256
# dict views do not pickle: a proxy's keys(), values() and items() come back as
# lists, as with the stdlib's managers.
_DICT_VIEWS: Final = frozenset(type(getattr({}, name)()) for name in ("keys", "values", "items"))


@dataclasses.dataclass
class _Entry:
    """A referent, and what its proxies may do with it (guarded by the server's lock)."""

    obj: Any
    typeid: str
    exposed: tuple[str, ...]
    method_to_typeid: Mapping[str, str]
    refcount: int


def _raised(exc: BaseException) -> Raised:
    return Raised(exc, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


class Server:
    """A manager's server, serving the types in ``registry`` at ``address``.

    Args:
        registry: type id -> how to make and expose that type.
        address: where to listen; a fresh AF_UNIX address if None.
        authkey: the key every client must prove it holds.
        serializer: ``"pickle"`` or ``"xmlrpclib"`` (see ``serializers.py``).

    Raises:
        TypeError: ``authkey`` is not bytes.
        ValueError: the serializer is not supported.
        OSError: the address cannot be bound.
    """

    def __init__(
        self,
        registry: Mapping[str, TypeSpec],
        address: Address | None,
        authkey: bytes,
        serializer: str,
    ) -> None:
        if not isinstance(authkey, bytes):
            raise TypeError(f"Authkey {authkey!r} is type {type(authkey)!s}, not bytes")
        self.serializer = check_serializer(serializer)
        self.registry = dict(registry)
        self.authkey = bytes(authkey)
        self.listener = Listener(address, backlog=_BACKLOG)
        self.address: Address = self.listener.address
        self._objects: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopped = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._handlers = self.handlers()
        # Clients still in the handshake -> when they must have finished it (guarded
        # by _lock; a connection is closed only once it has left this table).
        self._handshakes: dict[Connection, float] = {}

    def handlers(self) -> dict[type, Callable[[Any], Reply | None]]:
        """The handler of each request type (a subclass adds its own)."""
        return {
            Create: self._create,
            CallMethod: self._call,
            IncRef: self._incref,
            Release: self._release,
            GetMethods: self._get_methods,
            Ping: lambda request: Returned(None),
            NumberOfObjects: lambda request: Returned(self.number_of_objects()),
            DebugInfo: lambda request: Returned(self.debug_info()),
            Shutdown: self._shutdown,
        }

    # ---- the loops ---------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until a client asks for shutdown (or Ctrl-C here); then drop every referent."""
        serve_locally(self.address, self)
        _logging.info("manager serving at %r", self.address)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.listener.fileno(), selectors.EVENT_READ, "accept")
                selector.register(self._wake_r, selectors.EVENT_READ, "stop")
                while not self._stopped.is_set():
                    for key, _events in selector.select(self._end_late_handshakes()):
                        if key.data == "accept":
                            self._accept()
        except KeyboardInterrupt:
            pass  # the stdlib's server also ends quietly on Ctrl-C
        finally:
            self._stopped.set()
            self.listener.close()
            serve_locally(self.address, None)
            with self._lock:
                objects, self._objects = self._objects, {}
            objects.clear()  # outside the lock: deleting a referent may take a while
            _posix.close_quietly(self._wake_r)
            _posix.close_quietly(self._wake_w)
            _logging.info("manager at %r stopped", self.address)

    def _accept(self) -> None:
        try:
            # Adapted before the handshake: nothing of the client's is buffered yet.
            conn = adapt(self.listener.accept_unauthenticated(), self.serializer)
        except OSError as exc:
            _logging.debug("accept failed: %r", exc)
            return
        with self._lock:
            admitted = len(self._handshakes) < MAX_HANDSHAKES
            if admitted:
                self._handshakes[conn] = time.monotonic() + HANDSHAKE_SECONDS
        if not admitted:
            _logging.info(
                "refused a client of the manager at %r: %d others are still in the handshake",
                self.address,
                MAX_HANDSHAKES,
            )
            conn.close()
            return
        threading.Thread(
            target=self._serve_client, args=(conn,), name="serentak-manager-client", daemon=True
        ).start()

    def _end_late_handshakes(self) -> float | None:
        """Shut down the connections of clients past their handshake deadline (their
        thread's read then ends); return the seconds until the next deadline."""
        now = time.monotonic()
        with self._lock:
            late = [conn for conn, deadline in self._handshakes.items() if deadline <= now]
            for conn in late:
                del self._handshakes[conn]
                # Under the lock: the client's thread closes the connection only after
                # taking it out of the table, so the descriptor is still this one.
                sock = _posix.adopt_socket(conn.fileno())
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the peer has gone already
                finally:
                    sock.detach()
            upcoming = min(self._handshakes.values(), default=None)
        return None if upcoming is None else max(0.0, upcoming - now)

    def stop(self) -> None:
        """Make :meth:`serve_forever` return."""
        self._stopped.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # already stopped and closed

    def _serve_client(self, conn: Connection) -> None:
        with conn:
            refused: BaseException | None = None
            try:
                deliver_challenge(conn, self.authkey)
                answer_challenge(conn, self.authkey)
            except (AuthenticationError, EOFError, OSError) as exc:
                refused = exc
            finally:
                # Out of the table before the connection can close, whatever happened:
                # the deadline must never shut down a descriptor reused since.
                with self._lock:
                    in_time = self._handshakes.pop(conn, None) is not None
            if not in_time:
                _logging.info(
                    "refused a client of the manager at %r: no handshake within %g s",
                    self.address,
                    HANDSHAKE_SECONDS,
                )
                return
            if refused is not None:
                _logging.info("refused a client of the manager at %r: %s", self.address, refused)
                return
            while not self._stopped.is_set():
                reply: Reply | None
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return  # the client thread or process has gone
                except Exception:
                    reply = Failed(
                        f"the manager could not read the request:\n{traceback.format_exc()}"
                    )
                    request = None
                else:
                    handler = self._handlers.get(type(request))
                    if handler is None:
                        reply = Failed(f"unknown request {type(request).__name__}\n")
                    else:
                        reply = handler(request)
                table.settle()  # proxies of ours that the request dropped
                if reply is not None and not self._send(conn, reply):
                    return
                if isinstance(request, Shutdown):
                    self.stop()
                    return

    def _send(self, conn: Connection, reply: Reply) -> bool:
        """Send ``reply`` (or the error pickling it raised); False if the client has gone."""
        try:
            with replying(self.address, self):
                # Pickled before anything is written: a failure leaves the stream in step.
                conn.send(reply)
            return True
        except OSError:
            return False
        except Exception as exc:
            failure = Failed(f"the manager could not pickle its reply: {exc!r}\n")
        try:
            conn.send(failure)
        except OSError:
            return False
        return True

    # ---- requests ----------------------------------------------------------------------

    def _create(self, request: Create) -> Reply:
        spec = self.registry.get(request.typeid)
        if spec is None:
            return Failed(f"no type {request.typeid!r} is registered with this manager\n")
        try:
            if spec.callable is None:
                if len(request.args) != 1 or request.kwargs:
                    raise TypeError(
                        f"{request.typeid!r} has no callable: give exactly the object to manage"
                    )
                obj = request.args[0]
            else:
                obj = spec.callable(*request.args, **request.kwargs)
        except BaseException as exc:
            return _raised(exc)
        ident, exposed = self._register(request.typeid, obj, spec)
        return Created(ident, exposed)

    def _register(self, typeid: str, obj: Any, spec: TypeSpec) -> tuple[str, tuple[str, ...]]:
        exposed = spec.exposed if spec.exposed is not None else tuple(public_methods(obj))
        entry = _Entry(obj, typeid, exposed, dict(spec.method_to_typeid or {}), refcount=1)
        with self._lock:
            ident = f"{next(self._ids):x}"
            self._objects[ident] = entry
        _logging.sub_debug("manager: %r created as %s", typeid, ident)
        return ident, exposed

    def _call(self, request: CallMethod) -> Reply:
        with self._lock:
            entry = self._objects.get(request.ident)
        if entry is None:
            return Failed(
                f"the manager has no object {request.ident!r} any more: "
                "its last proxy was released\n"
            )
        method = request.method
        obj = entry.obj
        if method not in entry.exposed:
            if method in FALLBACK_METHODS:
                return self._fallback(obj, method)
            return Raised(
                AttributeError(
                    f"method {method!r} of {type(obj)!r} object is not in exposed={entry.exposed!r}"
                ),
                "",
            )
        try:
            result = getattr(obj, method)(*request.args, **request.kwargs)
        except BaseException as exc:
            return _raised(exc)
        typeid = entry.method_to_typeid.get(method)
        if typeid is None:
            return Returned(list(result) if type(result) in _DICT_VIEWS else result)
        spec = self.registry.get(typeid)
        if spec is None:
            return Failed(f"method {method!r} returns type {typeid!r}, which is not registered\n")
        try:
            referent = result if spec.callable is None else spec.callable(result)
        except BaseException as exc:
            return _raised(exc)
        ident, exposed = self._register(typeid, referent, spec)
        return ReturnedProxy(Token(typeid, self.address, ident), exposed, spec.proxytype)

    @staticmethod
    def _fallback(obj: Any, method: str) -> Reply:
        try:
            if method == GETVALUE:
                return Returned(obj)
            return Returned(repr(obj) if method == "__repr__" else str(obj))
        except BaseException as exc:
            return _raised(exc)

    def _get_methods(self, request: GetMethods) -> Reply:
        with self._lock:
            entry = self._objects.get(request.ident)
        if entry is None:
            return Failed(f"the manager has no object {request.ident!r}\n")
        return Returned(entry.exposed)

    def _incref(self, request: IncRef) -> Reply:
        return Returned(self.incref(request.idents))

    def _release(self, request: Release) -> None:
        self.release(request.idents)

    def _shutdown(self, request: Shutdown) -> Reply:
        _logging.info("manager at %r: shutdown requested", self.address)
        return Returned(None)

    # ---- references (also called directly by this process's own proxies) ----------------

    def incref(self, idents: Sequence[str]) -> list[str]:
        """Take a reference to each referent; return the ids that do not exist."""
        missing = []
        with self._lock:
            for ident in idents:
                entry = self._objects.get(ident)
                if entry is None:
                    missing.append(ident)
                else:
                    entry.refcount += 1
        return missing

    def release(self, idents: Sequence[str]) -> None:
        """Give back a reference to each referent, deleting those that reach zero."""
        doomed = []
        with self._lock:
            for ident in idents:
                entry = self._objects.get(ident)
                if entry is None:
                    continue  # a reference taken by a client that died in the meantime
                entry.refcount -= 1
                if entry.refcount <= 0:
                    doomed.append(self._objects.pop(ident))
        if doomed:
            _logging.sub_debug("manager: %d object(s) released", len(doomed))
        doomed.clear()  # the referents go here, outside the lock

    def number_of_objects(self) -> int:
        """How many referents the server holds."""
        with self._lock:
            return len(self._objects)

    def debug_info(self) -> str:
        """One line per referent: its id, reference count, and the start of its repr."""
        with self._lock:
            entries = list(self._objects.items())
        lines = []
        for ident, entry in sorted(entries):
            try:
                text = str(entry.obj)[:75]
            except Exception as exc:
                text = f"<str() failed: {exc!r}>"
            lines.append(f"  {ident}:       refcount={entry.refcount}\n    {text}")
        return "\n".join(lines)
