"""The feeder thread: map inputs turned into tasks, with bounded look-ahead.

::

    caller                      feeder thread                              engine
    ------                      -------------                              ------
    map / imap / starmap  --->  MapJob: pull the next chunks of the input,
                                encode them (pickle, for processes),
                                while the job is under its window  ----->  dispatch(tasks)
    imap consumer: next() --->  release one chunk of window
    (map: a chunk completes --> release one chunk of window)
    close() --------------->    after the last chunk of the last job --->  on_closed()

The user's iterables run here, never in the engine's thread, so a slow or
blocking generator cannot stall the movement of results. Several calls feed
round-robin.
"""

from __future__ import annotations

import collections
import itertools
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

from serentak._exceptions import PoolTerminatedError
from serentak._ipc.buffers import Packed

from .interfaces import MapSink
from .options import RetryPolicy
from .results import Outcome, each_failed
from .tasks import EACH_KINDS, Function, Kind, Task

# Work per chunk the adaptive sizing aims at: long enough that a chunk's
# round trip is a small fraction of it, short enough to balance the tail.
CHUNK_TARGET_SECONDS: Final = 0.02
# Items per chunk the adaptive sizing never exceeds when the input's length is unknown.
MAX_ADAPTIVE_CHUNK: Final = 1 << 17
# Bytes per chunk the adaptive sizing aims to stay under: big items (arrays)
# travel one or a few at a time, spread over the workers, each in a segment
# that is reused for the next.
CHUNK_TARGET_BYTES: Final = 4 << 20
# A range's chunks up to this long travel as lists, longer ones as ranges.
SMALL_RANGE: Final = 16
# Chunks the feeder encodes and hands to the engine at one go, at most.
FEED_BATCH: Final = 16
# Chunks out at once when they encode to SMALL_CHUNK_BYTES or less on average:
# a quarter of it is a full FEED_BATCH.
SMALL_CHUNKS_WINDOW: Final = 4 * FEED_BATCH
SMALL_CHUNK_BYTES: Final = 4096
# Bytes of out-of-band buffers after which a batch goes to the engine at once:
# encoding such a chunk copies its arrays into shared memory (a few ms per
# 64 MiB), and a worker left idle while the next ones are copied costs far
# more than the engine wake-up a bigger batch saves.
FLUSH_BUFFERED_BYTES: Final = 1 << 20
# Sized from a previous map's timing, the last chunks are this share of the input,
# or TAIL_CHUNK_SECONDS of work if that is more: small, so that the workers finish
# together and the parent has little left to unpickle once they have; not
# smaller, as each chunk costs tens of microseconds of fixed work.
RECALLED_FLOOR_SHARE: Final = 32
TAIL_CHUNK_SECONDS: Final = 150e-6
# Sized from a previous map's timing, an input that should take less work than
# this goes in two chunks per worker: a chunk's round trip through the engine
# costs tens of microseconds, more than such a map's items take.
SMALL_MAP_SECONDS: Final = 1e-3
# Functions whose chunk timings a pool remembers for its next maps.
REMEMBERED_FUNCTIONS: Final = 128


class ChunkTimes:
    """How long each function's biggest chunk took in the pool's last map of it.

    A pool's next map of the same function starts with chunks sized from that
    figure instead of probing with single items: on a warm pool a map of tiny
    tasks then keeps both workers busy from its first chunk. The figure is a
    first guess only: the first chunk of the new map to report replaces it.

    Written by the engine's thread as chunks report, read by callers as maps start.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (func_id, kind) -> (items, busy microseconds), e.g. {(3, Kind.MAP): (49417, 2760)}.
        self._times: collections.OrderedDict[tuple[int, Kind], tuple[int, int]] = (
            collections.OrderedDict()
        )

    def recall(self, key: tuple[int, Kind]) -> tuple[int, int] | None:
        with self._lock:
            return self._times.get(key)

    def remember(self, key: tuple[int, Kind], items: int, busy_us: int) -> None:
        with self._lock:
            self._times[key] = (items, busy_us)
            self._times.move_to_end(key)
            if len(self._times) > REMEMBERED_FUNCTIONS:
                self._times.popitem(last=False)


class Chunker:
    """Cuts an input into chunks: of a fixed size, or sized from measured task time.

    Adaptive sizing (no chunksize given) sends single items until the first
    results report how long an item takes, then aims at
    ``CHUNK_TARGET_SECONDS`` of work per chunk. When the input's length is
    known, no chunk takes more than half of what is left per worker, so the
    last chunks are small and the workers finish together: 200,000 tiny tasks
    go in a few dozen chunks, 50 slow ones one by one. Given ``times`` and a
    ``key``, the sizing starts from what the pool's last map of the same
    function measured (see :class:`ChunkTimes`), and tells it what it measures.

    Args:
        iterable: the input.
        size: a fixed chunk size, or None to size adaptively.
        length: the input's length, if known.
        workers: how many workers share the work.
        times: the pool's memory of chunk timings.
        key: the function and kind of task this map runs, for ``times``.
    """

    def __init__(
        self,
        iterable: Iterable[Any],
        size: int | None,
        length: int | None,
        workers: int,
        times: ChunkTimes | None = None,
        key: tuple[int, Kind] | None = None,
    ) -> None:
        # A sequence is sliced, not iterated: a range's chunks stay ranges, a
        # few bytes each instead of thousands of pickled ints.
        self._sequence = iterable if isinstance(iterable, Sequence) else None
        # A range's items are ints and its chunks travel as ranges: their size is
        # known without weighing a first item alone (a round trip for nothing).
        self._weighed = type(iterable) is range
        self._position = 0
        self._iterator = iter(iterable) if self._sequence is None else None
        self._fixed = size
        self._remaining = length
        self._length = length or 0
        self._workers = workers
        # Written by the engine's thread as results arrive, read by the feeder:
        # the biggest chunk measured so far (a chunk's fixed cost weighs least there).
        self._items_measured = 0
        self._busy_us = 0
        self._times = times if size is None else None
        self._key = key
        # Only for an input of known length, whose chunks can be bounded by what is
        # left: a guess that no longer holds then costs a quarter of the input at most.
        recalled = None
        if self._times is not None and key is not None and length is not None:
            recalled = self._times.recall(key)
        # Whether the figures above are the last map's, to be replaced by the first report.
        self._recalled = recalled is not None
        if recalled is not None:
            self._items_measured, self._busy_us = recalled
        # Written by the feeder as it encodes chunks.
        self._items_sized = 0
        self._chunks_sized = 0
        self._bytes = 0

    def next_chunk(self) -> Sequence[Any]:
        """The next chunk; empty when the input is exhausted. Raises what the input raises."""
        size = self._next_size()
        if self._sequence is not None:
            chunk: Sequence[Any] = self._sequence[self._position : self._position + size]
            self._position += len(chunk)
            if type(chunk) is range and len(chunk) <= SMALL_RANGE:
                chunk = list(chunk)  # pickles in a fifth of the time of a range
        else:
            chunk = list(itertools.islice(self._iterator or (), size))
        if self._remaining is not None:
            self._remaining -= len(chunk)
        return chunk

    def exhausted(self) -> bool:
        """Whether the input is known to have no more items (a sequence sliced to its
        end; an iterator is only known to have ended once it says so)."""
        return self._sequence is not None and self._position >= len(self._sequence)

    def observe(self, items: int, busy_us: int) -> None:
        """A chunk of ``items`` items kept a worker busy for ``busy_us`` microseconds."""
        if items >= self._items_measured or self._recalled:
            self._recalled = False
            self._items_measured, self._busy_us = items, busy_us
            if self._times is not None and self._key is not None:
                self._times.remember(self._key, items, busy_us)

    def expected(self, items: int) -> float | None:
        """Seconds a chunk of ``items`` items should take, once a chunk has reported."""
        if not self._items_measured:
            return None
        return items * self._busy_us / 1e6 / self._items_measured

    def window(self, usual: int) -> int:
        """Chunks that may be out at once, ``usual`` unless told otherwise.

        Sizing adaptively, while little is known: one per worker until a chunk
        has reported its time (each is a single item: a run of short tasks is
        not queued up as single items), then two per worker while only single
        items have (their time is mostly the task's fixed cost: the next chunks
        are sized too small, and the first of them to report sizes the rest).

        A fixed size whose chunks encode small (``chunksize=1`` over numbers, say):
        SMALL_CHUNKS_WINDOW. Many ahead cost little memory, and the feeder,
        woken once a quarter of the window is free, then wakes once per
        FEED_BATCH tasks.
        """
        if self._fixed is None:
            if self._items_measured <= 1:
                return min(usual, self._workers * (2 if self._items_measured else 1))
            return usual
        if self._chunks_sized and self._bytes <= SMALL_CHUNK_BYTES * self._chunks_sized:
            return max(usual, SMALL_CHUNKS_WINDOW)
        return usual

    def weigh(self, items: int, nbytes: int) -> None:
        """A chunk of ``items`` items encoded to ``nbytes`` bytes."""
        self._items_sized += items
        self._chunks_sized += 1
        self._bytes += nbytes

    def _next_size(self) -> int:
        if self._fixed is not None:
            return self._fixed
        if not self._items_measured or not (self._chunks_sized or self._weighed):
            # Nothing measured yet; or recalled, but the items' size is unknown:
            # one item first, so that big items (arrays) are never sent several
            # to a chunk before their bytes are known.
            return 1
        per_item = max(self._busy_us, 1) / 1e6 / self._items_measured
        target = max(1, min(int(CHUNK_TARGET_SECONDS / per_item), MAX_ADAPTIVE_CHUNK))
        if self._bytes > CHUNK_TARGET_BYTES * self._items_sized:
            target = 1  # items bigger than a chunk should be
        elif self._bytes:
            target = min(target, CHUNK_TARGET_BYTES * self._items_sized // self._bytes)
        if self._recalled and self._remaining is not None:
            if self._length * per_item < SMALL_MAP_SECONDS:
                # The whole input is less work than a few chunks' round trips: two
                # chunks per worker, no halving tail (should the guess be wrong, the
                # items still go over the workers in even parts). Only for the
                # whole input: the rest of a bigger map in one chunk would leave
                # the other workers idle while one runs it.
                return max(1, min(target, -(-self._length // (2 * self._workers))))
            # The last map's figure may not hold for this input: no chunk is more
            # than a quarter of what is left per worker until this map's first
            # report, and the floor below is a small share of the input.
            tail = max(self._length // RECALLED_FLOOR_SHARE, int(TAIL_CHUNK_SECONDS / per_item))
            floor = min(target // 10, tail)
            return max(1, floor, min(target, self._remaining // (2 * self._workers)))
        if self._remaining is None:
            return target
        # Smaller chunks towards the end so the workers finish together, but
        # never below a tenth of the target: tiny chunks cost more than they balance.
        return max(1, target // 10, min(target, self._remaining // (2 * self._workers)))


class Progress(Protocol):
    """A progress bar (tqdm's interface)."""

    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


def progress_bar(option: bool | Mapping[str, Any] | None, total: int | None) -> Progress | None:
    """A tqdm bar for ``progress=``: True, or a dict of tqdm options; None for no bar."""
    if not option:
        return None
    from tqdm.auto import tqdm

    settings: dict[str, Any] = {"total": total, "unit": "task", "smoothing": 0.1}
    if isinstance(option, Mapping):
        settings.update(option)
    bar: Progress = tqdm(**settings)
    return bar


class MapJob:
    """One map-family call being fed: its input, chunked, and how far ahead it may go.

    Look-ahead counts chunks submitted and not yet released. A map releases a
    chunk when its result arrives; an imap when the caller consumes it, so an
    unread imap stops pulling its input (once the pool is closed, an imap
    releases on arrival too, as nobody may read before join()). An imap whose
    iterator the caller dropped is abandoned.

    A MapJob is the sink of its own tasks: it forwards outcomes to the
    caller's result object and counts them.
    """

    def __init__(
        self,
        feeder: Feeder,
        kind: Kind,
        function: Function,
        chunker: Chunker,
        sink: MapSink,
        timeout: float | None,
        window: int,
        *,
        lazy: bool,
        progress: Progress | None = None,
        buffersize: int | None = None,
        buffer_bytes: int | None = None,
        retry: RetryPolicy | None = None,
        memory_limit: int | None = None,
        on_chunk: Callable[[int, Sequence[Any]], None] | None = None,
    ) -> None:
        self.feeder = feeder
        self.kind = kind
        self.function = function
        self.chunker = chunker
        self.progress = progress
        self.sizes: dict[int, int] = {}  # items per chunk, until it completes
        self.fed_all = False
        self.timeout = timeout
        self.retry = retry
        self.memory_limit = memory_limit
        # Told each chunk as it is fed (a journal, to know which items a chunk holds).
        self.on_chunk = on_chunk
        self.window = window
        self.lazy = lazy
        self.abandoned = False
        self.submitted = 0
        self.released = 0
        self.completed = 0
        # The caller's bounds on look-ahead: chunks (buffersize=), pickled bytes
        # (buffer_bytes=). Bytes are counted per chunk (e.g. {7: 8388850}) from
        # submission until the chunk is released, as chunks are.
        self.buffersize = buffersize
        self.buffer_bytes = buffer_bytes
        self.chunk_bytes: dict[int, int] = {}
        self.bytes_submitted = 0
        self.bytes_completed = 0
        self.bytes_consumed = 0
        self._strong_sink: MapSink | None = None
        self._weak_sink: weakref.ref[Any] | None = None
        if lazy:
            self._weak_sink = weakref.ref(sink, lambda _: feeder.wake())
        else:
            self._strong_sink = sink

    @property
    def sink(self) -> MapSink | None:
        """Where outcomes go; None once the caller dropped its imap iterator or abandoned it."""
        if self.abandoned:
            return None
        if self._weak_sink is not None:
            sink: MapSink | None = self._weak_sink()
            return sink
        return self._strong_sink

    def ahead(self) -> int:
        """Chunks that may be out at once (submitted, not yet released)."""
        if self.buffersize is not None:
            return self.buffersize
        return self.chunker.window(self.window)

    def consumed(self, index: int) -> None:
        """The caller consumed the result of chunk ``index`` (imap)."""
        self.feeder.release(self, index, consumed=True)

    def claim(self) -> bool:
        if self.abandoned:
            return False
        # A map's result object may withdraw its tasks itself, before the
        # caller's thread gets to abandon() (an asyncio future is cancelled the
        # moment its awaiting task is).
        sink = self._strong_sink
        return sink is None or sink.claim()

    def abandon(self) -> None:
        """The caller gave up (an awaiting task was cancelled): no more chunks are
        sent, queued ones are dropped before they reach a worker, nothing more is
        delivered. Chunks already running finish unheard."""
        self.abandoned = True
        if self.progress is not None:
            self.progress.close()
        self.feeder.wake()

    def complete_chunk(self, index: int, outcome: Outcome, busy_us: int = 0) -> None:
        items = self.sizes.pop(index, 0)
        if busy_us:
            self.chunker.observe(items, busy_us)
        if not outcome.ok and items and self.kind in EACH_KINDS:
            outcome = each_failed(outcome, items)
        # The bar moves (and, at the last chunk, closes) before the caller can see
        # the chunk: once map() returns, its bar shows 100% and prints no more.
        if self.progress is not None:
            self.progress.update(items)
        self.feeder.release(self, index, consumed=False)
        sink = self.sink
        if sink is not None:
            sink.complete_chunk(index, outcome)


class Feeder:
    """The thread that turns map inputs into tasks, round-robin across calls.

    Args:
        dispatch: hands tasks to the engine.
        encode: turns a chunk into a task payload (pickles it, for processes).
        next_task_id: the pool's task numbering.
        on_closed: called once, after the last chunk of the last job, when
            the pool was closed (not terminated).
    """

    def __init__(
        self,
        dispatch: Callable[[Sequence[Task]], None],
        encode: Callable[[Any], Any],
        next_task_id: Callable[[], int],
        on_closed: Callable[[], None],
    ) -> None:
        self._dispatch = dispatch
        self._encode = encode
        self._next_task_id = next_task_id
        self._on_closed = on_closed
        self._condition = threading.Condition()
        self._jobs: collections.deque[MapJob] = collections.deque()
        self._closing = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="serentak-pool-feeder", daemon=True)
        self._thread.start()

    def add(self, job: MapJob, *, here: bool = False) -> None:
        """Feed ``job``. With ``here``, when no other job is waiting, the caller's
        thread feeds its first batch itself (as an apply dispatches its own task):
        a small map then costs no wake-up of this thread. The rest, if any, is
        left to this thread, as is everything when the caller is interrupted."""
        if here:
            with self._condition:
                here = not (self._jobs or self._closing or self._stopped)
        if here:
            try:
                self._feed_batch(job)
            except BaseException:
                self._hand_over(job)
                raise
            self._hand_over(job)
            return
        with self._condition:
            self._jobs.append(job)
            self._condition.notify()

    def _hand_over(self, job: MapJob) -> None:
        """Leave what is left of ``job`` (fed in the caller's thread) to this thread."""
        with self._condition:
            if not job.fed_all and job not in self._jobs:
                self._jobs.append(job)
                self._condition.notify()

    def release(self, job: MapJob, index: int, *, consumed: bool) -> None:
        """Chunk ``index`` of ``job`` completed (consumed=False) or was consumed (True)."""
        with self._condition:
            if consumed:
                job.released += 1
                job.bytes_consumed += job.chunk_bytes.pop(index, 0)
            else:
                job.completed += 1
                if job.lazy:
                    job.bytes_completed += job.chunk_bytes.get(index, 0)
                else:
                    job.bytes_completed += job.chunk_bytes.pop(index, 0)
            # The feeder wakes once a quarter of the window is free, not per
            # chunk: it then sends chunks in batches, and short tasks cost fewer
            # thread switches.
            # (A job fed to its end has nothing more to send: no wake-up for it.)
            window = job.ahead()
            if not job.fed_all and (
                job.submitted - self._released(job) <= window - max(1, window // 4)
                or job.buffer_bytes is not None
            ):
                self._condition.notify()
            done = job.fed_all and job.completed >= job.submitted
        if done and job.progress is not None:
            job.progress.close()

    def wake(self) -> None:
        with self._condition:
            self._condition.notify()

    def close(self) -> None:
        """Feed what was added, then call ``on_closed``."""
        with self._condition:
            self._closing = True
            self._condition.notify()

    def stop(self) -> None:
        """Abandon the jobs (terminate): their unsent chunks fail."""
        with self._condition:
            self._stopped = True
            self._condition.notify()

    def join(self) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _released(self, job: MapJob) -> int:
        """Chunks of ``job`` out of its window (holding the condition). Once the pool
        is closed, an imap's chunks are released as they complete: a consumer that
        stopped reading must not keep join() waiting (CPython's first
        ``imap(buffersize=)`` deadlocked there, python/cpython#155477), and one that
        reads on still gets every result."""
        return job.released if job.lazy and not self._closing else job.completed

    def _bytes_out(self, job: MapJob) -> int:
        """Pickled bytes of ``job``'s chunks out of its window (holding the condition)."""
        if job.lazy and not self._closing:
            return job.bytes_submitted - job.bytes_consumed
        return job.bytes_submitted - job.bytes_completed

    def _may_feed(self, job: MapJob) -> bool:
        if job.sink is None:
            return True  # the caller dropped its imap iterator: feeding ends the job
        out = job.submitted - self._released(job)
        if out >= job.ahead():
            return False
        # One chunk always goes, however big: a chunk over the limit must not stall.
        return job.buffer_bytes is None or out == 0 or self._bytes_out(job) < job.buffer_bytes

    def _next_job(self) -> MapJob | None:
        """The next job allowed to feed a chunk; None when the feeder should exit."""
        with self._condition:
            while True:
                if self._stopped:
                    return None
                for _ in range(len(self._jobs)):
                    job = self._jobs[0]
                    self._jobs.rotate(-1)
                    if self._may_feed(job):
                        return job
                if not self._jobs and self._closing:
                    return None
                self._condition.wait()

    def _run(self) -> None:
        while self._feed_next():
            pass
        with self._condition:
            abandoned = list(self._jobs)
            self._jobs.clear()
        reason = PoolTerminatedError("the pool was terminated before the task was sent")
        for job in abandoned:
            self._finish(job, failure=reason)
        if not self._stopped:
            self._on_closed()

    def _feed_next(self) -> bool:
        """Feed a batch of the next job that may go ahead; False when the feeder should exit.

        The job is not held past its batch: a finished map's job, and through it
        the caller's results, must not be freed here, in the next map's time.
        """
        job = self._next_job()
        if job is None:
            return False
        self._feed_batch(job)
        return True

    def _feed_batch(self, job: MapJob) -> None:
        """Encode chunks of ``job`` while its window allows (up to FEED_BATCH), and
        hand them to the engine together: one wake-up of the engine for all."""
        tasks: list[Task] = []
        buffered = 0
        while len(tasks) < FEED_BATCH:
            task = self._feed_one(job)
            if task is None:
                break
            tasks.append(task)
            if job.chunker.exhausted():
                # Said now, not by a later wake-up of this thread when the window
                # frees: a map's result is complete only once its length is known.
                self._finish(job)
                break
            buffered += task.buffered
            if buffered >= FLUSH_BUFFERED_BYTES:
                break
            with self._condition:
                if job.fed_all or not self._may_feed(job):
                    break
        if tasks:
            self._dispatch(tasks)

    def _feed_one(self, job: MapJob) -> Task | None:
        """The next chunk of ``job`` as a task; None if there is none to send (the
        input ended or raised, or the chunk could not be encoded: handled here)."""
        sink = job.sink
        if sink is None:
            self._finish(job)  # the caller dropped its imap iterator
            return None
        index = job.submitted
        try:
            chunk = job.chunker.next_chunk()
        except BaseException as exc:  # the user's iterable raised: that position fails
            job.submitted += 1
            sink.complete_chunk(index, Outcome.of_exception(exc))
            self._finish(job)
            return None
        if not chunk:
            self._finish(job)
            return None
        job.sizes[index] = len(chunk)
        job.submitted += 1
        if job.on_chunk is not None:
            job.on_chunk(index, chunk)
        try:
            payload = self._encode(chunk)
        except BaseException as exc:
            job.complete_chunk(index, Outcome.of_exception(exc))
            return None
        if isinstance(payload, Packed):
            nbytes = len(payload.payload) + payload.buffered
            job.chunker.weigh(len(chunk), nbytes)
            if job.buffer_bytes is not None:
                with self._condition:
                    job.chunk_bytes[index] = nbytes
                    job.bytes_submitted += nbytes
        task_id = self._next_task_id()
        expected = job.chunker.expected(len(chunk))
        return Task.encoded(
            task_id,
            job.kind,
            job.function,
            payload,
            job,
            index,
            job.timeout,
            expected,
            retry=job.retry,
            memory_limit=job.memory_limit,
            items=len(chunk),
        )

    def _finish(self, job: MapJob, failure: BaseException | None = None) -> None:
        with self._condition:
            if job in self._jobs:
                self._jobs.remove(job)
            job.fed_all = True
            done = job.completed >= job.submitted
        if done and job.progress is not None:
            job.progress.close()
        sink = job.sink
        if sink is None:
            return
        if failure is not None:
            sink.complete_chunk(job.submitted, Outcome.of_exception(failure))
            job.submitted += 1
        sink.set_length(job.submitted)
