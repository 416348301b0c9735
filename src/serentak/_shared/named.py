"""Named shared memory: SharedMemory and ShareableList, as ``multiprocessing.shared_memory``.

::

    process A                           /dev/shm/psm_1a2b3c4d         process B
    ---------                           ---------------------         ---------
    SharedMemory(create=True, size=n)
      shm_open(O_CREAT|O_EXCL) ───────▶ [ n bytes ] ◀──────────────── SharedMemory("psm_1a2b3c4d")
      register the name with the                                        shm_open + mmap
      tree's tracker (serentak._process.tracker)
    .buf: a memoryview of the mapping                                 .buf: the same bytes
    .close(): unmap, close the fd (each process, for itself)
    .unlink(): remove the name (once, in any process) and unregister it
    the tree ends with the name still registered: the tracker unlinks it and warns

Unlike the anonymous segments behind Value, Array and the locks (memfd, freed
by the kernel with their last user), a named segment outlives its processes
until it is unlinked; the tracker is what keeps a crash from leaving it in
``/dev/shm`` for good. Only the creating process registers a name: a process
that attaches, maybe of another program, does not get the segment removed
when its own tree ends.

A SharedMemory pickles as its name, anywhere (the stdlib's rule). When the
pickle goes to a child being started or through a Connection, the tracker's
link rides along, so the child's own segments are tracked with the tree's.

A ShareableList lays out its segment as::

    u64 count N | N records: (u64 slot offset, u32 slot capacity, u32 length, u8 kind, 7 pad)
    | the slots: 8 bytes for int, float, bool and None; 8 * (n // 8 + 1) for
      a str or bytes of n bytes (UTF-8 for str)

Slots keep their capacity for the life of the list; an item can be replaced
by one of another type if it fits. str and bytes keep their exact length, so
trailing NULs survive (the stdlib strips them, which its documentation calls
a bug).
"""

from __future__ import annotations

import enum
import mmap
import operator
import os
import secrets
import struct
from collections.abc import Iterable, Iterator
from typing import Any, Final, Generic, TypeVar, cast

from serentak._os import posix as _posix
from serentak._process import tracker as _tracker

__all__ = ["ShareableList", "SharedMemory"]

# Short names, as the stdlib's: some systems allow no more than 14 characters.
_NAME_PREFIX: Final = "/psm_"
_NAME_RANDOM_BYTES: Final = 4
_MODE: Final = 0o600


def _random_name() -> str:
    return _NAME_PREFIX + secrets.token_hex(_NAME_RANDOM_BYTES)


class SharedMemory:
    """A block of shared memory with a name, which other processes attach to by that name.

    Args:
        name: the block's name (without a leading slash); a new random name
            if None and ``create`` is True.
        create: create a new block (which must not exist yet), else attach
            to an existing one.
        size: the size of a new block in bytes; ignored when attaching (the
            block's own size is used).
        track: register a block created here with the tree's resource
            tracker, which unlinks it if the tree ends without ``unlink()``.
            With False, unlinking is the caller's business alone.

    Raises:
        ValueError: ``size`` is negative, or 0 with ``create``; or ``name`` is
            None without ``create``; or the block to attach is empty.
        FileExistsError: ``create`` and a block of that name exists.
        FileNotFoundError: attaching and no block of that name exists.
    """

    # Class defaults: close(), unlink() and __del__ must work on an object
    # whose __init__ failed half way.
    _name: str | None = None
    _fd: int = -1
    _mmap: mmap.mmap | None = None
    _buf: memoryview | None = None
    _size: int = 0
    _track: bool = True

    def __init__(
        self, name: str | None = None, create: bool = False, size: int = 0, *, track: bool = True
    ) -> None:
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create and size == 0:
            raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        self._track = track
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        if name is None:
            while True:
                name = _random_name()
                try:
                    self._fd = _posix.shm_open(name, flags, _MODE)
                except FileExistsError:
                    continue
                break
        else:
            name = "/" + name
            self._fd = _posix.shm_open(name, flags, _MODE)
        self._name = name
        try:
            if create and track:
                _tracker.register(name)
            if create:
                os.ftruncate(self._fd, size)
            self._size = os.fstat(self._fd).st_size
            self._mmap = mmap.mmap(self._fd, self._size)
        except BaseException:
            self.close()
            if create:
                self._unlink_quietly()
            raise
        self._buf = memoryview(self._mmap)

    def _unlink_quietly(self) -> None:
        try:
            self.unlink()
        except OSError:
            pass  # the error being raised says more

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, BufferError):
            pass  # views of the buffer still exist: the mapping goes with the last of them

    def __reduce__(self) -> tuple[Any, ...]:
        return _attach, (type(self), self.name, self.size, self._track, _tracker.child_link())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, size={self.size})"

    @property
    def buf(self) -> memoryview:
        """A memoryview of the block's bytes; None once closed, as the stdlib's.

        Typed as the stdlib's is typed (typeshed): code checked against one
        checks against the other.
        """
        return cast("memoryview", self._buf)

    @property
    def name(self) -> str:
        """The block's name, by which other processes attach to it."""
        name = self._name or ""
        return name[1:] if name.startswith("/") else name

    @property
    def size(self) -> int:
        """The block's size in bytes."""
        return self._size

    def close(self) -> None:
        """Stop using the block from this object; the block itself stays (see :meth:`unlink`).

        Raises:
            BufferError: views of :attr:`buf` are still in use (the mapping
                then stays until they are released).
        """
        fd, self._fd = self._fd, -1
        _posix.close_quietly(fd)
        if self._buf is not None:
            buf, self._buf = self._buf, None
            buf.release()
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> None:
        """Remove the block's name, once, from any process; it is freed when all have closed it.

        Raises:
            FileNotFoundError: the name was already removed.
        """
        if self._name:
            _posix.shm_unlink(self._name)
            if self._track:
                _tracker.unregister(self._name)


def _attach(
    cls: type[SharedMemory],
    name: str,
    size: int,
    track: bool,
    link: _tracker.ChildLink | None,
) -> SharedMemory:
    # ``link`` did its work while being unpickled (this process adopted the
    # tracker if it had none); only the name matters here.
    return cls(name, False, size, track=track)


# ---- ShareableList -------------------------------------------------------------------------


class _Kind(enum.IntEnum):
    """What an item's slot holds."""

    INT = 0
    FLOAT = 1
    BOOL = 2
    NONE = 3
    STR = 4
    BYTES = 5


_KINDS: Final[dict[type, _Kind]] = {
    int: _Kind.INT,
    float: _Kind.FLOAT,
    bool: _Kind.BOOL,
    type(None): _Kind.NONE,
    str: _Kind.STR,
    bytes: _Kind.BYTES,
}
# The struct format the stdlib reports for each kind (str and bytes: "<capacity>s").
_FORMATS: Final = {
    _Kind.INT: "q",
    _Kind.FLOAT: "d",
    _Kind.BOOL: "xxxxxxx?",
    _Kind.NONE: "xxxxxx?x",
}
_COUNT: Final = struct.Struct("<Q")
_RECORD: Final = struct.Struct("<QIIB7x")
_INT: Final = struct.Struct("<q")
_FLOAT: Final = struct.Struct("<d")
_ALIGNMENT: Final = 8
_ENCODING: Final = "utf-8"

_T = TypeVar("_T", int, float, bool, str, bytes, None)


def _encode(value: object) -> tuple[_Kind, bytes]:
    """The kind and the stored bytes of ``value``.

    Raises:
        TypeError: ``value`` is not an int, float, bool, str, bytes or None.
        struct.error: an int does not fit in 64 bits.
    """
    kind = _KINDS.get(type(value))
    if kind is _Kind.INT:
        return kind, _INT.pack(value)
    if kind is _Kind.FLOAT:
        return kind, _FLOAT.pack(value)
    if kind is _Kind.BOOL:
        return kind, b"\x01" if value else b"\x00"
    if kind is _Kind.NONE:
        return kind, b""
    if kind is _Kind.STR:
        return kind, str(value).encode(_ENCODING)
    if kind is _Kind.BYTES:
        return kind, bytes(value)  # type: ignore[call-overload]
    raise TypeError(
        "ShareableList items must be int, float, bool, str, bytes or None, "
        f"not {type(value).__name__}"
    )


def _decode(kind: _Kind, data: memoryview) -> Any:
    if kind is _Kind.INT:
        return _INT.unpack(data)[0]
    if kind is _Kind.FLOAT:
        return _FLOAT.unpack(data)[0]
    if kind is _Kind.BOOL:
        return data[0] != 0
    if kind is _Kind.NONE:
        return None
    if kind is _Kind.STR:
        return bytes(data).decode(_ENCODING)
    return bytes(data)


def _capacity(kind: _Kind, data: bytes) -> int:
    if kind in (_Kind.STR, _Kind.BYTES):
        return _ALIGNMENT * (len(data) // _ALIGNMENT + 1)
    return _ALIGNMENT


class ShareableList(Generic[_T]):
    """A fixed-length list of int, float, bool, str, bytes and None in a SharedMemory block.

    Items can be replaced, never added or removed. Each item has a slot of
    fixed size, set when the list is created: a str or bytes that does not
    fit in its slot cannot be stored there.

    Args:
        sequence: the items of a new list.
        name: the block's name: with ``sequence``, the name of the new block;
            alone, the name of an existing list to attach to.

    Raises:
        TypeError: an item's type is not supported.
        struct.error: an int does not fit in 64 bits.
        FileExistsError, FileNotFoundError: as for :class:`SharedMemory`.
    """

    shm: SharedMemory

    def __init__(self, sequence: Iterable[_T] | None = None, *, name: str | None = None) -> None:
        if name is not None and sequence is None:
            self._attach(SharedMemory(name))
            return
        # Encode first: an item that cannot be stored fails before a block exists.
        encoded = [_encode(item) for item in (() if sequence is None else sequence)]
        data_start = _COUNT.size + _RECORD.size * len(encoded)
        size = data_start + sum(_capacity(kind, data) for kind, data in encoded)
        shm = SharedMemory(name, create=True, size=size)
        buf = _buffer(shm)
        _COUNT.pack_into(buf, 0, len(encoded))
        offset = data_start
        for index, (kind, data) in enumerate(encoded):
            capacity = _capacity(kind, data)
            buf[offset : offset + len(data)] = data
            _RECORD.pack_into(buf, _record_at(index), offset, capacity, len(data), kind)
            offset += capacity
        self._attach(shm)

    def _attach(self, shm: SharedMemory) -> None:
        self.shm = shm
        self._length: int = _COUNT.unpack_from(_buffer(shm), 0)[0]

    def __reduce__(self) -> tuple[Any, ...]:
        # The name, not the block: a pickle that does not grow with the contents
        # (the block pickles its size), as the stdlib's.
        shm = self.shm
        return _attach_list, (type(self), shm.name, shm._track, _tracker.child_link())

    def _position(self, index: Any, message: str) -> int:
        position = operator.index(index)
        if position < 0:
            position += self._length
        if not 0 <= position < self._length:
            raise IndexError(message)
        return position

    def __getitem__(self, index: int) -> _T:
        position = self._position(index, "index out of range")
        buf = _buffer(self.shm)
        offset, _capacity, length, kind = _RECORD.unpack_from(buf, _record_at(position))
        value: _T = _decode(_Kind(kind), buf[offset : offset + length])
        return value

    def __setitem__(self, index: int, value: _T) -> None:
        position = self._position(index, "assignment index out of range")
        kind, data = _encode(value)
        buf = _buffer(self.shm)
        record = _record_at(position)
        offset, capacity, _length, _kind = _RECORD.unpack_from(buf, record)
        if len(data) > capacity:
            raise ValueError("bytes/str item exceeds available storage")
        buf[offset : offset + len(data)] = data
        _RECORD.pack_into(buf, record, offset, capacity, len(data), kind)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[_T]:
        for position in range(self._length):
            yield self[position]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The ``struct`` formats of the items, as the stdlib reports them, concatenated."""
        buf = _buffer(self.shm)
        formats = []
        for position in range(self._length):
            _offset, capacity, _length, kind = _RECORD.unpack_from(buf, _record_at(position))
            formats.append(_FORMATS.get(_Kind(kind), f"{capacity}s"))
        return "".join(formats)

    def count(self, value: object) -> int:
        """How many items equal ``value``."""
        return sum(value == item for item in self)

    def index(self, value: object) -> int:
        """The position of the first item equal to ``value``.

        Raises:
            ValueError: no item equals ``value``.
        """
        for position, item in enumerate(self):
            if value == item:
                return position
        raise ValueError(f"{value!r} not in this container")


def _record_at(position: int) -> int:
    return _COUNT.size + _RECORD.size * position


def _buffer(shm: SharedMemory) -> memoryview:
    buf = shm._buf
    if buf is None:
        raise ValueError("the ShareableList's shared memory is closed")
    return buf


def _attach_list(
    cls: type[ShareableList[Any]], name: str, track: bool, link: _tracker.ChildLink | None
) -> ShareableList[Any]:
    # ``link`` did its work while being unpickled, as for SharedMemory.
    shareable = cls.__new__(cls)
    shareable._attach(SharedMemory(name, track=track))
    return shareable


# ---- SharedMemoryManager ----------------------------------------------------------------------
#
# A manager whose server unlinks, when it shuts down, every segment made
# through it:
