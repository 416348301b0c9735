"""Worker functions for the tests of managers and Listener/Client.

A spawned or forkserver child imports them from here by name.

Append; each test module keeps its functions in a section of its own.
"""

from __future__ import annotations

from typing import Any

# ---- test_managers, test_listener ---------------------------------------------------------


def mgr_use_proxies(lst: Any, dct: Any, ns: Any, value: Any, arr: Any, queue: Any) -> None:
    """Change each proxied object, then report on ``queue``."""
    import serentak

    lst.append(serentak.current_process().name)
    dct[serentak.current_process().name] = len(lst)
    ns.seen = True
    value.value = 7
    arr[0] = 42
    queue.put("done")


def mgr_take_from_queue(queue: Any, replies: Any) -> None:
    """Get a proxy from ``queue`` (sent while we run), use it, answer on ``replies``."""
    proxy = queue.get(timeout=30)
    proxy.append("from the child")
    replies.put(len(proxy))


def mgr_take_from_pipe(conn: Any) -> None:
    """Receive a proxy on ``conn``, use it, answer on it."""
    proxy = conn.recv()
    proxy["child"] = True
    conn.send(sorted(proxy.keys()))
    conn.close()


def mgr_count_up(lock: Any, counter: Any, times: int, threads: int) -> None:
    """From ``threads`` threads, add 1 to ``counter`` (a ValueProxy) ``times`` times each, under
    ``lock`` (an AcquirerProxy)."""
    import threading

    def work() -> None:
        for _ in range(times):
            with lock:
                counter.value = counter.value + 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def mgr_sync_child(event: Any, barrier: Any, condition: Any, state: Any) -> None:
    """Meet the parent at ``barrier``, wait for ``event``, then notify through ``condition``."""
    barrier.wait(30)
    if not event.wait(30):
        raise RuntimeError("event never set")
    with condition:
        state["ready"] = True
        condition.notify_all()


def mgr_inherited_use(dct: Any, done: Any) -> None:
    """Write to an inherited proxy after the parent dropped its own."""
    dct["child"] = "alive"
    done.set()


def mgr_pool_task(proxy: Any, item: int) -> int:
    """A pool task given a manager proxy: append ``item``, return its double."""
    proxy.append(item)
    return 2 * item


def mgr_start_and_report(ctx_name: str, conn: Any) -> None:
    """Start a manager, send its server's pid, and wait to be killed."""
    import signal

    import serentak

    manager = serentak.get_context(ctx_name).Manager()
    process = manager._process
    conn.send(None if process is None else process.pid)
    conn.close()
    while True:
        signal.pause()


def mgr_square(x: int) -> int:
    return x * x


class MgrCounter:
    """A registered type for custom managers."""

    def __init__(self, start: int = 0) -> None:
        self.count = start

    def increment(self, by: int = 1) -> int:
        self.count += by
        return self.count

    def children(self, n: int) -> list[int]:
        return list(range(n))

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def unpicklable(self) -> Any:
        import threading

        return threading.Lock()

    def _hidden(self) -> str:
        return "hidden"


_blocking_started: Any = None


def mgr_remember_event(event: Any) -> None:
    """Manager initializer: keep ``event`` for MgrBlocker."""
    global _blocking_started
    _blocking_started = event


class MgrBlocker:
    """A referent whose ``block()`` sets the initializer's event, then never returns."""

    def block(self) -> None:
        import signal

        _blocking_started.set()
        while True:
            signal.pause()


def mgr_initializer_fails(message: str) -> None:
    raise ArithmeticError(message)


class MgrMarker:
    """Unpickling it writes a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return _mgr_touch, (self.path,)


def _mgr_touch(path: str) -> None:
    with open(path, "w", encoding="utf-8") as marker:
        marker.write("unpickled")


def mgr_queue_worker(tasks: Any, results: Any, rlock: Any, semaphore: Any) -> None:
    """Take from ``tasks`` (a JoinableQueue proxy) until None, marking each done; put doubles
    on ``results``; take the RLock twice around each put; release ``semaphore`` at the end."""
    while True:
        item = tasks.get(timeout=30)
        if item is None:
            tasks.task_done()
            break
        with rlock, rlock:  # reentrant: the same thread takes it twice
            results.put(2 * item)
        tasks.task_done()
    semaphore.release()


_mgr_handles: Any = None


def mgr_handles_init(lock: Any, queue: Any, value: Any) -> None:
    """Pool initializer: keep a Lock, a Queue and a Value, inherited at the worker's start."""
    global _mgr_handles  # the worker's state, set by its initializer
    _mgr_handles = (lock, queue, value)


def mgr_handles_use(n: int, *handles: Any) -> int:
    """Pool task: add ``n`` to a Value under a Lock and put it on a Queue: those ``handles``
    (proxies), else the ones the initializer kept."""
    lock, queue, value = handles or _mgr_handles
    with lock:
        value.value += n
    queue.put(n)
    return n


def mgr_handle_name(handle: Any) -> str:
    """Pool task given a handle as its argument (refused unless it is a proxy)."""
    return type(handle).__name__


def lst_client(address: Any, authkey: bytes | None, message: Any) -> None:
    """Connect to a Listener, send ``message``, send back what comes, close."""
    from serentak.connection import Client

    with Client(address, authkey=authkey) as conn:
        conn.send(message)
        conn.send(("echo", conn.recv()))


def lst_client_when_told(go: Any, address: Any, authkey: bytes | None, message: Any) -> None:
    """Wait for ``go`` (an Event), then do as lst_client."""
    if not go.wait(30):
        raise RuntimeError("never told to connect")
    lst_client(address, authkey, message)


def lst_server(conn: Any, family: str, authkey: bytes | None) -> None:
    """Listen; tell the parent the address on ``conn``; echo one message of one client."""
    from serentak.connection import Listener

    with Listener(family=family, authkey=authkey) as listener:
        conn.send(listener.address)
        with listener.accept() as client:
            client.send(("served", client.recv()))
    conn.close()


# ---- test_managers: the xmlrpclib serializer ------------------------------------------


_xml_queue: Any = None


def mgr_xml_queue() -> Any:
    """The manager's one queue (every ``get_queue()`` proxies the same one)."""
    global _xml_queue
    if _xml_queue is None:
        import queue

        _xml_queue = queue.Queue()
    return _xml_queue


def mgr_xml_put(address: Any, authkey: bytes, values: tuple[Any, ...]) -> None:
    """Connect to the manager at ``address`` with a client-only manager class, as the
    stdlib documents remote managers, and put ``values`` on its queue over XML-RPC."""
    from serentak.managers import BaseManager

    class QueueClient(BaseManager):
        pass

    QueueClient.register("get_queue")
    manager = QueueClient(address=address, authkey=authkey, serializer="xmlrpclib")
    manager.connect()
    manager.get_queue().put(values)  # type: ignore[attr-defined]
