"""Resume after a crash: a map's finished results, appended to a file as they arrive.

::

    caller: map(f, items, journal=path)
      Journal.open(path, f)  -- reads what a previous run finished, checks it was
      |                         the same function and the same items
      |  the missing items, as (index, item) pairs  ----->  the engine runs them
      |                                                       |
      |  JournalSink (the engine's thread)  <-----------------+ each chunk's results:
      |    one record per chunk, appended (os.write on O_APPEND)
      v
    get(): the finished results and the new ones, in input order

The file is append-only: a magic line, then records, each a length, a CRC-32
and a pickle. The first record names the function (its qualified name and a
hash of it); each later one holds ``(index, item hash, result)`` triples. A
record torn by a crash mid-write fails its length or CRC check: it is cut off
when the journal is next opened, and its items run again. Records reach the
kernel as each chunk arrives (a parent killed with SIGKILL loses only the
chunks in flight) and the disk at most SYNC_EVERY seconds later (a machine
that loses power loses at most that much more).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pickle
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Final

from serentak._ipc.serialize import dumps, loads

from .results import ItemError, MapResult, Outcome
from .tasks import ItemFailed

MAGIC: Final = b"serentak-journal 1\n"
_RECORD: Final = struct.Struct("<II")  # payload length, CRC-32 of the payload
SYNC_EVERY: Final = 1.0


@dataclasses.dataclass(frozen=True)
class Header:
    """The first record: what the journal is the results of.

    Attributes:
        function: the function's qualified name (``module.qualname``).
        digest: a hash of it.
        star: whether the items were argument tuples (starmap).
    """

    function: str
    digest: str
    star: bool


def function_name(func: Callable[..., Any]) -> str:
    """``func``'s qualified name, as the journal keeps it (a partial's: its function's)."""
    while isinstance(func, functools.partial):
        func = func.func
    module = getattr(func, "__module__", None) or "?"
    name = getattr(func, "__qualname__", None) or type(func).__qualname__
    return f"{module}.{name}"


def item_digest(item: Any) -> bytes:
    """A hash of an input item, to tell a journal of other inputs."""
    try:
        data = pickle.dumps(item, protocol=5)  # three times as fast as dumps() on small items
    except Exception:
        data = dumps(item)  # a lambda, a class of __main__: by value
    return hashlib.blake2b(data, digest_size=12).digest()


class Journal:
    """An open journal file: what earlier runs finished, and an appending descriptor.

    Use :meth:`open`.
    """

    def __init__(self, path: str, fd: int, done: dict[int, tuple[bytes, Any]]) -> None:
        self.path = path
        self._fd = fd
        self.done = done  # index -> (item hash, result), from earlier runs
        self._lock = threading.Lock()
        self._synced = time.monotonic()

    @classmethod
    def open(cls, path: object, func: Callable[..., Any], star: bool) -> Journal:
        """Open (or create) the journal at ``path`` for ``func``'s results.

        Raises:
            TypeError: ``path`` is not a path.
            ValueError: its directory does not exist, it is not a journal, or it
                is the journal of another function.
        """
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"journal must be a file path, not {type(path).__name__}")
        path = os.fspath(path)
        if not isinstance(path, str):
            path = os.fsdecode(path)
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ValueError(f"journal {path!r}: its directory {directory!r} does not exist")
        name = function_name(func)
        header = Header(name, hashlib.sha256(name.encode()).hexdigest(), star)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            with open(fd, "rb", closefd=False) as file:
                data = file.read()
            if not data:
                os.write(fd, MAGIC + _record(header))
                return cls(path, fd, {})
            done = _read(path, fd, data, header)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, done)

    def check(self, items: Sequence[Any]) -> None:
        """Refuse a journal whose finished items are not those of ``items``.

        Raises:
            ValueError: an item differs, or the journal has more items.
        """
        for index, (digest, _) in self.done.items():
            if index >= len(items) or item_digest(items[index]) != digest:
                self.close()
                raise ValueError(
                    f"journal {self.path!r} holds results of other inputs (item {index} "
                    "differs): give a new journal path, or delete this one to start again"
                )

    def append(self, results: list[tuple[int, bytes, Any]]) -> None:
        """Append the results of one chunk: ``(index, item hash, result)`` triples."""
        if not results:
            return
        record = _record(results)
        with self._lock:
            if self._fd < 0:
                return
            os.write(self._fd, record)  # O_APPEND: one write, so a crash tears one record at most
            now = time.monotonic()
            if now - self._synced >= SYNC_EVERY:
                os.fdatasync(self._fd)
                self._synced = now

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)


def _record(obj: Any) -> bytes:
    payload = dumps(obj)
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def _read(path: str, fd: int, data: bytes, expected: Header) -> dict[int, tuple[bytes, Any]]:
    """The results a journal holds; a torn last record is cut off the file."""
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            data = b""  # torn in its first write: an empty journal
            os.ftruncate(fd, 0)
            os.write(fd, MAGIC + _record(expected))
            return {}
        raise ValueError(f"{path!r} is not a serentak journal (give a new path)")
    offset = len(MAGIC)
    records: list[Any] = []
    while offset < len(data):
        if offset + _RECORD.size > len(data):
            break
        length, crc = _RECORD.unpack_from(data, offset)
        payload = data[offset + _RECORD.size : offset + _RECORD.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        records.append(loads(payload))
        offset += _RECORD.size + length
    if offset < len(data):
        os.ftruncate(fd, offset)  # a torn last record: its items run again
    if not records:
        os.write(fd, _record(expected))
        return {}
    header = records[0]
    if not isinstance(header, Header):
        raise ValueError(f"{path!r} is not a serentak journal (give a new path)")
    if header.digest != expected.digest or header.star != expected.star:
        raise ValueError(
            f"journal {path!r} holds results of {header.function}"
            f"{' (starmap)' if header.star else ''}, not of {expected.function}"
            f"{' (starmap)' if expected.star else ''}: give a new journal path"
        )
    done: dict[int, tuple[bytes, Any]] = {}
    for record in records[1:]:
        for index, digest, value in record:
            done[index] = (digest, value)
    return done


class JournalSink:
    """A journaled map's chunks: written to the journal as they arrive (in the
    engine's thread), then passed on to the caller's result, each item's
    result in place, an :class:`ItemError` where an item failed.

    Args:
        journal: where results go.
        result: the caller's map result (of the missing items).
        digests: item hashes by input index.
    """

    def __init__(self, journal: Journal, result: MapResult, digests: dict[int, bytes]) -> None:
        self._journal = journal
        self._result = result
        self._digests = digests
        self._indexes: dict[int, list[int]] = {}  # chunk -> the input indexes in it

    def chunk_fed(self, index: int, chunk: Sequence[tuple[int, Any]]) -> None:
        """The feeder sent chunk ``index`` of ``(input index, item)`` pairs."""
        self._indexes[index] = [pair[0] for pair in chunk]

    def claim(self) -> bool:
        return True

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        indexes = self._indexes.pop(index, [])
        error = outcome.error()
        values: list[Any]
        if error is not None:
            values = [ItemError(error)] * len(indexes)
        else:
            values = [
                ItemError(value.failure.to_exception()) if type(value) is ItemFailed else value
                for value in outcome.value()
            ]
        finished = [
            (i, self._digests[i], value)
            for i, value in zip(indexes, values, strict=False)
            if type(value) is not ItemError
        ]
        try:
            self._journal.append(finished)
        except Exception as exc:  # a full disk: the map fails rather than go on unrecorded
            self._result.complete_chunk(index, Outcome.of_exception(exc))
            return
        self._result.complete_chunk(index, Outcome.of_value(values))

    def set_length(self, chunks: int) -> None:
        self._result.set_length(chunks)
