"""Pickling between serentak processes: what goes by value, and fds that travel along.

By reference or by value
    Objects the receiving process can import (module-level functions and
    classes of importable modules) are pickled by reference, as pickle does.
    Functions and classes it cannot import (defined in ``__main__``, in a REPL
    or notebook cell, lambdas, closures, classes defined in a function, and
    modules registered with ``cloudpickle.register_pickle_by_value``) are
    pickled by value with cloudpickle (``byvalue``: functions of ``__main__``
    share the receiver's one ``__main__`` namespace, code keeps its file and
    lines). A child never re-runs the parent's main module, so this is what
    makes a script without an ``if __name__ == "__main__":`` guard work under
    spawn and forkserver.

    The pickler is the C ``pickle.Pickler``; its ``reducer_override`` is not
    called for builtin containers and scalars, so plain data pays nothing for
    the by-value machinery.

File descriptors that travel with a pickle
    A handle (a Lock, a shared-memory segment, a Connection end) pickles the fd
    it is built on. The fd does not go in the bytes: the handle registers it
    with the channel that is being pickled for and records its index::

        sender                                     receiver
        with sending_fds(spawning=True) as fds:    with receiving_fds(fds):
            data = dumps(obj)                          obj = loads(data)
              handle.__reduce__:                         rebuild(index):
                index = fd_to_send(fd, ...)                fd = os.dup(fd_received(index))
        ship data, and fds beside it                   (receiving_fds closes what it was given)

    The fds go by ``pass_fds`` to a spawned child, by SCM_RIGHTS to the fork
    server or over a socket. Outside a ``sending_fds`` block a handle that
    needs inheritance raises the stdlib's RuntimeError.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import socket
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

PROTOCOL: Final = 5

_BY_VALUE_TYPES: Final = (types.FunctionType, type, types.ModuleType)
_MAIN_NAMES: Final = frozenset({"__main__", "__mp_main__"})


def _importable(obj: Any) -> bool:
    """True if the receiver finds ``obj`` again by ``module.qualname``."""
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
        return name not in _MAIN_NAMES and sys.modules.get(name) is obj and not _registered(name)
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return False
    if module_name in _MAIN_NAMES or "<" in qualname or _registered(module_name):
        return False
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return False
    return found is obj


def _registered(module_name: str) -> bool:
    """Has the user asked cloudpickle to ship this module's contents by value?"""
    cloudpickle = sys.modules.get("cloudpickle")
    if cloudpickle is None:
        return False
    registry: Callable[[], Sequence[str]] = cloudpickle.list_registry_pickle_by_value
    return any(module_name == m or module_name.startswith(m + ".") for m in registry())


_follow_sender = False


def follow_sender_definitions() -> None:
    """Called in a serentak child before it unpickles anything of its parent: the
    parent's redefinitions of its ``__main__`` functions and classes replace this
    process's (``byvalue`` says when)."""
    global _follow_sender
    _follow_sender = True


def follows_sender_definitions() -> bool:
    """True in a serentak child (see :func:`follow_sender_definitions`)."""
    return _follow_sender


_tracked_classes: Final[weakref.WeakSet[type]] = weakref.WeakSet()


def track_main_classes() -> None:
    """Before a fork: give ``__main__``'s classes their by-value identity now.

    A class from ``__main__`` travels by value. cloudpickle maps such a class
    back to an existing one in the receiver when both know its tracking id;
    an id given out before a fork is known to both sides of it, so a fork
    child and its parent then exchange instances of the *same* class
    (``isinstance`` and ``==`` hold). Pickling a class once assigns the id.
    """
    main = sys.modules.get("__main__")
    if main is None:
        return
    classes = [
        obj
        for obj in list(vars(main).values())
        if isinstance(obj, type) and obj.__module__ in _MAIN_NAMES and obj not in _tracked_classes
    ]
    if not classes:
        return
    from serentak._ipc import byvalue

    for cls in classes:
        try:
            byvalue.dumps(cls, PROTOCOL)
        except Exception:
            continue  # a class that cannot be pickled cannot travel anyway
        _tracked_classes.add(cls)


# A bytearray or memoryview at least this big is offered to the pickler's
# buffer_callback (protocol 5 leaves them in the pickle otherwise).
BIG_BUFFER: Final = 64 * 1024


class Pickler(pickle.Pickler):
    """The C pickler, shipping by value what the receiver could not import."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is bytearray or kind is memoryview:
            return _reduce_buffer(obj)
        if isinstance(obj, _BY_VALUE_TYPES) and not _importable(obj):
            from serentak._ipc import byvalue

            # A nested pickle: cloudpickle keeps class identity across separate
            # pickles by its own tracking ids, and functions of __main__ all join
            # the receiver's one __main__ namespace, so nothing is lost by nesting.
            return pickle.loads, (byvalue.dumps(obj, PROTOCOL),)
        if isinstance(obj, socket.socket):
            return _reduce_socket(obj)
        if kind.__module__.startswith("multiprocessing."):
            return _reduce_stdlib_object(obj)
        return NotImplemented


def _reduce_socket(sock: socket.socket) -> Any:
    """A socket travels as its fd (a duplicate in the receiver), as the stdlib's does."""
    index = fd_to_send(sock.fileno(), type(sock).__name__, inheritance_only=False)
    return _rebuild_socket, (index, int(sock.family), int(sock.type), sock.proto)


def _rebuild_socket(index: int, family: int, kind: int, proto: int) -> socket.socket:
    return socket.socket(family, kind, proto, fileno=os.dup(fd_received(index)))


# Modules of the stdlib's multiprocessing whose objects pickle only while the
# stdlib itself starts a child (they check its private "spawning" state).
_INHERITED_ONLY: Final = frozenset(
    {"multiprocessing.queues", "multiprocessing.synchronize", "multiprocessing.sharedctypes"}
)


def _reduce_stdlib_object(obj: Any) -> Any:
    """Objects of the stdlib's ``multiprocessing`` handed to serentak (it never imports it).

    A stdlib Connection travels as its fd, rebuilt as a stdlib Connection (its
    class pickled by reference: the receiver imports the stdlib, not
    serentak). Queues, locks and shared ctypes of the stdlib cannot be given
    to a child serentak starts, except by fork inheritance: a clear TypeError
    says what to use instead of the stdlib's misleading one.
    """
    kind = type(obj)
    module = kind.__module__
    connection = sys.modules.get("multiprocessing.connection")
    if connection is not None and isinstance(obj, connection.Connection):
        index = fd_to_send(obj.fileno(), kind.__name__, inheritance_only=False)
        return _call_with_fd, (kind, index, obj.readable, obj.writable)
    if module in _INHERITED_ONLY:
        raise TypeError(
            f"a {module}.{kind.__qualname__} of the stdlib's multiprocessing cannot be "
            f"pickled for a serentak process (it travels only to children the stdlib "
            f"starts): use serentak's {kind.__name__} instead (serentak.{kind.__name__}() "
            f"or a serentak context's), or pass it to a child started with fork"
        )
    return NotImplemented


def _call_with_fd(cls: Callable[..., Any], index: int, *args: Any) -> Any:
    """``cls(fd, *args)`` with a duplicate of the fd that travelled at ``index``."""
    return cls(os.dup(fd_received(index)), *args)


def _reduce_buffer(obj: bytearray | memoryview) -> Any:
    """Big bytearrays and contiguous memoryviews as PickleBuffers: out of band if the
    channel takes them. A memoryview becomes picklable this way (format and shape kept)."""
    view = obj if isinstance(obj, memoryview) else memoryview(obj)
    if type(obj) is bytearray:
        if view.nbytes < BIG_BUFFER:
            return NotImplemented
        return bytearray, (pickle.PickleBuffer(obj),)
    if not view.contiguous:
        return NotImplemented  # pickle's own error follows: it cannot be sent as is
    return _rebuild_memoryview, (pickle.PickleBuffer(view), view.format, view.shape)


def _rebuild_memoryview(data: Any, fmt: Any, shape: tuple[int, ...]) -> memoryview:
    view = memoryview(data).cast("B")
    rebuilt: memoryview = view.cast(fmt, shape) if shape else view.cast(fmt)
    return rebuilt


class _ReusedPickler:
    """A pickler and stream, reused by one thread: building them costs more than a small dump.

    Its buffer callback routes to ``buffer_callback`` of the dump in progress;
    with none, buffers stay in band, as with a pickler given no callback.
    """

    __slots__ = ("buffer_callback", "busy", "pickler", "stream")

    def __init__(self) -> None:
        self.stream = io.BytesIO()
        self.buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None
        self.pickler = Pickler(self.stream, protocol=PROTOCOL, buffer_callback=self._route)
        self.busy = False

    def _route(self, buffer: pickle.PickleBuffer) -> Any:
        callback = self.buffer_callback
        return True if callback is None else callback(buffer)


def dumps(obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None) -> bytes:
    """Pickle ``obj`` for another serentak process (protocol 5)."""
    state = _thread_state()
    reusable = state.pickler
    if reusable is None:
        reusable = state.pickler = _ReusedPickler()
    if reusable.busy:
        # A __reduce__ that pickles something itself re-enters here: give it its own.
        stream = io.BytesIO()
        Pickler(stream, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
        return stream.getvalue()
    reusable.busy = True
    reusable.buffer_callback = buffer_callback
    stream = reusable.stream
    pickler = reusable.pickler
    try:
        pickler.dump(obj)
        return stream.getvalue()
    finally:
        try:
            pickler.clear_memo()
            stream.seek(0)
            stream.truncate()
        except (ValueError, MemoryError):
            # A dump that ran out of memory can leave the stream unusable: the next
            # dump in this thread builds a new pickler rather than fail as well.
            state.pickler = None
        reusable.buffer_callback = None
        reusable.busy = False


def dumps_with_fds(
    obj: Any,
    *,
    spawning: bool = False,
    buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
) -> tuple[bytes, list[int]]:
    """Pickle ``obj``; also return the fds its handles registered (see :func:`sending_fds`)."""
    state = _thread_state()
    outer = state.outgoing
    outgoing = state.outgoing = _FdsToSend(spawning=spawning)
    try:
        return dumps(obj, buffer_callback), outgoing.fds
    finally:
        state.outgoing = outer


def loads_with_fds(
    data: bytes | bytearray | memoryview, fds: Sequence[int], buffers: Sequence[Any] = ()
) -> Any:
    """Unpickle what :func:`dumps_with_fds` produced, given the fds that came with it."""
    if not fds:
        return pickle.loads(data, buffers=buffers)
    with receiving_fds(fds):
        return pickle.loads(data, buffers=buffers)


def loads(data: bytes | bytearray | memoryview, buffers: Sequence[Any] = ()) -> Any:
    """Unpickle what :func:`dumps` produced."""
    return pickle.loads(data, buffers=buffers)


# ---- file descriptors travelling with a pickle ------------------------------


class _FdsToSend:
    """The fds registered while pickling one message; each fd once."""

    __slots__ = ("fds", "spawning")

    def __init__(self, *, spawning: bool) -> None:
        self.fds: list[int] = []
        self.spawning = spawning

    def add(self, fd: int) -> int:
        try:
            return self.fds.index(fd)
        except ValueError:
            self.fds.append(fd)
            return len(self.fds) - 1


class _ThreadState:
    """What one thread's pickling and unpickling keep: plain attributes, read on every
    message (an attribute of a ``threading.local`` costs several times more)."""

    __slots__ = ("incoming", "outgoing", "pickler")

    def __init__(self) -> None:
        self.outgoing: _FdsToSend | None = None
        self.incoming: Sequence[int] | None = None
        self.pickler: _ReusedPickler | None = None


_per_thread: Final = threading.local()


def _thread_state() -> _ThreadState:
    try:
        state: _ThreadState = _per_thread.state
    except AttributeError:
        state = _per_thread.state = _ThreadState()
    return state


@contextlib.contextmanager
def sending_fds(*, spawning: bool) -> Iterator[list[int]]:
    """Collect the fds of the handles pickled in this block.

    Args:
        spawning: True while pickling a child's start-up data. Handles that the
            stdlib shares only by inheritance (locks, queues, shared ctypes)
            refuse to pickle otherwise.

    Yields:
        The list the fds are appended to, in index order.
    """
    state = _thread_state()
    outer = state.outgoing
    outgoing = state.outgoing = _FdsToSend(spawning=spawning)
    try:
        yield outgoing.fds
    finally:
        state.outgoing = outer


def is_spawning() -> bool:
    """True while pickling a child's start-up data."""
    outgoing = _thread_state().outgoing
    return outgoing is not None and outgoing.spawning


def fd_to_send(fd: int, what: str, *, inheritance_only: bool = True) -> int:
    """Register ``fd`` to travel with the pickle being made; return its index.

    Args:
        fd: the descriptor the handle is built on; it stays open here.
        what: the handle's type name, for the error message.
        inheritance_only: refuse unless a child's start-up data is being
            pickled, as the stdlib does for locks, queues and shared ctypes.

    Raises:
        RuntimeError: with the stdlib's message, when the handle may not travel
            this way.
        TypeError: the stdlib's multiprocessing is starting a child with it
            (spawn or forkserver), which cannot carry serentak's handles.
    """
    outgoing = _thread_state().outgoing
    if outgoing is None or (inheritance_only and not outgoing.spawning):
        raise inheritance_only_error(what)
    return outgoing.add(fd)


def inheritance_only_error(what: str) -> Exception:
    """The error for a ``what`` pickled other than for a child serentak starts: the
    stdlib's RuntimeError, or a TypeError naming the fix when the stdlib's own
    multiprocessing is starting a child with it."""
    if _stdlib_starting_a_child():
        return TypeError(
            f"serentak's {what} cannot be given to a process that the stdlib's "
            "multiprocessing starts with spawn or forkserver: start that process "
            f"with serentak (serentak.get_context(method).Process), or make the {what} "
            "with multiprocessing"
        )
    return RuntimeError(
        f"{what} objects should only be shared between processes through inheritance"
    )


def _stdlib_starting_a_child() -> bool:
    """Whether the stdlib's multiprocessing, if the program loaded it, is pickling a
    child's start-up data in this thread (its own test for that; never imported here)."""
    context = sys.modules.get("multiprocessing.context")
    spawning_popen = getattr(context, "get_spawning_popen", None)
    try:
        return spawning_popen is not None and spawning_popen() is not None
    except Exception:
        return False  # not the stdlib's as we know it: the RuntimeError then


@contextlib.contextmanager
def receiving_fds(fds: Sequence[int]) -> Iterator[None]:
    """Make ``fds`` available to handles rebuilt in this block; close them after.

    A handle that keeps a descriptor must ``os.dup`` the one it is given.
    """
    state = _thread_state()
    outer = state.incoming
    state.incoming = fds
    try:
        yield
    finally:
        state.incoming = outer
        for fd in fds:
            os.close(fd)


def fd_received(index: int) -> int:
    """The descriptor registered at ``index`` by the sender (borrowed, not owned)."""
    incoming = _thread_state().incoming
    if incoming is None:
        raise RuntimeError("a serentak handle was unpickled outside of serentak's transport")
    return incoming[index]
