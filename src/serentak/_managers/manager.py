"""Managers: a server process holding shared objects, and the manager object that owns it.

::

    owner process                                        server process (ctx.Process)
    -------------                                        ----------------------------
    manager = SyncManager(); manager.start()
      address = a new path in our temp dir
      Process(target=_run_server, args=(registry,
        address, authkey, Pipe end)).start()  ───────▶  initializer(*initargs)
      wait for the pipe or the process to end            Server(registry, address, authkey)
                        ◀─────── ServerReady(address) ──  (or ServerFailed(traceback))
                                                         serve_forever()
    manager.list([1, 2])  ── Create("list", ...) ─────▶  list([1, 2]), refcount 1
                          ◀──────── Created(id) ───────
    -> ListProxy(Token("list", address, id))  ── calls ─▶ (see _managers_proxy)
    manager.shutdown() / with-exit / owner exits
      Shutdown over a connection of its own  ─────────▶  reply, stop, drop every referent,
      join; terminate, then kill, if it lingers           exit
      remove the socket path, forget the address

The server dies with its owner (the parent-death guard of every serentak
child), so a manager never outlives the program that started it. A manager
made with ``connect()`` talks to a server started elsewhere and does not stop it.
"""

from __future__ import annotations

import array
import os
import signal
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn, TypeVar

from serentak import _logging
from serentak._exceptions import ProcessError
from serentak._ipc.connection import Pipe, wait
from serentak._process import process as _process
from serentak._process.listener import Address, arbitrary_address
from serentak._process.process import AuthenticationString, current_process

from .client import close_connection, open_connection, request, table, use_serializer
from .protocol import (
    Create,
    Created,
    DebugInfo,
    ManagerState,
    NumberOfObjects,
    Ping,
    ServerFailed,
    ServerReady,
    Shutdown,
    Token,
    TypeSpec,
)
from .proxy import (
    AcquirerProxy,
    ArrayProxy,
    AutoProxy,
    BarrierProxy,
    ConditionProxy,
    DictProxy,
    EventProxy,
    IteratorProxy,
    ListProxy,
    NamespaceProxy,
    PoolProxy,
    ValueProxy,
    adopting,
    raise_reply,
)
from .serializers import check_serializer
from .server import Server

if TYPE_CHECKING:
    from serentak._context import BaseContext

_M = TypeVar("_M", bound="BaseManager")

DEFAULT_SHUTDOWN_TIMEOUT: Final = 1.0


# ---- what SyncManager's server holds besides the stdlib's own types ------------------------


class Namespace:
    """An attribute bag: ``Manager().Namespace()``'s referent."""

    def __init__(self, /, **kwds: Any) -> None:
        self.__dict__.update(kwds)

    def __repr__(self) -> str:
        items = sorted(
            f"{name}={value!r}" for name, value in self.__dict__.items() if not name.startswith("_")
        )
        return f"{type(self).__name__}({', '.join(items)})"


class Value:
    """``Manager().Value()``'s referent: a value with a typecode (not enforced, as the stdlib's)."""

    def __init__(self, typecode: Any, value: Any, lock: bool = True) -> None:
        self._typecode = typecode
        self._value = value

    def get(self) -> Any:
        """The value."""
        return self._value

    def set(self, value: Any) -> None:
        """Replace the value."""
        self._value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typecode!r}, {self._value!r})"

    value = property(get, set)


def Array(typecode: str, sequence: Iterable[Any], lock: bool = True) -> array.array[Any]:
    """``Manager().Array()``'s referent: an ``array.array``."""
    return array.array(typecode, sequence)


# ---- the server process ---------------------------------------------------------------------


def _run_server(
    server_class: type[Server],
    registry: Mapping[str, TypeSpec],
    address: Address,
    authkey: bytes,
    serializer: str,
    writer: Any,
    initializer: Callable[..., object] | None,
    initargs: Sequence[Any],
) -> None:
    """The server process's target: set up, report to the owner, serve."""
    # Ctrl-C at the terminal reaches the whole process group: the owner decides
    # when its manager stops (the stdlib's manager ignores SIGINT too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    current_process().authkey = authkey
    try:
        if initializer is not None:
            initializer(*initargs)
        server = server_class(registry, address, authkey, serializer)
    except BaseException as exc:
        text = traceback.format_exc()
        try:
            writer.send(ServerFailed(exc, text))
        except Exception:
            writer.send(ServerFailed(None, text))
        writer.close()
        return
    writer.send(ServerReady(server.address))
    writer.close()
    server.serve_forever()


def _stop_server(
    process: _process.BaseProcess,
    address: Address,
    authkey: bytes,
    timeout: float,
    path: str | None,
) -> None:
    """Ask the server to shut down, then make sure it has; clean up after it."""
    if process.is_alive():
        try:
            # A connection of its own: this may run in a finalizer, in the
            # middle of this thread's own request on its usual connection.
            with open_connection(address, authkey) as conn:
                conn.send(Shutdown())
                conn.recv()
        except Exception as exc:
            _logging.debug("manager at %r did not take the shutdown request: %r", address, exc)
        process.join(timeout)
        if process.is_alive():
            _logging.info("manager still alive after shutdown request: terminating it")
            process.terminate()
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join()
    process.close()
    table.forget(address)
    close_connection(address)
    if path is not None:
        try:
            os.unlink(path)  # left behind by a server that was killed
        except OSError:
            pass
    _logging.info("manager at %r shut down", address)


class _Started:
    """The managers this process started and has not shut down, stopped when it exits."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finalizers: list[weakref.finalize[Any, Any]] = []
        self.hooked_pid = 0

    def add(self, finalizer: weakref.finalize[Any, Any]) -> None:
        with self.lock:
            if self.hooked_pid != os.getpid():
                # Per process: a child's exit hooks start empty, and its parent's
                # managers are not its to stop.
                self.finalizers = []
                self.hooked_pid = os.getpid()
                _process.register_before_exit(self.stop_all)
            self.finalizers = [f for f in self.finalizers if f.alive]
            self.finalizers.append(finalizer)

    def stop_all(self) -> None:
        with self.lock:
            finalizers, self.finalizers = self.finalizers, []
        for finalizer in finalizers:
            finalizer()


_started: Final = _Started()


# ---- managers -------------------------------------------------------------------------------


class BaseManager:
    """A manager: a server process holding objects that other processes use through proxies.

    Args:
        address: where the server listens (``start``) or is (``connect``); by
            default a fresh AF_UNIX address.
        authkey: the key clients must prove they hold; by default the
            calling process's ``authkey``.
        serializer: ``"pickle"``, or ``"xmlrpclib"`` for XML-RPC messages
            (what they may carry: see ``serializers.py``).
        ctx: the context whose Process runs the server; the default context if None.
        shutdown_timeout: how long ``shutdown()`` waits for the server to exit
            before terminating it, then again before killing it.
    """

    _registry: ClassVar[dict[str, TypeSpec]] = {}
    _Server: ClassVar[type[Server]] = Server

    def __init__(
        self,
        address: Address | None = None,
        authkey: bytes | None = None,
        serializer: str = "pickle",
        ctx: BaseContext | None = None,
        *,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        serializer = check_serializer(serializer)
        if authkey is None:
            authkey = current_process().authkey
        self._address = address
        self._authkey: bytes = AuthenticationString(authkey)
        self._state = ManagerState.INITIAL
        self._serializer = serializer
        if ctx is None:
            from serentak._context import default_context

            ctx = default_context
        self._ctx = ctx
        self._shutdown_timeout = shutdown_timeout
        self._process: _process.BaseProcess | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def address(self) -> Address | None:
        """The server's address (known once started, if it was not given)."""
        return self._address

    def get_server(self) -> Server:
        """A server for this manager's registry, to run in this process with ``serve_forever()``.

        Raises:
            ProcessError: the manager was already started or shut down.
        """
        self._check_initial()
        return self._Server(self._registry, self._address, self._authkey, self._serializer)

    def connect(self) -> None:
        """Connect to a server already running at ``address``.

        Raises:
            OSError: nothing listens there.
            AuthenticationError: the server's key differs.
        """
        if self._address is None:
            raise ValueError("connect() needs the manager's address")
        use_serializer(self._address, self._serializer)
        raise_reply(request(self._address, self._authkey, Ping(), what="connecting"))
        self._state = ManagerState.STARTED

    def start(
        self,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
    ) -> None:
        """Start the server process; ``initializer(*initargs)`` runs in it first.

        Raises:
            ProcessError: already started or shut down, or the server failed to start.
            TypeError: ``initializer`` is not callable.
            Exception: what the initializer raised, when it can be pickled back.
        """
        self._check_initial()
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        address = self._address
        path = None
        if address is None:
            address = arbitrary_address("AF_UNIX")
            path = str(address)  # ours to remove if the server cannot
        reader, writer = Pipe(duplex=False)
        process = self._ctx.Process(
            target=_run_server,
            args=(
                type(self)._Server,
                self._registry,
                address,
                self._authkey,
                self._serializer,
                writer,
                initializer,
                tuple(initargs),
            ),
        )
        process.name = f"{type(self).__name__}-{':'.join(str(i) for i in process._identity)}"
        process._machinery = True  # the server must not outlive its owner
        try:
            process.start()
        finally:
            writer.close()
        try:
            wait([reader, process.sentinel])
            message = reader.recv() if reader.poll() else None
        except EOFError:
            message = None
        finally:
            reader.close()
        if not isinstance(message, ServerReady):
            process.join()
            process.close()
            self._raise_start_failure(message)
        self._process = process
        self._address = message.address
        use_serializer(message.address, self._serializer)
        self._state = ManagerState.STARTED
        self._finalizer = weakref.finalize(
            self,
            _stop_server,
            process,
            message.address,
            self._authkey,
            self._shutdown_timeout,
            path,
        )
        _started.add(self._finalizer)
        _logging.info("manager %s started at %r", process.name, message.address)

    @staticmethod
    def _raise_start_failure(message: object) -> NoReturn:
        if isinstance(message, ServerFailed):
            if message.exception is not None:
                raise message.exception from ProcessError(message.traceback)
            raise ProcessError(f"the manager's server failed to start:\n{message.traceback}")
        raise ProcessError("the manager's server process exited before it was ready")

    def _check_initial(self) -> None:
        if self._state is ManagerState.STARTED:
            raise ProcessError("Already started server")
        if self._state is ManagerState.SHUTDOWN:
            raise ProcessError("Manager has shut down")

    def shutdown(self) -> None:
        """Stop the server process (if this manager started it) and forget the connections."""
        if self._finalizer is not None:
            self._finalizer()
        elif self._address is not None:
            close_connection(self._address)
        if self._state is ManagerState.STARTED:
            self._state = ManagerState.SHUTDOWN

    def join(self, timeout: float | None = None) -> None:
        """Wait for the server process to exit (it exits after ``shutdown()``)."""
        if self._process is not None and self._finalizer is not None and self._finalizer.alive:
            self._process.join(timeout)

    def __enter__(self: _M) -> _M:
        if self._state is ManagerState.INITIAL:
            self.start()
        if self._state is not ManagerState.STARTED:
            raise ProcessError(f"Unable to start server: the manager is {self._state.name}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.name.lower()} address={self._address!r}>"

    # ---- talking to the server --------------------------------------------------------

    def _request(self, message: object, what: str) -> Any:
        if self._address is None or self._state is not ManagerState.STARTED:
            raise ProcessError(f"the manager is not running ({self._state.name.lower()})")
        reply = request(self._address, self._authkey, message, what=what)
        if isinstance(reply, Created):
            return reply
        return raise_reply(reply)

    def _create(self, typeid: str, /, *args: Any, **kwds: Any) -> tuple[Token, tuple[str, ...]]:
        """Make a referent of ``typeid`` in the server; its token and exposed methods.

        The reference the server took is the caller's: build the proxy inside
        ``adopting(token)``.
        """
        reply = self._request(Create(typeid, args, kwds), f"creating a {typeid}")
        if not isinstance(reply, Created):
            raise ProcessError(f"unexpected reply to Create: {reply!r}")
        if self._address is None:
            raise ProcessError("the manager has no address")
        return Token(typeid, self._address, reply.ident), reply.exposed

    def _make(self, typeid: str, /, *args: Any, **kwds: Any) -> Any:
        """A proxy of a new referent of ``typeid``, of its registered proxy type."""
        token, exposed = self._create(typeid, *args, **kwds)
        proxytype = self._registry[typeid].proxytype
        with adopting(token):
            return proxytype(
                token, self._serializer, manager=self, authkey=self._authkey, exposed=exposed
            )

    def _number_of_objects(self) -> int:
        """How many referents the server holds (releasing this process's unused ones first)."""
        value: int = self._request(NumberOfObjects(), "counting objects")
        return value

    def _debug_info(self) -> str:
        """The server's referents and their reference counts, as text."""
        value: str = self._request(DebugInfo(), "asking for debug info")
        return value

    # ---- registering types ----------------------------------------------------------------

    @classmethod
    def register(
        cls,
        typeid: str,
        callable: Callable[..., Any] | None = None,
        proxytype: Any = None,
        exposed: Iterable[str] | None = None,
        method_to_typeid: Mapping[str, str] | None = None,
        create_method: bool = True,
    ) -> None:
        """Register a type the manager's server can make, and how its proxies look.

        Args:
            typeid: the type's name; with ``create_method``, also the name of
                the manager method that makes one.
            callable: makes the referent from the method's arguments; None
                when only methods return it, or for a manager that connects
                to a server started elsewhere.
            proxytype: the proxy class (a BaseProxy subclass); AutoProxy by default.
            exposed: the methods proxies may call; by default the proxy type's
                ``_exposed_``, else every public method of the referent.
            method_to_typeid: methods whose results stay in the server as
                referents of the given type ids, returned as proxies; by
                default the proxy type's ``_method_to_typeid_``.
            create_method: add a method named ``typeid`` to the class.
        """
        if "_registry" not in cls.__dict__:
            cls._registry = dict(cls._registry)  # subclasses do not change their bases'
        if proxytype is None:
            proxytype = AutoProxy
        if exposed is None:
            exposed = getattr(proxytype, "_exposed_", None)
        if method_to_typeid is None:
            method_to_typeid = getattr(proxytype, "_method_to_typeid_", None)
        if method_to_typeid:
            for key, value in method_to_typeid.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise TypeError(f"{key!r} -> {value!r}: method_to_typeid maps str to str")
        cls._registry[typeid] = TypeSpec(
            callable,
            None if exposed is None else tuple(exposed),
            None if method_to_typeid is None else dict(method_to_typeid),
            proxytype,
        )
        if create_method:

            def make(self: BaseManager, /, *args: Any, **kwds: Any) -> Any:
                return self._make(typeid, *args, **kwds)

            make.__name__ = make.__qualname__ = typeid
            make.__doc__ = f"A proxy of a new {typeid} in the manager's server."
            setattr(cls, typeid, make)


# ---- SyncManager ------------------------------------------------------------------------------


class SyncManager(BaseManager):
    """The manager ``serentak.Manager()`` starts: shared dicts, lists, locks, queues, pools..."""

    def Queue(self, maxsize: int = 0) -> Any:
        """A proxy of a ``queue.Queue``."""
        return self._make("Queue", maxsize)

    def JoinableQueue(self, maxsize: int = 0) -> Any:
        """A proxy of a ``queue.Queue`` (which has task_done and join)."""
        return self._make("JoinableQueue", maxsize)

    def Event(self) -> EventProxy:
        """A proxy of a ``threading.Event``."""
        proxy: EventProxy = self._make("Event")
        return proxy

    def Lock(self) -> AcquirerProxy:
        """A proxy of a ``threading.Lock``."""
        proxy: AcquirerProxy = self._make("Lock")
        return proxy

    def RLock(self) -> AcquirerProxy:
        """A proxy of a ``threading.RLock`` (owned by the calling thread's connection)."""
        proxy: AcquirerProxy = self._make("RLock")
        return proxy

    def Semaphore(self, value: int = 1) -> AcquirerProxy:
        """A proxy of a ``threading.Semaphore``."""
        proxy: AcquirerProxy = self._make("Semaphore", value)
        return proxy

    def BoundedSemaphore(self, value: int = 1) -> AcquirerProxy:
        """A proxy of a ``threading.BoundedSemaphore``."""
        proxy: AcquirerProxy = self._make("BoundedSemaphore", value)
        return proxy

    def Condition(self, lock: Any = None) -> ConditionProxy:
        """A proxy of a ``threading.Condition`` (on ``lock``, a Lock or RLock proxy, if given)."""
        proxy: ConditionProxy = self._make("Condition", lock)
        return proxy

    def Barrier(
        self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
    ) -> BarrierProxy:
        """A proxy of a ``threading.Barrier``."""
        proxy: BarrierProxy = self._make("Barrier", parties, action, timeout)
        return proxy

    def Pool(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
    ) -> PoolProxy:
        """A proxy of a Pool whose workers are children of the manager's server."""
        proxy: PoolProxy = self._make(
            "Pool", processes, initializer, tuple(initargs), maxtasksperchild
        )
        return proxy

    def list(self, sequence: Iterable[Any] = (), /) -> ListProxy:
        """A proxy of a list."""
        proxy: ListProxy = self._make("list", sequence)
        return proxy

    def dict(self, /, *args: Any, **kwds: Any) -> DictProxy:
        """A proxy of a dict, made as ``dict(*args, **kwds)``."""
        proxy: DictProxy = self._make("dict", *args, **kwds)
        return proxy

    def Value(self, typecode: Any, value: Any, lock: bool = True) -> ValueProxy:
        """A proxy of a value (``.value`` reads and writes it)."""
        proxy: ValueProxy = self._make("Value", typecode, value, lock)
        return proxy

    def Array(self, typecode: str, sequence: Iterable[Any], lock: bool = True) -> ArrayProxy:
        """A proxy of an ``array.array``."""
        proxy: ArrayProxy = self._make("Array", typecode, sequence, lock)
        return proxy

    def Namespace(self, /, **kwds: Any) -> NamespaceProxy:
        """A proxy of a Namespace, with ``kwds`` as its first attributes."""
        proxy: NamespaceProxy = self._make("Namespace", **kwds)
        return proxy


def _pool(*args: Any) -> Any:
    from serentak._pool.api import Pool

    return Pool(*args)


def _condition(lock: Any = None) -> threading.Condition:
    return threading.Condition(lock)


def _register_sync_types() -> None:
    import queue

    for typeid, made_by, proxytype in (
        ("Queue", queue.Queue, None),
        ("JoinableQueue", queue.Queue, None),
        ("Event", threading.Event, EventProxy),
        ("Lock", threading.Lock, AcquirerProxy),
        ("RLock", threading.RLock, AcquirerProxy),
        ("Semaphore", threading.Semaphore, AcquirerProxy),
        ("BoundedSemaphore", threading.BoundedSemaphore, AcquirerProxy),
        ("Condition", _condition, ConditionProxy),
        ("Barrier", threading.Barrier, BarrierProxy),
        ("Pool", _pool, PoolProxy),
        ("list", list, ListProxy),
        ("dict", dict, DictProxy),
        ("Value", Value, ValueProxy),
        ("Array", Array, ArrayProxy),
        ("Namespace", Namespace, NamespaceProxy),
    ):
        # The methods are SyncManager's own, typed ones.
        SyncManager.register(typeid, made_by, proxytype, create_method=False)
    SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
    SyncManager.register("AsyncResult", create_method=False)


_register_sync_types()


# Proxy classes name ``serentak.managers`` as their module, so that they pickle
# by reference: make sure it is loaded wherever proxies are made.
