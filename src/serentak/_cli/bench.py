"""Data-speed workloads for ``serentak bench``: serentak against the stdlib and the alternatives.

Every library present runs every workload it can, in the same run, round by
round, the order of the libraries turning from one round to the next so that
the noise of a shared machine weighs on all alike; the table shows medians and
the ratio of serentak's speed to each other library's (above 1: serentak is
faster)::

    parent (this process)                        workers / producer
    ─────────────────────                        ──────────────────
    Pool workloads: pool.map(f, items) ────────▶ 2 pool workers per library,
                    ◀── results ──────────────── started once, kept warm
    Queue workloads: queue.get() ◀── put ─────── 1 producer process per round
    Pipe workloads:  reader.recv() ◀── send ──── 1 producer process per round
    Process, Value:  start + join, Value lock ── fresh processes per round

The stdlib's ``multiprocessing`` and the alternatives (loky, joblib, mpire,
faster-fifo) are loaded only here, by name, when the bench runs: serentak's
runtime never imports them. numpy is needed by the array workloads alone and
loaded when they run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import importlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol

from serentak import __version__

MIB = 1 << 20
WORKERS = 2
SERENTAK = "serentak"
STDLIB = "stdlib"
INSTALL_HINT = "pip install 'serentak[bench]'"


class CannotRun(Exception):
    """What the bench was asked to do cannot be done here (a package it needs is missing)."""


# -- the work the pools run (importable, so every start method can ship it by reference) --


def tiny(x: int) -> int:
    """The smallest task: all cost is the pool's."""
    return x + 1


def total(array: Any) -> float:
    """The sum of a numpy array: big argument, small result."""
    return float(array.sum())


def doubled(array: Any) -> Any:
    """The array times 2: big argument, big result."""
    return array * 2


def produce(queue: Any, message: object, count: int) -> None:
    """The producer process of the Queue workloads."""
    for _ in range(count):
        queue.put(message)


def send_all(writer: Any, message: object, count: int) -> None:
    """The producer process of the Pipe workloads."""
    for _ in range(count):
        writer.send(message)


# Iterations of cpu_task's loop: about 100 ms of pure Python on a 2020s core.
CPU_TASK_LOOPS: Final = 2_000_000


def cpu_task(seed: int) -> int:
    """A pure-Python CPU-bound task of about 100 ms (holds the GIL throughout)."""
    total = seed
    for i in range(CPU_TASK_LOOPS):
        total = (total + i * i) % 1_000_003
    return total


def noop() -> None:
    """A process target that does nothing: all cost is starting and joining."""


def count_under_lock(counter: Any, start: Any, increments: int) -> None:
    """Add 1 to ``counter`` ``increments`` times under its own lock, as the docs teach."""
    start.wait()
    for _ in range(increments):
        with counter.get_lock():
            counter.value += 1


# -- the libraries, behind one interface each for pools and queues --


class PoolUnderTest(Protocol):
    """What the Pool workloads need of a library's pool of ``WORKERS`` processes."""

    def map(
        self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None = None
    ) -> list[Any]:
        """``func`` over ``items``, results in order; ``None``: the library's default chunks."""

    def call(self, func: Callable[[Any], Any], arg: Any) -> Any:
        """One task, submitted and waited for."""

    def close(self) -> None:
        """Stop the workers."""


class QueueUnderTest(Protocol):
    """What the Queue workloads need of a library's queue and a process to feed it."""

    def make(self) -> Any:
        """A new queue with ``put`` and ``get``."""

    def start(self, queue: Any, message: object, count: int) -> Any:
        """A started process running :func:`produce`, with ``join()`` and ``exitcode``."""

    def dispose(self, queue: Any) -> None:
        """Release what ``queue`` holds in this process."""


class ContextPool:
    """serentak's or the stdlib's ``Pool``: the API they share."""

    def __init__(self, ctx: Any) -> None:
        self._pool = ctx.Pool(WORKERS)

    def map(
        self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None = None
    ) -> list[Any]:
        result: list[Any] = self._pool.map(func, items, chunksize)
        return result

    def call(self, func: Callable[[Any], Any], arg: Any) -> Any:
        return self._pool.apply_async(func, (arg,)).get()

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


class ContextQueue:
    """serentak's or the stdlib's ``Queue``, fed by a ``Process`` of the same context."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def make(self) -> Any:
        return self._ctx.Queue()

    def start(self, queue: Any, message: object, count: int) -> Any:
        process = self._ctx.Process(target=produce, args=(queue, message, count), daemon=True)
        process.start()
        return process

    def dispose(self, queue: Any) -> None:
        queue.close()
        queue.join_thread()


class PipeChannel:
    """The two ends of a one-way Pipe with the Queue workloads' ``get`` and ``put``."""

    def __init__(self, ctx: Any) -> None:
        self.reader, self.writer = ctx.Pipe(duplex=False)

    def get(self) -> Any:
        return self.reader.recv()

    def put(self, obj: Any) -> None:
        self.writer.send(obj)


class ContextPipe:
    """serentak's or the stdlib's ``Pipe``, fed by a ``Process`` of the same context."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def make(self) -> PipeChannel:
        return PipeChannel(self._ctx)

    def start(self, channel: PipeChannel, message: object, count: int) -> Any:
        process = self._ctx.Process(
            target=send_all, args=(channel.writer, message, count), daemon=True
        )
        process.start()
        return process

    def dispose(self, channel: PipeChannel) -> None:
        channel.reader.close()
        channel.writer.close()


class LokyPool:
    """loky's ``ProcessPoolExecutor`` (cloudpickle, its own start method)."""

    def __init__(self) -> None:
        import loky

        self._executor = loky.ProcessPoolExecutor(max_workers=WORKERS)

    def map(
        self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None = None
    ) -> list[Any]:
        return list(self._executor.map(func, items, chunksize=chunksize or 1))

    def call(self, func: Callable[[Any], Any], arg: Any) -> Any:
        return self._executor.submit(func, arg).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class JoblibPool:
    """joblib's ``Parallel`` (loky backend), kept open so its workers are reused."""

    def __init__(self) -> None:
        import joblib

        self._delayed = joblib.delayed
        self._parallel = joblib.Parallel(n_jobs=WORKERS)
        self._parallel.__enter__()

    def map(
        self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None = None
    ) -> list[Any]:
        self._parallel.batch_size = chunksize or "auto"
        result: list[Any] = self._parallel(self._delayed(func)(item) for item in items)
        return result

    def call(self, func: Callable[[Any], Any], arg: Any) -> Any:
        return self._parallel([self._delayed(func)(arg)])[0]

    def close(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        self._parallel.__exit__(None, None, None)
        # joblib keeps its workers for later calls; the bench has none to make.
        get_reusable_executor().shutdown(wait=True)


class MpirePool:
    """mpire's ``WorkerPool``, kept alive between calls."""

    def __init__(self, start_method: str) -> None:
        from mpire.pool import WorkerPool

        self._pool = WorkerPool(n_jobs=WORKERS, start_method=start_method, keep_alive=True)

    def map(
        self, func: Callable[[Any], Any], items: Sequence[Any], chunksize: int | None = None
    ) -> list[Any]:
        result: list[Any] = self._pool.map(
            func, items, chunk_size=chunksize, concatenate_numpy_output=False
        )
        return result

    def call(self, func: Callable[[Any], Any], arg: Any) -> Any:
        return self._pool.apply_async(func, (arg,)).get()

    def close(self) -> None:
        self._pool.terminate()


class FasterFifoQueue:
    """faster-fifo's ``Queue``, fed by a stdlib ``Process`` (it pickles through the stdlib)."""

    def __init__(self, stdlib_ctx: Any) -> None:
        import faster_fifo

        # Makes its Queue picklable to spawned and fork-server children, as its docs ask.
        importlib.import_module("faster_fifo_reduction")
        self._queue_type = faster_fifo.Queue
        self._feeder = ContextQueue(stdlib_ctx)

    def make(self) -> Any:
        return self._queue_type(max_size_bytes=64 * MIB)

    def start(self, queue: Any, message: object, count: int) -> Any:
        return self._feeder.start(queue, message, count)

    def dispose(self, queue: Any) -> None:
        queue.close()


@dataclasses.dataclass(frozen=True)
class Library:
    """One library in the comparison; ``pool`` and ``queue`` start its part of each kind."""

    name: str
    version: str
    pool: Callable[[], PoolUnderTest] | None
    queue: Callable[[], QueueUnderTest] | None
    pipe: Callable[[], QueueUnderTest] | None = None
    context: Callable[[], Any] | None = None  # its context for the start method


def _stdlib_context(start_method: str) -> Any:
    # The stdlib is what serentak is measured against: loaded here, by name, only when
    # the bench runs (the runtime never uses it).
    return importlib.import_module("multiprocessing").get_context(start_method)


def _installed(module: str, distribution: str) -> str | None:
    """The version of ``distribution`` if ``module`` imports, else None."""
    try:
        importlib.import_module(module)
    except ImportError:
        return None
    return importlib.metadata.version(distribution)


def libraries(start_method: str) -> list[Library]:
    """serentak, the stdlib, and whichever alternatives are installed, in that order."""
    from serentak._context import default_context

    ours = default_context.get_context(start_method)
    stdlib = _stdlib_context(start_method)
    found = [
        Library(
            SERENTAK,
            __version__,
            functools.partial(ContextPool, ours),
            lambda: ContextQueue(ours),
            lambda: ContextPipe(ours),
            lambda: default_context,
        ),
        Library(
            STDLIB,
            platform.python_version(),
            functools.partial(ContextPool, stdlib),
            lambda: ContextQueue(stdlib),
            lambda: ContextPipe(stdlib),
            lambda: importlib.import_module("multiprocessing"),
        ),
    ]
    alternatives: Iterable[tuple[str, str, Callable[[], Any] | None, Callable[[], Any] | None]] = (
        ("loky", "loky", LokyPool, None),
        ("joblib", "joblib", JoblibPool, None),
        ("mpire", "mpire", functools.partial(MpirePool, start_method), None),
        ("faster_fifo", "faster-fifo", None, lambda: FasterFifoQueue(stdlib)),
    )
    for module, distribution, pool, queue in alternatives:
        version = _installed(module, distribution)
        if version is not None:
            found.append(Library(module, version, pool, queue))
    return found


# -- the workloads --


class WorkloadKind(enum.Enum):
    """Which part of a library a workload uses."""

    POOL = "pool"
    QUEUE = "queue"
    PIPE = "pipe"
    CONTEXT = "context"  # Process, Value: the library's module, for get_context()


@dataclasses.dataclass(frozen=True)
class Unit:
    """How a workload's figure reads: its label, format, and which way is better."""

    label: str
    spec: str
    higher_is_better: bool


GB_PER_S = Unit("GB/s", ",.2f", higher_is_better=True)
MSG_PER_S = Unit("msg/s", ",.0f", higher_is_better=True)
ITEMS_PER_S = Unit("items/s", ",.0f", higher_is_better=True)
MICROSECONDS = Unit("us", ",.1f", higher_is_better=False)
MILLISECONDS = Unit("ms", ",.1f", higher_is_better=False)
SECONDS = Unit("s", ",.2f", higher_is_better=False)
INCREMENTS_PER_S = Unit("incr/s", ",.0f", higher_is_better=True)


@dataclasses.dataclass(frozen=True)
class Goal:
    """The aim for a workload: a speed ratio to a library (above 1: serentak is
    faster), and a bound on serentak's own figure (a floor, or a ceiling for a unit
    where lower is better); either may be absent."""

    ratio: float | None = None
    against: str = STDLIB
    bound: float | None = None
    # A floor relative to one thread's np.copyto measured in the same run (GB/s rows):
    # moving arrays through the pool should cost no more than copying them twice.
    of_copy: float | None = None
    # The ratio to ``against`` must stay at least ``keep`` of the same ratio on the
    # row named here, measured in the same run (a loaded row against its quiet one).
    of_row: str | None = None
    keep: float = 0.8
    # A floor on the speed-up over running the same tasks one after another in
    # this process, measured in the same run (the CPU map: 2 workers, 2 cores).
    of_serial: float | None = None

    def describe(self, unit: Unit) -> str:
        parts = []
        if self.ratio is not None:
            parts.append(f">= {self.ratio:g}x {self.against}")
        if self.bound is not None:
            parts.append(f"{'>=' if unit.higher_is_better else '<='} {self.bound:g} {unit.label}")
        if self.of_copy is not None:
            parts.append(f">= {self.of_copy:.0%} of np.copyto")
        if self.of_row is not None:
            parts.append(f"vs {self.against} >= {self.keep:.0%} of {self.of_row}'s")
        if self.of_serial is not None:
            parts.append(f">= {self.of_serial:g}x serial")
        return " and ".join(parts)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each workload does (``--quick`` uses smaller ones)."""

    small_arrays: tuple[int, int]  # (count, MiB each)
    big_arrays: tuple[int, int]
    small_messages: int
    big_messages: int  # of 1 MiB
    round_trips: int
    tiny_tasks: int
    increments: int  # per process, of the Value lock workload
    starts: int  # processes started and joined per sample
    cpu_tasks: int


FULL = Sizes((16, 8), (8, 64), 200_000, 1_000, 1_000, 200_000, 50_000, 5, 8)
QUICK = Sizes((4, 1), (2, 4), 5_000, 50, 100, 20_000, 5_000, 1, 4)
ARRAY_GOAL = Goal(ratio=10.0, bound=3.0, of_copy=0.5)
SMALL_MESSAGE_GOAL = Goal(ratio=2.5)
BIG_MESSAGE_GOAL = Goal(ratio=1.0, against="faster_fifo")
# With a third CPU-bound process on 2 cores, the big-message Queue keeps at least
# 80% of its quiet ratio to faster-fifo: no waiting that spins while its peer
# needs the core.
LOADED_MESSAGE_GOAL = Goal(against="faster_fifo", of_row="queue-1MiB", keep=0.8)
PIPE_GOAL = Goal(ratio=1.5)
BIG_PIPE_GOAL = Goal(ratio=1.0)
ROUND_TRIP_GOAL = Goal(bound=40.0)
ROUND_TRIP_P99_GOAL = Goal(bound=200.0)
TINY_MAP_GOAL = Goal(ratio=2.0)
CPU_MAP_GOAL = Goal(ratio=1.0, of_serial=1.85)
SPAWN_GOAL = Goal(ratio=1.0)
VALUE_LOCK_GOAL = Goal(ratio=2.0)
# Idle process pools alive in the parent while the tiny maps run: a user's
# program rarely has only the pool being measured (other libraries' pools,
# executors, a manager), and each adds threads and fds the parent carries.
COMPANY_POOLS: Final = 6

# The messages of the Queue and Pipe rows: (name, title, message).
MESSAGES: Final[tuple[tuple[str, str, object], ...]] = (
    ("int", "int", 12345),
    ("100B", "100 B", b"x" * 100),
    ("tuple", "(int, 100 B)", (12345, b"x" * 100)),
    ("str", "str of 40", "s" * 40),
    ("dict", "dict of 5", {"id": 7, "name": "alice", "score": 3.5, "ok": True, "tags": None}),
    ("floats", "3 floats", (1.5, 2.5, 3.5)),
)


@dataclasses.dataclass(frozen=True)
class Workload:
    """One measured figure; ``measure`` gets the library's pool or queue, by ``kind``."""

    name: str
    title: str
    unit: Unit
    kind: WorkloadKind
    measure: Callable[[Any], float]
    goal: Goal | None = None
    needs_numpy: bool = False


@functools.lru_cache(maxsize=1)
def _arrays(count: int, mib: int) -> tuple[list[Any], list[float]]:
    """``count`` float64 arrays of ``mib`` MiB each, and their sums (one size kept at a time)."""
    import numpy

    arrays = [numpy.arange(mib * MIB // 8, dtype=numpy.float64) + i for i in range(count)]
    return arrays, [float(array.sum()) for array in arrays]


def _array_speed(pool: PoolUnderTest, shape: tuple[int, int], double: bool) -> float:
    """GB/s of arrays handed to the workers (their bytes over the wall time of the map)."""
    arrays, sums = _arrays(*shape)
    started = time.perf_counter()
    results = pool.map(doubled if double else total, arrays)
    seconds = time.perf_counter() - started
    if double:
        good = all(
            r.shape == a.shape and r[-1] == 2 * a[-1] for r, a in zip(results, arrays, strict=True)
        )
    else:
        good = results == sums
    if not good:
        raise RuntimeError("the workers computed something else")
    return float(sum(array.nbytes for array in arrays)) / seconds / 1e9


# A map of tiny tasks takes a few milliseconds, where one descheduling of a
# process weighs: a sample is the median of several maps, up to this long.
TINY_MAP_SAMPLE_SECONDS: Final = 0.25
TINY_MAP_REPEATS: Final = 7


def _tiny_map_speed(pool: PoolUnderTest, count: int) -> float:
    """Items per second of a map of ``count`` tiny tasks at the library's default
    chunks: the median of up to TINY_MAP_REPEATS maps (one, for a slow library)."""
    speeds: list[float] = []
    began = time.perf_counter()
    while len(speeds) < TINY_MAP_REPEATS and time.perf_counter() - began < TINY_MAP_SAMPLE_SECONDS:
        started = time.perf_counter()
        results = pool.map(tiny, range(count))
        seconds = time.perf_counter() - started
        if len(results) != count or results[-1] != count:
            raise RuntimeError("the map lost or changed results")
        del results  # freed outside the timed part, as for every library
        speeds.append(count / seconds)
    return statistics.median(speeds)


def _round_trip(pool: PoolUnderTest, count: int, quantile: float) -> float:
    """Microseconds from submitting one tiny task to holding its result, at ``quantile``
    (0.5: the median) of ``count`` round trips."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        if pool.call(tiny, 1) != 2:
            raise RuntimeError("the task computed something else")
        samples.append(time.perf_counter() - started)
    samples.sort()
    return samples[min(len(samples) - 1, int(quantile * len(samples)))] * 1e6


def _cpu_map_seconds(pool: PoolUnderTest, count: int) -> float:
    """Seconds for ``count`` CPU-bound tasks of about 100 ms, one per chunk."""
    started = time.perf_counter()
    results = pool.map(cpu_task, range(count), 1)
    seconds = time.perf_counter() - started
    if results != [_cpu_task_result(seed) for seed in range(count)]:
        raise RuntimeError("the workers computed something else")
    return seconds


@functools.lru_cache(maxsize=64)
def _cpu_task_result(seed: int) -> int:
    return cpu_task(seed)


def _start_ms(library: Any, method: str, count: int) -> float:
    """Milliseconds to start and join a Process doing nothing (median of ``count``)."""
    ctx = library.get_context(method)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        process = ctx.Process(target=noop)
        process.start()
        process.join()
        samples.append(time.perf_counter() - started)
        if process.exitcode != 0:
            raise RuntimeError(f"the process exited with {process.exitcode}")
    return statistics.median(samples) * 1e3


def _value_lock_speed(library: Any, method: str, increments: int) -> float:
    """Increments per second of 2 processes adding to one ``Value('i')`` under its lock."""
    ctx = library.get_context(method)
    counter = ctx.Value("i", 0)
    start = ctx.Event()
    workers = [
        ctx.Process(target=count_under_lock, args=(counter, start, increments))
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    started = time.perf_counter()
    start.set()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    if counter.value != WORKERS * increments:
        raise RuntimeError(f"the counter reads {counter.value}, not {WORKERS * increments}")
    return WORKERS * increments / seconds


class _ProducerFailed:
    """Put in the queue by the watchdog when the producer died: the consumer must not wait."""


def _watch(producer: Any, queue: Any) -> None:
    producer.join()
    if producer.exitcode != 0:
        queue.put(_ProducerFailed)


def _transfer_speed(queue_kind: QueueUnderTest, message: object, count: int) -> float:
    """Messages per second from a producer process to this one.

    The clock starts at the first message, so starting the producer is not counted.
    """
    queue = queue_kind.make()
    producer = queue_kind.start(queue, message, count)
    watchdog = threading.Thread(target=_watch, args=(producer, queue), daemon=True)
    watchdog.start()
    try:
        got = queue.get()
        failed = got is _ProducerFailed
        started = time.perf_counter()
        for _ in range(count - 1):
            if failed:
                break
            got = queue.get()
            failed = got is _ProducerFailed
        seconds = time.perf_counter() - started
        watchdog.join()
    finally:
        queue_kind.dispose(queue)
    if failed or producer.exitcode != 0:
        raise RuntimeError(f"the producer process failed with exit code {producer.exitcode}")
    if got != message or type(got) is not type(message):
        raise RuntimeError("a message arrived changed")
    return (count - 1) / seconds


def _mib_transfer_speed(queue_kind: QueueUnderTest, count: int) -> float:
    """GB/s of 1 MiB ``bytes`` messages from a producer process to this one."""
    return _transfer_speed(queue_kind, b"x" * MIB, count) * MIB / 1e9


# A process that only burns CPU until it is killed; it says "ready" once it runs.
_BURNER: Final = "import sys; sys.stdout.write('ready\\n'); sys.stdout.flush()\nwhile True: pass"


@contextlib.contextmanager
def _busy_core() -> Iterator[None]:
    """A CPU-bound process running for the duration (a plain interpreter, no library's)."""
    burner = subprocess.Popen(
        [sys.executable, "-S", "-c", _BURNER], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert burner.stdout is not None
        if burner.stdout.readline() != b"ready\n":
            raise RuntimeError("the CPU-bound process did not start")
        yield
    finally:
        burner.kill()
        burner.wait()
        if burner.stdout is not None:
            burner.stdout.close()


def _loaded_mib_transfer_speed(queue_kind: QueueUnderTest, count: int) -> float:
    """GB/s of 1 MiB messages while a third process keeps a core busy (2 cores: the
    producer, the consumer and the burner share them)."""
    with _busy_core():
        return _mib_transfer_speed(queue_kind, count)


def _channel_rows(
    kind: WorkloadKind, sizes: Sizes, goal: Callable[[Goal], Goal | None]
) -> list[Workload]:
    """A Queue or Pipe row per message of MESSAGES, and one of 1 MiB messages."""
    label = "queue" if kind is WorkloadKind.QUEUE else "pipe"
    title = "Queue" if kind is WorkloadKind.QUEUE else "Pipe"
    small_goal = SMALL_MESSAGE_GOAL if kind is WorkloadKind.QUEUE else PIPE_GOAL
    rows = [
        Workload(
            f"{label}-{name}",
            f"{title} 1 -> 1, {text}",
            MSG_PER_S,
            kind,
            functools.partial(_transfer_speed, message=message, count=sizes.small_messages),
            goal=goal(small_goal),
        )
        for name, text, message in MESSAGES
    ]
    rows.append(
        Workload(
            f"{label}-1MiB",
            f"{title} 1 -> 1, 1 MiB",
            GB_PER_S,
            kind,
            functools.partial(_mib_transfer_speed, count=sizes.big_messages),
            goal=goal(BIG_MESSAGE_GOAL if kind is WorkloadKind.QUEUE else BIG_PIPE_GOAL),
        )
    )
    if kind is WorkloadKind.QUEUE:
        rows.append(
            Workload(
                "queue-1MiB-loaded",
                "Queue 1 -> 1, 1 MiB, a third CPU-bound process",
                GB_PER_S,
                kind,
                functools.partial(_loaded_mib_transfer_speed, count=sizes.big_messages),
                goal=goal(LOADED_MESSAGE_GOAL),
            )
        )
    return rows


def workloads(sizes: Sizes) -> list[Workload]:
    """The workloads of ``serentak bench`` at ``sizes``, in the order they run (with
    the goals at the full sizes, which the goals are set for)."""

    def goal(aim: Goal) -> Goal | None:
        return aim if sizes == FULL else None

    pool_arrays: list[Workload] = []
    for label, shape in (("small", sizes.small_arrays), ("big", sizes.big_arrays)):
        for returns, double in (("sum", False), ("x2", True)):
            pool_arrays.append(
                Workload(
                    f"map-{returns}-{label}",
                    f"Pool.map {shape[0]} x {shape[1]} MiB -> {returns}",
                    GB_PER_S,
                    WorkloadKind.POOL,
                    functools.partial(_array_speed, shape=shape, double=double),
                    goal=goal(ARRAY_GOAL),
                    needs_numpy=True,
                )
            )
    return [
        *pool_arrays,
        *_channel_rows(WorkloadKind.QUEUE, sizes, goal),
        *_channel_rows(WorkloadKind.PIPE, sizes, goal),
        Workload(
            "apply-rtt",
            "apply_async round trip, median",
            MICROSECONDS,
            WorkloadKind.POOL,
            functools.partial(_round_trip, count=sizes.round_trips, quantile=0.5),
            goal=goal(ROUND_TRIP_GOAL),
        ),
        Workload(
            "apply-rtt-p99",
            "apply_async round trip, p99",
            MICROSECONDS,
            WorkloadKind.POOL,
            functools.partial(_round_trip, count=sizes.round_trips, quantile=0.99),
            goal=goal(ROUND_TRIP_P99_GOAL),
        ),
        Workload(
            "map-tiny",
            f"Pool.map {sizes.tiny_tasks:,} tiny tasks, {COMPANY_POOLS} other pools alive",
            ITEMS_PER_S,
            WorkloadKind.POOL,
            functools.partial(_tiny_map_speed, count=sizes.tiny_tasks),
            goal=goal(TINY_MAP_GOAL),
        ),
        Workload(
            "map-cpu",
            f"Pool.map {sizes.cpu_tasks} x 100 ms CPU tasks, chunksize 1",
            SECONDS,
            WorkloadKind.POOL,
            functools.partial(_cpu_map_seconds, count=sizes.cpu_tasks),
            goal=goal(CPU_MAP_GOAL),
        ),
        Workload(
            "spawn-start",
            "start + join a no-op Process, spawn",
            MILLISECONDS,
            WorkloadKind.CONTEXT,
            functools.partial(_start_ms, method="spawn", count=sizes.starts),
            goal=goal(SPAWN_GOAL),
        ),
        Workload(
            "value-lock",
            f"2 x {sizes.increments:,} Value('i') increments under get_lock()",
            INCREMENTS_PER_S,
            WorkloadKind.CONTEXT,
            functools.partial(_value_lock_speed, method="fork", increments=sizes.increments),
            goal=goal(VALUE_LOCK_GOAL),
        ),
    ]


WORKLOAD_NAMES = tuple(workload.name for workload in workloads(QUICK))


# -- running and reporting --


@dataclasses.dataclass
class Results:
    """Samples of every (workload, library) pair measured, and the errors met."""

    workloads: list[Workload]
    libraries: list[Library]
    rounds: int
    start_method: str
    samples: dict[tuple[str, str], list[float]] = dataclasses.field(default_factory=dict)
    errors: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    pipe_floor_us: float | None = None  # an os.pipe round trip between two processes
    copy_gb_s: float | None = None  # one thread's np.copyto of a 64 MiB array
    serial_s: float | None = None  # the CPU map's tasks run one after another here

    def median(self, workload: Workload, library: str) -> float | None:
        samples = self.samples.get((workload.name, library))
        return statistics.median(samples) if samples else None

    def speed_ratio(self, workload: Workload, library: str, against: str) -> float | None:
        """How many times faster ``library`` is than ``against`` (above 1: faster)."""
        ours, theirs = self.median(workload, library), self.median(workload, against)
        if ours is None or theirs is None:
            return None
        return ours / theirs if workload.unit.higher_is_better else theirs / ours

    def goal_met(self, workload: Workload) -> bool | None:
        """Whether serentak met the workload's goal; None when it cannot be told."""
        goal, ours = workload.goal, self.median(workload, SERENTAK)
        if goal is None or ours is None:
            return None
        met = True
        if goal.ratio is not None:
            ratio = self.speed_ratio(workload, SERENTAK, goal.against)
            if ratio is None:
                return None
            met = ratio >= goal.ratio
        if goal.bound is not None:
            higher = workload.unit.higher_is_better
            met = met and (ours >= goal.bound if higher else ours <= goal.bound)
        if goal.of_copy is not None:
            if self.copy_gb_s is None:
                return None
            met = met and ours >= goal.of_copy * self.copy_gb_s
        if goal.of_row is not None:
            loaded = self.speed_ratio(workload, SERENTAK, goal.against)
            quiet_row = next((w for w in self.workloads if w.name == goal.of_row), None)
            quiet = (
                None if quiet_row is None else self.speed_ratio(quiet_row, SERENTAK, goal.against)
            )
            if loaded is None or quiet is None:
                return None
            met = met and loaded >= goal.keep * quiet
        if goal.of_serial is not None:
            if self.serial_s is None:
                return None
            met = met and self.serial_s / ours >= goal.of_serial
        return met


def require_numpy(chosen: Sequence[Workload]) -> None:
    """Raises CannotRun when a workload in ``chosen`` needs numpy and it is missing."""
    needing = [w.name for w in chosen if w.needs_numpy]
    if not needing:
        return
    try:
        importlib.import_module("numpy")
    except ImportError:
        raise CannotRun(
            f"the array workloads ({', '.join(needing)}) need numpy, which is not installed:"
            f" pip install numpy (or {INSTALL_HINT});"
            f" or run the others alone, e.g. --only {WORKLOAD_NAMES[-1]}"
        ) from None


def require_matplotlib() -> None:
    """Raises CannotRun when matplotlib, which ``--plot`` draws with, is missing."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise CannotRun(
            f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}"
            " (or pip install matplotlib)"
        ) from None


def _warm_up(pool: PoolUnderTest, chosen: Sequence[Workload]) -> None:
    """Start the workers, and have them load numpy if the workloads send arrays."""
    pool.map(tiny, range(100))
    if any(workload.needs_numpy for workload in chosen):
        import numpy

        pool.map(total, [numpy.zeros(1)] * 8 * WORKERS, 1)


def _start_company(start_method: str) -> list[Any]:
    """COMPANY_POOLS idle stdlib pools of WORKERS processes, started and warm."""
    ctx = _stdlib_context(start_method)
    company = []
    for _ in range(COMPANY_POOLS):
        pool = ctx.Pool(WORKERS)
        pool.map(tiny, range(WORKERS))
        company.append(pool)
    return company


def _stop_company(company: list[Any]) -> None:
    while company:
        idle = company.pop()
        idle.terminate()
        idle.join()


def run(
    chosen: Sequence[Workload],
    start_method: str,
    rounds: int,
    on_progress: Callable[[str], None] = lambda text: None,
    among: Collection[str] | None = None,
) -> Results:
    """Measure ``chosen`` for every library present (or those named in ``among``),
    ``rounds`` times each."""
    require_numpy(chosen)
    found = [lib for lib in libraries(start_method) if among is None or lib.name in among]
    results = Results(list(chosen), found, rounds, start_method)
    kinds = {workload.kind for workload in chosen}
    subjects_of: dict[WorkloadKind, dict[str, Any]] = {kind: {} for kind in WorkloadKind}
    pools: dict[str, PoolUnderTest] = subjects_of[WorkloadKind.POOL]
    company: list[Any] = []
    try:
        for library in found:
            if WorkloadKind.POOL in kinds and library.pool is not None:
                pools[library.name] = library.pool()
                _warm_up(pools[library.name], chosen)
            for kind, make in (
                (WorkloadKind.QUEUE, library.queue),
                (WorkloadKind.PIPE, library.pipe),
                (WorkloadKind.CONTEXT, library.context),
            ):
                if kind in kinds and make is not None:
                    subjects_of[kind][library.name] = make()
        for workload in chosen:
            subjects = subjects_of[workload.kind]
            names = list(subjects)
            on_progress(f"{workload.name}: {workload.title} ({', '.join(names)})")
            if workload.name == "map-tiny" and not company:
                company = _start_company(start_method)
            if workload.needs_numpy and rounds > 1:
                # One round untimed: each library's first big transfer pays for
                # memory it keeps and reuses (fresh pages cost more than copies).
                for name in names:
                    with contextlib.suppress(Exception):  # an error shows in the timed rounds
                        workload.measure(subjects[name])
            for turn in range(rounds):
                shift = turn % len(names)
                for name in names[shift:] + names[:shift]:
                    if (workload.name, name) in results.errors:
                        continue
                    try:
                        figure = workload.measure(subjects[name])
                    except Exception as error:
                        results.errors[workload.name, name] = f"{type(error).__name__}: {error}"
                    else:
                        results.samples.setdefault((workload.name, name), []).append(figure)
            _stop_company(company)
    finally:
        for pool in pools.values():
            pool.close()
        _stop_company(company)
        _arrays.cache_clear()
    if any(workload.name.startswith("apply-rtt") for workload in chosen):
        results.pipe_floor_us = pipe_round_trip_us(ROUND_TRIPS_FOR_FLOOR)
    if any(workload.needs_numpy for workload in chosen):
        results.copy_gb_s = copy_speed_gb_s()
    cpu_maps = [workload for workload in chosen if workload.name == "map-cpu"]
    if cpu_maps and cpu_maps[0].goal is not None:
        results.serial_s = serial_seconds(FULL.cpu_tasks, rounds)
    return results


def serial_seconds(count: int, repeat: int) -> float:
    """Seconds to run the CPU map's ``count`` tasks one after another in this process
    (median of ``repeat``): what the map's speed-up is judged against."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        for seed in range(count):
            cpu_task(seed)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def copy_speed_gb_s(mib: int = 64, repeat: int = 7) -> float:
    """One thread's ``np.copyto`` of a ``mib`` MiB float64 array, GB/s (median): the
    speed of memory here, which the array rows are judged against."""
    import numpy as np

    source = np.ones(mib << 17)
    target = np.empty_like(source)
    np.copyto(target, source)  # touch the pages first
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        np.copyto(target, source)
        samples.append(source.nbytes / (time.perf_counter() - started) / 1e9)
    return statistics.median(samples)


ROUND_TRIPS_FOR_FLOOR = 2000


def _pipe_echo(request: int, reply: int, count: int) -> None:
    for _ in range(count):
        os.write(reply, os.read(request, 1))


def pipe_round_trip_us(count: int) -> float:
    """Median microseconds for one byte there and back over two os.pipes, between
    this process and a forked child: the floor under any cross-process round trip."""
    from serentak import get_context

    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    try:
        child = get_context("fork").Process(target=_pipe_echo, args=(request_r, reply_w, count))
        child.start()
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            os.write(request_w, b"x")
            os.read(reply_r, 1)
            samples.append(time.perf_counter() - started)
        child.join()
        child.close()
    finally:
        for fd in (request_r, request_w, reply_r, reply_w):
            os.close(fd)
    return statistics.median(samples[count // 10 :]) * 1e6


def format_table(results: Results) -> str:
    """The figures, then serentak's speed against each other library, as text."""
    names = [library.name for library in results.libraries]
    others = names[1:]
    title_width = max(len(w.title) for w in results.workloads)
    unit_width = max(len(w.unit.label) for w in results.workloads)
    lines = [
        f"{WORKERS} workers, start method {results.start_method},"
        f" median of {results.rounds} round(s)",
        "libraries: " + ", ".join(f"{lib.name} {lib.version}" for lib in results.libraries),
        "",
        f"{'workload':{title_width}s}  {'unit':{unit_width}s}"
        + "".join(f"{n:>13s}" for n in names),
    ]
    for workload in results.workloads:
        cells = []
        for name in names:
            value = results.median(workload, name)
            missing = "error" if (workload.name, name) in results.errors else "-"
            cells.append(f"{missing:>13s}" if value is None else f"{value:>13{workload.unit.spec}}")
        lines.append(
            f"{workload.title:{title_width}s}  {workload.unit.label:{unit_width}s}" + "".join(cells)
        )
    lines += [
        "",
        "serentak's speed / each library's (above 1: serentak is faster)",
        f"{'workload':{title_width}s}"
        + "".join(f"{'vs ' + n:>15s}" for n in others)
        + ("  goal" if any(w.goal for w in results.workloads) else ""),
    ]
    for workload in results.workloads:
        ratios = [results.speed_ratio(workload, SERENTAK, other) for other in others]
        row = f"{workload.title:{title_width}s}" + "".join(
            f"{'-':>15s}" if r is None else f"{r:>14.2f}x" for r in ratios
        )
        met = results.goal_met(workload)
        if workload.goal is not None and met is not None:
            row += f"  {workload.goal.describe(workload.unit)}: {'met' if met else 'NOT met'}"
        lines.append(row)
    if {"loky", "joblib"} & set(names):
        lines += [
            "",
            "loky and joblib start their workers their own way, whatever the start method.",
        ]
    if "faster_fifo" in names:
        lines.append("faster_fifo's producer is a stdlib Process.")
    if results.pipe_floor_us is not None:
        lines.append(
            f"For scale: one byte there and back over os.pipe between two processes takes"
            f" {results.pipe_floor_us:.1f} us on this machine, the floor under any round trip."
        )
    if results.copy_gb_s is not None:
        lines.append(f"One thread's np.copyto of 64 MiB runs at {results.copy_gb_s:.1f} GB/s here.")
    cpu_map = next((w for w in results.workloads if w.name == "map-cpu"), None)
    ours = None if cpu_map is None else results.median(cpu_map, SERENTAK)
    if results.serial_s is not None and ours is not None:
        lines.append(
            f"The CPU map's tasks take {results.serial_s:.2f} s one after another here:"
            f" serentak's map is {results.serial_s / ours:.2f}x that."
        )
    if results.errors:
        lines += ["", "errors:"]
        lines += [f"  {w} / {lib}: {text}" for (w, lib), text in results.errors.items()]
    return "\n".join(lines)


def plot(results: Results, path: str) -> None:
    """Draw each library's speed relative to the stdlib, per workload, to the PNG ``path``."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # a file, no display needed
    import matplotlib.pyplot as plt

    workloads_shown = results.workloads
    names = [library.name for library in results.libraries]
    width = 0.8 / len(names)
    figure, axes = plt.subplots(figsize=(max(8.0, 1.3 * len(workloads_shown) + 2), 5.5))
    for index, name in enumerate(names):
        offset = (index - (len(names) - 1) / 2) * width
        points = [
            (position + offset, ratio)
            for position, workload in enumerate(workloads_shown)
            if (ratio := results.speed_ratio(workload, name, STDLIB)) is not None
        ]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        bars = axes.bar(xs, ys, width, label=name)
        if name == SERENTAK:
            axes.bar_label(bars, labels=[f"{y:.1f}x" for y in ys], fontsize=7)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xticks(
        range(len(workloads_shown)), [w.title for w in workloads_shown], rotation=25, ha="right"
    )
    axes.set_ylabel("speed relative to the stdlib (log scale, above 1: faster)")
    axes.set_title(
        f"serentak bench: {WORKERS} workers, {results.start_method},"
        f" median of {results.rounds} round(s)"
    )
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
