"""Chaos: workers SIGKILLed every 100-300 ms while imap_unordered runs, and the count
of what was delivered, failed, lost or duplicated.

Run: ``python benchmarks/chaos.py [--seconds 60] [--items 20000] [--item-ms 1]``

Rounds of ``imap_unordered`` over ``--items`` items with the default (adaptive)
chunking run for ``--seconds``; meanwhile a thread SIGKILLs one of the pool's
workers (found through ``pool.stats()``) every 100 to 300 ms. Each task sleeps
``--item-ms`` and then, as its last step, counts itself in a shared array, so
the script knows which items had finished whatever their worker's fate.

Printed, summed over the rounds:
  delivered               results that reached the caller
  failed                  items that raised (WorkerLostError)
  finished but failed     items counted as finished whose result never came
                          (must be 0: only the item a worker was running may fail)
  duplicates              results delivered more than once (must be 0)
  lost                    items neither delivered nor failed (must be 0)
  ran twice               items counted as finished more than once
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import threading
import time
from typing import Any

import serentak


def remember(finished: Any) -> None:
    """The pool's initializer: keep the shared array of finish counts."""
    serentak.worker_state()["finished"] = finished


def work(item: tuple[int, float]) -> int:
    """Sleep, then count this item as finished (the last thing the task does)."""
    index, seconds = item
    time.sleep(seconds)
    # One writer per index at a time (unless an item ran twice, which is counted).
    serentak.worker_state()["finished"][index] += 1
    return index


def kill_workers(pool: Any, stop: threading.Event, kills: list[int]) -> None:
    """SIGKILL a random live worker every 100-300 ms until ``stop`` is set."""
    rng = random.Random(1)
    while not stop.wait(rng.uniform(0.1, 0.3)):
        pids = [w.pid for w in pool.stats().workers if w.alive]
        if not pids:
            continue
        try:
            os.kill(rng.choice(pids), signal.SIGKILL)
        except ProcessLookupError:
            continue  # it had just exited
        kills.append(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--item-ms", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=2)
    options = parser.parse_args()

    items = options.items
    finished = serentak.Array("i", items, lock=False)
    totals: collections.Counter[str] = collections.Counter()
    kills: list[int] = []
    stop = threading.Event()
    began = time.monotonic()
    with serentak.Pool(options.processes, remember, (finished,)) as pool:
        killer = threading.Thread(target=kill_workers, args=(pool, stop, kills), daemon=True)
        killer.start()
        rounds = 0
        while time.monotonic() - began < options.seconds:
            for index in range(items):
                finished[index] = 0
            delivered: collections.Counter[int] = collections.Counter()
            failed = 0
            inputs = [(index, options.item_ms / 1000) for index in range(items)]
            results = pool.imap_unordered(work, inputs)
            while True:
                try:
                    delivered[next(results)] += 1
                except StopIteration:
                    break
                except serentak.WorkerLostError:
                    failed += 1
            rounds += 1
            ran = list(finished)
            totals["delivered"] += sum(delivered.values())
            totals["failed"] += failed
            totals["finished but failed"] += sum(
                1 for index in range(items) if ran[index] and index not in delivered
            )
            totals["duplicates"] += sum(count - 1 for count in delivered.values())
            totals["lost"] += items - len(delivered) - failed  # below 0: failed twice
            totals["ran twice"] += sum(1 for count in ran if count > 1)
        stop.set()
        killer.join()
        stats = pool.stats()
    elapsed = time.monotonic() - began
    print(f"{rounds} rounds of {items} items in {elapsed:.1f} s, {len(kills)} workers killed")
    for name in ("delivered", "failed", "finished but failed", "duplicates", "lost", "ran twice"):
        print(f"  {name:<20} {totals[name]:>9}")
    print(f"  pool: {stats.tasks_lost} tasks lost, {stats.restarts} restarts")


if __name__ == "__main__":
    main()
