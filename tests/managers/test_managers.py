"""Managers and proxies (serentak.managers): every test under every start method.

A manager's server is a child started with the context's Process; the
proxies go to children as Process arguments, through queues and pipes, and
to pool workers as task arguments. The leak check after each test makes sure
that the server, its connections and its socket are gone once shut down.
"""

from __future__ import annotations

import copy
import os
import pickle
import queue as pyqueue
import signal
import socket
import threading
import time
from typing import Any

import pytest

import _managers_targets
import serentak
from _signals import interrupted_by_a_signal_to_another_thread
from serentak._managers import server as _server
from serentak._os import posix as _posix
from serentak._process import tracker as _tracker
from serentak.managers import (
    AutoProxy,
    BaseManager,
    BaseProxy,
    DictProxy,
    ListProxy,
    MakeProxyType,
    Namespace,
    RemoteError,
    SharedMemoryManager,
    SyncManager,
    Token,
)
from serentak.shared_memory import SharedMemory

PATIENCE = 20.0


class CounterManager(BaseManager):
    """A custom manager, as the stdlib documentation shows them."""


CounterProxy = MakeProxyType("CounterProxy", ("increment", "children", "fail", "unpicklable"))
CounterManager.register("Counter", _managers_targets.MgrCounter, CounterProxy)
CounterManager.register(
    "AutoCounter",
    _managers_targets.MgrCounter,
    exposed=("increment", "children"),
    method_to_typeid={"children": "list"},
)
CounterManager.register("list", list, ListProxy, create_method=False)
CounterManager.register("Blocker", _managers_targets.MgrBlocker)


def join_all(processes: list[Any]) -> None:
    for process in processes:
        process.join(PATIENCE)
        assert process.exitcode == 0, process


# ---- proxies across processes -----------------------------------------------------------


def test_proxies_as_process_arguments(ctx: Any) -> None:
    with ctx.Manager() as manager:
        lst, dct, ns = manager.list(), manager.dict(), manager.Namespace(seen=False)
        value, arr, queue = manager.Value("i", 0), manager.Array("i", [0, 1]), manager.Queue()
        children = [
            ctx.Process(
                target=_managers_targets.mgr_use_proxies, args=(lst, dct, ns, value, arr, queue)
            )
            for _ in range(2)
        ]
        for child in children:
            child.start()
        assert [queue.get(timeout=PATIENCE) for _ in children] == ["done", "done"]
        join_all(children)
        assert sorted(lst) == sorted(child.name for child in children)
        assert sorted(dct.values()) == [1, 2] or sorted(dct.values()) == [2, 2]
        assert ns.seen is True
        assert value.value == 7
        assert list(arr) == [42, 1]


def test_proxies_through_a_queue_and_a_pipe(ctx: Any) -> None:
    with ctx.Manager() as manager:
        queue, replies = ctx.Queue(), ctx.Queue()
        child = ctx.Process(target=_managers_targets.mgr_take_from_queue, args=(queue, replies))
        child.start()
        lst = manager.list(["from the parent"])
        queue.put(lst)  # the child is running: this proxy travels as a pickle
        assert replies.get(timeout=PATIENCE) == 2
        join_all([child])
        assert lst[:] == ["from the parent", "from the child"]

        ours, theirs = ctx.Pipe()
        child = ctx.Process(target=_managers_targets.mgr_take_from_pipe, args=(theirs,))
        child.start()
        theirs.close()
        dct = manager.dict(parent=True)
        ours.send(dct)
        assert ours.recv() == ["child", "parent"]
        ours.close()
        join_all([child])
        queue.close()
        replies.close()


def test_many_threads_in_many_processes(ctx: Any) -> None:
    with ctx.Manager() as manager:
        lock, counter = manager.Lock(), manager.Value("i", 0)
        children = [
            ctx.Process(target=_managers_targets.mgr_count_up, args=(lock, counter, 25, 3))
            for _ in range(2)
        ]
        for child in children:
            child.start()
        _managers_targets.mgr_count_up(lock, counter, 25, 3)
        join_all(children)
        assert counter.value == 3 * 25 * 3


def test_events_barriers_and_conditions(ctx: Any) -> None:
    with ctx.Manager() as manager:
        event, barrier = manager.Event(), manager.Barrier(2)
        condition, state = manager.Condition(), manager.dict(ready=False)
        child = ctx.Process(
            target=_managers_targets.mgr_sync_child, args=(event, barrier, condition, state)
        )
        child.start()
        assert barrier.parties == 2
        assert barrier.wait(PATIENCE) in (0, 1)
        assert not barrier.broken
        event.set()
        with condition:
            assert condition.wait_for(lambda: state["ready"], PATIENCE)
        join_all([child])
        assert event.is_set()
        semaphore = manager.BoundedSemaphore(1)
        assert semaphore.acquire(timeout=1)
        assert not semaphore.acquire(blocking=False)
        semaphore.release()
        with pytest.raises(ValueError):
            semaphore.release()


def test_joinable_queue_rlock_and_semaphore(ctx: Any) -> None:
    with ctx.Manager() as manager:
        tasks, results = manager.JoinableQueue(), manager.Queue()
        rlock, semaphore = manager.RLock(), manager.Semaphore(0)
        child = ctx.Process(
            target=_managers_targets.mgr_queue_worker, args=(tasks, results, rlock, semaphore)
        )
        child.start()
        for item in (1, 2, 3, None):
            tasks.put(item)
        tasks.join()  # returns once the child marked every item done
        assert sorted(results.get(timeout=PATIENCE) for _ in range(3)) == [2, 4, 6]
        assert semaphore.acquire(timeout=PATIENCE)
        join_all([child])
        with rlock:
            assert rlock.acquire(blocking=False)  # ours now, and reentrant
            rlock.release()
        assert not semaphore.acquire(blocking=False)


def test_pool_proxy(ctx: Any) -> None:
    with ctx.Manager() as manager, manager.Pool(2) as pool:
        assert pool.map(_managers_targets.mgr_square, range(6)) == [0, 1, 4, 9, 16, 25]
        assert pool.apply_async(_managers_targets.mgr_square, (7,)).get(PATIENCE) == 49
        assert sorted(pool.imap_unordered(_managers_targets.mgr_square, range(4))) == [0, 1, 4, 9]
        assert list(pool.imap(_managers_targets.mgr_square, range(3))) == [0, 1, 4]


def test_proxies_as_pool_task_arguments(ctx: Any) -> None:
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        lst = manager.list()
        results = [pool.apply_async(_managers_targets.mgr_pool_task, (lst, n)) for n in range(4)]
        assert [result.get(PATIENCE) for result in results] == [0, 2, 4, 6]
        assert sorted(lst) == [0, 1, 2, 3]


# ---- Lock, Queue and Value handles to running processes -----------------------------------
#
# As in the stdlib: a pool worker gets a Lock, Queue or Value by inheritance
# (the initializer's arguments) or as a manager proxy; as a task argument, or
# through a queue or pipe to a running process, the handle is refused with the
# stdlib's RuntimeError.

INHERITANCE_ONLY = "^{} objects should only be shared between processes through inheritance$"


def test_handles_reach_pool_workers_by_inheritance_and_as_proxies(ctx: Any) -> None:
    lock, queue, value = ctx.Lock(), ctx.Queue(), ctx.Value("i", 0)
    with ctx.Pool(2, _managers_targets.mgr_handles_init, (lock, queue, value)) as pool:
        assert pool.map(_managers_targets.mgr_handles_use, range(1, 5)) == [1, 2, 3, 4]
        assert sorted(queue.get(timeout=PATIENCE) for _ in range(4)) == [1, 2, 3, 4]
    assert value.value == 10
    queue.close()
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        proxies = (manager.Lock(), manager.Queue(), manager.Value("i", 0))
        results = [
            pool.apply_async(_managers_targets.mgr_handles_use, (n, *proxies)) for n in range(1, 5)
        ]
        assert [result.get(PATIENCE) for result in results] == [1, 2, 3, 4]
        assert sorted(proxies[1].get(timeout=PATIENCE) for _ in range(4)) == [1, 2, 3, 4]
        assert proxies[2].value == 10


def test_handles_as_task_arguments_get_the_stdlibs_error(ctx: Any) -> None:
    handles = {"Lock": ctx.Lock(), "Queue": ctx.Queue(), "Synchronized": ctx.Value("i", 0)}
    queue, (ours, theirs) = ctx.Queue(), ctx.Pipe()
    with ctx.Pool(1) as pool:
        for name, handle in handles.items():
            message = INHERITANCE_ONLY.format(name)
            with pytest.raises(RuntimeError, match=message):
                pool.apply_async(_managers_targets.mgr_handle_name, (handle,)).get(PATIENCE)
            with pytest.raises(RuntimeError, match=message):
                pool.map(_managers_targets.mgr_handle_name, [handle])
            # The stdlib's feeder thread prints this error and drops the item;
            # serentak raises it from put() itself.
            with pytest.raises(RuntimeError, match=message):
                queue.put(handle)
            with pytest.raises(RuntimeError, match=message):
                ours.send(handle)
        assert pool.apply(_managers_targets.mgr_square, (3,)) == 9  # the pool is unharmed
    assert queue.empty()
    for closing in (handles["Queue"], queue):
        closing.close()
    ours.close()
    theirs.close()


# ---- proxy semantics ------------------------------------------------------------------------


def test_values_errors_and_fallbacks(ctx: Any) -> None:
    with ctx.Manager() as manager:
        lst = manager.list([3, 1, 2])
        lst.sort()
        lst += [4]
        lst *= 1
        assert lst._getvalue() == [1, 2, 3, 4]
        assert lst._callmethod("index", (3,)) == 2
        assert str(lst) == "[1, 2, 3, 4]"
        assert repr(lst).startswith("<ListProxy object, typeid 'list' at 0x")
        assert copy.deepcopy(lst) == [1, 2, 3, 4]
        dct = manager.dict({"a": 1})
        with pytest.raises(KeyError) as raised:
            dct["missing"]
        assert isinstance(raised.value.__cause__, serentak._exceptions.RemoteTraceback)
        assert "KeyError" in str(raised.value.__cause__)
        with pytest.raises(ValueError):
            lst.index(99)
        with pytest.raises(AttributeError, match="not in exposed"):
            lst._callmethod("__sizeof__")
        copied = dct.copy()
        assert copied == {"a": 1}
        assert type(copied) is dict
        assert sorted(iter(dct)) == ["a"]
        assert dct.get("b", 5) == 5
        ns = manager.Namespace(a=1)
        ns.b = 2
        del ns.a
        assert repr(ns._getvalue()) == "Namespace(b=2)"
        with pytest.raises(AttributeError):
            ns.a


def test_nested_proxies_live_as_long_as_their_container(ctx: Any) -> None:
    with ctx.Manager() as manager:
        baseline = manager._number_of_objects()
        outer = manager.dict()
        outer["inner"] = manager.list()  # our proxy of the list is dropped at once
        outer["inner"].append("kept")
        inner = outer["inner"]
        assert isinstance(inner, ListProxy)
        assert inner[0] == "kept"
        assert manager._number_of_objects() == baseline + 2
        del inner
        del outer["inner"]
        assert manager._number_of_objects() == baseline + 1
        del outer
        assert manager._number_of_objects() == baseline


def test_custom_manager(ctx: Any) -> None:
    with CounterManager(ctx=ctx) as manager:
        counter = manager.Counter(10)  # type: ignore[attr-defined]
        assert counter.increment(5) == 15
        with pytest.raises(ValueError, match="boom"):
            counter.fail("boom")
        with pytest.raises(RemoteError, match="could not pickle"):
            counter.unpicklable()
        auto = manager.AutoCounter()  # type: ignore[attr-defined]
        assert type(auto).__name__ == "AutoProxy[AutoCounter]"
        assert auto.increment() == 1
        children = auto.children(3)  # method_to_typeid: a list proxy
        assert isinstance(children, ListProxy)
        assert children[:] == [0, 1, 2]
        with pytest.raises(AttributeError):
            auto.fail
        # An AutoProxy pickles and rebuilds with its methods.
        again = pickle.loads(pickle.dumps(auto))
        assert again.increment() == 2


def test_connect_and_authentication(ctx: Any, tmp_path: Any) -> None:
    manager = SyncManager(authkey=b"secret", ctx=ctx)
    manager.start()
    try:
        shared = manager.dict(answer=42)
        address = manager.address
        assert address is not None
        other = SyncManager(address=address, authkey=b"secret")
        other.connect()
        assert other.dict(x=1)["x"] == 1
        other.shutdown()  # a connected manager does not stop the server
        intruder = SyncManager(address=address, authkey=b"wrong")
        with pytest.raises(serentak.AuthenticationError):
            intruder.connect()
        # A client that skips the challenge gets nothing unpickled.
        marker = tmp_path / "unpickled"
        from serentak._process.listener import Client as RawClient

        with RawClient(address) as raw:
            raw.recv_bytes()  # the challenge
            raw.send(_managers_targets.MgrMarker(str(marker)))
            assert raw.recv_bytes() == b"#FAILURE#"
            with pytest.raises(EOFError):
                raw.recv_bytes()
        assert not marker.exists()
        assert shared["answer"] == 42  # the server is unaffected
    finally:
        manager.shutdown()


def test_manager_killed_in_the_middle_of_a_call(ctx: Any) -> None:
    started = ctx.Event()
    manager = CounterManager(ctx=ctx)
    manager.start(_managers_targets.mgr_remember_event, (started,))
    blocker = manager.Blocker()  # type: ignore[attr-defined]
    process = manager._process
    assert process is not None

    def kill_when_blocked() -> None:
        if started.wait(PATIENCE):
            process.kill()

    killer = threading.Thread(target=kill_when_blocked)
    killer.start()
    begin = time.monotonic()
    with pytest.raises(EOFError, match="lost the connection"):
        blocker.block()
    assert time.monotonic() - begin < 10
    killer.join()
    with pytest.raises(OSError):
        blocker.block()  # nobody listens any more
    manager.shutdown()


def test_manager_dies_with_its_owner(ctx: Any) -> None:
    ours, theirs = ctx.Pipe()
    owner = ctx.Process(
        target=_managers_targets.mgr_start_and_report, args=(ctx.get_start_method(), theirs)
    )
    owner.start()
    theirs.close()
    assert ours.poll(PATIENCE)
    server_pid = ours.recv()
    ours.close()
    pidfd = _posix.pidfd_open(server_pid)
    assert pidfd is not None
    try:
        owner.kill()
        owner.join()
        assert _posix.fd_readable(pidfd, PATIENCE), "the manager outlived its owner"
    finally:
        os.close(pidfd)


def test_lifecycle_errors(ctx: Any) -> None:
    manager = SyncManager(ctx=ctx)
    with pytest.raises(TypeError):
        manager.start(initializer=42)  # type: ignore[arg-type]
    manager.start()
    with pytest.raises(serentak.ProcessError):
        manager.start()
    with pytest.raises(serentak.ProcessError):
        manager.get_server()
    lst = manager.list()
    manager.shutdown()
    manager.shutdown()  # twice is fine
    with pytest.raises(serentak.ProcessError):
        manager.start()
    with pytest.raises(OSError):
        lst.append(1)
    failing = SyncManager(ctx=ctx)
    with pytest.raises(ArithmeticError, match="no good"):
        failing.start(_managers_targets.mgr_initializer_fails, ("no good",))


@pytest.fixture(scope="module")
def tracker_running() -> None:
    """This process's link to the shared-memory tracker, kept for good once made."""
    _tracker.ensure_running()


@pytest.mark.usefixtures("tracker_running")
def test_shared_memory_manager(ctx: Any) -> None:
    with SharedMemoryManager(ctx=ctx) as manager:
        block = manager.SharedMemory(64)
        block.buf[:3] = b"abc"
        shareable = manager.ShareableList([1, "two", 3.0])
        assert list(shareable) == [1, "two", 3.0]
        names = [block.name, shareable.shm.name]
        block.close()
        shareable.shm.close()
    for name in names:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name)


@pytest.mark.usefixtures("tracker_running")
def test_shared_memory_manager_makes_nothing_unless_running(ctx: Any) -> None:
    """ValueError, as the stdlib's, before start() and after shutdown(); no segment made."""
    before = set(os.listdir("/dev/shm"))
    manager = SharedMemoryManager(ctx=ctx)
    for make in (lambda: manager.SharedMemory(9), lambda: manager.ShareableList([1])):
        with pytest.raises(ValueError, match=r"not running \(initial\).*start\(\)"):
            make()
    with manager:
        block = manager.SharedMemory(9)
        block.close()
    with pytest.raises(ValueError, match=r"not running \(shutdown\)"):
        manager.SharedMemory(9)
    assert set(os.listdir("/dev/shm")) == before


def _serves_an_honest_client(address: Any) -> None:
    """A client with the key connects, uses a list, and shuts the server down."""
    client = SyncManager(address=address, authkey=b"k")
    client.connect()
    values = client.list([1])
    values.append(2)
    assert values[:] == [1, 2]
    del values
    client.shutdown()


def test_get_server_in_this_process(ctx: Any) -> None:
    server = SyncManager(authkey=b"k", ctx=ctx).get_server()
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    try:
        _serves_an_honest_client(server.address)
    finally:
        server.stop()
        serving.join()


def _connect_silently(address: str) -> socket.socket:
    """A peer that connects to a manager and never answers its challenge."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)  # a server that never cuts it off fails the test, not hangs it
    sock.connect(address)
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_peers_that_never_authenticate_are_cut_off_and_honest_ones_served(
    ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_server, "HANDSHAKE_SECONDS", 0.5)
    monkeypatch.setattr(_server, "MAX_HANDSHAKES", 2)
    server = SyncManager(authkey=b"k", ctx=ctx).get_server()
    serving = threading.Thread(target=server.serve_forever)
    serving.start()
    try:
        assert isinstance(server.address, str)
        started = time.monotonic()
        silent = [_connect_silently(server.address) for _ in range(2)]
        one_too_many = _connect_silently(server.address)
        # The table of handshakes is full: refused at accept, before any challenge.
        assert _read_to_end(one_too_many) == b""
        for sock in silent:
            # Challenged, then shut down at the deadline.
            assert b"#CHALLENGE#" in _read_to_end(sock)
        assert time.monotonic() - started >= 0.5
        for sock in [*silent, one_too_many]:
            sock.close()
        _serves_an_honest_client(server.address)
    finally:
        server.stop()
        serving.join()


# ---- in one process ---------------------------------------------------------------------------


def test_proxy_types_and_tokens() -> None:
    token = Token("list", "/some/address", "1f")
    assert repr(token) == "Token(typeid='list', address='/some/address', id='1f')"
    assert pickle.loads(pickle.dumps(token)) == token
    assert issubclass(ListProxy, BaseProxy)
    assert issubclass(DictProxy, BaseProxy)
    assert MakeProxyType("CounterProxy", CounterProxy._exposed_ or ()) is CounterProxy
    assert callable(AutoProxy)
    assert repr(Namespace(b=2, a=1, _hidden=3)) == "Namespace(a=1, b=2)"
    assert str(RemoteError("text\n")).startswith("\n---")
    assert ListProxy.__class_getitem__(int) is not None
    assert DictProxy.__class_getitem__((str, int)) is not None


def test_a_dropped_manager_stops_its_server() -> None:
    manager = SyncManager()
    manager.start()
    process = manager._process
    assert process is not None
    pid = process.pid
    assert pid is not None
    pidfd = _posix.pidfd_open(pid)
    assert pidfd is not None
    try:
        del manager, process
        assert _posix.fd_readable(pidfd, PATIENCE)
    finally:
        os.close(pidfd)


def test_interrupted_call_leaves_the_next_call_in_step() -> None:
    # Ctrl-C while a call waits in the manager: its reply comes later, so the
    # connection is dropped and the next call cannot take that reply for its own.
    with SyncManager() as manager:
        event, values = manager.Event(), manager.list(["mine"])
        previous = signal.signal(signal.SIGALRM, _raise_interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(KeyboardInterrupt):
                event.wait(1.0)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert values[0] == "mine"


def test_a_signal_taken_by_another_thread_interrupts_a_call(ctx: Any) -> None:
    """The kernel may hand a process's SIGINT to any thread. One taken by another thread
    must still interrupt the main thread waiting for the manager's reply; the next call
    is in step."""
    with ctx.Manager() as manager:
        event, values = manager.Event(), manager.list(["mine"])
        with interrupted_by_a_signal_to_another_thread(event.set):
            event.wait()
        assert event.is_set()
        assert values[0] == "mine"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# ---- the xmlrpclib serializer -----------------------------------------------------------


class XmlQueueManager(BaseManager):
    """The stdlib's remote-manager example: a queue served over XML-RPC."""


XmlQueueManager.register("get_queue", callable=_managers_targets.mgr_xml_queue)

XML_VALUES = (
    "hello world",
    None,
    True,
    2.25,
    "hall\xe5 v\xe4rlden",
    "\u043f\u0440\u0438\u0432\u0456\u0442",
    b"hall\xe5 v\xe4rlden",
)


def test_xmlrpclib_serializer(ctx: Any) -> None:
    """What XML-RPC carries goes both ways (a tuple comes back as a list); what it cannot
    carry fails to send and leaves the connection in step; exceptions come back as
    themselves; a method's proxy result works; the address can be used again at once."""
    authkey = os.urandom(16)
    manager = XmlQueueManager(
        address=("127.0.0.1", 0), authkey=authkey, serializer="xmlrpclib", ctx=ctx
    )
    manager.start()
    try:
        address = manager.address
        child = ctx.Process(
            target=_managers_targets.mgr_xml_put, args=(address, authkey, XML_VALUES)
        )
        child.start()
        queue = manager.get_queue()  # type: ignore[attr-defined]
        assert queue.get(timeout=PATIENCE) == list(XML_VALUES)
        join_all([child])
        with pytest.raises(TypeError, match="cannot marshal"):
            queue.put(time.sleep)
        with pytest.raises(OverflowError):
            queue.put(2**40)
        with pytest.raises(pyqueue.Empty):  # raised in the manager, rebuilt here
            queue.get(timeout=0.01)
        assert queue.qsize() == 0  # still in step
        del queue
    finally:
        manager.shutdown()
    again = XmlQueueManager(address=address, authkey=authkey, serializer="xmlrpclib", ctx=ctx)
    again.start()
    again.shutdown()
    with CounterManager(serializer="xmlrpclib", ctx=ctx) as counters:
        auto = counters.AutoCounter()  # type: ignore[attr-defined]
        assert auto.increment(2) == 2
        children = auto.children(3)  # method_to_typeid: a proxy of a list in the manager
        assert isinstance(children, ListProxy)
        assert len(children) == 3
        assert children[2] == 2  # (a slice is not something XML-RPC carries)


def test_unknown_serializer() -> None:
    with pytest.raises(ValueError, match=r"'json'.*'pickle' and 'xmlrpclib'"):
        SyncManager(serializer="json")
