"""How a manager and its clients put messages on the wire: ``"pickle"`` or ``"xmlrpclib"``.

``"pickle"`` (the default) sends the protocol's dataclasses with serentak's
pickler. ``"xmlrpclib"`` sends each as an XML-RPC document, as the stdlib's
``serializer="xmlrpclib"`` does, for peers that must not unpickle anything:
a message is a struct naming its type, and the values it carries are what
XML-RPC has (None, bool, 32-bit int, float, str, bytes, datetime, lists,
dicts with string keys; a tuple arrives as a list, another object as the
dict of its attributes, and anything else fails to send with the
marshaller's ``TypeError`` or ``OverflowError``). An exception travels as
its type's name and arguments, and is rebuilt only from a type the receiver
has already imported (else it arrives as a ``RemoteError`` with its text).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Final, TypeVar

from serentak._ipc.connection import Connection

from .protocol import (
    Address,
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
    RemoteError,
    Returned,
    ReturnedProxy,
    Shutdown,
    Token,
)

PICKLE: Final = "pickle"
XMLRPCLIB: Final = "xmlrpclib"
SERIALIZERS: Final = (PICKLE, XMLRPCLIB)

_M = TypeVar("_M", bound=type)

# The message types an XML-RPC peer may name, by class name.
_MESSAGES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Create,
        CallMethod,
        IncRef,
        Release,
        GetMethods,
        Ping,
        NumberOfObjects,
        DebugInfo,
        Shutdown,
        Created,
        Returned,
        ReturnedProxy,
        Raised,
        Failed,
    )
}
# Fields that are tuples in the dataclasses and come back from XML-RPC as lists.
_TUPLE_FIELDS: Final = frozenset({"args", "idents", "exposed"})


def check_serializer(serializer: object) -> str:
    """``serializer`` if serentak's managers have it.

    Raises:
        ValueError: they do not.
    """
    if serializer not in SERIALIZERS:
        raise ValueError(
            f"unsupported serializer {serializer!r}: the managers have 'pickle' and 'xmlrpclib'"
        )
    return str(serializer)


def register_message(cls: _M) -> _M:
    """Let ``cls`` (a frozen dataclass, a request a Server subclass handles) travel as XML-RPC."""
    _MESSAGES[cls.__name__] = cls
    return cls


def adapt(conn: Connection, serializer: str) -> Connection:
    """``conn``, sending and receiving messages with ``serializer``.

    Called before anything was read from ``conn`` beyond the handshake.
    """
    if serializer == PICKLE:
        return conn
    if conn.has_buffered_data():
        raise RuntimeError("a manager connection was adapted with unread data in its buffer")
    return XmlRpcConnection(conn.detach(), conn.readable, conn.writable)


class XmlRpcConnection(Connection):
    """A Connection whose ``send``/``recv`` carry manager messages as XML-RPC documents."""

    def send(self, obj: Any) -> None:
        """Send a manager message (encoded before anything is written).

        Raises:
            TypeError, OverflowError: a value XML-RPC cannot carry.
        """
        self.send_bytes(encode(obj))

    def recv(self) -> Any:
        """Receive a manager message.

        Raises:
            EOFError: the other end is closed.
            ValueError: the document is not a manager message.
        """
        return decode(self.recv_bytes())


def encode(message: Any) -> bytes:
    """``message`` (one of the protocol's dataclasses) as an XML-RPC document."""
    if not dataclasses.is_dataclass(message) or type(message).__name__ not in _MESSAGES:
        raise TypeError(f"not a manager message: {type(message).__name__}")
    import xmlrpc.client  # here: only a manager that uses it pays for the import

    struct: dict[str, Any] = {"message": type(message).__name__}
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if isinstance(value, Token):
            value = {"typeid": value.typeid, "address": value.address, "id": value.id}
        elif isinstance(value, BaseException):
            value = _encode_exception(value)
        elif field.name == "proxytype":
            continue  # a class: the receiver uses its own registry's, or AutoProxy
        struct[field.name] = value
    text: str = xmlrpc.client.dumps((struct,), methodresponse=True, allow_none=True)
    return text.encode("utf-8")


def decode(data: bytes) -> Any:
    """The message an XML-RPC document from :func:`encode` holds.

    Raises:
        ValueError: the document is not XML-RPC, or not a manager message.
    """
    import xmlrpc.client

    try:
        params, _method = xmlrpc.client.loads(data.decode("utf-8"), use_builtin_types=True)
    except Exception as exc:
        raise ValueError(f"not an XML-RPC document: {exc}") from None
    struct = params[0] if len(params) == 1 else None
    cls = _MESSAGES.get(struct.get("message", "")) if isinstance(struct, dict) else None
    if cls is None or not isinstance(struct, dict):
        raise ValueError(f"not a manager message: {str(params)[:200]}")
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        value = struct.get(field.name)
        if field.name in _TUPLE_FIELDS and isinstance(value, list):
            value = tuple(value)
        elif field.name == "token" and isinstance(value, dict):
            address = _address(value.get("address"))
            value = Token(str(value.get("typeid")), address, str(value.get("id")))
        elif field.name == "exception" and isinstance(value, dict):
            value = _decode_exception(value)
        elif field.name == "kwargs" and value is None:
            value = {}
        values[field.name] = value
    return cls(**values)


def _address(value: object) -> Address:
    if isinstance(value, list):
        return tuple(value)  # (host, port): a list in XML-RPC, a tuple as an address
    if isinstance(value, str | bytes):
        return value
    raise ValueError(f"not a manager address: {value!r}")


def _encode_exception(exc: BaseException) -> dict[str, Any]:
    import xmlrpc.client

    args: list[Any] = list(exc.args)
    try:
        xmlrpc.client.dumps((args,), allow_none=True)
    except Exception:
        args = [str(exc)]  # arguments XML-RPC cannot carry: their text
    cls = type(exc)
    return {"type": f"{cls.__module__}:{cls.__qualname__}", "args": args, "text": str(exc)}


def _decode_exception(struct: dict[str, Any]) -> BaseException:
    name = str(struct.get("type", ""))
    module, _, qualname = name.partition(":")
    # Only a type already imported here: a peer's message never makes us import code.
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    args = struct.get("args")
    if isinstance(found, type) and issubclass(found, BaseException) and isinstance(args, list):
        try:
            return found(*args)
        except Exception:
            pass  # a constructor that wants other arguments: the text below
    return RemoteError(f"{qualname or name}: {struct.get('text', '')}\n")
