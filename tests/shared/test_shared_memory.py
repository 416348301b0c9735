"""SharedMemory, ShareableList and the resource tracker (serentak.shared_memory, _tracker).

In-process checks of the stdlib's semantics come first, then sharing with
children under every start method, then the tracker: its wire format, and
whole programs (run with ``subprocess``, so that their process tree really
ends) whose segment creator is SIGKILLed.

The tracker of this test process is started before the first test, so the
pipe to it is part of every leak-check baseline, as the fork server is.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _shared_targets
from serentak._os import posix as _posix
from serentak._process import tracker as _tracker
from serentak.shared_memory import ShareableList, SharedMemory

PATIENCE = 30.0
TESTS_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _tracker_running() -> None:
    _tracker.ensure_running()


@pytest.fixture
def shm() -> Iterator[SharedMemory]:
    """A new 64-byte segment, unlinked after the test."""
    segment = SharedMemory(create=True, size=64)
    yield segment
    segment.close()
    try:
        segment.unlink()
    except FileNotFoundError:
        pass  # the test unlinked it


def exists(name: str) -> bool:
    return Path("/dev/shm", name).exists()


def run(ctx: Any, target: Any, *args: Any) -> None:
    """Run ``target(*args)`` in a child of ``ctx`` and check that it succeeded."""
    process = ctx.Process(target=target, args=args)
    process.start()
    process.join(PATIENCE)
    assert process.exitcode == 0


# ---- SharedMemory in one process --------------------------------------------------------


def test_create_attach_close_unlink(shm: SharedMemory) -> None:
    assert re.fullmatch(r"psm_[0-9a-f]{8}", shm.name)
    assert shm.size == 64
    assert exists(shm.name)
    assert repr(shm) == f"SharedMemory({shm.name!r}, size=64)"
    assert shm.buf is not None
    shm.buf[:5] = b"hello"
    other = SharedMemory(shm.name)
    assert other.size == 64
    assert other.buf is not None
    assert bytes(other.buf[:5]) == b"hello"
    other.buf[0] = ord("J")
    assert bytes(shm.buf[:5]) == b"Jello"
    other.close()
    closed: Any = other.buf
    assert closed is None
    other.close()  # twice is fine
    shm.unlink()
    assert not exists(shm.name)
    assert bytes(shm.buf[:5]) == b"Jello"  # the mapping outlives the name
    with pytest.raises(FileNotFoundError):
        shm.unlink()


def test_create_with_a_name() -> None:
    name = f"serentak_test_{os.getpid()}"
    shm = SharedMemory(name, create=True, size=10)
    try:
        assert shm.name == name
        assert exists(name)
        with pytest.raises(FileExistsError):
            SharedMemory(name, create=True, size=10)
        attached = SharedMemory(name, size=1)  # the size is the segment's own
        assert attached.size == 10
        attached.close()
    finally:
        shm.close()
        shm.unlink()
    with pytest.raises(FileNotFoundError):
        SharedMemory(name)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="'size' must be a positive integer"):
        SharedMemory(create=True, size=-1)
    with pytest.raises(ValueError, match="'size' must be a positive number different from zero"):
        SharedMemory(create=True)
    with pytest.raises(ValueError, match="'name' can only be None if create=True"):
        SharedMemory()
    with pytest.raises(FileNotFoundError):
        SharedMemory("serentak_no_such_segment")


def test_attach_to_an_empty_segment_fails_cleanly() -> None:
    name = f"/serentak_empty_{os.getpid()}"
    fd = _posix.shm_open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    os.close(fd)
    try:
        with pytest.raises(ValueError):
            SharedMemory(name[1:])
    finally:
        _posix.shm_unlink(name)


def test_close_with_views_still_in_use(shm: SharedMemory) -> None:
    assert shm.buf is not None
    view = shm.buf[:8]
    with pytest.raises(BufferError):
        shm.close()
    view.release()
    shm.close()


def test_pickles_by_name_anywhere(shm: SharedMemory) -> None:
    assert shm.buf is not None
    shm.buf[:3] = b"abc"
    copy = pickle.loads(pickle.dumps(shm))
    assert copy.name == shm.name
    assert copy.size == shm.size
    assert bytes(copy.buf[:3]) == b"abc"
    copy.close()


def test_untracked_segment(shm: SharedMemory) -> None:
    untracked = SharedMemory(create=True, size=8, track=False)
    untracked.close()
    untracked.unlink()
    assert not exists(untracked.name)


# ---- SharedMemory across processes --------------------------------------------------------


def test_child_attaches_by_name(ctx: Any, shm: SharedMemory) -> None:
    run(ctx, _shared_targets.shm_attach_and_write, shm.name, b"from the child")
    assert shm.buf is not None
    assert bytes(shm.buf[:14]) == b"from the child"


def test_segment_given_to_a_child(ctx: Any, shm: SharedMemory) -> None:
    run(ctx, _shared_targets.shm_write, shm, b"given")
    assert shm.buf is not None
    assert bytes(shm.buf[:5]) == b"given"


def test_segment_outlives_its_creator_until_the_tree_ends(ctx: Any, shm: SharedMemory) -> None:
    # The child registers with this tree's tracker (inherited, or carried by
    # ``shm``), so its segment stays after it exits, as with the stdlib.
    ours, theirs = ctx.Pipe()
    with ours, theirs:
        run(ctx, _shared_targets.shm_create_and_report, theirs, shm)
        name = ours.recv()
    made = SharedMemory(name)
    assert made.buf is not None
    assert bytes(made.buf[:4]) == b"made"
    made.close()
    made.unlink()


def test_link_travels_through_a_connection(ctx: Any, shm: SharedMemory) -> None:
    assert shm.buf is not None
    shm.buf[:4] = b"sent"
    ours, theirs = ctx.Pipe()
    with ours, theirs:
        process = ctx.Process(target=_shared_targets.shm_link_report, args=(theirs,))
        process.start()
        linked_at_start = ours.recv()
        ours.send(shm)
        assert ours.recv() is True
        assert ours.recv() == b"sent"
        process.join(PATIENCE)
    assert process.exitcode == 0
    # A forked child inherits the link; the others get it with the segment.
    assert linked_at_start is (ctx.get_start_method() == "fork")


# ---- ShareableList --------------------------------------------------------------------------


def test_shareable_list_as_documented() -> None:
    documented: list[Any] = ["howdy", b"HoWdY", -273.154, 100, None, True, 42]
    a = ShareableList(documented)
    try:
        assert [type(entry) for entry in a] == [str, bytes, float, int, type(None), bool, int]
        assert a.format == "8s8sdqxxxxxx?xxxxxxxx?q"  # as the stdlib's
        assert a[2] == -273.154
        a[2] = -78.5
        assert a[2] == -78.5
        a[2] = "dry ice"
        assert a[2] == "dry ice"
        assert a.format == "8s8s8sqxxxxxx?xxxxxxxx?q"
        with pytest.raises(ValueError, match="exceeds available storage"):
            a[2] = "larger than previously allocated storage space"
        assert a[2] == "dry ice"
        assert len(a) == 7
        assert a.index(42) == 6
        assert a.count(b"howdy") == 0
        assert a.count(b"HoWdY") == 1
        b: ShareableList[Any] = ShareableList(name=a.shm.name)
        assert list(b) == list(a)
        assert repr(b) == f"ShareableList({list(a)!r}, name={a.shm.name!r})"
        b[-1] = -1
        assert a[6] == -1
        b.shm.close()
    finally:
        a.shm.close()
        a.shm.unlink()


def test_shareable_list_values() -> None:
    items: list[Any] = [
        "",
        "é" * 5,
        b"a\x00\x00",
        "trail\x00",
        2**63 - 1,
        -(2**63),
        0.0,
        False,
        None,
        b"12345678",
    ]
    sl = ShareableList(items)
    try:
        assert list(sl) == items
        # As the stdlib's, but for the slot of "é" * 5, sized by its 10 bytes of
        # UTF-8 (the stdlib counts 5 characters, and cannot store it whole).
        assert sl.format == "8s16s8s8sqqdxxxxxxx?xxxxxx?x16s"
        sl[7] = True
        sl[1] = "ü" * 8  # 16 bytes of UTF-8: fits the 16-byte slot
        assert sl[1] == "ü" * 8
        assert sl[7] is True
        assert sl[-10] == ""
        with pytest.raises(IndexError, match=r"^index out of range$"):
            sl[10]
        with pytest.raises(IndexError, match=r"^assignment index out of range$"):
            sl[-11] = 1
        with pytest.raises(TypeError):
            sl[0] = [1]
        with pytest.raises(ValueError, match="not in this container"):
            sl.index("missing")
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_refuses_what_it_cannot_store() -> None:
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(TypeError):
        ShareableList([1, [2]])  # type: ignore[type-var]
    with pytest.raises(struct.error):
        ShareableList([2**64])
    assert set(os.listdir("/dev/shm")) == before  # nothing created


def test_empty_and_named_shareable_lists() -> None:
    empty: ShareableList[int] = ShareableList()
    assert len(empty) == 0
    assert list(empty) == []
    assert empty.format == ""
    empty.shm.close()
    empty.shm.unlink()
    name = f"serentak_list_{os.getpid()}"
    named = ShareableList([1, 2], name=name)
    assert named.shm.name == name
    copy = pickle.loads(pickle.dumps(named))
    assert list(copy) == [1, 2]
    copy.shm.close()
    named.shm.close()
    named.shm.unlink()


def test_shareable_list_across_processes(ctx: Any) -> None:
    items: list[Any] = ["text", 41, 2.5, b"bytes"]
    sl = ShareableList(items)
    try:
        run(ctx, _shared_targets.shm_list_update, sl, sl.shm.name)
        assert list(sl) == ["changed", 42, None, b"x\x00"]
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_a_shareable_list_pickles_to_the_same_size_whatever_it_holds(ctx: Any) -> None:
    """It pickles as its block's name (the stdlib's rule), not the block's size."""
    small: ShareableList[Any] = ShareableList(["text", 41, 2.5, b"bytes"])
    large = ShareableList(range(400))
    try:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            small_pickle = pickle.dumps(small, protocol=protocol)
            assert len(small_pickle) == len(pickle.dumps(large, protocol=protocol))
            copy = pickle.loads(small_pickle)
            assert list(copy) == list(small)
            copy[1] = 0
            assert small[1] == 0
            copy.shm.close()
        small[1] = 41
        run(ctx, _shared_targets.shm_list_update, small, small.shm.name)
        assert list(small) == ["changed", 42, None, b"x\x00"]
    finally:
        for shareable in (small, large):
            shareable.shm.close()
            shareable.shm.unlink()


# ---- the tracker ---------------------------------------------------------------------------


def test_notices_encode_and_decode() -> None:
    notices = [
        _tracker.Notice(_tracker.Action.REGISTER, "/psm_0011aabb"),
        _tracker.Notice(_tracker.Action.UNREGISTER, "/é"),
    ]
    stream = b"".join(notice.encode() for notice in notices)
    for cut in range(len(stream) + 1):
        first, rest = _tracker.decode(stream[:cut])
        second, left = _tracker.decode(rest + stream[cut:])
        assert first + second == notices
        assert left == b""
    with pytest.raises(ValueError):
        _tracker.Notice(_tracker.Action.REGISTER, "/" + "x" * 5000).encode()


SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import serentak, _shared_targets
    from serentak.shared_memory import SharedMemory

    method, share = sys.argv[1], sys.argv[2] == "share"
    ctx = serentak.get_context(method)
    # With "share", this process starts the tracker first and hands the child
    # a segment; without, the child has no tracker and starts its own.
    link = SharedMemory(create=True, size=16) if share else None
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_shared_targets.shm_create_and_wait, args=(theirs, link))
    child.start()
    linked, tracked, untracked = ours.recv(), ours.recv(), ours.recv()
    child.kill()
    child.join()
    report = dict(
        linked=linked,
        tracked=tracked,
        untracked=untracked,
        link=None if link is None else link.name,
        exitcode=child.exitcode,
        tracked_after_kill=os.path.exists("/dev/shm/" + tracked),
    )
    print(json.dumps(report), flush=True)
    if sys.argv[3] == "sigkill":
        os.kill(os.getpid(), 9)  # the whole tree dies without a word
    """
)


@pytest.mark.parametrize(
    ("share", "ending"), [("share", "exit"), ("own", "exit"), ("share", "sigkill")]
)
def test_tracker_cleans_up_after_a_killed_creator(
    start_method: str, share: str, ending: str
) -> None:
    # run() returns once stderr is closed by every process holding it, the
    # tracker included: it has cleaned up by then.
    script = SCRIPT.format(tests=str(TESTS_DIR))
    result = subprocess.run(
        [sys.executable, "-c", script, start_method, share, ending],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    assert result.returncode == (-9 if ending == "sigkill" else 0), result.stderr
    report = json.loads(result.stdout)
    try:
        assert report["exitcode"] == -9
        assert not exists(report["tracked"])
        leaked = [report["tracked"]]
        if share == "share":
            # The child used this tree's tracker: its segment stayed while the tree ran.
            assert report["linked"] is True
            assert report["tracked_after_kill"] is True
            assert not exists(report["link"])
            leaked.append(report["link"])
        else:
            assert report["linked"] is False
        assert "leaked shared_memory objects to clean up at shutdown" in result.stderr
        for name in leaked:
            assert f"/{name}" in result.stderr
        # Untracked: cleaning up was the program's business.
        assert exists(report["untracked"])
    finally:
        if exists(report["untracked"]):
            _posix.shm_unlink("/" + report["untracked"])
