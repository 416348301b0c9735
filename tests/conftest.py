"""Shared fixtures: every start method, gates for tasks, and a leak check after every test.

``ctx`` runs a test under fork, spawn and forkserver. The autouse leak check
fails a test that leaves behind a descendant process (a fork server's
children included), a file descriptor, or a /dev/shm entry. It polls for a
few seconds first: a child that was just killed takes a moment to be reaped,
and that is the condition waited for, not a fixed sleep.

One allowance: a fixture wider than one test may keep a process tree across
tests (tests/test_distributed.py's Dask cluster, which takes seconds to
start) by registering its root in ``shared_process_trees``; the check then
neither reports that tree nor looks inside it, nor counts the /dev/shm
entries that the tree's processes have mapped (Dask's worker nannies make
named semaphores for each worker they start), until the fixture, having
stopped it, unregisters it. Nothing else is exempt, but for /dev/shm entries
that processes outside this test run's tree have mapped: another test run on
the same machine (a developer's, a benchmark) makes and holds its own.
"""

from __future__ import annotations

import copyreg
import gc
import os
import signal
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

import _pool_targets
import serentak
from serentak._ipc import buffers as _buffers
from serentak._process import launch as _launch

START_METHODS = ("fork", "spawn", "forkserver")
LEAK_GRACE_SECONDS = 5.0
# Descriptors a process keeps on purpose once it has used the feature: the
# arena's shared segments (reused for every later Lock, Value, ...).
KEPT_FD_TARGETS = ("/memfd:serentak-arena",)
# Roots of process trees kept across tests by a wider fixture: see shared_process_trees.
_SHARED_PROCESS_TREES: set[int] = set()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Importing dask.distributed (test_distributed does) installs tblib's reducers for
    every exception class then defined, so that exceptions which cannot be unpickled
    suddenly can: taken back for the test targets, whose faults must stay faults."""
    del session
    for cls in list(copyreg.dispatch_table):
        if getattr(cls, "__module__", "").endswith("_targets"):
            del copyreg.dispatch_table[cls]


@pytest.fixture(params=START_METHODS)
def ctx(request: pytest.FixtureRequest) -> Any:
    """The serentak context of each start method in turn."""
    return serentak.get_context(request.param)


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[Path]:
    """A directory for ``_pool_targets.pool_gate``; every gate is opened at the end, so no
    task stays blocked (a task of a shared cluster runs on after its pool is gone)."""
    directory = tmp_path / "gates"
    directory.mkdir()
    yield directory
    _pool_targets.pool_gate_open_all(str(directory))


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """The name of each start method in turn (for tests that run scripts)."""
    method: str = request.param
    return method


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(exclude: set[int], prune: Collection[int] = ()) -> list[int]:
    """Pids below this process, not descending into ``exclude`` but into their children,
    and leaving out ``prune`` together with everything below it."""
    children = _children_of()
    found: list[int] = []
    stack = [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            if child in prune:
                continue
            if child not in exclude:
                found.append(child)
            stack.append(child)
    return found


def _tree(roots: Collection[int], children: dict[int, list[int]]) -> set[int]:
    pids = set(roots)
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in pids:
                pids.add(child)
                stack.append(child)
    return pids


def _shm_mapped_by_pids(pids: Collection[int]) -> set[str]:
    names: set[str] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue  # it exited while we looked
        for line in maps.splitlines():
            _, found, name = line.partition("/dev/shm/")
            if found:
                # A file in a folder of /dev/shm counts for the folder (joblib's).
                names.add(name.removesuffix(" (deleted)").split("/", 1)[0])
    return names


def shm_mapped_by(roots: Collection[int]) -> set[str]:
    """The /dev/shm entries that ``roots`` or a process below them has mapped."""
    return _shm_mapped_by_pids(_tree(roots, _children_of()))


def shm_mapped_elsewhere() -> set[str]:
    """The /dev/shm entries mapped by processes outside this test process's tree: on a
    machine shared with other test runs, theirs are not this test's leaks."""
    children = _children_of()
    ours = _tree([os.getpid()], children)
    others = {pid for pids in children.values() for pid in pids} - ours
    return _shm_mapped_by_pids(others)


def open_fds() -> dict[int, str]:
    fds: dict[int, str] = {}
    for entry in Path("/proc/self/fd").iterdir():
        try:
            fds[int(entry.name)] = os.readlink(entry)
        except OSError:
            continue  # the directory's own fd, closed by now
    return fds


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def _describe(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} state={state} {command.strip()}"


@pytest.fixture(scope="session", autouse=True)
def _fork_server() -> None:
    """Start the fork server before any test, so that it is part of every baseline."""
    _launch.ensure_fork_server()


@pytest.fixture(scope="session")
def shared_process_trees() -> set[int]:
    """Where a module- or session-scoped fixture registers the root pid of a process tree
    it keeps across tests (and unregisters it once it has stopped the tree): the leak
    check ignores the registered trees, and only them."""
    return _SHARED_PROCESS_TREES


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    server = _launch.fork_server_pid()
    exclude = {server} if server is not None else set()
    fds_before = open_fds()
    shm_before = shm_entries()
    yield
    deadline = time.monotonic() + LEAK_GRACE_SECONDS
    while True:
        gc.collect()
        serentak.active_children()  # reaps children that have ended
        _buffers.trim()  # the message segments a sender keeps for reuse are a cache
        server = _launch.fork_server_pid()
        exclude = {server} if server is not None else set()
        processes = descendants(exclude, prune=_SHARED_PROCESS_TREES)
        fds_now = open_fds()
        extra_fds = {
            fd: target
            for fd, target in fds_now.items()
            if fds_before.get(fd) != target and not target.startswith(KEPT_FD_TARGETS)
        }
        extra_shm = shm_entries() - shm_before
        if extra_shm and _SHARED_PROCESS_TREES:
            extra_shm -= shm_mapped_by(_SHARED_PROCESS_TREES)
        if extra_shm:
            extra_shm -= shm_mapped_elsewhere()
        if not (processes or extra_fds or extra_shm) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for pid in processes:
        try:
            os.kill(pid, signal.SIGKILL)  # do not let one leak cascade into the next tests
        except ProcessLookupError:
            pass
    problems = []
    if processes:
        problems.append("processes left behind: " + "; ".join(_describe(p) for p in processes))
    if extra_fds:
        problems.append(f"file descriptors left open: {extra_fds}")
    if extra_shm:
        problems.append(f"/dev/shm entries left behind: {sorted(extra_shm)}")
    if problems:
        pytest.fail("\n".join(problems))
