"""The pool's supervisor thread: the one owner of workers, tasks and their fate.

::

    callers / feeder thread            supervisor thread                        workers
    -----------------------            --------------                        -------
    Submit(tasks)  --> commands --+
    Close / Terminate             |    one selector waits on:
                    wake-up pipe -+--> - the wake-up pipe (commands queued)
                                       - each worker's connection  <------- DONE / FAILED / READY
                                       - each worker's sentinel (pidfd) <--- death
                                       then: dispatch pending tasks --------> FUNCTION / task frames
                                             fail overdue tasks (kill their worker)
                                             replace dead workers

A caller waiting for a short apply may do a round itself (``collect``): it
mutes the worker's connection in the selector, polls it, reads the reply and
handles it as this thread would, so that neither thread is woken up. Any
thread holding ``_step_lock`` acts as the supervisor thread.

The wake-up pipe is separate from the workers' connections so that a worker
dying in the middle of a write garbles only its own channel, never the path
commands take.

The task-to-worker table is each worker's ``in_flight`` queue: the first entry
is running (a worker runs tasks in arrival order), the rest were sent ahead so
the worker never idles between tasks. When a worker dies, exactly its running
task fails (WorkerLostError naming the exit code or signal); the ones sent
ahead never started and go back to the front of the queue, so nothing is lost
and nothing runs twice. Each worker's progress segment (tasks.WorkerProgress)
refines this after its death: a first task it had not begun goes back to the
queue too; of an imap chunk (MAP_EACH), the items it finished are delivered,
the one it was running fails and the rest are queued as a task of their own.

A task that fails goes through ``_end``: if its retry policy says so, it is
queued again (at once, or in ``_delayed`` until its backoff has passed) rather
than finished, and runs again with the same arguments. A task with a memory
limit has its worker's resident size read every MEMORY_POLL seconds while it
runs, less the warm segments the worker keeps only for reuse (its progress
segment says how many bytes: tasks.held_bytes); past the limit the worker is
killed, as for a timeout, and the task fails with MemoryLimitError.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import heapq
import itertools
import os
import queue
import selectors
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from serentak._exceptions import (
    MemoryLimitError,
    PoolTerminatedError,
    TimeoutError,
    WorkerLostError,
)
from serentak._ipc.buffers import pack, unpack
from serentak._ipc.connection import Connection, Pipe
from serentak._ipc.connection import frame as transport_frame
from serentak._ipc.segments import Segment
from serentak._os import _native
from serentak._os.posix import Muter
from serentak._os.waiting import RESULT_SPIN
from serentak._pool.interfaces import ResultSink
from serentak._pool.options import DEFAULT_RETRY_ON, final_error, format_size
from serentak._pool.results import ItemError, Outcome, concatenated, each_failed
from serentak._pool.tasks import (
    EACH_KINDS,
    PROGRESS_BYTES,
    Frame,
    ItemFailed,
    Kind,
    Task,
    WorkerOptions,
    WorkerProgress,
    describe_exit,
    held_bytes,
    idle_cached_bytes,
    monotonic,
    worker_main,
)
from serentak._process.process import BaseProcess

# Tasks sent to a worker beyond the one it runs, so that it never waits for the
# next one: only while tasks are short (recent average below PREFETCH_BELOW),
# where a round trip per task would cost as much as the task. A long task
# would hold up what was sent ahead of it while another worker idles. Between
# PREFETCH and PREFETCH_MOST tasks: about PREFETCH_WORK seconds of work.
PREFETCH: Final = 2
PREFETCH_MOST: Final = 16
PREFETCH_WORK: Final = 200e-6
PREFETCH_BELOW: Final = 1e-3
# Longer tasks: a worker is sent its next task this long (at most half the usual
# task time) before the one it runs should end, so that it goes on without
# waiting for a round trip through the parent, which on a busy machine can take
# milliseconds (the parent's threads queue for a CPU the workers hold). Sent that
# late, a task waits behind a running one that overruns for little longer than
# this, even if another worker becomes free meanwhile.
PREFETCH_LEAD: Final = 20e-3
# Whenever the supervisor thread is awake (a result came, another worker's top-up
# time passed), a worker whose top-up time is this close (at most a quarter of the
# usual task time) is topped up too: workers running tasks of the same length in
# step cost the parent one wake-up for all their top-ups, not one each, and every
# wake-up of the parent takes a CPU from a worker.
TOP_UP_SLACK: Final = 10e-3
# A worker whose current task has run this many times the average gets no more.
PREFETCH_PATIENCE: Final = 2.0
# A task whose arguments carry this many bytes of out-of-band buffers or more is
# dealt round-robin among the workers free to take it, not to the first of them:
# each of its results is born in a warm shared segment of the worker that made
# it, and the caller holds a map's results until the map returns, so a worker
# that ran more of a map's big tasks than ever before has to make a fresh
# segment (tens of milliseconds of page faults for 64 MiB), while the worker
# left idle keeps warm segments it does not use.
BIG_TASK_BYTES: Final = 1 << 20
_SMOOTHING: Final = 0.1  # weight of the newest task in the average
# While tasks this short are running, the supervisor thread polls for their results
# (for RESULT_SPIN) before it sleeps.
SPIN_BELOW: Final = 200e-6
# A waiting caller whose poll for its reply came to nothing (the CPUs are taken by
# other processes, or the task was longer than usual) sleeps, without polling, in
# its next waits: 1, then twice as many after each poll that fails again, up to
# this many. Polling while the worker waits for a CPU would only delay it more.
COLLECT_BACKOFF_MOST: Final = 64
# Callables a worker keeps; past that, the least recently used is forgotten.
WORKER_FUNCTION_CACHE: Final = 128
# After terminate(): SIGTERM, then SIGKILL for a worker still there this much later.
KILL_GRACE: Final = 0.5
# How often the resident size of a worker running a task with a memory limit is
# read: a task filling memory at 2 GiB/s overshoots its limit by 40 MiB at most.
MEMORY_POLL: Final = 0.02
# A replacement worker that could not be started (fork() failed: EAGAIN under a
# process limit, ENOMEM) is tried again this much later, doubling up to the most.
RESTART_DELAY: Final = 0.05
RESTART_DELAY_MOST: Final = 2.0


class PoolState(enum.Enum):
    """A pool's lifecycle."""

    RUN = "RUN"
    CLOSE = "CLOSE"
    TERMINATE = "TERMINATE"


@dataclasses.dataclass(frozen=True)
class Submit:
    """Queue these tasks."""

    tasks: tuple[Task, ...]


@dataclasses.dataclass(frozen=True)
class Close:
    """No more tasks will come: finish the queued ones, then stop the workers."""


@dataclasses.dataclass(frozen=True)
class Terminate:
    """Stop now: fail every unfinished task, kill the workers."""


@dataclasses.dataclass(frozen=True)
class StopWorkers:
    """SIGTERM (or with ``kill``, SIGKILL) every current worker, then put None into
    ``reply``. Each fails the task it was running, as after any other death; they
    get no more tasks, and fresh workers start at once, so that a task submitted
    once the reply came never goes to one of them: the pool stays usable."""

    kill: bool
    reply: queue.SimpleQueue[None]


@dataclasses.dataclass(frozen=True)
class CancelRunning:
    """The caller of ``sink``'s tasks gave up and wants the running ones stopped:
    kill the workers running them, as for an overdue task. Each is replaced;
    the task ends unheard (the sink no longer claims its tasks, so the ones not
    yet running are dropped at dispatch or, if sent ahead, when the worker's
    death puts them back in the queue)."""

    sink: object


@dataclasses.dataclass(frozen=True)
class AskStats:
    """Put a :class:`PoolStats` snapshot into ``reply``."""

    reply: queue.SimpleQueue[PoolStats]


Command = Submit | Close | Terminate | AskStats | StopWorkers | CancelRunning


class Here(enum.Enum):
    """What became of a Submit that its caller's thread tried to dispatch itself."""

    NOT_DONE = "not done"  # the supervisor thread takes it, as any command
    DONE = "done"  # dispatched; the sleeping supervisor thread has nothing new to keep
    DONE_WAKE = "done, wake"  # dispatched; the supervisor thread has a new deadline to keep


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    """What one worker process did.

    Attributes:
        pid: its process id.
        alive: whether it is still running.
        tasks_done: tasks it completed: each item of a map counts, as does each apply.
        tasks_failed: applies and whole chunks that raised (an item of an imap
            that raises alone is in ``tasks_done``).
        busy_seconds: time it spent running tasks.
        ended: how it ended, if it has ("exited with code 0", "killed by SIGKILL ...").
        chunks_done: messages of work it completed: an apply, or a map's chunk.
    """

    pid: int
    alive: bool
    tasks_done: int
    tasks_failed: int
    busy_seconds: float
    ended: str | None
    chunks_done: int = 0


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """Where a pool's time went: ``pool.stats()``.

    Attributes:
        workers: every worker the pool has had, current ones first.
        restarts: workers started to replace one that died or retired.
        tasks_lost: tasks failed because their worker died.
        tasks_timed_out: tasks failed because they overran their timeout.
        retries: tasks run again after a failure (``retries=``), each run counted.
        tasks_over_memory: tasks stopped because their worker grew past ``memory_limit``.
    """

    workers: tuple[WorkerStats, ...]
    restarts: int
    tasks_lost: int
    tasks_timed_out: int
    retries: int = 0
    tasks_over_memory: int = 0

    @property
    def tasks_done(self) -> int:
        """Tasks completed, by all workers."""
        return sum(w.tasks_done for w in self.workers)

    @property
    def tasks_failed(self) -> int:
        """Tasks that raised, by all workers."""
        return sum(w.tasks_failed for w in self.workers)

    @property
    def chunks_done(self) -> int:
        """Applies and map chunks completed, by all workers."""
        return sum(w.chunks_done for w in self.workers)

    @property
    def busy_seconds(self) -> float:
        """Time spent running tasks, by all workers."""
        return sum(w.busy_seconds for w in self.workers)

    def __str__(self) -> str:
        lines = [
            f"{'pid':>8} {'state':>7} {'done':>7} {'chunks':>7} {'failed':>7} {'busy s':>9}  ended"
        ]
        for w in self.workers:
            state = "alive" if w.alive else "gone"
            row = f"{w.pid:>8} {state:>7} {w.tasks_done:>7} {w.chunks_done:>7} {w.tasks_failed:>7}"
            lines.append(f"{row} {w.busy_seconds:>9.3f}  {w.ended or ''}")
        lines.append(
            f"restarts {self.restarts}, lost {self.tasks_lost}, timed out {self.tasks_timed_out}, "
            f"over memory {self.tasks_over_memory}, retries {self.retries}"
        )
        return "\n".join(lines)


# The tasks whose results the supervisor thread unpickles while it would wait: map
# chunks, whose results the caller wants all of at once (apply results are
# unpickled by whoever asks for them); and only results this big: a small one
# costs more to schedule than to unpickle with the rest at the end.
_PRELOADED: Final = frozenset({Kind.MAP, Kind.STARMAP})
PRELOAD_BYTES: Final = 4096


def top_up_time(running: Task, average: float, now: float) -> float | None:
    """When a worker running ``running`` may be sent its next task, tasks taking
    ``average`` seconds lately: PREFETCH_LEAD before ``running`` should end.

    Its end is known from its own expected time if it has one (a map's chunk):
    the next then goes at once if it is shorter than the lead, so that a worker
    never waits for a round trip between a map's chunks, even as they shrink
    towards the end. Else from the usual task time, and then at most half of it
    ahead. None: not while ``running`` runs, as it overran its time by
    PREFETCH_PATIENCE (what would be sent could wait long behind it).
    """
    started = running.started
    usual = average if running.expected is None else running.expected
    if started is None or now - started > PREFETCH_PATIENCE * usual:
        return None
    if running.expected is not None:
        return started + max(0.0, usual - PREFETCH_LEAD)
    return started + usual - min(usual / 2, PREFETCH_LEAD)


def _long(task: Task) -> bool:
    """Whether ``task`` is expected to take longer than PREFETCH_WORK. Such a task
    is queued on a worker only behind the one it runs, and nothing is queued
    behind it: a worker is never handed several long tasks while another idles
    (the imbalance stays under one task)."""
    return task.expected is not None and task.expected > PREFETCH_WORK


class _Worker:
    """One worker process as the supervisor sees it."""

    def __init__(self, process: BaseProcess, conn: Connection, progress: Segment) -> None:
        self.process = process
        self.conn = conn
        self.progress = progress  # what it began and finished, readable after its death
        self.pid = process.pid or 0
        self.sentinel = process.sentinel
        self.in_flight: collections.deque[Task] = collections.deque()
        self.known: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.completed = 0  # applies and chunks
        self.items_done = 0  # applies and map items
        self.failed = 0
        self.busy_us = 0
        self.retiring = False  # reached maxtasksperchild: gets no more tasks
        self.big_turn = 0  # when it was last dealt a big task (a deal number; 0: never)
        self.timed_out: Task | None = None  # killed by us because this task overran
        self.cancelled: Task | None = None  # killed by us because this task's caller gave up
        # Killed by us because this task's memory limit was passed, and the size reached.
        self.over_memory: tuple[Task, int] | None = None
        self.gone = False  # exit handled, descriptors closed
        # Bytes not yet written to the worker: the supervisor never blocks on a
        # write, or a worker writing a big result while we write it a big task
        # would wait for us as we wait for it.
        self.outbox: collections.deque[tuple[memoryview, tuple[int, ...]]] = collections.deque()
        self.waiting_to_write = False  # registered for EVENT_WRITE
        # Out of the selector: a caller waiting for its reply reads it (Supervisor.collect).
        self.collecting = False


class Supervisor:
    """The engine behind a Pool. Every attribute is owned by whichever thread holds
    ``_step_lock``: the supervisor thread, for each round of its loop, or a thread
    submitting tasks while the supervisor thread sleeps (it dispatches them itself,
    saving a thread wake-up per task). ``commands`` and the wake-up pipe are
    appended to by any thread.

    Args:
        make_process: builds (not starts) a worker process for a target and args.
        processes: how many workers to keep.
        initializer: run by each worker before its first task.
        initargs: arguments for ``initializer``.
        maxtasksperchild: tasks a worker runs before it is replaced (None: no limit).
        options: how workers run (memory limit, environment).
    """

    def __init__(
        self,
        make_process: Callable[[Callable[..., object], tuple[Any, ...]], BaseProcess],
        processes: int,
        initializer: Callable[..., object] | None,
        initargs: Sequence[Any],
        maxtasksperchild: int | None,
        options: WorkerOptions,
    ) -> None:
        self._make_process = make_process
        self._options = options
        self._size = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasks = maxtasksperchild
        self.commands: collections.deque[Command] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._muter = Muter(self._selector)  # for collect()
        self._workers: dict[int, _Worker] = {}  # by pid
        self._pending: collections.deque[Task] = collections.deque()
        self._state = PoolState.RUN
        self._broken: BaseException | None = None  # the initializer failed
        self._kill_deadline: float | None = None
        # When the supervisor thread's sleep ends at the latest (monotonic), e.g.
        # 5123.42; None: it sleeps until woken. Set under the step lock.
        self._wakes_at: float | None = None
        self._ended: list[WorkerStats] = []  # workers that are gone
        self._restarts = 0
        self._lost = 0
        self._timed_out = 0
        self._over_memory = 0
        self._retries = 0
        # Tasks to run again once their backoff has passed: (when, order, task).
        self._delayed: list[tuple[float, int, Task]] = []
        self._delay_order = itertools.count()
        self._big_deals = itertools.count(1)  # numbers the big tasks dealt (big_turn)
        self._next_memory_check: float | None = None
        self._started_workers = 0
        self._restart_at: float | None = None  # when to try again to start a worker
        self._restart_delay = 0.0
        self._average_busy: float | None = None  # seconds per task, recent tasks weigh most
        # Map results not yet unpickled: the supervisor thread unpickles them when it
        # has nothing else to do, so that the work overlaps with the workers'.
        self._unloaded: collections.deque[Outcome] = collections.deque()
        # Rounds in which a waiting caller read a worker's connection (collect): a
        # readiness ``select`` reported before such a round may be stale.
        self._collected = 0
        self._swept = 0  # _collected when _step last checked for a connection left muted
        self._collect_backoff = 0  # waits without polling after the last failed poll
        self._collect_skips = 0  # of which still to come
        self._send_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self._finished = False
        self._thread = threading.Thread(
            target=self._run, name="serentak-pool-supervisor", daemon=True
        )

    # ---- other threads ---------------------------------------------------------------

    def start(self) -> None:
        """Start the workers (here, so that start-up errors reach the caller), then the thread."""
        try:
            for _ in range(self._size):
                self._start_worker()
        except BaseException:
            for worker in list(self._workers.values()):  # _forget removes each
                worker.process.kill()
                self._forget(worker)
            self._muter.close()
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise
        self._thread.start()

    def send(self, command: Command) -> None:
        """Queue a command for the supervisor thread and wake it.

        Once the supervisor thread has finished, the command is answered here:
        a late task fails, a stats request gets the final figures.
        """
        with self._send_lock:
            if self._finished:
                self._answer_late(command)
                return
            here = self._submit_here(command) if isinstance(command, Submit) else Here.NOT_DONE
            if here is Here.DONE:
                return
            if here is Here.NOT_DONE:
                self.commands.append(command)
            # Under the lock: the supervisor closes the pipe only once finished.
            # Without releasing the GIL, so that the supervisor thread, woken,
            # does not take it from us before we are done.
            _native.poke(self._wake_w)

    def _submit_here(self, command: Submit) -> Here:
        """Queue and dispatch ``command``'s tasks in this thread, if the supervisor
        thread is asleep and nothing is queued before them."""
        if self.commands or not self._step_lock.acquire(blocking=False):
            return Here.NOT_DONE
        try:
            if self._state is not PoolState.RUN or self._broken is not None:
                return Here.NOT_DONE
            self._pending.extend(command.tasks)
            self._dispatch()
            # The supervisor thread sleeps until the deadline it knew of when it
            # went to sleep: an earlier one these tasks brought (a timeout, a
            # memory check, the time to send a worker its next long task ahead)
            # must wake it, or a worker would wait a round trip for its next task.
            timeout = self._next_timeout()
            if timeout is None:
                return Here.DONE
            wakes_at = self._wakes_at
            return (
                Here.DONE_WAKE
                if wakes_at is None or monotonic() + timeout < wakes_at
                else Here.DONE
            )
        finally:
            self._step_lock.release()

    def collect(self, sink: object, seconds: float) -> None:
        """Read the result of ``sink``'s running task in the calling thread, polling
        its worker's connection for up to ``seconds`` without sleeping.

        For a caller about to wait for a short task: the reply is read, and the
        result set, by the thread that wants it, saving two thread wake-ups (the
        supervisor's, then the caller's), each tens of microseconds on a virtual
        machine. Does nothing unless tasks have lately been short, the sink's
        task is running, and the supervisor thread is asleep (it then sleeps on:
        the connection is out of its selector while this thread polls it).
        Returns when the outcome is delivered, or after ``seconds``, or at once.
        """
        if not self._step_lock.acquire(blocking=False):
            return
        try:
            worker = self._running(sink)
            if worker is None or not self._expecting_results_soon():
                return
            if self._maxtasks is not None and worker.completed + 1 >= self._maxtasks:
                return  # its reply retires it: its successor starts in the supervisor thread
            if self._collect_skips:
                self._collect_skips -= 1
                return
            self._collected += 1
            conn = worker.conn
            fd = conn.fileno()
            # Muted until the reply is read: else it would wake the supervisor thread
            # (for nothing) as it lands.
            self._muter.mute(fd)
            worker.collecting = True
            reading = False
            try:
                if conn.has_buffered_data() or _native.spin_readable(fd, seconds):
                    self._collect_backoff = 0
                    reading = True
                    self._read_results(worker, readable=True)
                else:
                    backoff = min(COLLECT_BACKOFF_MOST, max(1, 2 * self._collect_backoff))
                    self._collect_backoff = self._collect_skips = backoff
            except BaseException:
                if reading:
                    # Interrupted (Ctrl-C in the main thread) between reading a
                    # frame and handling it: the worker's channel and its task
                    # list can no longer be trusted. It is killed, and the
                    # supervisor thread handles it as any dead worker.
                    worker.process.kill()
                raise
            finally:
                self._unmute(worker)
            # What may have set a deadline the sleeping supervisor thread does not
            # know: a task dispatched now, one sent ahead that now runs, a retry.
            deadlines = bool(self._pending or self._delayed or worker.in_flight)
            if self._pending or self._state is not PoolState.RUN:
                # The rest of a round (deadlines passed are the supervisor
                # thread's: it wakes for them).
                self._dispatch()
                self._maybe_finish()
            if (deadlines or self._restart_at is not None) and self._next_timeout() is not None:
                with self._send_lock:
                    if not self._finished:  # else the pipe is closed
                        _native.poke(self._wake_w)
        finally:
            self._step_lock.release()

    def _unmute(self, worker: _Worker) -> None:
        """Watch ``worker``'s connection again, for writes too if bytes wait to go."""
        worker.waiting_to_write = bool(worker.outbox)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if worker.waiting_to_write else 0)
        self._muter.unmute(worker.conn.fileno(), events)
        worker.collecting = False

    def _running(self, sink: object) -> _Worker | None:
        """The worker running a task of ``sink``, if one is."""
        for worker in self._workers.values():
            if worker.in_flight and worker.in_flight[0].sink is sink and not worker.gone:
                return worker
        return None

    def join(self, timeout: float | None = None) -> None:
        """Wait for the supervisor thread to finish."""
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def workers(self) -> list[_Worker]:
        """The current workers: a snapshot taken under the step lock (for ``Pool._pool``)."""
        with self._step_lock:
            return list(self._workers.values())

    def worker_pids(self) -> list[int]:
        """The pids of the current workers (a snapshot, for tests and stats)."""
        return list(self._workers)

    # ---- the supervisor thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._workers or (self._state is PoolState.RUN and self._broken is None):
                with self._step_lock:
                    timeout = self._next_timeout()
                    self._wakes_at = None if timeout is None else monotonic() + timeout
                    spin = self._expecting_results_soon()
                    collected = self._collected
                ready = self._selector.select(0) if self._unloaded else []
                if self._unloaded and not ready:
                    self._preload_one()
                    continue
                if not ready and spin:
                    ready = self._poll_briefly()
                if not ready:
                    ready = self._selector.select(timeout)
                with self._step_lock:
                    self._step(ready, fresh=collected == self._collected)
        finally:
            self._fail_everything(PoolTerminatedError("the pool stopped before the task ran"))
            with self._send_lock:
                self._finished = True
                while self.commands:
                    self._answer_late(self.commands.popleft())
            self._muter.close()
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _preload_one(self) -> None:
        """Unpickle the oldest map result not yet unpickled (as the stdlib's result
        thread unpickles every result). One at a time, between rounds: results
        that arrive meanwhile wait for one unpickling at most."""
        self._unloaded.popleft().preload()

    def _expecting_results_soon(self) -> bool:
        """Whether tasks are running and tasks have lately been short."""
        average = self._average_busy
        return (
            self._options.spin
            and average is not None
            and average < SPIN_BELOW
            and any(worker.in_flight for worker in self._workers.values())
        )

    def _poll_briefly(self) -> list[tuple[selectors.SelectorKey, int]]:
        """What ``select`` reports within RESULT_SPIN, polling without sleeping."""
        deadline = monotonic() + RESULT_SPIN
        while True:
            ready = self._selector.select(0)
            if ready or monotonic() >= deadline:
                return ready

    def _step(self, ready: list[tuple[selectors.SelectorKey, int]], *, fresh: bool = True) -> None:
        """One round of the loop: handle what ``select`` reported, then dispatch.
        ``fresh``: no other thread has read a worker's connection since the
        ``select``, so a connection it called readable has bytes waiting."""
        if self._swept != self._collected:  # (no collect runs: we hold the step lock)
            self._swept = self._collected
            for worker in self._workers.values():
                if worker.collecting:
                    # A collect interrupted (Ctrl-C) before it could unmute it.
                    self._unmute(worker)
        for key, events in ready:
            if key.data is None:
                self._take_commands()
                continue
            kind, worker = key.data
            if worker.gone:
                continue  # its exit, earlier in this batch, was handled
            if kind == "exit":
                self._worker_exited(worker)
                continue
            if events & selectors.EVENT_WRITE:
                self._flush(worker)
            if events & selectors.EVENT_READ:
                self._read_results(worker, readable=fresh)
        self._check_deadlines()
        self._dispatch()
        self._maybe_finish()

    def _answer_late(self, command: Command) -> None:
        if isinstance(command, AskStats):
            command.reply.put(self.stats())
        elif isinstance(command, StopWorkers):
            command.reply.put(None)
        elif isinstance(command, Submit):
            reason = self._broken or PoolTerminatedError("the pool has stopped")
            for task in command.tasks:
                task.finish(Outcome.of_exception(reason))

    def _take_commands(self) -> None:
        try:
            os.read(self._wake_r, 65536)
        except BlockingIOError:
            pass
        while self.commands:
            command = self.commands.popleft()
            if isinstance(command, Submit):
                if self._state is PoolState.TERMINATE or self._broken is not None:
                    reason = self._broken or PoolTerminatedError("the pool was terminated")
                    for task in command.tasks:
                        task.finish(Outcome.of_exception(reason))
                else:
                    self._pending.extend(command.tasks)
            elif isinstance(command, Close):
                if self._state is PoolState.RUN:
                    self._state = PoolState.CLOSE
            elif isinstance(command, AskStats):
                command.reply.put(self.stats())
            elif isinstance(command, StopWorkers):
                self._stop_workers(kill=command.kill)
                command.reply.put(None)
            elif isinstance(command, CancelRunning):
                self._cancel_running(command.sink)
            else:
                self._terminate()

    def _stop_workers(self, *, kill: bool) -> None:
        for worker in list(self._workers.values()):
            worker.retiring = True  # its death, when seen, fails only its running task
            if kill:
                worker.process.kill()
            else:
                worker.process.terminate()
        self._replace_if_needed()

    def _cancel_running(self, sink: object) -> None:
        for worker in self._workers.values():
            task = worker.in_flight[0] if worker.in_flight else None
            if task is not None and task.sink is sink and worker.cancelled is None:
                worker.cancelled = task
                os.kill(worker.pid, signal.SIGKILL)

    def _terminate(self) -> None:
        if self._state is PoolState.TERMINATE:
            return
        self._state = PoolState.TERMINATE
        self._fail_everything(
            PoolTerminatedError("the pool was terminated before the task finished")
        )
        for worker in self._workers.values():
            worker.process.terminate()
        self._kill_deadline = monotonic() + KILL_GRACE

    def _fail_everything(self, reason: BaseException) -> None:
        self._unloaded.clear()
        while self._delayed:
            heapq.heappop(self._delayed)[2].finish(Outcome.of_exception(reason))
        while self._pending:
            task = self._pending.popleft()
            task.finish(Outcome.of_exception(reason))
        for worker in self._workers.values():
            while worker.in_flight:
                task = worker.in_flight.popleft()
                task.finish(Outcome.of_exception(reason))

    def _maybe_finish(self) -> None:
        """After Close: once nothing is queued or running, tell the workers to stop."""
        if self._state is not PoolState.CLOSE or self._pending or self._delayed:
            return
        for worker in self._workers.values():
            if not worker.in_flight and not worker.retiring:
                worker.retiring = True
                self._send(worker, Frame(Kind.STOP))

    def stats(self) -> PoolStats:
        """A snapshot of the statistics (supervisor thread, or after it finished)."""
        current = tuple(
            WorkerStats(w.pid, True, w.items_done, w.failed, w.busy_us / 1e6, None, w.completed)
            for w in self._workers.values()
        )
        return PoolStats(
            current + tuple(self._ended),
            self._restarts,
            self._lost,
            self._timed_out,
            self._retries,
            self._over_memory,
        )

    # ---- workers ----------------------------------------------------------------------

    def _start_worker(self) -> _Worker:
        ours, theirs = Pipe()
        progress: Segment | None = None
        try:
            progress = Segment(PROGRESS_BYTES, name="serentak-progress")
            args = (theirs, self._initializer, self._initargs, self._options, progress)
            process = self._make_process(worker_main, args)
            process._ignores_sigint = True  # from its first instruction: see worker_main
            process.start()
        except BaseException:
            ours.close()
            if progress is not None:
                progress.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(process, ours, progress)
        self._workers[worker.pid] = worker
        self._started_workers += 1
        if self._started_workers > self._size:
            self._restarts += 1
        self._selector.register(ours.fileno(), selectors.EVENT_READ, ("conn", worker))
        self._selector.register(worker.sentinel, selectors.EVENT_READ, ("exit", worker))
        return worker

    def _forget(self, worker: _Worker) -> None:
        worker.gone = True
        for fd in (worker.conn.fileno(), worker.sentinel):
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError):
                pass
        self._workers.pop(worker.pid, None)
        worker.conn.close()
        worker.progress.close()
        worker.process.join()
        worker.process.close()

    def _replace_if_needed(self) -> None:
        """Keep ``processes`` workers while running; after Close, as many as the
        queued tasks need: every task submitted before close() still runs, even
        when the workers that would have run it retire (maxtasksperchild) or die."""
        if self._state is PoolState.TERMINATE or self._broken is not None:
            return
        if self._restart_at is not None and monotonic() < self._restart_at:
            return  # the last try failed: _check_deadlines tries again
        active = sum(1 for w in self._workers.values() if not w.retiring)
        wanted = self._size if self._state is PoolState.RUN else min(self._size, len(self._pending))
        for _ in range(wanted - active):
            try:
                self._start_worker()
            except OSError:
                # fork() failed (EAGAIN at a process limit, ENOMEM): the
                # workers left go on, the queued tasks wait for them or for
                # this worker, tried again with growing delays.
                delay = min(RESTART_DELAY_MOST, max(RESTART_DELAY, 2 * self._restart_delay))
                self._restart_delay = delay
                self._restart_at = monotonic() + delay
                return
        self._restart_at = None
        self._restart_delay = 0.0

    def _worker_exited(self, worker: _Worker) -> None:
        # Results it sent before dying are still in the socket: take them first.
        self._read_results(worker, until_eof=True)
        worker.process.join()
        exitcode = worker.process.exitcode
        progress = WorkerProgress.read(worker.progress.buf)
        if (
            worker.in_flight
            and progress.task_id != worker.in_flight[0].task_id
            and worker.timed_out is not worker.in_flight[0]
            and (worker.over_memory is None or worker.over_memory[0] is not worker.in_flight[0])
        ):
            # It died before it began its first task: none of what it held ran.
            self._pending.extendleft(reversed(worker.in_flight))
            worker.in_flight.clear()
        if worker.cancelled is not None and worker.in_flight:
            if worker.in_flight[0] is worker.cancelled:
                # Nobody waits for its outcome: it ends (releasing its place in a
                # map's look-ahead) without counting as lost.
                worker.in_flight.popleft().finish(
                    Outcome.of_exception(PoolTerminatedError("the task was cancelled"))
                )
            # Killed by us, not by what it ran: the rest of what it held (the task
            # that began if the cancelled one finished first) goes back to the queue.
            self._pending.extendleft(reversed(worker.in_flight))
            worker.in_flight.clear()
        if worker.in_flight:
            lost = worker.in_flight.popleft()
            error: BaseException
            if worker.timed_out is lost:
                error = TimeoutError(
                    f"the task ran longer than its timeout of {lost.timeout} s; "
                    f"its worker process {worker.pid} was killed"
                )
            elif worker.over_memory is not None and worker.over_memory[0] is lost:
                error = MemoryLimitError(
                    f"the task's worker process {worker.pid} reached "
                    f"{format_size(worker.over_memory[1])} of resident memory, past the "
                    f"task's memory_limit of {format_size(lost.memory_limit or 0)}; the "
                    "worker was killed and replaced"
                )
            else:
                error = WorkerLostError(
                    f"{describe_exit(worker.pid, exitcode)} while running the task"
                )
            failed = True
            if lost.kind in EACH_KINDS and lost.items > 1 and lost.retry is None:
                worker.items_done += len(progress.results)
                failed = self._salvage(lost, progress, error)
            else:
                self._end(lost, Outcome.of_exception(error))
            if not failed:
                pass  # it died between two items of a chunk: no item was lost
            elif isinstance(error, TimeoutError):
                self._timed_out += 1
            elif isinstance(error, MemoryLimitError):
                self._over_memory += 1
            else:
                self._lost += 1
            # Sent ahead but never started: back to the front, in order.
            self._pending.extendleft(reversed(worker.in_flight))
            worker.in_flight.clear()
        self._forget(worker)
        self._ended.append(
            WorkerStats(
                worker.pid,
                False,
                worker.items_done,
                worker.failed,
                worker.busy_us / 1e6,
                describe_exit(worker.pid, exitcode),
                worker.completed,
            )
        )
        self._replace_if_needed()

    def _salvage(self, lost: Task, progress: WorkerProgress, error: BaseException) -> bool:
        """A chunk whose items fail alone lost its worker: the items it finished
        keep their results, the one it was running fails with ``error``, and
        the rest (which never began) are queued again as a task of their own.
        Returns whether an item was running (and failed)."""
        finished = [Outcome(True, result).value() for result in progress.results]
        if progress.running:
            finished.append(ItemError(error))
        head = [*lost.partials, Outcome.of_value(finished)]
        done = progress.first + len(finished)  # finished or failed
        rest_count = lost.items - done
        if rest_count <= 0:
            lost.finish(concatenated(head))
            return progress.running
        try:
            items = unpack(lost.payload, [os.dup(fd) for fd in lost.fds])
            packed = pack(items[done:])
        except Exception:  # what it was sent can be read again: this cannot happen
            head.append(each_failed(Outcome.of_exception(error), rest_count))
            lost.finish(concatenated(head))
            return True
        rest = Task.encoded(
            lost.task_id,
            lost.kind,
            lost.function,
            packed,
            _Rest(lost, head, rest_count),
            0,
            lost.timeout,
            memory_limit=lost.memory_limit,
            items=rest_count,
        )
        for fd in lost.fds:
            os.close(fd)
        lost.fds = ()
        self._pending.appendleft(rest)
        return progress.running

    def _read_results(
        self, worker: _Worker, *, until_eof: bool = False, readable: bool = False
    ) -> None:
        """Handle the frames ``worker`` sent; ``readable``: select just said there is one."""
        conn = worker.conn
        while readable or conn.has_buffered_data() or conn.poll(0):
            readable = False
            try:
                frame = Frame.receive(conn)
            except (EOFError, OSError):
                return  # it died, possibly mid-frame: the sentinel handles the rest
            self._handle(worker, frame)
            if not until_eof and not conn.has_buffered_data():
                return

    def _handle(self, worker: _Worker, frame: Frame) -> None:
        kind = frame.kind
        if kind is Kind.READY:
            return
        if kind is Kind.RETIRE:
            # Over its memory limit: it runs nothing more. What was sent ahead
            # never started, so it goes back to the front of the queue.
            worker.retiring = True
            self._pending.extendleft(reversed(worker.in_flight))
            worker.in_flight.clear()
            self._replace_if_needed()
            return
        if kind is Kind.PARTIAL:
            if worker.in_flight and worker.in_flight[0].task_id == frame.task_id:
                task = worker.in_flight[0]
                task.partials.append(Outcome(True, bytes(frame.payload), fds=frame.fds))
                task.delivered += frame.func_id
            else:
                for fd in frame.fds:
                    os.close(fd)
            return
        if kind is Kind.INIT_FAILED:
            outcome = Outcome(False, bytes(frame.payload), fds=frame.fds)
            try:
                outcome.value()
            except BaseException as exc:
                self._broken = exc
            self._fail_everything(self._broken or RuntimeError("the initializer failed"))
            return
        if not worker.in_flight or worker.in_flight[0].task_id != frame.task_id:
            for fd in frame.fds:  # a result for a task already failed (terminate, timeout)
                os.close(fd)
            return
        task = worker.in_flight.popleft()
        ok = kind is Kind.DONE
        outcome = Outcome(ok, bytes(frame.payload), fds=frame.fds)
        if task.partials:
            last = outcome if ok else each_failed(outcome, task.items - task.delivered)
            outcome = concatenated([*task.partials, last])
        self._end(task, outcome, frame.busy_us)
        if ok and task.kind in _PRELOADED and len(frame.payload) >= PRELOAD_BYTES:
            self._unloaded.append(outcome)
        worker.completed += 1
        worker.items_done += task.items
        worker.failed += not ok
        worker.busy_us += frame.busy_us
        busy = frame.busy_us / 1e6
        previous = self._average_busy
        self._average_busy = busy if previous is None else previous + _SMOOTHING * (busy - previous)
        if worker.in_flight:
            worker.in_flight[0].started = monotonic()
        if (
            self._maxtasks is not None
            and worker.completed >= self._maxtasks
            and not worker.retiring
        ):
            worker.retiring = True
            if not worker.in_flight:
                self._send(worker, Frame(Kind.STOP))
            self._replace_if_needed()
        elif worker.retiring and not worker.in_flight:
            self._send(worker, Frame(Kind.STOP))

    def _end(self, task: Task, outcome: Outcome, busy_us: int = 0) -> None:
        """``task`` ended with ``outcome``: deliver it, or, if the task failed and its
        retry policy says so, queue it to run again (with its arguments and
        descriptors, kept) after its backoff."""
        policy = task.retry
        if policy is None or self._state is PoolState.TERMINATE:
            task.finish(outcome, busy_us)
            return
        error = outcome.error() if not outcome.ok else _item_error(task, outcome)
        if outcome.ok and error is not None and policy.retries_after(task.attempt, error):
            outcome = Outcome.of_exception(error)  # an item of the chunk raised: run it again
        elif outcome.ok:
            task.finish(outcome, busy_us)
            return
        if error is None or not policy.retries_after(task.attempt, error):
            if error is not None and task.attempt > 1:
                outcome = Outcome.of_exception(final_error(error, task.attempt, task.first_failure))
            task.finish(outcome, busy_us)
            return
        if task.first_failure is None:
            task.first_failure = error
        task.attempt += 1
        # Its items run again, all of them: what came ahead in PARTIAL frames goes.
        task.partials.clear()
        task.delivered = 0
        task.started = None
        self._retries += 1
        delay = policy.delay(task.attempt)
        if delay:
            heapq.heappush(self._delayed, (monotonic() + delay, next(self._delay_order), task))
        else:
            self._pending.append(task)

    def _send(self, worker: _Worker, frame: Frame) -> None:
        """Queue ``frame`` for ``worker`` and write what fits without blocking."""
        self._queue(worker, frame)
        if len(worker.outbox) == 1:
            self._flush(worker)

    @staticmethod
    def _queue(worker: _Worker, frame: Frame) -> None:
        """Queue ``frame`` for ``worker``; the caller flushes."""
        data = memoryview(transport_frame(frame.encode(), has_fds=bool(frame.fds)))
        worker.outbox.append((data, frame.fds))

    @staticmethod
    def _coalesce(outbox: collections.deque[tuple[memoryview, tuple[int, ...]]]) -> memoryview:
        """The head of ``outbox``, joined with the frames after it that carry no fds
        into one write (it carries none either)."""
        if len(outbox) < 2 or outbox[1][1]:
            return outbox[0][0]
        parts = []
        while outbox and not outbox[0][1]:
            parts.append(outbox.popleft()[0])
        data = memoryview(b"".join(parts))
        outbox.appendleft((data, ()))
        return data

    def _flush(self, worker: _Worker) -> None:
        """Write queued bytes until the socket is full; ask to be woken when it drains."""
        try:
            while worker.outbox:
                data, fds = worker.outbox[0]
                if not fds:
                    data = self._coalesce(worker.outbox)
                sent = worker.conn.send_some(data, fds)
                if sent < len(data):
                    # The fds went with the first byte: the rest goes without.
                    worker.outbox[0] = (data[sent:], ()) if sent else (data, fds)
                    break
                worker.outbox.popleft()
        except OSError:
            worker.outbox.clear()  # it died: its sentinel will say so, its tasks are handled there
        waiting = bool(worker.outbox)
        if waiting != worker.waiting_to_write and not worker.collecting:
            worker.waiting_to_write = waiting
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0)
            self._selector.modify(worker.conn.fileno(), events, ("conn", worker))

    # ---- dispatch and deadlines ------------------------------------------------------------

    def _dispatch(self) -> None:
        """Send pending tasks to workers with room; each worker's frames in one write."""
        if not self._pending or self._state is PoolState.TERMINATE:
            return
        try:
            self._dispatch_to_workers(monotonic())
        finally:  # the frames _send_task queued
            for worker in self._workers.values():
                if worker.outbox and not worker.waiting_to_write:
                    self._flush(worker)

    def _dispatch_to_workers(self, now: float) -> None:
        if len(self._pending) == 1:
            # One task (an apply): the first idle worker takes it, as below (the
            # one that last ran a task may still be polling for the next); a big
            # one, the idle worker that least recently took a big task.
            chosen: _Worker | None = None
            big = self._pending[0].buffered >= BIG_TASK_BYTES
            for worker in self._workers.values():
                if not worker.in_flight and not worker.retiring and self._may_take_more(worker):
                    if not big:
                        chosen = worker
                        break
                    if chosen is None or worker.big_turn < chosen.big_turn:
                        chosen = worker
            if chosen is not None:
                self._send_task(chosen, self._pending.popleft())
                return
        room: list[tuple[_Worker, int]] = []  # (worker, how many more tasks it may take)
        for worker in self._workers.values():
            depth = self._depth(worker, now)
            capacity = depth - len(worker.in_flight)
            # A busy worker is topped up once half its depth is free: several
            # tasks go in one write, and its results come back in bursts.
            if worker.retiring or (worker.in_flight and capacity * 2 < depth - 1):
                continue
            # (A long task can only be first or last: nothing is queued after one.)
            in_flight = worker.in_flight
            if len(in_flight) > 1 and (_long(in_flight[0]) or _long(in_flight[-1])):
                continue
            if self._maxtasks is not None:
                capacity = min(capacity, self._maxtasks - worker.completed - len(worker.in_flight))
            if capacity > 0:
                room.append((worker, capacity))
        # Idle workers first, then one task to each in turn: a few new tasks of
        # unknown length are spread out, not all sent ahead to one worker.
        # Among equals, the one that least recently took a big task first.
        if len(room) > 1:
            room.sort(key=lambda entry: (len(entry[0].in_flight), entry[0].big_turn))
        while room:
            left = []
            for worker, capacity in room:
                if not self._pending:
                    return
                if len(worker.in_flight) > 1 and _long(self._pending[0]):
                    continue  # it waits for a worker with nothing queued
                sent = self._send_task(worker, self._pending.popleft())
                if capacity - sent > 0:
                    left.append((worker, capacity - sent))
            room = left

    def _may_take_more(self, worker: _Worker) -> bool:
        """Whether ``worker`` has tasks left before it retires (maxtasksperchild)."""
        return (
            self._maxtasks is None or self._maxtasks - worker.completed - len(worker.in_flight) > 0
        )

    def _depth(self, worker: _Worker, now: float) -> int:
        """How many tasks ``worker`` may hold: several while tasks are short, two
        near the end of a longer one (see _top_up_time), and only while its
        current one is not taking longer than they usually do (a held task must
        not hold up tasks sent ahead of it)."""
        average = self._average_busy
        if average is None:
            return 1
        if average >= PREFETCH_BELOW:
            top_up = self._top_up_time(worker, now)
            slack = min(TOP_UP_SLACK, average / 4)
            return 2 if top_up is not None and now >= top_up - slack else 1
        started = worker.in_flight[0].started if worker.in_flight else None
        if started is not None and now - started > PREFETCH_PATIENCE * average:
            return 1
        return 1 + min(PREFETCH_MOST, max(PREFETCH, int(PREFETCH_WORK / max(average, 1e-6))))

    def _send_task(self, worker: _Worker, task: Task) -> bool:
        """Queue ``task`` for ``worker`` (``_dispatch`` writes it); False if its sink
        withdrew it (cancelled)."""
        if not task.sink.claim():
            return False
        function = task.function
        if function.func_id in worker.known:
            worker.known.move_to_end(function.func_id)
        else:
            self._queue(worker, Frame(Kind.FUNCTION, 0, function.func_id, function.payload))
            worker.known[function.func_id] = None
            if len(worker.known) > WORKER_FUNCTION_CACHE:
                forgotten, _ = worker.known.popitem(last=False)
                self._queue(worker, Frame(Kind.FORGET, 0, forgotten))
        if not worker.in_flight:
            task.started = monotonic()
        if task.buffered >= BIG_TASK_BYTES:
            worker.big_turn = next(self._big_deals)
        worker.in_flight.append(task)
        self._queue(
            worker, Frame(task.kind, task.task_id, function.func_id, task.payload, fds=task.fds)
        )
        return True

    def _top_up_time(self, worker: _Worker, now: float) -> float | None:
        """When ``worker``, running one task while tasks take PREFETCH_BELOW or more,
        may be sent its next (see :func:`top_up_time`); None: not while this task
        runs, or it holds a task already."""
        average = self._average_busy
        if average is None or average < PREFETCH_BELOW or len(worker.in_flight) != 1:
            return None
        return top_up_time(worker.in_flight[0], average, now)

    def _next_timeout(self) -> float | None:
        restart = self._restart_at
        deadlines = [
            w.in_flight[0].started + w.in_flight[0].timeout
            for w in self._workers.values()
            if w.in_flight
            and w.in_flight[0].timeout is not None
            and w.timed_out is None
            and w.over_memory is None
            and w.in_flight[0].started is not None
        ]
        if self._kill_deadline is not None:
            deadlines.append(self._kill_deadline)
        if self._delayed:
            deadlines.append(self._delayed[0][0])
        if any(w.in_flight and w.in_flight[0].memory_limit for w in self._workers.values()):
            if self._next_memory_check is None:
                self._next_memory_check = monotonic() + MEMORY_POLL
            deadlines.append(self._next_memory_check)
        else:
            self._next_memory_check = None
        if restart is not None:
            deadlines.append(restart)
        if self._pending and self._state is not PoolState.TERMINATE:
            now = monotonic()
            for worker in self._workers.values():
                top_up = self._top_up_time(worker, now)
                if top_up is not None and not worker.retiring and self._may_take_more(worker):
                    deadlines.append(top_up)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - monotonic())

    def _check_deadlines(self) -> None:
        now = monotonic()
        if self._restart_at is not None and now >= self._restart_at:
            self._replace_if_needed()
        if self._kill_deadline is not None and now >= self._kill_deadline:
            self._kill_deadline = None
            for worker in self._workers.values():
                worker.process.kill()
        for worker in self._workers.values():
            task = worker.in_flight[0] if worker.in_flight else None
            if (
                task is not None
                and task.timeout is not None
                and task.started is not None
                and worker.timed_out is None
                and now >= task.started + task.timeout
            ):
                worker.timed_out = task
                os.kill(worker.pid, signal.SIGKILL)
        while self._delayed and now >= self._delayed[0][0]:
            self._pending.append(heapq.heappop(self._delayed)[2])
        if self._next_memory_check is not None and now >= self._next_memory_check:
            self._next_memory_check = None
            self._check_memory()

    def _check_memory(self) -> None:
        """Kill the workers whose running task's memory limit their resident size passed."""
        for worker in self._workers.values():
            task = worker.in_flight[0] if worker.in_flight else None
            if (
                task is None
                or task.memory_limit is None
                or task.started is None
                or worker.timed_out is not None
                or worker.over_memory is not None
            ):
                continue
            # The warm segments the worker keeps for reuse are no task's memory.
            size = held_bytes(worker.pid, idle_cached_bytes(worker.progress.buf))
            if size is not None and size > task.memory_limit:
                worker.over_memory = (task, size)
                os.kill(worker.pid, signal.SIGKILL)


def _item_error(task: Task, outcome: Outcome) -> BaseException | None:
    """The first error an item of ``task``'s chunk raised that its retry policy names
    beyond the default (a map whose items fail alone catches them in the worker);
    None if none did, or the policy names only the default errors (no unpickling)."""
    policy = task.retry
    if policy is None or policy.retry_on == DEFAULT_RETRY_ON or task.kind not in EACH_KINDS:
        return None
    values = outcome.value()
    for value in values if isinstance(values, list) else ():
        if type(value) is ItemFailed:
            error = value.failure.to_exception()
            if isinstance(error, policy.retry_on):
                return error
    return None


class _Rest:
    """The sink of what a salvaged chunk had not begun: once that ends, the
    chunk's outcome is the salvaged head followed by it."""

    def __init__(self, chunk: Task, head: list[Outcome], items: int) -> None:
        self._chunk = chunk
        self._head = head
        self._items = items

    def claim(self) -> bool:
        return True

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        self._chunk.finish(concatenated([*self._head, each_failed(outcome, self._items)]))


_: type[ResultSink] = _Rest
