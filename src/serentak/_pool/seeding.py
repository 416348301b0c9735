"""Reproducible randomness: each item of a seeded map gets its own random stream.

::

    caller                                   worker (any engine)
    ------                                   -------------------
    map(f, items, seed=S)
      items  ->  (index, item) pairs  ---->  IndexedCall(f, S)((index, item)):
      f      ->  IndexedCall(f, S)             the current stream is (S, index)
                                               f(item)  --  task_rng() inside it
                                               returns the stream of (S, index)

The stream depends on the seed and the item's index in the input only: not on
the chunking, the worker, the start method, the order of completion or how
many times the item ran (a retry starts its stream afresh). numpy's streams
are ``numpy.random.SeedSequence(S, spawn_key=(index,))``, the stdlib's are
seeded from a hash of ``(S, index)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload


class _Current(threading.local):
    """The stream of the item this thread runs (a ThreadPool runs several at once)."""

    def __init__(self) -> None:
        self.seed: int | None = None
        self.index = 0
        self.streams: dict[str, Any] = {}


_current = _Current()


def task_rng(kind: str = "random") -> Any:
    """The random stream of the task being run, the same on every run of it.

    Inside a task of a seeded pool or map (``Pool(seed=S)``, ``map(..., seed=S)``),
    returns a generator derived from the seed and the task's index in its input:
    the results do not depend on the number of workers, the chunking, the start
    method or retries. Calling it again in the same task returns the same
    generator, which goes on where it was.

    Args:
        kind: "random" for a ``random.Random``, "numpy" for a
            ``numpy.random.Generator`` seeded with
            ``numpy.random.SeedSequence(S, spawn_key=(index,))``.

    Raises:
        RuntimeError: not inside a task of a seeded pool or map.
        ValueError: an unknown ``kind``.
    """
    if kind not in ("random", "numpy"):
        raise ValueError(f'task_rng() makes "random" or "numpy" generators, not {kind!r}')
    current = _current
    if current.seed is None:
        raise RuntimeError(
            "task_rng() is for tasks of a seeded pool or map: give Pool(seed=...) "
            "or map(..., seed=...)"
        )
    stream = current.streams.get(kind)
    if stream is None:
        stream = current.streams[kind] = _new_stream(kind, current.seed, current.index)
    return stream


def _new_stream(kind: str, seed: int, index: int) -> Any:
    if kind == "numpy":
        import numpy

        return numpy.random.Generator(
            numpy.random.PCG64(numpy.random.SeedSequence(seed, spawn_key=(index,)))
        )
    digest = hashlib.sha256(f"serentak task_rng {seed} {index}".encode()).digest()
    return random.Random(int.from_bytes(digest, "little"))


@dataclasses.dataclass(frozen=True)
class IndexedCall:
    """A map's function, called with ``(index, item)`` pairs: runs ``func`` on the
    item (unpacked for a starmap) with the item's random stream current.

    Attributes:
        func: the user's callable.
        seed: the seed of the streams; None: no stream (only the index is wanted).
        star: call ``func(*item)`` (a starmap).
    """

    func: Callable[..., Any]
    seed: int | None
    star: bool

    def __call__(self, pair: tuple[int, Any]) -> Any:
        index, item = pair
        current = _current
        current.seed, current.index = self.seed, index
        try:
            return self.func(*item) if self.star else self.func(item)
        finally:
            current.seed = None
            current.streams.clear()


class Indexed(Sequence[tuple[int, Any]]):
    """``(index, item)`` pairs of a sequence, sliced lazily (as the feeder slices
    its inputs), ``indexes`` picking which positions to include."""

    def __init__(self, items: Sequence[Any], indexes: Sequence[int] | None = None) -> None:
        self._items = items
        self._indexes: Sequence[int] = range(len(items)) if indexes is None else indexes

    def __len__(self) -> int:
        return len(self._indexes)

    @overload
    def __getitem__(self, where: int) -> tuple[int, Any]: ...

    @overload
    def __getitem__(self, where: slice) -> list[tuple[int, Any]]: ...

    def __getitem__(self, where: int | slice) -> tuple[int, Any] | list[tuple[int, Any]]:
        if isinstance(where, slice):
            return [(i, self._items[i]) for i in self._indexes[where]]
        i = self._indexes[where]
        return (i, self._items[i])

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        items = self._items
        return ((i, items[i]) for i in self._indexes)
