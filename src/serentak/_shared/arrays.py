"""Arrays born in shared memory: numpy arrays that travel without a copy.

An array made here lives in a memfd segment of its own. Sent to a pool task,
through a Pipe or a Queue, it travels as the segment's fd and an offset: the
receiver maps the same pages, so passing one array to many tasks copies
nothing, and writes on either side are seen by the other (it is shared
memory: synchronise as you would for a shared Array). The segment is freed
when the last array or view built on it is gone in every process.

numpy is the caller's: it is imported when one of these is first called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from serentak._ipc import segments as _shm

Shape = int | Sequence[int]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise ImportError("shared arrays need numpy: pip install numpy") from exc
    return numpy


def empty(shape: Shape, dtype: Any = "float64") -> Any:
    """A new numpy array of ``shape`` and ``dtype`` in shared memory.

    Its memory starts zeroed (a fresh memfd is), so this is also ``zeros``.
    """
    numpy = _numpy()
    kind = numpy.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if any(not isinstance(n, int) or n < 0 for n in dims):
        raise ValueError(f"shape must be non-negative ints, got {shape!r}")
    count = math.prod(dims)
    segment = _shm.Segment(max(count * kind.itemsize, 1), name="serentak-array")
    view = _shm.lasting_view(segment)
    return numpy.frombuffer(view, dtype=kind, count=count).reshape(dims)


zeros = empty


def full(shape: Shape, fill_value: Any, dtype: Any = None) -> Any:
    """A new shared array of ``shape`` filled with ``fill_value``."""
    numpy = _numpy()
    kind = numpy.asarray(fill_value).dtype if dtype is None else dtype
    array = empty(shape, kind)
    array[...] = fill_value
    return array


def copy_of(array: Any) -> Any:
    """A copy of ``array`` (anything numpy.asarray takes) in shared memory."""
    numpy = _numpy()
    source = numpy.asarray(array)
    shared = empty(source.shape, source.dtype)
    shared[...] = source
    return shared
