"""Proxies: objects that forward method calls to their referent in a manager process.

::

    proxy._callmethod("append", (4,))                server thread of this connection
      request(CallMethod(id, "append", (4,), {})) ─▶   getattr(referent, "append")(4)
      Returned(value)          ◀─────────────────────   the result, pickled
      Raised(exc, traceback)   ◀─────────────────────   raised again here, the manager's
                                                        traceback chained as __cause__
      ReturnedProxy(token)     ◀─────────────────────   a method in method_to_typeid: its
                                                        result stays there, we get a proxy

A proxy pickles as its token and how to take a reference (see
``_managers_client``); it can go to a child as a Process argument, through a
Queue or a Connection, or to a pool worker as a task argument. Its class
goes by reference when it can be imported, else by value; an AutoProxy goes
as the AutoProxy recipe and its exposed methods.
"""

from __future__ import annotations

import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Final

from serentak._exceptions import RemoteTraceback
from serentak._ipc.serialize import is_spawning
from serentak._process.process import AuthenticationString, current_process

from .client import reference_for_reply, request, table, use_serializer
from .protocol import (
    GETVALUE,
    CallMethod,
    Failed,
    GetMethods,
    Raised,
    RefMode,
    RemoteError,
    Reply,
    Returned,
    ReturnedProxy,
    Token,
)

__all__ = [
    "AcquirerProxy",
    "ArrayProxy",
    "AutoProxy",
    "BarrierProxy",
    "BaseListProxy",
    "BasePoolProxy",
    "BaseProxy",
    "ConditionProxy",
    "DictProxy",
    "EventProxy",
    "IteratorProxy",
    "ListProxy",
    "MakeProxyType",
    "NamespaceProxy",
    "PoolProxy",
    "ValueProxy",
]


class _Constructing(threading.local):
    """The token whose proxy, being built in this thread, adopts a reference already taken."""

    token: Token | None = None


_constructing: Final = _Constructing()


class adopting:
    """Build the proxy of ``token`` in this block on the reference the manager took for us.

    If the block built no proxy that took it (a proxytype that is not a
    BaseProxy), the reference is given back.
    """

    def __init__(self, token: Token) -> None:
        self._token = token

    def __enter__(self) -> None:
        _constructing.token = self._token

    def __exit__(self, *exc_info: object) -> None:
        if _constructing.token is not None:
            _constructing.token = None
            table.give_back(self._token)


def _take_adoption(token: Token) -> bool:
    if _constructing.token is not None and _constructing.token == token:
        _constructing.token = None
        return True
    return False


def raise_reply(reply: Reply) -> Any:
    """The value of a ``Returned`` reply; raise what a ``Raised`` or ``Failed`` one carries.

    Raises:
        BaseException: the manager's exception, its traceback chained as ``__cause__``.
        RemoteError: an error that could not travel as itself.
    """
    if isinstance(reply, Returned):
        return reply.value
    if isinstance(reply, Raised):
        exception = reply.exception
        if reply.traceback:
            exception.__cause__ = RemoteTraceback(reply.traceback)
        raise exception
    if isinstance(reply, Failed):
        raise RemoteError(reply.message)
    raise RemoteError(f"unexpected reply from the manager: {type(reply).__name__}\n")


class BaseProxy:
    """The base of every proxy: the stdlib's ``multiprocessing.managers.BaseProxy``.

    Args:
        token: the referent's token.
        serializer: the manager's serializer (``"pickle"`` or ``"xmlrpclib"``).
        manager: the manager object this proxy came from, if in this process.
        authkey: the key to authenticate with; by default the manager's, else
            the process's ``authkey``.
        exposed: the method names the referent exposes (AutoProxy uses them).
        incref: take a reference to the referent; with False the proxy relies
            on one held elsewhere in this process or by its parent.
        manager_owned: the proxy lives in its manager's own process (as
            ``incref=False``).

    Raises:
        RemoteError: the referent no longer exists.
    """

    _exposed_: ClassVar[tuple[str, ...] | None] = None
    _method_to_typeid_: ClassVar[Mapping[str, str] | None] = None
    _isauto = False

    def __init__(
        self,
        token: Token,
        serializer: str,
        manager: Any = None,
        authkey: bytes | None = None,
        exposed: Iterable[str] | None = None,
        incref: bool = True,
        manager_owned: bool = False,
    ) -> None:
        use_serializer(token.address, serializer)
        self._token = token
        self._serializer = serializer
        self._manager = manager
        if authkey is not None:
            key: bytes = AuthenticationString(authkey)
        elif manager is not None:
            key = manager._authkey
        else:
            key = current_process().authkey
        self._authkey = key
        self._exposed = tuple(exposed) if exposed is not None else None
        if _take_adoption(token):
            mode = RefMode.ADOPT
        elif incref and not manager_owned:
            mode = RefMode.INCREF
        else:
            mode = RefMode.BORROW
        if table.acquire(token, key, mode):
            finalizer = weakref.finalize(self, table.dropped, (token.address, token.id))
            # At exit the process gives back all its references at once.
            finalizer.atexit = False

    def _callmethod(
        self,
        methodname: str,
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
    ) -> Any:
        """Call ``methodname`` of the referent with ``args`` and ``kwds``; return its result.

        Raises:
            BaseException: what the method raised in the manager.
            EOFError: the manager died during the call.
        """
        token = self._token
        reply = request(
            token.address,
            self._authkey,
            CallMethod(token.id, methodname, tuple(args), dict(kwds or {})),
            what=f"{token.typeid}.{methodname}()",
        )
        if isinstance(reply, ReturnedProxy):
            return self._proxy_for(reply)
        return raise_reply(reply)

    def _proxy_for(self, reply: ReturnedProxy) -> Any:
        proxytype = reply.proxytype
        registry = getattr(self._manager, "_registry", None)
        if registry is not None and reply.token.typeid in registry:
            proxytype = registry[reply.token.typeid].proxytype
        elif proxytype is None:
            proxytype = AutoProxy  # the reply could not carry a class (XML-RPC)
        # Our address for the manager, which may be spelt differently from its own.
        token = Token(reply.token.typeid, self._token.address, reply.token.id)
        with adopting(token):
            return proxytype(
                token,
                self._serializer,
                manager=self._manager,
                authkey=self._authkey,
                exposed=reply.exposed,
            )

    def _getvalue(self) -> Any:
        """A copy of the referent."""
        return self._callmethod(GETVALUE)

    def __reduce__(self) -> tuple[Any, ...]:
        token = self._token
        if is_spawning():
            mode, authkey = RefMode.BORROW, bytes(self._authkey)
        else:
            mode = RefMode.ADOPT if reference_for_reply(token) else RefMode.INCREF
            authkey = None
        factory: Any = AutoProxy if self._isauto else type(self)
        return _rebuild_proxy, (factory, token, self._serializer, self._exposed, authkey, mode)

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self._getvalue()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object, typeid {self._token.typeid!r} at {id(self):#x}>"

    def __str__(self) -> str:
        try:
            text: str = self._callmethod("__repr__")
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"
        return text


def _rebuild_proxy(
    factory: Callable[..., Any],
    token: Token,
    serializer: str,
    exposed: tuple[str, ...] | None,
    authkey: bytes | None,
    mode: RefMode,
) -> Any:
    if mode is RefMode.ADOPT:
        with adopting(token):
            return factory(token, serializer, authkey=authkey, exposed=exposed)
    return factory(
        token, serializer, authkey=authkey, exposed=exposed, incref=mode is RefMode.INCREF
    )


# ---- proxy types made from a list of methods ---------------------------------------------


def _forwarder(name: str) -> Callable[..., Any]:
    def method(self: BaseProxy, /, *args: Any, **kwds: Any) -> Any:
        return self._callmethod(name, args, kwds)

    method.__name__ = method.__qualname__ = name
    return method


_proxy_types: dict[tuple[str, tuple[str, ...]], type[BaseProxy]] = {}
_proxy_types_lock: Final = threading.Lock()


def MakeProxyType(name: str, exposed: Iterable[str]) -> type[BaseProxy]:
    """A BaseProxy subclass named ``name`` whose methods ``exposed`` call the referent's.

    The class names the caller's module, so that one assigned to ``name`` at
    module level pickles by reference. Classes are cached by name and methods.
    """
    methods = tuple(exposed)
    key = (name, methods)
    with _proxy_types_lock:
        cls = _proxy_types.get(key)
        if cls is None:
            namespace: dict[str, Any] = {meth: _forwarder(meth) for meth in methods}
            namespace["_exposed_"] = methods
            namespace["__module__"] = sys._getframe(1).f_globals.get("__name__", __name__)
            cls = type(name, (BaseProxy,), namespace)
            _proxy_types[key] = cls
        return cls


def AutoProxy(
    token: Token,
    serializer: str,
    manager: Any = None,
    authkey: bytes | None = None,
    exposed: Iterable[str] | None = None,
    incref: bool = True,
    manager_owned: bool = False,
) -> BaseProxy:
    """A proxy whose methods are those the referent exposes (asked of the manager if not given).

    Raises:
        RemoteError: the referent no longer exists.
    """
    if exposed is None:
        if authkey is not None:
            key = authkey
        elif manager is not None:
            key = manager._authkey
        else:
            key = current_process().authkey
        use_serializer(token.address, serializer)
        reply = request(token.address, key, GetMethods(token.id), what="asking for methods")
        exposed = raise_reply(reply)
    methods = tuple(exposed or ())
    cls = MakeProxyType(f"AutoProxy[{token.typeid}]", methods)
    proxy = cls(
        token,
        serializer,
        manager=manager,
        authkey=authkey,
        exposed=methods,
        incref=incref,
        manager_owned=manager_owned,
    )
    proxy._isauto = True
    return proxy


# ---- the stdlib's proxy types --------------------------------------------------------------


class IteratorProxy(BaseProxy):
    """A proxy of an iterator or generator."""

    _exposed_: ClassVar[tuple[str, ...] | None] = ("__next__", "send", "throw", "close")

    def __iter__(self) -> IteratorProxy:
        return self

    def __next__(self, *args: Any) -> Any:
        return self._callmethod("__next__", args)

    def send(self, *args: Any) -> Any:
        """Send a value into the generator."""
        return self._callmethod("send", args)

    def throw(self, *args: Any) -> Any:
        """Raise an exception in the generator."""
        return self._callmethod("throw", args)

    def close(self, *args: Any) -> Any:
        """Close the generator."""
        return self._callmethod("close", args)


class AcquirerProxy(BaseProxy):
    """A proxy of a lock or semaphore; usable in ``with``."""

    _exposed_: ClassVar[tuple[str, ...] | None] = ("acquire", "release")

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> Any:
        """Acquire the referent, waiting up to ``timeout`` seconds if ``blocking``."""
        args = (blocking,) if timeout is None else (blocking, timeout)
        return self._callmethod("acquire", args)

    def release(self) -> Any:
        """Release the referent."""
        return self._callmethod("release")

    def __enter__(self) -> Any:
        return self._callmethod("acquire")

    def __exit__(self, *exc_info: object) -> Any:
        return self._callmethod("release")


class ConditionProxy(AcquirerProxy):
    """A proxy of a condition variable."""

    _exposed_: ClassVar[tuple[str, ...] | None] = (
        "acquire",
        "release",
        "wait",
        "notify",
        "notify_all",
    )

    def wait(self, timeout: float | None = None) -> Any:
        """Wait until notified or ``timeout`` seconds pass."""
        return self._callmethod("wait", (timeout,))

    def notify(self, n: int = 1) -> Any:
        """Wake up to ``n`` waiters."""
        return self._callmethod("notify", (n,))

    def notify_all(self) -> Any:
        """Wake every waiter."""
        return self._callmethod("notify_all")

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` is true (evaluated here), or ``timeout`` seconds pass."""
        result = predicate()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
            self.wait(remaining)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    """A proxy of an event."""

    _exposed_: ClassVar[tuple[str, ...] | None] = ("is_set", "set", "clear", "wait")

    def is_set(self) -> bool:
        """Whether the flag is set."""
        value: bool = self._callmethod("is_set")
        return value

    def set(self) -> None:
        """Set the flag."""
        self._callmethod("set")

    def clear(self) -> None:
        """Clear the flag."""
        self._callmethod("clear")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set or ``timeout`` seconds pass; the flag."""
        value: bool = self._callmethod("wait", (timeout,))
        return value


class BarrierProxy(BaseProxy):
    """A proxy of a barrier."""

    _exposed_: ClassVar[tuple[str, ...] | None] = ("__getattribute__", "wait", "abort", "reset")

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the other parties; this party's index."""
        value: int = self._callmethod("wait", (timeout,))
        return value

    def abort(self) -> None:
        """Put the barrier in the broken state."""
        self._callmethod("abort")

    def reset(self) -> None:
        """Return the barrier to its initial state."""
        self._callmethod("reset")

    @property
    def parties(self) -> int:
        """How many parties must wait."""
        value: int = self._callmethod("__getattribute__", ("parties",))
        return value

    @property
    def n_waiting(self) -> int:
        """How many parties are waiting."""
        value: int = self._callmethod("__getattribute__", ("n_waiting",))
        return value

    @property
    def broken(self) -> bool:
        """Whether the barrier is broken."""
        value: bool = self._callmethod("__getattribute__", ("broken",))
        return value


class NamespaceProxy(BaseProxy):
    """A proxy of a Namespace: its public attributes live in the manager."""

    _exposed_: ClassVar[tuple[str, ...] | None] = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            return object.__getattribute__(self, key)
        return object.__getattribute__(self, "_callmethod")("__getattribute__", (key,))

    def __setattr__(self, key: str, value: Any) -> None:
        if key.startswith("_"):
            object.__setattr__(self, key, value)
            return
        object.__getattribute__(self, "_callmethod")("__setattr__", (key, value))

    def __delattr__(self, key: str) -> None:
        if key.startswith("_"):
            object.__delattr__(self, key)
            return
        object.__getattribute__(self, "_callmethod")("__delattr__", (key,))


class ValueProxy(BaseProxy):
    """A proxy of a Value: ``value`` reads and writes the referent's."""

    _exposed_: ClassVar[tuple[str, ...] | None] = ("get", "set")

    def get(self) -> Any:
        """The value."""
        return self._callmethod("get")

    def set(self, value: Any) -> None:
        """Replace the value."""
        self._callmethod("set", (value,))

    value = property(get, set)

    __class_getitem__: ClassVar[Any] = classmethod(types.GenericAlias)


class BaseListProxy(BaseProxy):
    """A proxy of a list (the stdlib's methods)."""

    _exposed_: ClassVar[tuple[str, ...] | None] = (
        "__add__",
        "__contains__",
        "__delitem__",
        "__getitem__",
        "__len__",
        "__mul__",
        "__reversed__",
        "__rmul__",
        "__setitem__",
        "append",
        "clear",
        "copy",
        "count",
        "extend",
        "index",
        "insert",
        "pop",
        "remove",
        "reverse",
        "sort",
        "__imul__",
    )

    def __add__(self, value: Any) -> Any:
        return self._callmethod("__add__", (value,))

    __contains__ = _forwarder("__contains__")
    __delitem__ = _forwarder("__delitem__")
    __getitem__ = _forwarder("__getitem__")
    __len__ = _forwarder("__len__")

    def __mul__(self, value: Any) -> Any:
        return self._callmethod("__mul__", (value,))

    __reversed__ = _forwarder("__reversed__")
    __rmul__ = _forwarder("__rmul__")
    __setitem__ = _forwarder("__setitem__")
    append = _forwarder("append")
    clear = _forwarder("clear")
    copy = _forwarder("copy")
    count = _forwarder("count")
    extend = _forwarder("extend")
    index = _forwarder("index")
    insert = _forwarder("insert")
    pop = _forwarder("pop")
    remove = _forwarder("remove")
    reverse = _forwarder("reverse")
    sort = _forwarder("sort")


class ListProxy(BaseListProxy):
    """A proxy of a list; ``+=`` and ``*=`` change the referent in place."""

    def __iadd__(self, value: Any) -> Any:
        self._callmethod("extend", (value,))
        return self

    def __imul__(self, value: Any) -> Any:
        self._callmethod("__imul__", (value,))
        return self

    __class_getitem__: ClassVar[Any] = classmethod(types.GenericAlias)


class DictProxy(BaseProxy):
    """A proxy of a dict; iterating it iterates the referent's keys in the manager."""

    _exposed_: ClassVar[tuple[str, ...] | None] = (
        "__contains__",
        "__delitem__",
        "__getitem__",
        "__iter__",
        "__len__",
        "__setitem__",
        "clear",
        "copy",
        "get",
        "items",
        "keys",
        "pop",
        "popitem",
        "setdefault",
        "update",
        "values",
    )
    _method_to_typeid_: ClassVar[Mapping[str, str] | None] = types.MappingProxyType(
        {"__iter__": "Iterator"}
    )
    __contains__ = _forwarder("__contains__")
    __delitem__ = _forwarder("__delitem__")
    __getitem__ = _forwarder("__getitem__")
    __iter__ = _forwarder("__iter__")
    __len__ = _forwarder("__len__")
    __setitem__ = _forwarder("__setitem__")
    clear = _forwarder("clear")
    copy = _forwarder("copy")
    get = _forwarder("get")
    items = _forwarder("items")
    keys = _forwarder("keys")
    pop = _forwarder("pop")
    popitem = _forwarder("popitem")
    setdefault = _forwarder("setdefault")
    update = _forwarder("update")
    values = _forwarder("values")

    __class_getitem__: ClassVar[Any] = classmethod(types.GenericAlias)


class ArrayProxy(BaseProxy):
    """A proxy of an ``array.array``."""

    _exposed_: ClassVar[tuple[str, ...] | None] = ("__len__", "__getitem__", "__setitem__")
    __len__ = _forwarder("__len__")
    __getitem__ = _forwarder("__getitem__")
    __setitem__ = _forwarder("__setitem__")


class BasePoolProxy(BaseProxy):
    """A proxy of a Pool in the manager (its workers are the manager's children)."""

    _exposed_: ClassVar[tuple[str, ...] | None] = (
        "apply",
        "apply_async",
        "close",
        "imap",
        "imap_unordered",
        "join",
        "map",
        "map_async",
        "starmap",
        "starmap_async",
        "terminate",
    )
    _method_to_typeid_: ClassVar[Mapping[str, str] | None] = types.MappingProxyType(
        {
            "apply_async": "AsyncResult",
            "map_async": "AsyncResult",
            "starmap_async": "AsyncResult",
            "imap": "Iterator",
            "imap_unordered": "Iterator",
        }
    )
    apply = _forwarder("apply")
    apply_async = _forwarder("apply_async")
    close = _forwarder("close")
    imap = _forwarder("imap")
    imap_unordered = _forwarder("imap_unordered")
    join = _forwarder("join")
    map = _forwarder("map")
    map_async = _forwarder("map_async")
    starmap = _forwarder("starmap")
    starmap_async = _forwarder("starmap_async")
    terminate = _forwarder("terminate")


class PoolProxy(BasePoolProxy):
    """A Pool proxy usable in ``with`` (which terminates the pool on leaving)."""

    def __enter__(self) -> PoolProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()
