"""Value, Array, RawValue, RawArray: ctypes objects that live in shared memory.

Every object is a ctypes view on a block of the shared arena
(:func:`serentak._ipc.segments.allocate`); a child sees the same bytes, never a copy::

    parent                              shared block                 child
    RawValue('i') ── c_int view ──────▶ [ 4 bytes ]  ◀────────────── c_int view
    Value('i')    ── Synchronized                                    Synchronized
                      └ RLock ─────────▶ [ line 0: lock word     ] ◀── └ RLock
                      └ the c_int view ▶ [ line 1: owner | 4 bytes ] ◀── └ c_int view
    fork: the child inherits the views.  spawn, forkserver: while the child is
    being started, a view pickles (ctypes type, Block, offset) and the Block
    its segment's fd; the child maps the segment and lays the same type over it.

A Value or Array of at most 48 bytes made with its own RLock (``lock=True``)
lives in the RLock's block, in the spare bytes of the cache line the lock's
owner writes (:meth:`~serentak._shared.sync.RLock.spare_bytes`): a process
taking the lock from another receives the value with the same cache-line
transfer. A bigger object, or one given a lock, has a block of its own.

Whoever holds the lock may read and write the bytes; a raw object has no
lock, and its users coordinate as they see fit.

The raw object is an instance of a subclass of the requested ctypes type, made
once per type here: ctypes gives no hook to make its own instances pickle as a
shared view, and the subclass is where the Block is kept alive (the arena
recycles a block's bytes once its Block is collected). The subclass has the
same name and repr as the type it extends, so ``Value('i')`` reads
``<Synchronized wrapper for c_int(0)>`` as the stdlib's does.
"""

from __future__ import annotations

import ctypes
import dataclasses
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from serentak._ipc import segments as _shm
from serentak._ipc.serialize import inheritance_only_error, is_spawning
from serentak._os import _native

from .sync import RLock

if TYPE_CHECKING:
    from serentak._context import BaseContext

__all__ = [
    "Array",
    "RawArray",
    "RawValue",
    "Synchronized",
    "SynchronizedArray",
    "SynchronizedBase",
    "SynchronizedString",
    "Value",
    "copy",
    "synchronized",
]

TYPECODES: Final[dict[str, type[Any]]] = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}

# The simple types whose value a wrapper reads and writes in place (see
# SynchronizedBase): every typecode but the characters, whose values are bytes
# and str. c_long and c_longlong may be one type; their codes then agree.
_IN_PLACE_CODES: Final[dict[type[Any], str]] = {
    ctype: code for code, ctype in TYPECODES.items() if code not in "cu"
}

# The attribute of a shared ctypes object that keeps its Block alive, and the
# one with its offset in the block when not 0 (see _beside_new_lock). Odd on
# purpose: a Structure's field of the same name would shadow them.
_BLOCK_ATTRIBUTE: Final = "_serentak_block_"
_OFFSET_ATTRIBUTE: Final = "_serentak_offset_"


@runtime_checkable
class SupportsAcquire(Protocol):
    """What ``Value`` and ``Array`` accept as a lock (the stdlib checks for ``acquire``)."""

    def acquire(self, block: bool = ..., timeout: float | None = ...) -> bool: ...


def _refuse_unless_spawning(obj: object) -> None:
    """The stdlib's rule: shared ctypes and their wrappers travel only to a child being started."""
    if not is_spawning():
        raise inheritance_only_error(type(obj).__name__)


# ---- shared ctypes types ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ArrayOf:
    """A ctypes array type as it travels: ``c_int * 3`` cannot be pickled by reference."""

    element: type[Any] | _ArrayOf
    length: int


def _describe(ctype: type[Any]) -> type[Any] | _ArrayOf:
    if issubclass(ctype, ctypes.Array):
        array_type: Any = ctype
        return _ArrayOf(_describe(array_type._type_), array_type._length_)
    return ctype


def _resolve(description: type[Any] | _ArrayOf) -> type[Any]:
    if isinstance(description, _ArrayOf):
        element: Any = _resolve(description.element)
        array_type: type[Any] = element * description.length
        return array_type
    return description


class _SharedTypes:
    """The shared subclass of each ctypes type, made on first use.

    A plain dict, not a weak one: the subclass refers to its base, so a weak
    key would never be dropped anyway, and ctypes keeps its array types for
    the life of the process too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shared: dict[type[Any], type[Any]] = {}
        self._base: dict[type[Any], type[Any]] = {}

    def base(self, ctype: type[Any]) -> type[Any]:
        """The ctypes type a shared subclass extends (``ctype`` itself if it is not one)."""
        return self._base.get(ctype, ctype)

    def shared(self, ctype: type[Any]) -> type[Any]:
        ctype = self.base(ctype)
        shared = self._shared.get(ctype)
        if shared is not None:
            return shared
        with self._lock:
            shared = self._shared.get(ctype)
            if shared is None:
                namespace: dict[str, Any] = {
                    "__module__": ctype.__module__,
                    "__qualname__": ctype.__qualname__,
                    "__reduce__": _reduce_shared,
                }
                if issubclass(ctype, ctypes._SimpleCData):
                    # ctypes shows subclasses of simple types as <c_int object at ...>.
                    namespace["__repr__"] = _simple_repr
                metaclass: Any = type(ctype)
                shared = metaclass(ctype.__name__, (ctype,), namespace)
                self._base[shared] = ctype
                self._shared[ctype] = shared
        return shared


_types: Final = _SharedTypes()


def _simple_repr(self: Any) -> str:
    return f"{type(self).__name__}({self.value!r})"


def _reduce_shared(self: Any) -> tuple[Any, ...]:
    _refuse_unless_spawning(self)
    block = getattr(self, _BLOCK_ATTRIBUTE)
    offset = getattr(self, _OFFSET_ATTRIBUTE, 0)
    return _rebuild, (_describe(_types.base(type(self))), block, offset)


def _view(ctype: type[Any], block: _shm.Block, offset: int = 0) -> Any:
    obj = _types.shared(ctype).from_buffer(block.buffer, offset)
    setattr(obj, _BLOCK_ATTRIBUTE, block)
    if offset:
        setattr(obj, _OFFSET_ATTRIBUTE, offset)
    return obj


def _rebuild(description: type[Any] | _ArrayOf, block: _shm.Block, offset: int = 0) -> Any:
    return _view(_resolve(description), block, offset)


def _cleared(obj: Any) -> Any:
    """``obj`` zero-filled (the arena does not clear recycled bytes)."""
    ctypes.memset(ctypes.addressof(obj), 0, ctypes.sizeof(obj))
    return obj


def _new(ctype: type[Any]) -> Any:
    """A zero-filled shared instance of ``ctype``."""
    return _cleared(_view(ctype, _shm.allocate(ctypes.sizeof(ctype))))


def _ctype_of(typecode_or_type: Any) -> type[Any]:
    if isinstance(typecode_or_type, str):
        try:
            return TYPECODES[typecode_or_type]
        except KeyError:
            codes = "".join(TYPECODES)
            raise TypeError(
                f"unknown typecode {typecode_or_type!r}: expected one of {codes!r} or a ctypes type"
            ) from None
    if not isinstance(typecode_or_type, type) or not issubclass(
        typecode_or_type, (ctypes._SimpleCData, ctypes.Array, ctypes.Structure, ctypes.Union)
    ):
        raise TypeError(f"expected a typecode or a ctypes type, not {typecode_or_type!r}")
    return typecode_or_type


# ---- the raw objects ------------------------------------------------------------------


def RawValue(typecode_or_type: Any, *args: Any) -> Any:
    """A ctypes object in shared memory, without a lock.

    Args:
        typecode_or_type: an ``array`` module typecode (``'i'``, ``'d'``, ...)
            or a ctypes type (a simple type, an array type, a Structure...).
        *args: passed to the type's constructor, as ``c_int(5)`` would be.

    Returns:
        The ctypes object; zero-filled before ``args`` are applied.

    Raises:
        TypeError: ``typecode_or_type`` is neither.
    """
    obj = _new(_ctype_of(typecode_or_type))
    # Always, as the stdlib: a Structure's own __init__ may set defaults.
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:
    """A ctypes array in shared memory, without a lock.

    Args:
        typecode_or_type: the element type, as for :func:`RawValue`.
        size_or_initializer: the length (the array is zero-filled), or a
            sequence whose length and items the array takes.

    Returns:
        The ctypes array.
    """
    ctype = _ctype_of(typecode_or_type)
    if isinstance(size_or_initializer, int):
        return _new(ctype * size_or_initializer)
    initializer = list(size_or_initializer)
    array = _new(ctype * len(initializer))
    array.__init__(*initializer)
    return array


def copy(obj: Any) -> Any:
    """A new shared ctypes object of ``obj``'s type, with a copy of its bytes.

    Raises:
        TypeError: ``obj`` is not a ctypes object.
    """
    new = _new(_types.base(type(obj)))
    ctypes.memmove(ctypes.addressof(new), ctypes.addressof(obj), ctypes.sizeof(new))
    return new


# ---- the synchronized wrappers ---------------------------------------------------------


def _with_lock(lock: Any, ctx: BaseContext | None) -> Any:
    """The lock a wrapper uses: ``lock`` unless it is True or None, then a new RLock.

    Raises:
        AttributeError: ``lock`` has no ``acquire`` method (the stdlib's error).
    """
    if lock in (True, None):  # equality, as the stdlib's test: lock=1 means True
        return RLock() if ctx is None else ctx.RLock()
    if not isinstance(lock, SupportsAcquire):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


def _beside_new_lock(ctype: type[Any], ctx: BaseContext | None) -> tuple[Any, Any] | None:
    """A new RLock and a zero-filled shared ``ctype`` in its spare bytes, if it fits.

    The RLock keeps the bytes of its owner's cache line that it does not use
    for the data it guards (:meth:`~serentak._shared.sync.RLock.spare_bytes`):
    a process taking the lock from another on a different CPU then receives
    the value in the same cache-line transfer as the lock's owner fields, one
    transfer fewer per hand-over of ``with v.get_lock(): v.value += 1``.

    Returns:
        ``(obj, lock)``, or None if ``ctype`` does not fit (or the context
        makes some other kind of RLock); the caller then allocates apart.
    """
    size = ctypes.sizeof(ctype)
    if size > _SPARE_AT_MOST or ctypes.alignment(ctype) > _SPARE_ALIGNMENT:
        return None
    lock = _with_lock(None, ctx)
    if not isinstance(lock, RLock):
        return None
    block, offset, spare = lock.spare_bytes()
    if size > spare:
        return None
    return _cleared(_view(ctype, block, offset)), lock


# What the lock's spare bytes can hold (sync.c: 48 bytes, 16-byte aligned):
# checked again against the lock's own answer, this only spares making a lock
# for types that cannot fit.
_SPARE_AT_MOST: Final = 48
_SPARE_ALIGNMENT: Final = 16


def Value(
    typecode_or_type: Any, *args: Any, lock: Any = True, ctx: BaseContext | None = None
) -> Any:
    """A ctypes object in shared memory, behind a lock.

    Args:
        typecode_or_type: as for :func:`RawValue`.
        *args: as for :func:`RawValue`.
        lock: True or None for a new RLock; False for the raw object
            (no wrapper, no ``get_lock``); or the lock to use.
        ctx: the context whose RLock to use.

    Returns:
        A :class:`Synchronized` wrapper (or the raw object if ``lock`` is False).

    Raises:
        AttributeError: ``lock`` has no ``acquire`` method.
    """
    if lock in (True, None):
        ctype = _ctype_of(typecode_or_type)
        placed = _beside_new_lock(ctype, ctx)
        if placed is not None:
            obj, own_lock = placed
            # Always, as the stdlib: a Structure's own __init__ may set defaults.
            obj.__init__(*args)
            return synchronized(obj, own_lock)
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return synchronized(obj, _with_lock(lock, ctx))


def Array(
    typecode_or_type: Any,
    size_or_initializer: Any,
    *,
    lock: Any = True,
    ctx: BaseContext | None = None,
) -> Any:
    """A ctypes array in shared memory, behind a lock.

    Args:
        typecode_or_type: as for :func:`RawArray`.
        size_or_initializer: as for :func:`RawArray`.
        lock: as for :func:`Value`.
        ctx: the context whose RLock to use.

    Returns:
        A :class:`SynchronizedArray` (a :class:`SynchronizedString` for
        ``'c'``), or the raw array if ``lock`` is False.

    Raises:
        AttributeError: ``lock`` has no ``acquire`` method.
    """
    if lock in (True, None):
        element = _ctype_of(typecode_or_type)
        items = None if isinstance(size_or_initializer, int) else list(size_or_initializer)
        length = size_or_initializer if items is None else len(items)
        placed = _beside_new_lock(element * length, ctx) if length >= 0 else None
        if placed is not None:
            array, own_lock = placed
            if items is not None:
                array.__init__(*items)
            return synchronized(array, own_lock)
        size_or_initializer = size_or_initializer if items is None else items
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, _with_lock(lock, ctx))


class SynchronizedBase(_native.Guarded):
    """A ctypes object and the lock that guards it.

    ``acquire``/``release`` are the lock's own bound methods, and the wrapper
    is a context manager holding the lock. ``get_obj``, ``get_lock``, the
    context manager and the guarded fields and items are C (``_native.Guarded``):
    they run inside the critical section of ``with v.get_lock(): v.value += 1``,
    where processes sharing the value wait for each other.

    Args:
        obj: the ctypes object.
        lock: the lock; a new RLock if None.
        ctx: the context whose RLock to use when ``lock`` is None.
    """

    __slots__ = ("acquire", "release")

    def __init__(self, obj: Any, lock: Any = None, ctx: BaseContext | None = None) -> None:
        self._obj = obj
        self._lock = lock if lock else _with_lock(None, ctx)
        self.acquire: Callable[..., bool] = self._lock.acquire
        self.release: Callable[[], None] = self._lock.release
        # A shared simple value is a view that cannot move (ctypes does not
        # resize memory it does not own): ``value`` then converts its bytes in
        # place, without the ctypes attribute machinery, inside the critical
        # section where processes sharing the value wait for each other.
        code = _IN_PLACE_CODES.get(_types.base(type(obj)))
        if code is not None and getattr(obj, _BLOCK_ATTRIBUTE, None) is not None:
            self._bind_raw(code)

    def __reduce__(self) -> tuple[Any, ...]:
        _refuse_unless_spawning(self)
        return synchronized, (self._obj, self._lock)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj}>"


class Synchronized(SynchronizedBase):
    """A wrapped simple ctypes value: ``value`` is read and written under the lock."""

    __slots__ = ()

    value = _native.GuardedField("value", "The value, read and written under the lock.")


class SynchronizedArray(SynchronizedBase):
    """A wrapped ctypes array: each item access or slice takes the lock."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._obj)

    __getitem__ = _native.Guarded.locked_getitem
    __setitem__ = _native.Guarded.locked_setitem


class SynchronizedString(SynchronizedArray):
    """A wrapped ``c_char`` array, with its ``value`` (up to the first NUL) and ``raw`` bytes."""

    __slots__ = ()

    value = _native.GuardedField("value", "The bytes up to the first NUL, under the lock.")
    raw = _native.GuardedField("raw", "All the bytes of the array, under the lock.")


def _locked_field(name: str) -> _native.GuardedField:
    return _native.GuardedField(name, f"The field {name!r}, accessed under the lock.")


def _field_names(ctype: type[Any]) -> list[str]:
    """The fields of a Structure or Union, its base classes' first."""
    names: list[str] = []
    for klass in reversed(ctype.__mro__):
        for field in klass.__dict__.get("_fields_", ()):
            names.append(field[0])
    return names


# A wrapper class per Structure type; the wrapper class does not refer to the
# type, so the entry goes when the type does.
_struct_wrappers: weakref.WeakKeyDictionary[type[Any], type[SynchronizedBase]] = (
    weakref.WeakKeyDictionary()
)
_struct_wrappers_lock: Final = threading.Lock()


def _struct_wrapper(ctype: type[Any]) -> type[SynchronizedBase]:
    with _struct_wrappers_lock:
        wrapper = _struct_wrappers.get(ctype)
        if wrapper is None:
            namespace: dict[str, Any] = {"__slots__": (), "__module__": __name__}
            for name in _field_names(ctype):
                namespace[name] = _locked_field(name)
            wrapper = type(f"Synchronized{ctype.__name__}", (SynchronizedBase,), namespace)
            _struct_wrappers[ctype] = wrapper
        return wrapper


def synchronized(obj: Any, lock: Any = None, ctx: BaseContext | None = None) -> SynchronizedBase:
    """Wrap a ctypes object with a lock.

    Args:
        obj: a ctypes object (shared, or not: the wrapper does not care).
        lock: the lock to use; a new RLock if None.
        ctx: the context whose RLock to use when ``lock`` is None.

    Returns:
        A :class:`Synchronized` for a simple value, a :class:`SynchronizedString`
        for a ``c_char`` array, a :class:`SynchronizedArray` for another array,
        and for a Structure a ``Synchronized<Name>`` class with a locked
        property per field.

    Raises:
        AssertionError: ``obj`` is already synchronized (the stdlib's error).
    """
    if isinstance(obj, SynchronizedBase):
        raise AssertionError("object already synchronized")
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock, ctx)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    return _struct_wrapper(_types.base(type(obj)))(obj, lock, ctx)
