"""``serentak bench --scale``: how costs grow with the size of the work.

Three tables, serentak beside the stdlib where both apply::

    parent (this process)                            workers / producer
    ─────────────────────                            ──────────────────
    per-task overhead: Pool.map(tiny, 10^3..10^6) ─▶ 2 pool workers, warm
    peak memory:  for r in pool.imap(tiny, 10^7) ──▶ same pool; a thread here
                  samples this process's RSS         (the parent must not hold
                                                      the whole iterable or results)
    Queue throughput: queue.get() ◀── put ────────── 1 producer process per size,
                      10 B .. 256 MiB messages        a fixed byte budget each

Per-task overhead and peak memory must stay flat as the work grows; the
Queue's throughput should rise with the message size up to memory speed.
``--plot`` draws the Queue throughput against the message size.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from .bench import SERENTAK, STDLIB, WORKERS, produce, require_matplotlib, tiny

MAP_SIZES: Final = (1_000, 10_000, 100_000, 1_000_000)
IMAP_SIZES: Final = (100_000, 1_000_000, 10_000_000)
MESSAGE_SIZES: Final = (10, 100, 1 << 10, 10 << 10, 100 << 10, 1 << 20, 16 << 20, 256 << 20)
# Bytes each Queue size moves (at least 2 messages, at most QUEUE_MESSAGES_MAX).
QUEUE_BYTES: Final = 512 << 20
QUEUE_MESSAGES_MAX: Final = 100_000
QUICK_LIMIT: Final = 16  # --quick: sizes up to a sixteenth of the largest


@dataclasses.dataclass
class ScaleResults:
    """Figures by library: {library: {size: figure}}."""

    start_method: str
    overhead_us: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)
    imap_peak_mib: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)
    queue_mb_s: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)


def _contexts(start_method: str) -> dict[str, Any]:
    from serentak._context import default_context

    stdlib = importlib.import_module("multiprocessing")
    return {
        SERENTAK: default_context.get_context(start_method),
        STDLIB: stdlib.get_context(start_method),
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakSampler:
    """A thread noting this process's highest RSS every few milliseconds."""

    def __init__(self) -> None:
        self.baseline = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def stop(self) -> float:
        """Stop sampling; the peak growth over the baseline, in MiB."""
        self._stop.set()
        self._thread.join()
        return max(0, self.peak - self.baseline) / (1 << 20)


def _overhead_us(pool: Any, count: int) -> float:
    started = time.perf_counter()
    results = pool.map(tiny, range(count))
    seconds = time.perf_counter() - started
    if len(results) != count or results[-1] != count:
        raise RuntimeError("the map lost or changed results")
    return seconds / count * WORKERS * 1e6


def _imap_peak_mib(pool: Any, count: int) -> float:
    sampler = _PeakSampler()
    expected = 1
    for result in pool.imap(tiny, range(count), 1000):
        if result != expected:
            sampler.stop()
            raise RuntimeError("imap lost or changed results")
        expected += 1
    peak = sampler.stop()
    if expected != count + 1:
        raise RuntimeError("imap lost results")
    return peak


def _queue_mb_s(ctx: Any, size: int) -> float:
    count = max(2, min(QUEUE_MESSAGES_MAX, QUEUE_BYTES // size))
    message = b"x" * size
    queue = ctx.Queue()
    producer = ctx.Process(target=produce, args=(queue, message, count), daemon=True)
    producer.start()
    try:
        got = queue.get()
        started = time.perf_counter()
        for _ in range(count - 1):
            got = queue.get()
        seconds = time.perf_counter() - started
    finally:
        producer.join()
        queue.close()
        queue.join_thread()
    if got != message or producer.exitcode != 0:
        raise RuntimeError("the producer failed or a message arrived changed")
    return (count - 1) * size / seconds / 1e6


def run_scale(
    start_method: str, quick: bool, on_progress: Callable[[str], None] = lambda text: None
) -> ScaleResults:
    """Measure the three tables for serentak and the stdlib."""
    results = ScaleResults(start_method)

    def limited(sizes: Sequence[int]) -> list[int]:
        return [size for size in sizes if not quick or size <= sizes[-1] // QUICK_LIMIT]

    for name, ctx in _contexts(start_method).items():
        with ctx.Pool(WORKERS) as pool:
            pool.map(tiny, range(100))
            for count in limited(MAP_SIZES):
                on_progress(f"{name}: map of {count:,} tasks")
                results.overhead_us.setdefault(name, {})[count] = _overhead_us(pool, count)
            for count in limited(IMAP_SIZES):
                on_progress(f"{name}: imap over {count:,} items")
                results.imap_peak_mib.setdefault(name, {})[count] = _imap_peak_mib(pool, count)
        for size in limited(MESSAGE_SIZES):
            on_progress(f"{name}: Queue of {size:,} B messages")
            results.queue_mb_s.setdefault(name, {})[size] = _queue_mb_s(ctx, size)
    return results


def _table(title: str, unit: str, figures: dict[str, dict[int, float]], spec: str) -> list[str]:
    sizes = sorted({size for by_size in figures.values() for size in by_size})
    names = list(figures)
    lines = [title, f"{'size':>14s}" + "".join(f"{n + ' ' + unit:>22s}" for n in names)]
    for size in sizes:
        cells = "".join(
            f"{'-':>22s}" if size not in figures[n] else f"{figures[n][size]:>22{spec}}"
            for n in names
        )
        lines.append(f"{size:>14,}" + cells)
    return [*lines, ""]


def format_scale(results: ScaleResults) -> str:
    """The three tables as text."""
    return "\n".join(
        [
            f"{WORKERS} workers, start method {results.start_method}",
            "",
            *_table(
                "Pool.map of tiny tasks: worker-time per task (must stay flat)",
                "us",
                results.overhead_us,
                ",.2f",
            ),
            *_table(
                "imap over N items: the parent's peak RSS growth (must stay flat)",
                "MiB",
                results.imap_peak_mib,
                ",.1f",
            ),
            *_table("Queue 1 -> 1 by message size (bytes)", "MB/s", results.queue_mb_s, ",.0f"),
        ]
    )


def plot_scale(results: ScaleResults, path: str) -> None:
    """Draw the Queue throughput against the message size to the PNG ``path``."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, by_size in results.queue_mb_s.items():
        sizes = sorted(by_size)
        axes.plot(sizes, [by_size[size] for size in sizes], marker="o", label=name)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("message size (bytes)")
    axes.set_ylabel("MB/s")
    axes.set_title(f"Queue 1 -> 1 throughput, {results.start_method}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
