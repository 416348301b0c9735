"""What managers and their proxies say to each other, and the types both sides share.

One connection per client thread and manager; over it, strictly one request
and one reply at a time, except ``Release``, which has no reply (it rides in
front of the next request, so dropping a proxy never costs a round trip)::

    client thread                                  server thread for that connection
    -------------                                  ---------------------------------
    [Release(idents)]  --------------------------> refcounts -= 1, objects at 0 deleted
    Create(typeid, args, kwargs)  ---------------> obj = registry[typeid].callable(...)
                                  <--------------- Created(id, exposed)     (refcount 1: the
                                                                             caller adopts it)
    CallMethod(id, method, args, kwargs)  -------> getattr(obj, method)(...)
                                  <--------------- Returned(value)
                                                 | ReturnedProxy(token, ...)  (method_to_typeid)
                                                 | Raised(exception, traceback text)
                                                 | Failed(text)  (as RemoteError)
    IncRef(ids) / GetMethods(id) / Ping() / NumberOfObjects() / DebugInfo() / Shutdown()

Messages are frozen dataclasses pickled with serentak's pickler, so their
arguments may carry Connections (their fds travel beside the message over
AF_UNIX) and other proxies (see ``_managers_client`` for their references).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from typing import Any, Final

Address = str | bytes | tuple[Any, ...]

# Methods every referent answers, exposed or not (the stdlib's fallbacks).
GETVALUE: Final = "#GETVALUE"
FALLBACK_METHODS: Final = frozenset({"__str__", "__repr__", GETVALUE})


class RemoteError(Exception):
    """An error in the manager that could not be sent back as itself; ``args[0]`` is its text."""

    def __str__(self) -> str:
        rule = "-" * 75
        return f"\n{rule}\n{self.args[0] if self.args else ''}{rule}"


@dataclasses.dataclass(frozen=True)
class Token:
    """What a proxy knows of its referent: its type id, its manager's address, its id there.

    Attributes:
        typeid: the name the referent's type was registered under.
        address: the manager's address.
        id: the referent's id in that manager.
    """

    typeid: str
    address: Address
    id: str


class RefMode(enum.Enum):
    """How a proxy rebuilt from a pickle takes its reference to the referent."""

    INCREF = "incref"  # ask the manager for a new reference
    ADOPT = "adopt"  # the sender took one for us (the manager's own replies)
    BORROW = "borrow"  # use the creator's (a child started with the proxy)


class ManagerState(enum.Enum):
    """A manager's lifecycle (the stdlib's ``State`` values)."""

    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2


@dataclasses.dataclass(frozen=True)
class TypeSpec:
    """One registered type: how the server makes it and how clients see it.

    Attributes:
        callable: makes the referent from the creation arguments; None for a
            type only returned by methods (the result is the referent), or
            for a client of a server started elsewhere.
        exposed: the method names proxies may call; None for all public ones.
        method_to_typeid: methods whose results are registered under this
            type id and returned as proxies.
        proxytype: what clients build for a referent of this type.
    """

    callable: Callable[..., Any] | None
    exposed: tuple[str, ...] | None
    method_to_typeid: Mapping[str, str] | None
    proxytype: Any


# ---- requests ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Create:
    """Make a referent of ``typeid`` from the arguments; the reply's reference is the caller's."""

    typeid: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CallMethod:
    """Call ``method`` of referent ``ident``."""

    ident: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class IncRef:
    """Take one more reference to each referent (a proxy rebuilt in another process)."""

    idents: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Release:
    """Give back one reference to each referent. No reply."""

    idents: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class GetMethods:
    """The names a referent's proxies may call."""

    ident: str


@dataclasses.dataclass(frozen=True)
class Ping:
    """Nothing: checks that the manager answers (``connect()``)."""


@dataclasses.dataclass(frozen=True)
class NumberOfObjects:
    """How many referents the manager holds."""


@dataclasses.dataclass(frozen=True)
class DebugInfo:
    """A text listing the referents and their reference counts."""


@dataclasses.dataclass(frozen=True)
class Shutdown:
    """Stop serving; the server process exits."""


# ---- replies ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Created:
    """A new referent's id, and the methods its proxies may call."""

    ident: str
    exposed: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Returned:
    """A method's (or request's) result."""

    value: Any


@dataclasses.dataclass(frozen=True)
class ReturnedProxy:
    """A method's result, kept in the manager as a new referent (its reference is the caller's).

    ``proxytype`` is the server's registered one, used when the caller has no
    manager object of its own to look the type id up in.
    """

    token: Token
    exposed: tuple[str, ...]
    proxytype: Any


@dataclasses.dataclass(frozen=True)
class Raised:
    """The request raised ``exception``; ``traceback`` is the manager's text of it."""

    exception: BaseException
    traceback: str


@dataclasses.dataclass(frozen=True)
class Failed:
    """The request failed with an error that cannot travel as itself: raised as RemoteError."""

    message: str


Reply = Created | Returned | ReturnedProxy | Raised | Failed


@dataclasses.dataclass(frozen=True)
class ServerReady:
    """From a new server process to its owner: serving at ``address``."""

    address: Address


@dataclasses.dataclass(frozen=True)
class ServerFailed:
    """From a new server process to its owner: the initializer or the server's set-up raised."""

    exception: BaseException | None
    traceback: str


def all_methods(obj: object) -> list[str]:
    """The names of ``obj``'s callable attributes."""
    names = []
    for name in dir(obj):
        try:
            if callable(getattr(obj, name)):
                names.append(name)
        except Exception:
            continue  # a property that raises is not a method
    return names


def public_methods(obj: object) -> list[str]:
    """The names of ``obj``'s callable attributes that do not start with ``_``."""
    return [name for name in all_methods(obj) if not name.startswith("_")]
