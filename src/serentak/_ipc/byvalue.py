"""Functions and classes shipped by value: how the receiver rebuilds them, and where.

``serialize`` hands here what the receiving process could not import (see its
docstring); this module pickles it with cloudpickle, changed in three ways.

One ``__main__`` namespace per process
    cloudpickle gives a function shipped by value a fresh dict of globals,
    holding copies of the names its code uses. Two functions of ``__main__``
    shipped separately would then see two different modules, and a Pool
    initializer that sets a global would set it for nobody else. Here, a
    function whose globals are those of ``__main__`` is rebound, on arrival, to
    the receiving process's own ``__main__`` namespace (in a spawned or
    fork-server child, the ``__main__`` of that interpreter; in a fork child,
    the inherited copy of the parent's module)::

        parent __main__                       child __main__ (one dict)
        state = None                 ---->    state = None   (only if not set yet)
        def init(v): global state             init, read: their globals *are* this dict
        def read(_): return state             init(41) sets state = 41; read() sees 41

    The names a function uses arrive with it and are added to that namespace
    only if it lacks them: what the process itself stored there (an
    initializer's global, a cache a task fills) stays, as it does in a stdlib
    child, which imported the module once. One exception keeps a long-lived
    worker in step with a parent that redefines its code (a notebook): in a
    child, a name bound by ``def`` or ``class`` in the parent's ``__main__``
    takes the parent's definition when it differs from the one the child has.
    A process that is not a serentak child (the parent itself, receiving a
    function back) never has its definitions replaced.

Code keeps its file and line numbers
    cloudpickle renames every shipped code object ``<dynamic-code>``; here code
    travels by ``marshal``, whole, so a traceback in the child names the
    parent's file and line and, where the child can read that file, shows the
    source line. Source the child cannot read (a notebook cell, a REPL entry:
    lines the parent holds only in ``linecache``) travels with the code, the
    function's own lines only, and is added to the child's ``linecache``.

ctypes types
    A ``ctypes.Structure`` or ``Union`` subclass is rebuilt empty and given its
    ``_fields_`` afterwards (the field descriptors themselves cannot be
    pickled, and ``_fields_`` is final once set); array and pointer types are
    rebuilt by ``element * length`` and ``ctypes.POINTER``, which ctypes caches.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import linecache
import marshal
import operator
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any, Final

import cloudpickle

from serentak._ipc import serialize

_MAIN_NAMES: Final = frozenset({"__main__", "__mp_main__"})

# Class attributes that fix a ctypes structure's layout: set before ``_fields_``,
# and never again once the class has its fields.
_CTYPES_LAYOUT: Final = ("_pack_", "_align_", "_anonymous_", "_swappedbytes_", "_layout_")


class ByValuePickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle is untyped
    """cloudpickle's pickler, with the three changes this module describes."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            return _reduce_code(obj)
        if isinstance(obj, type):
            reduced = _reduce_ctypes_type(obj)
            if reduced is not None:
                return reduced
            reduced = super().reducer_override(obj)
            if reduced is not NotImplemented and _is_ctypes_record(obj):
                return _ctypes_record_reduction(reduced)
            return reduced
        reduced = super().reducer_override(obj)
        if isinstance(obj, types.FunctionType) and _of_main(obj):
            return _bound_to_main(reduced)
        return reduced


def dumps(obj: Any, protocol: int) -> bytes:
    """Pickle ``obj`` by value, with :class:`ByValuePickler`."""
    stream = io.BytesIO()
    ByValuePickler(stream, protocol=protocol).dump(obj)
    return stream.getvalue()


# ---- one __main__ namespace per process ------------------------------------------


class _Receiving(threading.local):
    """Where this thread binds arriving functions of ``__main__``, if not to ``__main__``."""

    namespace: dict[str, Any] | None = None


_receiving: Final = _Receiving()


@contextlib.contextmanager
def main_namespace(namespace: dict[str, Any]) -> Iterator[None]:
    """Bind the functions of ``__main__`` unpickled in this block (by this thread) to
    ``namespace`` instead of this process's ``__main__``: for a process that serves
    several unrelated parents, which must not see each other's globals."""
    outer = _receiving.namespace
    _receiving.namespace = namespace
    try:
        yield
    finally:
        _receiving.namespace = outer


def new_main_namespace() -> dict[str, Any]:
    """A namespace for :func:`main_namespace`: that of an empty ``__main__`` module."""
    namespace: dict[str, Any] = vars(types.ModuleType("__main__"))
    namespace["__builtins__"] = builtins
    return namespace


def _receiving_namespace() -> dict[str, Any]:
    namespace = _receiving.namespace
    if namespace is not None:
        return namespace
    main = sys.modules.get("__main__")
    if main is None:  # an embedding interpreter may have none: give it one
        main = sys.modules["__main__"] = types.ModuleType("__main__")
    return main.__dict__


def _of_main(func: types.FunctionType) -> bool:
    return func.__globals__.get("__name__") in _MAIN_NAMES


def _bound_to_main(reduced: Any) -> Any:
    """cloudpickle's reduction of a function, rebuilt in the receiver's ``__main__``.

    cloudpickle reduces a function to ``(make, (code, globals, name, defaults,
    closure), (state, slotstate), None, None, setstate)``; anything else (another
    cloudpickle version) is left as it is: the function then gets globals of its own.
    """
    if not (isinstance(reduced, tuple) and len(reduced) == 6):
        return reduced
    _make, newargs, state, _items, _dict_items, setstate = reduced
    if not (
        isinstance(newargs, tuple)
        and len(newargs) == 5
        and isinstance(state, tuple)
        and len(state) == 2
        and isinstance(state[1], dict)
        and "__globals__" in state[1]
    ):
        return reduced
    code, _globals, name, defaults, closure = newargs
    return (
        _make_main_function,
        (code, name, defaults, closure),
        (setstate, state),
        None,
        None,
        _set_main_function_state,
    )


def _make_main_function(
    code: types.CodeType, name: str | None, defaults: Any, closure: Any
) -> types.FunctionType:
    return types.FunctionType(code, _receiving_namespace(), name, defaults, closure)


def _set_main_function_state(func: types.FunctionType, packed: Any) -> None:
    setstate, (state, slotstate) = packed
    namespace = func.__globals__
    _merge(namespace, slotstate["__globals__"])
    # cloudpickle's setter also sets the namespace's __builtins__ (to a dict, where
    # __main__ holds the module): put back what the module had.
    missing = object()
    builtins = namespace.get("__builtins__", missing)
    setstate(func, (state, {**slotstate, "__globals__": {}}))
    if builtins is not missing:
        namespace["__builtins__"] = builtins


def _merge(namespace: dict[str, Any], arrived: dict[str, Any]) -> None:
    """Add the names a function uses to the namespace it runs in (see the docstring)."""
    follow = serialize.follows_sender_definitions()
    for name, value in arrived.items():
        if name not in namespace or (follow and _redefined(name, namespace[name], value)):
            namespace[name] = value


def _redefined(name: str, here: Any, arrived: Any) -> bool:
    """True if ``arrived`` is the parent's ``def`` or ``class`` of ``name``, and
    ``here`` an older definition of it (not something this process bound to the name)."""
    if here is arrived or not (_defines(name, here) and _defines(name, arrived)):
        return False
    if isinstance(here, types.FunctionType) and isinstance(arrived, types.FunctionType):
        return bool(here.__code__ != arrived.__code__)
    return isinstance(here, type) and isinstance(arrived, type)


def _defines(name: str, value: Any) -> bool:
    return (
        isinstance(value, (types.FunctionType, type))
        and value.__qualname__ == name
        and value.__module__ in _MAIN_NAMES
    )


# ---- code with its file, lines and source ----------------------------------------


def _reduce_code(code: types.CodeType) -> Any:
    try:
        data = marshal.dumps(code)
    except ValueError:
        return NotImplemented  # constants marshal cannot write: cloudpickle's way
    return _load_code, (data, *_source_not_on_disk(code))


def _source_not_on_disk(code: types.CodeType) -> tuple[int, list[str]]:
    """The code's lines, if the parent has them only in ``linecache``; else none."""
    filename = code.co_filename
    entry = linecache.cache.get(filename)
    if entry is None or len(entry) != 4 or os.path.exists(filename):
        return 0, []
    lines = entry[2]
    numbers = [line for line in _line_numbers(code) if 0 < line <= len(lines)]
    if not numbers:
        return 0, []
    first, last = min(numbers), max(numbers)
    return first, list(lines[first - 1 : last])


def _line_numbers(code: types.CodeType) -> Iterator[int]:
    yield code.co_firstlineno
    for _start, _end, line in code.co_lines():
        if line is not None:
            yield line
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _line_numbers(const)


def _load_code(data: bytes, first: int = 0, lines: list[str] | None = None) -> types.CodeType:
    code = marshal.loads(data)
    if not isinstance(code, types.CodeType):
        raise TypeError(f"expected a code object, got {type(code).__name__}")
    if lines:
        _add_source(code.co_filename, first, lines)
    return code


def _add_source(filename: str, first: int, lines: list[str]) -> None:
    """Put ``lines`` (from line ``first``) in this process's ``linecache``, beside the
    lines of the same file that other functions brought."""
    entry = linecache.cache.get(filename)
    if entry is not None and (len(entry) != 4 or entry[1] is not None):
        return  # this process reads the file itself, or loads it lazily
    known: list[str] = list(entry[2]) if entry is not None else []
    end = first - 1 + len(lines)
    known.extend([""] * (end - len(known)))
    known[first - 1 : end] = lines
    # mtime None: linecache.checkcache keeps the entry (there is no file to check).
    linecache.cache[filename] = (sum(map(len, known)), None, known, filename)


# ---- ctypes types -------------------------------------------------------------------


def _ctypes_exemplars() -> dict[type, type]:
    """ctypes' metaclasses, each with a type it made (``_ctypes`` does not name them);
    empty when ctypes is not imported (then no ctypes type exists here)."""
    ctypes = sys.modules.get("ctypes")
    if ctypes is None:
        return {}
    made = (ctypes.Structure, ctypes.Union, ctypes.Array, ctypes.POINTER(ctypes.c_char))
    return {type(kind): kind for kind in (*made, ctypes.c_int)}


def _is_ctypes_record(cls: type) -> bool:
    ctypes = sys.modules.get("ctypes")
    return ctypes is not None and isinstance(cls, (type(ctypes.Structure), type(ctypes.Union)))


def _reduce_ctypes_type(cls: type) -> Any:
    """A ctypes metaclass, array or pointer type as the expression that makes it
    (ctypes caches array and pointer types); None for anything else."""
    exemplars = _ctypes_exemplars()
    if not exemplars:
        return None
    if cls in exemplars:
        return type, (exemplars[cls],)
    ctypes = sys.modules["ctypes"]
    element = cls.__dict__.get("_type_")
    if element is None:
        return None
    if isinstance(cls, type(ctypes.Array)):
        length = cls.__dict__.get("_length_")
        if isinstance(length, int) and element * length is cls:
            return operator.mul, (element, length)
    elif isinstance(cls, type(ctypes.POINTER(ctypes.c_char))) and ctypes.POINTER(element) is cls:
        return ctypes.POINTER, (element,)
    return None


def _ctypes_record_reduction(reduced: Any) -> Any:
    """cloudpickle's reduction of a Structure or Union class, without the field
    descriptors, and with a setter that gives the class its ``_fields_`` last."""
    if not (isinstance(reduced, tuple) and len(reduced) == 6):
        return reduced
    make, newargs, state, _items, _dict_items, setstate = reduced
    if not (isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict)):
        return reduced
    attributes = {name: value for name, value in state[0].items() if not _is_field(value)}
    return make, newargs, (setstate, (attributes, state[1])), None, None, _set_ctypes_record_state


def _is_field(value: Any) -> bool:
    """A field's descriptor, which ctypes makes from ``_fields_`` (and cannot pickle)."""
    kind = type(value)
    return kind.__module__ == "_ctypes" and kind.__name__ == "CField"


def _set_ctypes_record_state(cls: type, packed: Any) -> None:
    setstate: Callable[[type, Any], None]
    setstate, (attributes, slots) = packed
    fields = attributes.pop("_fields_", None)
    if "_fields_" in cls.__dict__:
        # The class already has its layout (this process knew it): it cannot change.
        for name in _CTYPES_LAYOUT:
            attributes.pop(name, None)
        fields = None
    setstate(cls, (attributes, slots))
    if fields is not None:
        cls._fields_ = fields  # type: ignore[attr-defined]
