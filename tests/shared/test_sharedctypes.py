"""Value, Array, RawValue, RawArray and the synchronized wrappers (serentak.sharedctypes).

The first part checks the objects within one process, against the stdlib's
where they should agree; the second shares them with children under every
start method (the ``ctx`` fixture).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing.sharedctypes as stdlib_sharedctypes
import os
import pickle
import re
import signal
import threading
from collections.abc import Iterator
from multiprocessing.reduction import ForkingPickler
from typing import Any

import pytest

import _shared_targets
import serentak
from serentak import sharedctypes

PATIENCE = 30.0

# A value of each typecode that is not the type's zero, and a second one.
TYPECODE_VALUES: dict[str, tuple[Any, Any]] = {
    "c": (b"x", b"y"),
    "u": ("\u00e9", "z"),
    "b": (-5, 7),
    "B": (250, 3),
    "h": (-30_000, 12),
    "H": (60_000, 13),
    "i": (-2_000_000_000, 14),
    "I": (4_000_000_000, 15),
    "l": (-(2**62), 16),
    "L": (2**63 + 1, 17),
    "q": (-(2**63), 18),
    "Q": (2**64 - 1, 19),
    "f": (1.5, -0.25),
    "d": (2.0**-30, 1e300),
}


@pytest.fixture(scope="module", autouse=True)
def _stdlib_heap() -> Iterator[None]:
    """Open the stdlib's shared heap before the leak check's baselines are taken.

    The comparisons below use stdlib sharedctypes, whose heap keeps its first
    arena (an fd and a mapping in /dev/shm) for good once it exists.
    """
    keep = stdlib_sharedctypes.RawValue("b")
    yield
    del keep


def run(ctx: Any, target: Any, *args: Any) -> None:
    """Run ``target(*args)`` in a child of ``ctx`` and check that it succeeded."""
    process = ctx.Process(target=target, args=args)
    process.start()
    process.join(PATIENCE)
    assert process.exitcode == 0


# ---- within one process ---------------------------------------------------------------


def test_public_module_mirrors_the_stdlib() -> None:
    assert sharedctypes.__all__ == sorted(stdlib_sharedctypes.__all__)
    for name in ("Synchronized", "SynchronizedArray", "SynchronizedString", "SynchronizedBase"):
        assert getattr(sharedctypes, name).__module__ == "serentak.sharedctypes"


@pytest.mark.parametrize("code", TYPECODE_VALUES)
def test_every_typecode_round_trips(code: str) -> None:
    first, second = TYPECODE_VALUES[code]
    raw = sharedctypes.RawValue(code, first)
    assert raw.value == first
    assert raw.value == stdlib_sharedctypes.RawValue(code, first).value
    assert repr(raw) == repr(stdlib_sharedctypes.RawValue(code, first))
    value = sharedctypes.Value(code, first)
    assert value.value == first
    value.value = second
    assert value.value == second
    assert repr(sharedctypes.Value(code)) == repr(stdlib_sharedctypes.Value(code))
    array = sharedctypes.Array(code, [first, second, first])
    items = [first, second, first]
    # Slices of char arrays are bytes, of wide-char arrays str, as in ctypes.
    expected = b"".join(items) if code == "c" else "".join(items) if code == "u" else items
    assert array[:] == expected
    assert [array[i] for i in range(3)] == items
    assert len(array) == 3
    assert sharedctypes.RawValue(code).value == stdlib_sharedctypes.RawValue(code).value


class _Index:
    """An integer by ``__index__`` only."""

    def __init__(self, value: int) -> None:
        self._value = value

    def __index__(self) -> int:
        return self._value


# Values a Value's ``value`` may be given: in range, beyond every type's width
# (ctypes truncates), of other numeric types, and of no numeric type.
ASSIGNED: list[Any] = [
    0, -1, 1, 127, 128, 255, 256, -129, 2**15, 2**16 + 3, 2**31, -(2**31) - 1, 2**32 + 7,
    2**63, 2**64 + 5, -(2**64) - 5, 2**100 + 9, True, False, _Index(300), 1.5, -0.0,
    float("inf"), 1e300, "7", None,
]  # fmt: skip


@pytest.mark.parametrize("code", [code for code in TYPECODE_VALUES if code not in "cu"])
def test_a_value_converts_what_it_is_given_as_ctypes(code: str) -> None:
    """``value`` is read and written in place for a shared simple value: it converts,
    truncates and refuses exactly as ctypes does, inside the lock or not."""
    value = sharedctypes.Value(code)
    plain = stdlib_sharedctypes.typecode_to_type[code]()  # type: ignore[attr-defined]
    for given in ASSIGNED:
        for held in (False, True):
            try:
                plain.value = given
            except Exception as exc:
                with (
                    pytest.raises(type(exc)),
                    value.get_lock() if held else contextlib.nullcontext(),
                ):
                    value.value = given
            else:
                with value.get_lock() if held else contextlib.nullcontext():
                    value.value = given
                    got = value.value
                assert got == plain.value or (got != got and plain.value != plain.value), given
                assert type(got) is type(plain.value)
            assert value.get_lock()._count() == 0


def test_a_rebound_object_is_read_through_ctypes() -> None:
    value = sharedctypes.Value("i", 5)
    other = sharedctypes.RawValue("i", 9)
    value._obj = other
    assert value.value == 9
    value.value = 10
    assert other.value == 10
    assert value.get_obj() is other
    owned: Any = sharedctypes.synchronized(ctypes.c_int(3))
    owned.value += 1
    assert owned.value == 4


def test_zero_filled_even_when_the_arena_recycles_bytes() -> None:
    for _ in range(3):
        junk = [sharedctypes.RawArray("B", [255] * 64) for _ in range(20)]
        del junk
        gc.collect()
        assert sharedctypes.RawValue("q").value == 0
        assert sharedctypes.RawArray("B", 64)[:] == [0] * 64
        assert sharedctypes.Value("d").value == 0.0


def test_block_lives_as_long_as_the_object() -> None:
    kept = [sharedctypes.RawValue("i", 1000 + n) for n in range(50)]
    array = sharedctypes.Array("i", range(100))
    gc.collect()
    # Allocations that would reuse freed bytes must not touch the kept objects.
    others = [sharedctypes.RawArray("i", [-1] * 16) for _ in range(200)]
    assert [v.value for v in kept] == [1000 + n for n in range(50)]
    assert array[:] == list(range(100))
    assert len(others) == 200


def test_unknown_typecode_or_type() -> None:
    with pytest.raises(TypeError, match="unknown typecode 'x'"):
        sharedctypes.RawValue("x")
    with pytest.raises(TypeError, match="ctypes type"):
        sharedctypes.Value(int)


def test_array_from_size_and_initializer() -> None:
    assert sharedctypes.RawArray("i", 4)[:] == [0, 0, 0, 0]
    assert sharedctypes.RawArray("d", (x / 2 for x in range(3)))[:] == [0.0, 0.5, 1.0]
    array = sharedctypes.Array("i", [1, 2, 3, 4, 5])
    array[1:3] = [20, 30]
    assert array[:] == [1, 20, 30, 4, 5]
    assert array[::-2] == [5, 30, 1]
    assert array[-1] == 5
    with pytest.raises(IndexError):
        array[5]
    assert list(array) == [1, 20, 30, 4, 5]


def test_locks() -> None:
    value = sharedctypes.Value("i", 1)
    assert type(value.get_lock()).__name__ == "RLock"
    assert type(sharedctypes.Value("i", lock=None).get_lock()).__name__ == "RLock"
    lock = serentak.Lock()
    given = sharedctypes.Value("i", 1, lock=lock)
    assert given.get_lock() is lock
    with given:
        assert not lock.acquire(False)
    assert lock.acquire(False)
    lock.release()
    assert given.acquire() is True
    given.release()
    array = sharedctypes.Array("d", 3, lock=lock)
    assert array.get_lock() is lock
    context_value = serentak.get_context("spawn").Value("i", 0, lock=False)
    assert isinstance(context_value, ctypes.c_int)


def test_access_under_the_rlock_already_held_keeps_its_depth() -> None:
    """Reading and writing inside ``with v.get_lock()`` re-enter the RLock and leave it
    as deep as it was; outside, each access takes and gives back the lock."""
    value = sharedctypes.Value("i", 0)
    lock = value.get_lock()
    with lock:
        value.value += 1
        assert lock._count() == 1
        with lock:
            value.value += 1
            assert value.value == 2
            assert lock._count() == 2
        assert lock._count() == 1
    assert lock._count() == 0
    value.value = 7
    assert (value.value, lock._count()) == (7, 0)
    assert lock.acquire(False)
    lock.release()


def test_a_failed_access_still_releases_the_lock() -> None:
    value = sharedctypes.Value("i", 0)
    with pytest.raises(TypeError):
        value.value = "seven"
    array = sharedctypes.Array("i", [1, 2])
    with pytest.raises(IndexError):
        array[2]
    with pytest.raises(IndexError):
        array[2] = 3
    with pytest.raises(AttributeError, match="cannot delete the synchronized field 'value'"):
        del value.value
    for lock in (value.get_lock(), array.get_lock()):
        assert lock._count() == 0
        assert lock.acquire(False)
        lock.release()


def test_ctrl_c_interrupts_an_access_waiting_for_the_lock() -> None:
    lock = serentak.Lock()
    value = sharedctypes.Value("i", 4, lock=lock)
    lock.acquire()
    # The signal may land on the timer's thread: the waiting access must notice anyway.
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            value.value  # a Lock is not re-entrant: this waits until interrupted
    finally:
        timer.join(PATIENCE)
    lock.release()
    assert value.value == 4
    assert lock.acquire(False)
    lock.release()


class _RecordingLock:
    """A lock that is not serentak's: the wrappers must call its own methods."""

    def __init__(self, fail_release: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_release = fail_release

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        self.calls.append("acquire")
        return True

    def release(self) -> None:
        self.calls.append("release")
        if self.fail_release:
            raise RuntimeError("release failed")

    def __enter__(self) -> bool:
        self.calls.append("enter")
        return True

    def __exit__(self, *args: object) -> None:
        self.calls.append("exit")


def test_a_foreign_lock_is_used_through_its_methods() -> None:
    lock = _RecordingLock()
    value = sharedctypes.Value("i", 3, lock=lock)
    array = sharedctypes.Array("i", [1, 2], lock=lock)
    value.value += 1
    array[0] = array[1]
    with value:
        pass
    assert value.value == 4
    assert array[:] == [2, 2]
    assert lock.calls == ["acquire", "release"] * 4 + ["enter", "exit"] + ["acquire", "release"] * 2


def test_an_error_of_the_release_wins_with_the_access_error_as_context() -> None:
    value = sharedctypes.Value("i", 3, lock=_RecordingLock(fail_release=True))
    with pytest.raises(RuntimeError, match="release failed"):
        value.value
    with pytest.raises(RuntimeError, match="release failed") as caught:
        value.value = "three"
    assert isinstance(caught.value.__context__, TypeError)


def test_the_wrapper_classes_expose_their_fields() -> None:
    field = sharedctypes.Synchronized.value
    assert field.name == "value"
    assert "under the lock" in (field.__doc__ or "")
    point = sharedctypes.synchronized(sharedctypes.RawValue(_shared_targets.SctPoint, 1, 2.0))
    point_type: Any = type(point)
    assert point_type.x.name == "x"
    bare = sharedctypes.Synchronized.__new__(sharedctypes.Synchronized)
    with pytest.raises(AttributeError, match="used before its object and lock were set"):
        bare.value


@pytest.mark.parametrize("factory", [sharedctypes.Value, sharedctypes.Array])
def test_a_lock_needs_acquire(factory: Any) -> None:
    with pytest.raises(AttributeError) as ours:
        factory("i", 1, lock=3)
    stdlib_factory = getattr(stdlib_sharedctypes, factory.__name__)
    with pytest.raises(AttributeError) as theirs:
        stdlib_factory("i", 1, lock=3)
    assert str(ours.value) == str(theirs.value) == "3 has no method 'acquire'"


def test_lock_false_gives_the_raw_object() -> None:
    value = sharedctypes.Value("i", 5, lock=False)
    assert isinstance(value, ctypes.c_int)
    assert not hasattr(value, "get_lock")
    assert repr(value) == "c_int(5)"
    array = sharedctypes.Array("i", [1, 2], lock=False)
    assert isinstance(array, ctypes.Array)
    assert not hasattr(array, "get_lock")
    assert array[:] == [1, 2]


def test_reprs_match_the_stdlib() -> None:
    assert repr(sharedctypes.Value("i")) == "<Synchronized wrapper for c_int(0)>"
    assert repr(sharedctypes.Value("d", 1.5)) == repr(stdlib_sharedctypes.Value("d", 1.5))
    assert repr(sharedctypes.Value("c", b"a")) == "<Synchronized wrapper for c_char(b'a')>"
    array_repr = re.compile(r"<(\w+) wrapper for <[\w.]+\.c_(int|char)_Array_3 object at 0x\w+>>")
    for ours in (sharedctypes.Array("i", 3), sharedctypes.Array("c", 3)):
        match = array_repr.fullmatch(repr(ours))
        assert match is not None, repr(ours)
        assert match.group(1) == type(ours).__name__
    assert type(sharedctypes.Array("c", 3)).__name__ == "SynchronizedString"
    assert type(sharedctypes.Array("i", 3)).__name__ == "SynchronizedArray"


def test_char_arrays() -> None:
    ours: Any = sharedctypes.Array("c", b"hello")
    theirs: Any = stdlib_sharedctypes.Array("c", b"hello")
    for chars in (ours, theirs):
        assert chars.value == b"hello"
        chars.value = b"hi"
        assert chars.value == b"hi"
        assert chars.raw == b"hi\x00lo"
        chars.raw = b"abcde"
        assert chars[1] == b"b"
        assert chars[1:3] == b"bc"
    assert sharedctypes.Array("c", 4).raw == b"\x00" * 4
    with pytest.raises(ValueError):
        ours.value = b"too long"


def test_structures() -> None:
    point = sharedctypes.Value(_shared_targets.SctPoint, 1, 2.5)
    assert type(point).__name__ == "SynchronizedSctPoint"
    assert (point.x, point.y) == (1, 2.5)
    point.x += 1
    assert point.get_obj().x == 2
    raw = sharedctypes.RawValue(_shared_targets.SctPoint, 3, 4.0)
    assert isinstance(raw, _shared_targets.SctPoint)
    points = sharedctypes.RawArray(_shared_targets.SctPoint, [(1, 2.0), (3, 4.0)])
    assert [(p.x, p.y) for p in points] == [(1, 2.0), (3, 4.0)]
    nested = sharedctypes.RawValue(ctypes.c_int * 2 * 3)
    nested[2][1] = 7
    assert [list(row) for row in nested] == [[0, 0], [0, 0], [0, 7]]


def test_structure_with_its_own_init() -> None:
    class Defaults(ctypes.Structure):
        _fields_ = (("a", ctypes.c_int),)

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            if not args:
                self.a = 42

    assert sharedctypes.RawValue(Defaults).a == 42
    assert stdlib_sharedctypes.RawValue(Defaults).a == 42
    assert sharedctypes.Value(Defaults, 5).a == 5


def test_copy() -> None:
    original = sharedctypes.RawValue(_shared_targets.SctPoint, 1, 2.0)
    duplicate = sharedctypes.copy(original)
    assert (duplicate.x, duplicate.y) == (1, 2.0)
    duplicate.x = 10
    assert original.x == 1
    assert sharedctypes.copy(ctypes.c_double(0.5)).value == 0.5
    array = sharedctypes.copy(sharedctypes.RawArray("i", [1, 2]))
    assert array[:] == [1, 2]


def test_synchronized() -> None:
    wrapped = sharedctypes.synchronized(sharedctypes.RawValue("i", 3))
    assert type(wrapped).__name__ == "Synchronized"
    assert wrapped.get_lock() is not None
    assert type(sharedctypes.synchronized(sharedctypes.RawArray("c", 2))).__name__ == (
        "SynchronizedString"
    )
    with pytest.raises(AssertionError, match="already synchronized"):
        sharedctypes.synchronized(wrapped)


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: sharedctypes.Value("i"), "Synchronized"),
        (lambda: sharedctypes.Array("i", 3), "SynchronizedArray"),
        (lambda: sharedctypes.Array("c", 3), "SynchronizedString"),
        (lambda: sharedctypes.Value(_shared_targets.SctPoint), "SynchronizedSctPoint"),
        (lambda: sharedctypes.RawValue("i"), "c_int"),
        (lambda: sharedctypes.RawArray("d", 3), "c_double_Array_3"),
    ],
)
def test_pickling_outside_start_up_is_refused(make: Any, name: str) -> None:
    obj = make()
    message = f"^{name} objects should only be shared between processes through inheritance$"
    with pytest.raises(RuntimeError, match=message):
        pickle.dumps(obj)
    ours, theirs = serentak.Pipe()
    with ours, theirs, pytest.raises(RuntimeError, match=message):
        ours.send(obj)


def test_stdlib_refuses_with_the_same_message() -> None:
    value = stdlib_sharedctypes.Value("i")
    with pytest.raises(RuntimeError) as theirs:
        ForkingPickler.dumps(value)
    assert str(theirs.value) == (
        "Synchronized objects should only be shared between processes through inheritance"
    )


# ---- across processes ------------------------------------------------------------------


def test_seed_value_incremented_by_a_child(ctx: Any) -> None:
    value = ctx.Value("i", 0)
    run(ctx, _shared_targets.sct_increment, value)
    assert value.value == 1


def test_seed_array_changed_by_a_child(ctx: Any) -> None:
    array = ctx.Array("i", [1, 2, 3])
    run(ctx, _shared_targets.sct_bump_first, array)
    assert array[:] == [2, 2, 3]


def test_two_processes_count_exactly(ctx: Any) -> None:
    value = ctx.Value("i", 0)
    children = [
        ctx.Process(target=_shared_targets.sct_add_many, args=(value, 10_000)) for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(PATIENCE)
        assert child.exitcode == 0
    assert value.value == 20_000


def test_every_typecode_across_processes(ctx: Any) -> None:
    codes = list(TYPECODE_VALUES)
    values = [ctx.Value(code, TYPECODE_VALUES[code][0]) for code in codes]
    raws = [ctx.RawValue(code, TYPECODE_VALUES[code][0]) for code in codes]
    ours, theirs = ctx.Pipe()
    with ours, theirs:
        process = ctx.Process(
            target=_shared_targets.sct_swap_values,
            args=(theirs, values + raws, [TYPECODE_VALUES[code][1] for code in codes] * 2),
        )
        process.start()
        seen = ours.recv()
        process.join(PATIENCE)
    assert process.exitcode == 0
    assert seen == [TYPECODE_VALUES[code][0] for code in codes] * 2
    assert [v.value for v in values + raws] == [TYPECODE_VALUES[code][1] for code in codes] * 2


def _address(buffer: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def test_a_small_value_or_array_lives_beside_its_lock_and_counts_exactly(ctx: Any) -> None:
    """A Value or an Array of at most 48 bytes with its own RLock is placed in the lock's
    spare bytes (on its owner's cache line); two processes hammering both, with the
    locks handed over between them, count exactly."""
    value = ctx.Value("q", 0)
    array = ctx.Array("i", [0, 10, 20, 30])
    for wrapper in (value, array):
        block, offset, size = wrapper.get_lock().spare_bytes()
        assert size == 48
        assert ctypes.addressof(wrapper.get_obj()) == _address(block.buffer) + offset
        assert (_address(block.buffer) + offset) % 64 == 16
    big = ctx.Array("d", 7)  # 56 bytes: apart
    block, offset, _ = big.get_lock().spare_bytes()
    assert ctypes.addressof(big.get_obj()) != _address(block.buffer) + offset
    assert big[:] == [0.0] * 7
    times = 3_000
    children = [
        ctx.Process(target=_shared_targets.sct_add_many_beside, args=(value, array, times))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(PATIENCE)
        assert child.exitcode == 0
    assert value.value == 2 * times
    assert array[:] == [2 * times, 10 + 2 * times, 20 + 2 * times, 30 + 2 * times]
    for wrapper in (value, array):
        lock = wrapper.get_lock()
        assert lock._count() == 0
        assert lock.acquire(False)
        lock.release()


def test_a_given_lock_or_no_lock_keeps_the_value_apart() -> None:
    lock = serentak.RLock()
    value = sharedctypes.Value("i", 3, lock=lock)
    block, offset, _ = lock.spare_bytes()
    assert ctypes.addressof(value.get_obj()) != _address(block.buffer) + offset
    assert sharedctypes.Value("i", 4, lock=False).value == 4
    assert sharedctypes.Array("i", [1, 2], lock=False)[:] == [1, 2]
    assert sharedctypes.Value("i", 5, lock=None).value == 5
    with pytest.raises(TypeError):
        sharedctypes.Value("i", 1, 2)
    with pytest.raises(ValueError, match="length must be >= 0"):
        sharedctypes.Array("i", -1)
    assert sharedctypes.Array("i", iter([7, 8]))[:] == [7, 8]


def test_a_process_looping_on_the_lock_does_not_starve_another(ctx: Any) -> None:
    """A waiter is not locked out by a holder that releases and re-takes the lock at
    once, over and over (a release does not hand the lock over; the waiter must win
    it in the holder's short gap, and does)."""
    value = ctx.Value("i", 0)
    stop = ctx.Event()
    hog = ctx.Process(target=_shared_targets.sct_hog_value_lock, args=(value, stop))
    hog.start()
    taker = ctx.Process(target=_shared_targets.sct_take_lock_beside_a_hog, args=(value, 200, stop))
    taker.start()
    taker.join(PATIENCE)
    stop.set()
    hog.join(PATIENCE)
    assert (taker.exitcode, hog.exitcode) == (0, 0)
    assert value.value >= 200


def test_child_uses_the_given_lock(ctx: Any) -> None:
    lock = ctx.Lock()
    value = ctx.Value("i", 0, lock=lock)
    ours, theirs = ctx.Pipe()
    with ours, theirs:
        with lock:
            run(ctx, _shared_targets.sct_try_lock, theirs, value)
            assert ours.recv() is False
        run(ctx, _shared_targets.sct_try_lock, theirs, value)
        assert ours.recv() is True


def test_raw_objects_are_shared(ctx: Any) -> None:
    raw = ctx.RawValue("d", 0.5)
    array = ctx.RawArray("h", [1, 2, 3])
    unlocked = ctx.Value("i", 7, lock=False)
    run(ctx, _shared_targets.sct_raw_add, raw, array)
    run(ctx, _shared_targets.sct_raw_add, unlocked, ctx.RawArray("i", 0))
    assert raw.value == 1.5
    assert array[:] == [2, 3, 4]
    assert unlocked.value == 8


def test_char_array_in_a_child(ctx: Any) -> None:
    chars = ctx.Array("c", b"hello")
    ours, theirs = ctx.Pipe()
    with ours, theirs:
        run(ctx, _shared_targets.sct_chars, theirs, chars)
        assert ours.recv() == b"hello"
        assert ours.recv() == b"hello"
    assert chars.value == b"bye"
    assert chars.raw == b"bye\x00o"


def test_structures_in_a_child(ctx: Any) -> None:
    point = ctx.Value(_shared_targets.SctPoint, 1, 1.5)
    points = ctx.RawArray(_shared_targets.SctPoint, [(1, 0.0), (2, 0.0)])
    run(ctx, _shared_targets.sct_move_point, point, points)
    assert (point.x, point.y) == (2, 3.0)
    assert [p.x for p in points] == [11, 12]


# ---- every ctypes type, locks, copy and synchronized, across processes ----------------------

CTYPES_TYPES: dict[str, tuple[type[Any], Any, Any]] = {
    "c_bool": (ctypes.c_bool, True, False),
    "c_int8": (ctypes.c_int8, -128, 127),
    "c_uint16": (ctypes.c_uint16, 65_535, 1),
    "c_int32": (ctypes.c_int32, -(2**31), 2),
    "c_uint64": (ctypes.c_uint64, 2**64 - 1, 3),
    "c_size_t": (ctypes.c_size_t, 2**40, 4),
    "c_ssize_t": (ctypes.c_ssize_t, -(2**40), 5),
    "c_longdouble": (ctypes.c_longdouble, 1.25, -2.5),
    "c_float": (ctypes.c_float, 0.5, 8.0),
    "c_char": (ctypes.c_char, b"\xff", b"a"),
    "c_wchar": (ctypes.c_wchar, "\u20ac", "b"),
    "c_void_p": (ctypes.c_void_p, 0xDEAD_BEEF, 16),
}


@pytest.mark.parametrize("name", CTYPES_TYPES)
def test_every_simple_ctypes_type_as_the_stdlib(name: str) -> None:
    ctype, first, second = CTYPES_TYPES[name]
    for factory in ("RawValue", "Value"):
        ours = getattr(sharedctypes, factory)(ctype, first)
        theirs = getattr(stdlib_sharedctypes, factory)(ctype, first)
        assert ours.value == theirs.value == first
        assert repr(ours) == repr(theirs)
        ours.value = second
        assert ours.value == second
        assert repr(getattr(sharedctypes, factory)(ctype)) == repr(
            getattr(stdlib_sharedctypes, factory)(ctype)
        )
    ours_array = sharedctypes.Array(ctype, [first, second])
    theirs_array = stdlib_sharedctypes.Array(ctype, [first, second])
    assert type(ours_array).__name__ == type(theirs_array).__name__
    assert ours_array[:] == theirs_array[:]
    assert ours_array[::-1] == theirs_array[::-1]
    assert ours_array.get_obj()[:] == ours_array[:]


def test_unions_and_nested_arrays_as_the_stdlib() -> None:
    ours: Any = sharedctypes.Value(_shared_targets.SctUnion)
    theirs: Any = stdlib_sharedctypes.Value(_shared_targets.SctUnion)
    for union in (ours, theirs):
        union.f = 1.5
    assert ours.i == theirs.i == 0x3FC0_0000
    assert type(ours).__name__ == type(theirs).__name__ == "SynchronizedSctUnion"
    grid_type = ctypes.c_double * 2 * 2
    grid = sharedctypes.Array(ctypes.c_double * 2, [(1.0, 2.0), (3.0, 4.0)])
    assert [list(row) for row in grid] == [[1.0, 2.0], [3.0, 4.0]]
    assert type(grid.get_obj()).__name__ == grid_type.__name__


def test_lock_true_none_false_and_given_as_the_stdlib() -> None:
    for lock in (True, None, 1):
        value = sharedctypes.Value("i", 1, lock=lock)
        array = sharedctypes.Array("i", 2, lock=lock)
        assert type(value.get_lock()).__name__ == type(array.get_lock()).__name__ == "RLock"
        assert value.get_lock() is not array.get_lock()
    rlock = serentak.RLock()
    shared = [sharedctypes.Value("d", lock=rlock), sharedctypes.Array("c", 3, lock=rlock)]
    assert all(obj.get_lock() is rlock for obj in shared)
    with shared[0], shared[1]:  # the wrappers are context managers on their (re-entrant) lock
        assert rlock._count() == 2
    for factory in (sharedctypes.Value, sharedctypes.Array):
        assert not hasattr(factory("i", 1, lock=False), "get_lock")
        assert not hasattr(getattr(stdlib_sharedctypes, factory.__name__)("i", 1, lock=False), "x")


def test_copy_and_synchronized_as_the_stdlib() -> None:
    source = sharedctypes.RawArray("i", [1, 2, 3])
    duplicate = sharedctypes.copy(source)
    theirs = stdlib_sharedctypes.copy(stdlib_sharedctypes.RawArray("i", [1, 2, 3]))
    assert type(duplicate).__name__ == type(theirs).__name__
    assert duplicate[:] == theirs[:] == [1, 2, 3]
    lock = serentak.Lock()
    wrapped: Any = sharedctypes.synchronized(duplicate, lock)
    assert wrapped.get_lock() is lock
    assert wrapped.get_obj() is duplicate
    assert type(wrapped).__name__ == "SynchronizedArray"
    wrapped[0:2] = [7, 8]
    assert duplicate[:] == [7, 8, 3]
    point: Any = sharedctypes.synchronized(sharedctypes.RawValue(_shared_targets.SctPoint, 1, 2.0))
    assert type(point).__name__ == "SynchronizedSctPoint"
    assert (point.x, point.y) == (1, 2.0)


def test_ctypes_types_across_processes(ctx: Any) -> None:
    names = list(CTYPES_TYPES)
    values = [ctx.Value(CTYPES_TYPES[n][0], CTYPES_TYPES[n][1]) for n in names]
    raws = [ctx.RawValue(CTYPES_TYPES[n][0], CTYPES_TYPES[n][1]) for n in names]
    ours, theirs = ctx.Pipe()
    with ours, theirs:
        process = ctx.Process(
            target=_shared_targets.sct_swap_values,
            args=(theirs, values + raws, [CTYPES_TYPES[n][2] for n in names] * 2),
        )
        process.start()
        seen = ours.recv()
        process.join(PATIENCE)
    assert process.exitcode == 0
    assert seen == [CTYPES_TYPES[n][1] for n in names] * 2
    assert [v.value for v in values + raws] == [CTYPES_TYPES[n][2] for n in names] * 2


def test_union_grid_and_slices_in_a_child(ctx: Any) -> None:
    union = ctx.RawValue(_shared_targets.SctUnion)
    union.i = 7
    grid = ctx.RawArray(ctypes.c_double * 2, 2)
    lock = ctx.RLock()  # the child's `with array` then takes it again for the slice
    array = ctx.Array("q", [1, 2, 3, 4], lock=lock)
    ours, theirs = ctx.Pipe()
    with ours, theirs:
        run(ctx, _shared_targets.sct_set_fields, theirs, union, grid, array)
        assert ours.recv() == (7, [[0.0, 0.0], [0.0, 0.0]], [2, 3], [1, 2, 3, 4])
    assert union.f == 1.5
    assert [list(row) for row in grid] == [[0.0, 0.0], [9.25, 0.0]]
    assert array[:] == [1, 20, 30, 4]
    assert array.get_lock() is lock
    assert lock.acquire(False)  # the child's `with array` released the given lock
    lock.release()


def test_copy_and_synchronized_objects_in_a_child(ctx: Any) -> None:
    copied = sharedctypes.copy(ctx.RawValue(_shared_targets.SctPoint, 1, 0.5))
    wrapped: Any = sharedctypes.synchronized(
        ctx.RawValue(_shared_targets.SctPoint, 5, 1.0), ctx.RLock()
    )
    run(ctx, _shared_targets.sct_move_point, wrapped, [copied])
    assert (copied.x, copied.y) == (11, 0.5)
    assert (wrapped.x, wrapped.y) == (6, 2.0)


def test_value_read_takes_over_the_lock_of_a_killed_holder(ctx: Any) -> None:
    """``v.value`` itself, not only ``get_lock().acquire()``, takes a dead holder's lock
    over (with LockOwnerDiedWarning) and gives it back after the read."""
    value = ctx.Value("i", 0)
    holding = ctx.Event()
    child = ctx.Process(
        target=_shared_targets.sct_hold_value_lock_until_killed, args=(value, holding)
    )
    child.start()
    assert holding.wait(PATIENCE)
    child.kill()
    child.join(PATIENCE)
    with pytest.warns(serentak.LockOwnerDiedWarning, match=f"process {child.pid}, which died"):
        assert value.value == -1
    assert value.get_lock()._count() == 0
    value.value = 5
    assert value.value == 5


def test_value_whose_lock_holder_was_killed_stays_usable(ctx: Any) -> None:
    """A child SIGKILLed inside ``with v.get_lock()``: the next user takes the lock over
    with LockOwnerDiedWarning, sees the half-done update, and counting goes on exactly."""
    value = ctx.Value("i", 0)
    holding = ctx.Event()
    child = ctx.Process(
        target=_shared_targets.sct_hold_value_lock_until_killed, args=(value, holding)
    )
    child.start()
    assert holding.wait(PATIENCE)
    child.kill()
    child.join(PATIENCE)
    with pytest.warns(serentak.LockOwnerDiedWarning):
        value.get_lock().acquire()
    assert value.value == -1  # what the dead process left half-done
    value.value = 0
    value.get_lock().release()
    children = [
        ctx.Process(target=_shared_targets.sct_add_many, args=(value, 2_000)) for _ in range(2)
    ]
    for process in children:
        process.start()
    for process in children:
        process.join(PATIENCE)
        assert process.exitcode == 0
    assert value.value == 4_000
