"""Worker functions for the tests: a spawned or forkserver child imports them from here.

Append; each test module keeps its functions in a section of its own.
"""

from __future__ import annotations

from typing import Any

# ---- test_sync ------------------------------------------------------------------


def sync_increment(lock: Any, block: Any, times: int) -> None:
    """Add 1 to the C int at the start of ``block``, ``times`` times, under ``lock``."""
    import ctypes

    counter = ctypes.c_int.from_buffer(block.buffer)
    for _ in range(times):
        with lock:
            counter.value += 1


def sync_hold_until_killed(lock: Any, holding: Any) -> None:
    """Take ``lock``, say so, and wait to be killed."""
    import signal

    lock.acquire()
    holding.set()
    while True:
        signal.pause()


def sync_hold_until_told(lock: Any, holding: Any, release: Any) -> None:
    """Take ``lock``, say so, and release it when ``release`` is set."""
    with lock:
        holding.set()
        if not release.wait(30):
            raise RuntimeError("never told to release")


def sync_zombie_owner(lock: Any, block: Any, holding: Any, reap: Any) -> None:
    """Fork a grandchild that takes ``lock`` and is then killed; reap it only when told.

    The grandchild stays a zombie until ``reap`` is set, since only its parent
    (this process) may reap it. Its pid goes in the C int at ``block``.
    """
    import ctypes
    import os
    import signal

    from serentak._os import posix as _posix

    pid = _posix.fork()
    if pid == 0:
        try:
            lock.acquire()
            holding.set()
            while True:
                signal.pause()
        finally:
            os._exit(1)
    ctypes.c_int.from_buffer(block.buffer).value = pid
    if not holding.wait(30):
        raise RuntimeError("the grandchild never took the lock")
    os.kill(pid, signal.SIGKILL)
    try:
        if not reap.wait(30):
            raise RuntimeError("never told to reap")
    finally:
        os.waitpid(pid, 0)


def sync_semaphore_worker(sem: Any, lock: Any, block: Any, rounds: int) -> None:
    """Count how many processes are inside ``sem`` at once; keep the highest count seen.

    ``block`` holds two C ints: inside now, most ever inside.
    """
    import ctypes

    inside = (ctypes.c_int * 2).from_buffer(block.buffer)
    for _ in range(rounds):
        with sem:
            with lock:
                inside[0] += 1
                inside[1] = max(inside[1], inside[0])
            for _ in range(1000):  # stay inside a little while others try to enter
                pass
            with lock:
                inside[0] -= 1


def sync_release_times(sem: Any, times: int) -> None:
    for _ in range(times):
        sem.release()


def sync_condition_waiter(cond: Any, ready: Any, woken: Any) -> None:
    """Wait on ``cond`` once; exit 0 only if woken by a notify (not a timeout)."""
    import sys

    with cond:
        ready.release()  # the parent takes cond's lock only once we sleep in wait()
        notified = cond.wait(30)
    woken.release()
    sys.exit(0 if notified else 3)


def sync_event_relay(first: Any, second: Any) -> None:
    """Set ``second`` once ``first`` is set."""
    if not first.wait(30):
        raise RuntimeError("first was never set")
    second.set()


def sync_barrier_party(barrier: Any) -> None:
    """Wait at ``barrier``; the exit code is 10 + this party's index."""
    import sys

    sys.exit(10 + barrier.wait(30))


def sync_bump(block: Any) -> None:
    """A barrier action: add 1 to the C int at ``block``."""
    import ctypes

    ctypes.c_int.from_buffer(block.buffer).value += 1


# ---- test_process ---------------------------------------------------------------


def proc_noop() -> None:
    """Do nothing: the child exits 0."""


def proc_send_args(conn: Any, *args: Any, **kwargs: Any) -> None:
    """Send back the arguments the child was given."""
    conn.send((args, kwargs))
    conn.close()


def proc_report(conn: Any) -> None:
    """Send what this process knows of itself and of its parent."""
    import os
    import sys

    import serentak

    me = serentak.current_process()
    parent = serentak.parent_process()
    conn.send(
        {
            "name": me.name,
            "pid": me.pid,
            "ident": me.ident,
            "getpid": os.getpid(),
            "daemon": me.daemon,
            "is_alive": me.is_alive(),
            "authkey": bytes(me.authkey),
            "parent": None if parent is None else (parent.name, parent.pid, parent.is_alive()),
            "active_children": len(serentak.active_children()),
            "start_method": serentak.get_start_method(allow_none=True),
            "ppid": os.getppid(),
            "stdin": sys.stdin.read(),
        }
    )
    conn.close()


def proc_wait_then_exit(conn: Any, code: int = 0) -> None:
    """Say "ready", wait for one message, then exit with ``code``."""
    import sys

    conn.send("ready")
    conn.recv()
    sys.exit(code)


def proc_block_forever(conn: Any) -> None:
    """Say "ready", then wait for a signal that ends the process."""
    import signal

    conn.send("ready")
    while True:
        signal.pause()


def proc_leave_a_thread(conn: Any) -> None:
    """Return at once, leaving a non-daemon thread that echoes one message."""
    import threading

    threading.Thread(target=lambda: conn.send(conn.recv())).start()


def proc_digest(conn: Any, data: bytes) -> None:
    """Send the length and SHA-256 of ``data``."""
    import hashlib

    conn.send((len(data), hashlib.sha256(data).hexdigest()))
    conn.close()


def _stderr_to(path: str) -> None:
    """Point this process's file descriptor 2 at ``path``, as a shell's ``2>path`` would."""
    import os
    import sys

    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    # A forked child inherits sys.stderr as the parent had it, which under pytest
    # is pytest's capture, not file descriptor 2: write to the descriptor again.
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115


def proc_raise(stderr_path: str, message: str) -> None:
    """Raise an uncaught ValueError, the child's stderr going to ``stderr_path``."""
    _stderr_to(stderr_path)
    raise ValueError(message)


def proc_exit(stderr_path: str, code: Any) -> None:
    """``sys.exit(code)``, the child's stderr going to ``stderr_path``."""
    import sys

    _stderr_to(stderr_path)
    sys.exit(code)


def proc_os_exit(code: int) -> None:
    import os

    os._exit(code)


def proc_try_to_have_a_child(conn: Any, method: str) -> None:
    """Try to start a child; send the AssertionError's message (or "started"), its daemon flag."""
    import serentak

    child = serentak.get_context(method).Process(target=proc_noop)
    try:
        child.start()
    except AssertionError as exc:
        outcome = str(exc)
    else:
        child.join()
        outcome = "started"
    conn.send({"outcome": outcome, "inherited_daemon": child.daemon})
    conn.close()


def proc_start_grandchild(conn: Any, method: str) -> None:
    """Start a grandchild that reports itself; send its report and what this child knows."""
    import serentak

    ctx = serentak.get_context(method)
    here, there = ctx.Pipe()
    with here, there:
        grandchild = ctx.Process(target=proc_report, args=(there,))
        grandchild.start()
        there.close()
        report = here.recv()
        grandchild.join()
    conn.send(
        {
            "me": serentak.current_process().name,
            "grandchild_name": grandchild.name,
            "grandchild": report,
            "grandchild_exitcode": grandchild.exitcode,
        }
    )
    conn.close()


def proc_use_unpicklable(conn: Any, lock: Any, numbers: Any) -> None:
    """Use a threading lock and a generator (possible only if nothing was pickled)."""
    with lock:
        conn.send(next(numbers))
    conn.close()


# ---- test_connection ------------------------------------------------------------


class ConnPoint:
    """A user-defined class that children import from here."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConnPoint) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


def conn_hello(conn: Any) -> None:
    """The seed's example 7.2."""
    conn.send("Hello from child process")
    conn.close()


def conn_echo(conn: Any, count: int) -> None:
    """Send back ``count`` objects, each as received."""
    for _ in range(count):
        conn.send(conn.recv())
    conn.close()


def conn_echo_bytes(conn: Any, count: int) -> None:
    """Send back ``count`` byte messages, each as received."""
    for _ in range(count):
        conn.send_bytes(conn.recv_bytes())
    conn.close()


def conn_echo_bytes_then_object(conn: Any) -> None:
    """Send back one byte message, then one object."""
    conn.send_bytes(conn.recv_bytes())
    conn.send(conn.recv())
    conn.close()


def conn_send_many(conn: Any, count: int) -> None:
    """Send the integers 0 .. count-1 in order, then close."""
    for number in range(count):
        conn.send(number)
    conn.close()


def conn_send_sizes(conn: Any, sizes: list[int]) -> None:
    """Send one byte message of each size, filled with its index."""
    for index, size in enumerate(sizes):
        conn.send_bytes(bytes([index % 256]) * size)
    conn.close()


def conn_send_when_told(go: Any, out: Any, message: Any) -> None:
    """Wait for a message on ``go``, then send ``message`` on ``out``."""
    go.recv()
    out.send(message)
    go.close()
    out.close()


def conn_drain_when_told(go: Any, conn: Any, other_end: Any) -> None:
    """Wait for a message on ``go``, then read ``conn``'s bytes, whole frames or not,
    until the other end closes (``other_end``, which a forked child holds too: closed here)."""
    import os

    other_end.close()
    go.recv()
    while os.read(conn.fileno(), 1 << 20):
        pass
    go.close()
    conn.close()


def conn_relay_received(conn: Any) -> None:
    """Receive a Connection over ``conn`` and send "relayed" through the received one."""
    received = conn.recv()
    received.send("relayed")
    received.close()
    conn.close()


# ---- test_start_methods ---------------------------------------------------------


def start_report(conn: Any) -> None:
    """Send how this child came to be: its OS parent, what it inherited, its default method."""
    import os
    import sys

    import serentak

    parent = serentak.parent_process()
    conn.send(
        {
            "ppid": os.getppid(),
            "parent_pid": None if parent is None else parent.pid,
            "mark": getattr(sys.modules[__name__], "START_MARK", None),
            "default_method": serentak.get_start_method(allow_none=True),
        }
    )
    conn.close()


def start_call_all(conn: Any, calls: list[tuple[Any, Any]]) -> None:
    """Send ``[function(argument) for function, argument in calls]``."""
    conn.send([function(argument) for function, argument in calls])
    conn.close()


# ---- test_sharedctypes ----------------------------------------------------------

import ctypes as _ctypes  # noqa: E402 (this section's own import, kept with it)


class SctPoint(_ctypes.Structure):
    """A Structure for Value(SctPoint, ...) in a child."""

    _fields_ = (("x", _ctypes.c_int), ("y", _ctypes.c_double))


def sct_increment(value: Any) -> None:
    """The seed's 6.1: add 1 to a Value under its lock."""
    with value.get_lock():
        value.value += 1


def sct_bump_first(array: Any) -> None:
    """The seed's 6.2: add 1 to the first item of an Array."""
    array[0] += 1


def sct_add_many(value: Any, times: int) -> None:
    """Add 1 to ``value`` ``times`` times, each under its lock."""
    for _ in range(times):
        with value.get_lock():
            value.value += 1


def sct_swap_values(conn: Any, objects: list[Any], new_values: list[Any]) -> None:
    """Send the ``.value`` of each object as the child sees it, then store ``new_values``."""
    conn.send([obj.value for obj in objects])
    for obj, new in zip(objects, new_values, strict=True):
        obj.value = new
    conn.close()


def sct_try_lock(conn: Any, value: Any) -> None:
    """Send whether the child can take ``value``'s lock without waiting, and with ``with value``."""
    took = value.get_lock().acquire(False)
    if took:
        value.get_lock().release()
    conn.send(took)
    conn.close()


def sct_raw_add(raw: Any, array: Any) -> None:
    """Add 1 to a raw value and to each item of a raw array (no lock: the parent waits)."""
    raw.value += 1
    for index in range(len(array)):
        array[index] += 1


def sct_chars(conn: Any, chars: Any) -> None:
    """Send a char array's value and raw bytes, then set its value to b'bye'."""
    conn.send(chars.value)
    conn.send(chars.raw)
    chars.value = b"bye"
    conn.close()


def sct_move_point(point: Any, points: Any) -> None:
    """Move a synchronized SctPoint and each point of a raw array of them."""
    with point.get_lock():
        point.x += 1
        point.y *= 2
    for item in points:
        item.x += 10


# ---- test_shared_memory -----------------------------------------------------------


def shm_attach_and_write(name: str, data: bytes) -> None:
    """Attach to the segment called ``name`` and write ``data`` at its start."""
    from serentak.shared_memory import SharedMemory

    shm = SharedMemory(name)
    try:
        buf = shm.buf
        if buf is None:
            raise RuntimeError("attached segment has no buffer")
        buf[: len(data)] = data
    finally:
        shm.close()


def shm_write(shm: Any, data: bytes) -> None:
    """Write ``data`` at the start of a SharedMemory the child was given."""
    shm.buf[: len(data)] = data
    shm.close()


def shm_create_and_report(conn: Any, link: Any) -> None:
    """Create a segment holding b'made', send its name, and exit without unlinking it.

    ``link`` (a SharedMemory or None) is there for what it carries: the
    parent's tracker link.
    """
    from serentak.shared_memory import SharedMemory

    shm = SharedMemory(create=True, size=64)
    shm.buf[:4] = b"made"
    conn.send(shm.name)
    shm.close()
    if link is not None:
        link.close()
    conn.close()


def shm_link_report(conn: Any) -> None:
    """Send whether this process is linked to a tracker, before and after receiving a segment."""
    from serentak._process import tracker as _tracker

    conn.send(_tracker.is_linked())
    shm = conn.recv()
    conn.send(_tracker.is_linked())
    conn.send(bytes(shm.buf[:4]))
    shm.close()
    conn.close()


def shm_create_and_wait(conn: Any, link: Any) -> None:
    """Create a tracked and an untracked segment, send what the parent checks, wait for SIGKILL."""
    import signal

    from serentak._process import tracker as _tracker
    from serentak.shared_memory import SharedMemory

    conn.send(_tracker.is_linked())
    tracked = SharedMemory(create=True, size=64)
    untracked = SharedMemory(create=True, size=64, track=False)
    conn.send(tracked.name)
    conn.send(untracked.name)
    while True:
        signal.pause()


def shm_list_update(shareable: Any, name: str) -> None:
    """Change items of a ShareableList received pickled, and of one attached by ``name``."""
    from serentak.shared_memory import ShareableList

    shareable[0] = "changed"
    shareable[1] += 1
    shareable.shm.close()
    attached: Any = ShareableList(name=name)
    attached[2] = None
    attached[-1] = b"x\x00"
    attached.shm.close()


# ---- test_pool, test_pool_faults, test_executor, test_threadpool ------------------
#
# Pool tasks. Most record what they did in a file opened with O_APPEND (one
# short write per line, so lines from several workers never interleave): the
# tests read it to know which task ran where, and how often.


def pool_append(path: str, line: str) -> None:
    """Append ``line`` and a newline to ``path`` in one write."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def pool_square(x: int) -> int:
    return x * x


def pool_add(a: int, b: int) -> int:
    return a + b


def pool_echo(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments, as the task received them."""
    return args, kwargs


def pool_pid(x: Any) -> tuple[Any, int]:
    """``x`` and the pid of the worker that ran it."""
    import os

    return x, os.getpid()


def pool_whoami(x: Any) -> dict[str, Any]:
    """What the worker knows of itself."""
    import os
    import threading

    import serentak

    return {
        "x": x,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "name": serentak.current_process().name,
        "thread": threading.get_ident(),
    }


def pool_note_pid(path: str) -> None:
    """An initializer: append this worker's pid to ``path`` (so a test sees it has started)."""
    import os

    pool_append(path, str(os.getpid()))


POOL_INITIALIZED: Any = None


def pool_init(path: str, value: Any) -> None:
    """An initializer: note the pid, keep ``value`` for pool_initialized()."""
    global POOL_INITIALIZED  # the worker's state, set by its initializer
    pool_note_pid(path)
    POOL_INITIALIZED = value


def pool_initialized(x: Any) -> tuple[Any, Any]:
    return x, POOL_INITIALIZED


def pool_init_fails(message: str) -> None:
    raise RuntimeError(message)


def pool_record(path: str, task_id: int) -> tuple[int, int]:
    """Note "task_id pid" in ``path``; return the same pair."""
    import os

    pool_append(path, f"{task_id} {os.getpid()}")
    return task_id, os.getpid()


def pool_record_or_die(path: str, task_id: int) -> int:
    """Note ``task_id`` in ``path``; then, for every tenth task, SIGKILL this worker."""
    import os
    import signal

    pool_append(path, str(task_id))
    if task_id % 10 == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return task_id


def pool_raise(message: str) -> None:
    raise ValueError(message)  # test_pool_faults looks for this line in the remote traceback


def pool_block_forever(path: str) -> None:
    """Note this worker's pid in ``path``, then block until killed."""
    import os
    import signal

    pool_append(path, str(os.getpid()))
    while True:
        signal.pause()


def pool_block_on(path: str, block_on: int, x: int) -> int:
    """``x * 10``; but for ``x == block_on``, note the pid in ``path`` and block until killed."""
    if x == block_on:
        pool_block_forever(path)
    return x * 10


def pool_gate(directory: str, name: str, value: Any = None) -> Any:
    """Create ``<name>.started`` in ``directory``, wait for ``<name>.go``, return ``value``."""
    import os
    import time

    pool_append(os.path.join(directory, f"{name}.started"), str(os.getpid()))
    go = os.path.join(directory, f"{name}.go")
    deadline = time.monotonic() + 30
    while not os.path.exists(go):  # an OS condition nothing signals: polled, with a deadline
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was never let go")
        time.sleep(0.001)
    return value


def pool_gate_started(directory: str, name: str, patience: float = 20.0) -> bool:
    """(The test's side of pool_gate.) Whether ``name`` started within ``patience`` seconds."""
    import os
    import time

    started = os.path.join(directory, f"{name}.started")
    deadline = time.monotonic() + patience
    while not os.path.exists(started):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def pool_gate_open(directory: str, name: str) -> None:
    """(The test's side of pool_gate.) Let ``name`` return."""
    import os

    with open(os.path.join(directory, f"{name}.go"), "w"):
        pass


def pool_gate_open_all(directory: str) -> None:
    """(The test's side of pool_gate.) Let every task blocked on ``directory`` return."""
    import os

    for name in os.listdir(directory):
        if name.endswith(".started"):
            pool_gate_open(directory, name.removesuffix(".started"))


def pool_thread_lock(lock: Any, x: int) -> tuple[int, bool]:
    """Use a threading.Lock given as an argument (possible only if nothing was pickled)."""
    with lock:
        return x, lock.locked()


class PoolUnpicklableError(Exception):
    """An exception holding a lock: it cannot be pickled."""

    def __init__(self, message: str) -> None:
        import threading

        super().__init__(message)
        self.lock = threading.Lock()


class PoolUnloadableError(Exception):
    """Pickles, but cannot be unpickled: its __init__ takes two arguments, args holds one."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} {second}")


class PoolExitWhenUnpickled:
    """An object that makes the process unpickling it ``os._exit(3)``."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pool_os_exit, (3,))


class PoolRaiseWhenUnpickled:
    """An object whose unpickling raises ValueError."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pool_raise, ("raised while unpickled",))


class PoolCrashWhenUnpickled:
    """An object whose unpickling crashes the process (SIGSEGV)."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pool_segfault, ())


class PoolFailWhenPickled:
    """A result that fails while the worker pickles it: raises, exits or crashes."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.how == "exit":
            pool_os_exit(3)
        elif self.how == "crash":
            pool_segfault()
        raise ValueError("raised while pickled")


def pool_nested_map(method: str) -> tuple[bool, list[int]]:
    """Start a Pool of two here and map with it: (this process is daemonic, the results)."""
    import serentak

    daemonic = serentak.current_process().daemon
    with serentak.get_context(method).Pool(2) as pool:
        return daemonic, pool.map(pool_square, range(4))


def pool_try_nested_pool(method: str) -> str:
    """Try to start a Pool here: "started", or the AssertionError's message."""
    import serentak

    try:
        pool = serentak.get_context(method).Pool(1)
    except AssertionError as exc:
        return str(exc)
    pool.terminate()
    return "started"


def pool_nested_pool_reports(conn: Any, method: str) -> None:
    """Send what pool_try_nested_pool gives in this process."""
    conn.send(pool_try_nested_pool(method))
    conn.close()


EXECUTORS_KEPT: list[Any] = []


def exec_submit_and_leave(method: str, path: str) -> None:
    """Start an executor, wait for one call, return without shutting it down (it
    stays referenced: nothing collects it before the process exits)."""
    import serentak

    executor = serentak.ProcessPoolExecutor(2, mp_context=serentak.get_context(method))
    EXECUTORS_KEPT.append(executor)
    executor.submit(pool_note_pid, path).result(30)


def pool_os_exit(code: int) -> None:
    import os

    os._exit(code)


def pool_segfault() -> None:
    import ctypes
    import faulthandler

    faulthandler.disable()  # a forked worker inherits pytest's: no dump of the test's stack
    ctypes.string_at(0)


def pool_return(value: Any) -> Any:
    return value


def pool_result_that_fails(how: str) -> PoolFailWhenPickled:
    return PoolFailWhenPickled(how)


def pool_fault(item: tuple[str, int]) -> Any:
    """``x * 10`` for ``("ok", x)``; otherwise the fault the first element names."""
    import os
    import signal
    import threading

    fault, x = item
    if fault == "ok":
        return x * 10
    if fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "segfault":
        pool_segfault()
    elif fault == "exit":
        os._exit(3)
    elif fault == "raise":
        raise ValueError(f"task {x} raised")
    elif fault == "unpicklable_exception":
        raise PoolUnpicklableError(f"task {x} raised")
    elif fault == "unloadable_exception":
        raise PoolUnloadableError(f"task {x}", "raised")
    elif fault == "unpicklable_result":
        return threading.Lock()
    elif fault == "generator_result":
        return (n for n in range(x))
    elif fault == "system_exit":
        raise SystemExit(7)
    elif fault == "keyboard_interrupt":
        raise KeyboardInterrupt
    raise AssertionError(f"no such fault: {fault}")


# ---- test_queues ----------------------------------------------------------------


def queue_put_items(queue: Any, items: Any) -> None:
    """Put each of ``items`` in ``queue``, in order."""
    for item in items:
        queue.put(item)


def queue_seed_worker(queue: Any) -> None:
    """The seed's section 7.1 worker."""
    queue.put("Data dari proses!")


def queue_produce(queue: Any, tag: int, count: int) -> None:
    """Put ``(tag, 0)`` ... ``(tag, count - 1)``."""
    for index in range(count):
        queue.put((tag, index))


def queue_consume(queue: Any, results: Any) -> None:
    """Move items from ``queue`` to ``results`` until a None arrives."""
    while True:
        item = queue.get(timeout=30)
        if item is None:
            return
        results.put(item)


def queue_joinable_worker(queue: Any, results: Any) -> None:
    """Take tasks (numbers) until None; put each squared in ``results``; task_done() each."""
    while True:
        item = queue.get(timeout=30)
        try:
            if item is None:
                return
            results.put(item * item)
        finally:
            queue.task_done()


def queue_sizes_after_close(queue: Any, conn: Any) -> None:
    """Put, close and join the feeder; send what empty(), full() and qsize() give then
    (a value, or the exception's type name and message)."""
    queue.put("item")
    queue.close()
    queue.join_thread()
    answers = {}
    for name in ("empty", "full", "qsize"):
        try:
            answers[name] = getattr(queue, name)()
        except Exception as exc:
            answers[name] = (type(exc).__name__, str(exc))
    conn.send(answers)


def queue_block_in_get(queue: Any, ready: Any) -> None:
    """Say so, then wait in get() to be killed."""
    ready.set()
    queue.get()
    raise RuntimeError("got an item; should have been killed first")


def queue_get_then_wait(queue: Any, took: Any, results: Any) -> None:
    """Take one item, report it, then wait to be killed."""
    import signal

    results.put(queue.get(timeout=30))
    took.set()
    while True:
        signal.pause()


def queue_die_in_get(queue: Any, with_side_datagram: bool) -> None:
    """Die inside a get: holding the reader lock (as in the middle of a copy out of the ring),
    and, if ``with_side_datagram``, after taking the fds that travel beside the record."""
    import os
    import signal

    from serentak._os import _native

    channel = queue._channel
    lock = _native.Futex(channel._ring_view[_native.RING_READER_LOCK :])
    while not lock.compare_exchange(0, os.getpid()):
        pass
    if with_side_datagram:
        channel._reader.recvmsg(16, 4096)
    os.kill(os.getpid(), signal.SIGKILL)


def queue_die_in_put(queue: Any, how: str) -> None:
    """Die inside a put, holding the writer lock: after writing half a record past tail
    (``"half record"``), or after sending a record's fds beside the ring (``"side datagram"``)."""
    import array
    import os
    import signal
    import socket

    from serentak._os import _native

    channel = queue._channel
    view = channel._ring_view
    lock = _native.Futex(view[_native.RING_WRITER_LOCK :])
    while not lock.compare_exchange(0, os.getpid()):
        pass
    if how == "half record":
        tail = int.from_bytes(view[8:16], "little") & 0xFFFF_FFFF
        start = _native.RING_HEADER + tail % (len(view) - _native.RING_HEADER)
        view[start : start + 8] = (1000).to_bytes(4, "little") + (0).to_bytes(4, "little")
        view[start + 8 : start + 508] = b"\x80half" * 100
    else:
        tag = _native.Futex(view[_native.RING_SIDE_TAG :]).add(1)
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [os.dup(0)]))]
        channel._writer.sendmsg([tag.to_bytes(4, "little")], rights)
    os.kill(os.getpid(), signal.SIGKILL)


def queue_put_forever(queue: Any, size: int, started: Any) -> None:
    """Put ``(i, bytes of size)`` for i = 0, 1, 2, ... until killed."""
    payload = b"p" * size
    index = 0
    while True:
        queue.put((index, payload))
        if index == 10:
            started.set()
        index += 1


def queue_put_and_exit(queue: Any, count: int, size: int) -> None:
    """Put ``count`` items of ``size`` bytes (more than the ring holds) and return at once."""
    payload = b"f" * size
    for index in range(count):
        queue.put((index, payload))


def queue_put_then_wait(queue: Any, count: int, size: int, done: Any) -> None:
    """Put ``count`` items (more than the ring holds: the rest wait in the feeder), say so,
    and wait to be killed."""
    import signal

    queue_put_and_exit(queue, count, size)
    done.set()
    while True:
        signal.pause()


def queue_put_cancel_and_exit(queue: Any, count: int, size: int) -> None:
    """Like queue_put_and_exit, but do not wait for the feeder at exit."""
    queue_put_and_exit(queue, count, size)
    queue.cancel_join_thread()


def queue_reply_on_connection(queue: Any) -> None:
    """Get a Connection from ``queue`` and send a greeting on it."""
    connection = queue.get(timeout=30)
    connection.send("hello through a queued connection")
    connection.close()


def queue_take_when_told(queue: Any, go: Any, count: int) -> None:
    """Wait for ``go`` (an Event), then take ``count`` items."""
    if not go.wait(30):
        raise RuntimeError("never told to take the items")
    for _ in range(count):
        queue.get(timeout=30)


def queue_simple_put(queue: Any, items: Any) -> None:
    """SimpleQueue: put each of ``items``."""
    for item in items:
        queue.put(item)


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


# ---- test_distributed -------------------------------------------------------------
#
# Tasks for serentak.distributed.Pool; its Dask workers import this module by
# name (the test cluster has tests/ on its PYTHONPATH).


def distributed_gate_item(item: tuple[str, str]) -> str:
    """pool_gate for an item ``(name, directory)``: wait for the gate, return ``name``."""
    name, directory = item
    value: str = pool_gate(directory, name, name)
    return value


def distributed_checksum(array: Any, directory: str, x: int) -> tuple[int, float, int]:
    """The array's size and sum, and ``x``; task 0 first waits at gate "0" of ``directory``."""
    if x == 0:
        pool_gate(directory, "0")
    return array.nbytes, float(array.sum()), x


def distributed_weighted(weights: bytes, x: int) -> int:
    return len(weights) + x


def distributed_sum(array: Any) -> float:
    return float(array.sum())


# ---- test_pool_features -------------------------------------------------------------
#
# Progress bars, adaptive chunks, lazy inputs, worker state, recycling, sizing, stats.


def feat_sleep_echo(seconds: float, x: Any) -> Any:
    """``x``, after ``seconds`` of sleep: a task of known, load-independent length."""
    import time

    time.sleep(seconds)
    return x


def feat_sleep_or_raise(seconds: float, x: int) -> int:
    """Sleep ``seconds``; then raise ValueError for multiples of 3, else return ``x``."""
    import time

    time.sleep(seconds)
    if x % 3 == 0:
        raise ValueError(x)
    return x


def feat_state_init(value: Any) -> None:
    """An initializer: build this worker's state (what it was given, who built it, a counter)."""
    import os

    import serentak

    state = serentak.worker_state()
    state["value"] = value
    state["built_by"] = os.getpid()
    state["calls"] = 0


def feat_state_use(x: Any) -> tuple[Any, Any, int, int, int]:
    """``(x, value, built_by, pid, calls)`` from this worker's state, counting the call."""
    import os

    import serentak

    state = serentak.worker_state()
    state["calls"] += 1
    return x, state["value"], state["built_by"], os.getpid(), state["calls"]


def feat_ballast(limit_mb: float, headroom_mb: float) -> None:
    """An initializer: take this worker's resident memory to ``limit_mb - headroom_mb``
    (kept in its worker_state), so that a few tasks of feat_leak take it past the limit."""
    from serentak import worker_state
    from serentak._pool import tasks as _tasks

    missing = limit_mb - headroom_mb - _tasks.resident_memory_mb()
    worker_state()["ballast"] = _resident_pages(max(0, int(missing * 2**20)))


def feat_leak(path: str, mb: int, task_id: int) -> tuple[int, int]:
    """pool_record, leaking ``mb`` MiB (resident) in this worker first."""
    from serentak import worker_state

    worker_state().setdefault("leaked", []).append(_resident_pages(mb * 2**20))
    return pool_record(path, task_id)


def _resident_pages(size: int) -> object:
    """``size`` bytes of fresh anonymous memory, every page written, so resident.

    Not a bytes object: a forked worker's malloc may place it in heap pages inherited
    from the parent, already counted in the worker's resident size, so that writing
    them (copy-on-write) would not grow it."""
    import mmap

    pages = mmap.mmap(-1, max(size, mmap.PAGESIZE))
    pages[:: mmap.PAGESIZE] = b"\x01" * (len(pages) // mmap.PAGESIZE)
    return pages


def feat_environ(names: list[str]) -> dict[str, str | None]:
    """These variables of this worker's environment."""
    import os

    return {name: os.environ.get(name) for name in names}


# ---- test_sync, test_sharedctypes: every primitive and ctypes type in a child ------------


def sync_hold_deep_until_killed(lock: Any, holding: Any, depth: int) -> None:
    """Take the RLock ``lock`` ``depth`` times, say so, and wait to be killed."""
    import signal

    for _ in range(depth):
        lock.acquire()
    holding.set()
    while True:
        signal.pause()


def sync_use_every_primitive(conn: Any, primitives: dict[str, Any]) -> None:
    """Use each primitive the parent passed (it holds the lock and the RLock, and has
    taken the bounded semaphore): report on ``conn`` what this process saw."""
    seen: dict[str, Any] = {}
    lock, rlock = primitives["Lock"], primitives["RLock"]
    # Held by the parent: not ours, whichever way acquire() is called.
    seen["Lock"] = [lock.acquire(False), lock.acquire(True, 0.05), lock.acquire(timeout=0)]
    seen["RLock"] = [rlock.acquire(False), rlock.acquire(block=True, timeout=0.05)]
    sem = primitives["Semaphore"]
    with sem as entered:
        seen["Semaphore"] = [entered, sem.acquire(True, 1), sem.acquire(False), sem.get_value()]
    bounded = primitives["BoundedSemaphore"]
    bounded.release()  # the parent's acquire, undone here
    try:
        bounded.release()
    except ValueError as exc:
        seen["BoundedSemaphore"] = [bounded.get_value(), str(exc)]
    condition = primitives["Condition"]
    with condition:
        seen["Condition"] = [condition.wait(0.01), condition.wait_for(lambda: True, 1)]
    primitives["Event"].set()
    seen["Barrier"] = primitives["Barrier"].wait(30)
    conn.send(seen)
    conn.close()


class SctUnion(_ctypes.Union):
    """A Union for Value(SctUnion) in a child."""

    _fields_ = (("i", _ctypes.c_int32), ("f", _ctypes.c_float))


def sct_set_fields(conn: Any, union: Any, grid: Any, array: Any) -> None:
    """Report what the child sees, then write through each object (a slice included)."""
    conn.send((union.i, [list(row) for row in grid], array[1:3], array.get_obj()[:]))
    union.f = 1.5
    grid[1][0] = 9.25
    with array:  # a synchronized array is its own context manager, on its lock
        array[1:3] = [20, 30]
    conn.close()


def sct_hold_value_lock_until_killed(value: Any, holding: Any) -> None:
    """Enter ``value``'s lock, half-update it, say so, and wait to be killed."""
    import signal

    value.get_lock().acquire()
    value.value = -1  # the critical section's work, interrupted for good
    holding.set()
    while True:
        signal.pause()


# ---- test_queues: Ctrl-C and crashes of SimpleQueue / JoinableQueue ---------------------


def queue_ctrl_c_set_up(queue: Any, wait: str) -> None:
    """Put what makes ``wait`` (e.g. ``"Queue.put"``) block in the parent: fill a Queue(2),
    leave one task unfinished for join(), or give a get() one item to take first."""
    if wait == "Queue.put":
        queue.put(0)
        queue.put(1)
    elif wait == "JoinableQueue.join":
        queue.put(0)
    else:
        queue.put("from the child")


def queue_relay(queue: Any, results: Any, joinable: bool) -> None:
    """get() (no timeout: works for SimpleQueue) until None; forward each item to
    ``results`` (bytes as their length and first byte); task_done() each if ``joinable``."""
    while True:
        item = queue.get()
        if isinstance(item, bytes):
            item = ("bytes", len(item), item[:1])
        results.put(item)
        if joinable:
            queue.task_done()
        if item is None:
            return


# ---- interrupt() and the newer pool API --------------------------------------------------


def proc_cleanup_on_interrupt(conn: Any, path: str) -> None:
    """Say "ready", wait for a signal; the ``finally`` block writes ``path`` on the way out."""
    import signal

    try:
        conn.send("ready")
        while True:
            signal.pause()
    finally:
        with open(path, "w") as file:
            file.write("finally ran")


def pool_nbytes(data: bytes) -> int:
    return len(data)


def joblib_fail_on(bad: int, x: int) -> int:
    """``x``; raises ValueError for ``x == bad``."""
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def joblib_die_on(bad: int, x: int) -> int:
    """``x``; the worker SIGKILLs itself for ``x == bad``."""
    import os
    import signal

    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


# ---- test_child_state ----------------------------------------------------------------


def child_watch_parent(conn: Any) -> None:
    """Report whether the parent lives, wait for it to end, report again."""
    import serentak

    parent = serentak.parent_process()
    conn.send(parent is not None and parent.is_alive())
    if parent is not None:
        parent.join(30)
    conn.send(parent is not None and parent.is_alive())
    conn.close()


def child_start_watcher_then_wait(conn: Any, method: str) -> None:
    """Start a grandchild that watches this process, then block until terminated."""
    import signal

    import serentak

    watcher = serentak.get_context(method).Process(target=child_watch_parent, args=(conn,))
    watcher.start()
    conn.close()
    while True:
        signal.pause()


def child_report_state(conn: Any) -> None:
    """Send what this child knows of itself: start method, main thread id, logger level."""
    import threading

    import serentak

    conn.send(
        {
            "start_method": serentak.get_start_method(),
            "main_native_id": threading.main_thread().native_id,
            "log_level": serentak.get_logger().getEffectiveLevel(),
        }
    )
    conn.close()


def child_register_atexit(path: str) -> None:
    """Register an atexit handler that writes ``path``, then return normally."""
    import atexit
    import os

    def write() -> None:
        with open(path, "a") as out:
            out.write(f"{os.getpid()}\n")

    atexit.register(write)


def child_echo_after_go(conn: Any) -> None:
    """Wait for a message, send it back, through a Pipe (timing is the parent's)."""
    conn.send(conn.recv())
    conn.close()


def child_queue_put(queue: Any, item: Any) -> None:
    """Put ``item`` on ``queue`` and return (the queue's buffer must be flushed at exit)."""
    queue.put(item)


def child_send_on(conn: Any, message: Any) -> None:
    """Send ``message`` on ``conn``."""
    conn.send(message)
    conn.close()


def child_pass_handles(control: Any) -> None:
    """Receive a socket over ``control`` and write on it; then send back a socket and a
    Connection made here, closing ours right after sending them."""
    import socket

    import serentak

    sock = control.recv()
    sock.sendall(b"written by the child")
    sock.close()
    mine, theirs = socket.socketpair()
    control.send(theirs)
    theirs.close()
    mine.sendall(b"through a socket made by the child")
    mine.close()
    here, there = serentak.Pipe()
    control.send(there)
    there.close()
    here.send("through a Connection made by the child")
    here.close()
    control.close()


# ---- long jobs: retries, seeds, memory limits, journals ----------------------------------------


def pool_die_first(path: str, deaths: int, x: Any) -> Any:
    """Note an attempt in ``path``; SIGKILL this worker on the first ``deaths`` attempts,
    then return ``x``."""
    import os
    import signal

    pool_append(path, str(os.getpid()))
    with open(path) as attempts:
        if sum(1 for _ in attempts) <= deaths:
            os.kill(os.getpid(), signal.SIGKILL)
    return x


def pool_fail_first(path: str, failures: int, x: Any) -> Any:
    """Note an attempt in ``path``; raise ConnectionError on the first ``failures``."""
    pool_append(path, "attempt")
    with open(path) as attempts:
        if sum(1 for _ in attempts) <= failures:
            raise ConnectionError(f"flaky, attempt {x}")
    return x


def pool_draws(x: int) -> tuple[int, float, int, list[float]]:
    """Draws from the task's streams: the stdlib's and numpy's."""
    import serentak

    rng = serentak.task_rng()
    first = rng.random()
    again = serentak.task_rng().randrange(1 << 30)  # the same stream, going on
    numbers = serentak.task_rng("numpy").random(3).tolist()
    return x, first, again, numbers


def pool_allocate(size: int) -> int:
    """Fill ``size`` bytes of memory (every page touched), return how many."""
    block = b"\x01" * size
    return len(block)


def pool_fail_on(bad: int, x: int) -> int:
    """``x * 2``, but ``x == bad`` raises ValueError."""
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x * 2


# ---- test_pool_hardship -------------------------------------------------------------------


def pool_big_result_under_limit(mib: int, headroom_mib: int) -> str:
    """A str of ``mib`` MiB, returned with this process's address space limited to
    its size now plus ``headroom_mib``: room to pickle it, not to copy the pickle."""
    import resource

    text = "x" * (mib << 20)
    with open("/proc/self/status") as status:
        size_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
    limit = (size_kib >> 10) + headroom_mib
    resource.setrlimit(resource.RLIMIT_AS, (limit << 20, resource.RLIM_INFINITY))
    return text


def pool_kill_once_at(marker: str, record: str, kill_at: int, x: int) -> int:
    """Note ``x`` in ``record`` once done; at ``x == kill_at`` the first time (no
    ``marker`` yet), SIGKILL this worker instead."""
    import os
    import signal

    if x == kill_at and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    pool_append(record, str(x))
    return x * 10


class PoolRefusingContext:
    """A context whose processes refuse to start from the ``refuse_from``-th on
    (they cannot be created: what a failed fork() looks like to a Pool)."""

    def __init__(self, ctx: Any, refuse_from: int) -> None:
        self._ctx = ctx
        self._refuse_from = refuse_from
        self.created = 0

    def Process(self, *args: Any, **kwargs: Any) -> Any:
        self.created += 1
        if self.created >= self._refuse_from:
            raise BlockingIOError(11, "Resource temporarily unavailable (refused by the test)")
        return self._ctx.Process(*args, **kwargs)

    def cpu_count(self) -> int:
        count: int = self._ctx.cpu_count()
        return count


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
