"""Worker functions for the tests of pools, executors, the Dask pool and long jobs.

A spawned or forkserver child imports them from here by name.

Append; each test module keeps its functions in a section of its own.
"""

from __future__ import annotations

from typing import Any

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


def feat_sleep(seconds: float) -> float:
    """``seconds``, after sleeping that long: one function for tasks of any length."""
    import time

    time.sleep(seconds)
    return seconds


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
