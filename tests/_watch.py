"""Watching what nothing signals: files filling, processes ending, process trees.

Tests poll for these (there is no event to wait on); everything else they
synchronise on properly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

# Long enough never to run out on a slow machine, short of the per-test timeout
# so that a failure reads as an assertion, not as a timeout.
PATIENCE = 20.0


def until(predicate: Callable[[], bool], patience: float = PATIENCE) -> bool:
    """Poll ``predicate``; True once it holds, False if ``patience`` runs out first."""
    deadline = time.monotonic() + patience
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def lines(path: Path) -> list[str]:
    """The lines of ``path``; none if it does not exist yet."""
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _stat(pid: int | str) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, or going (ESRCH between open and read)
        return None


def running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has ended: it only waits for its parent's waitpid)."""
    stat = _stat(pid)
    return stat is not None and stat[stat.rindex(")") + 2] not in "ZX"


def still_running_after(pids: set[int], patience: float) -> set[int]:
    """Poll until none of ``pids`` runs; those still running when ``patience`` ran out."""
    deadline = time.monotonic() + patience
    while True:
        alive = {pid for pid in pids if running(pid)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.005)


def descendants_of(root: int) -> set[int]:
    """Every process below ``root`` (not ``root`` itself)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(entry.name)) is not None:
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def asleep_in_futex(pid: int) -> bool:
    """True while the main thread of ``pid`` sleeps in the kernel on a futex."""
    try:
        return "futex" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def waiting_in_kernel(thread: threading.Thread, patience: float = PATIENCE) -> bool:
    """Poll until ``thread`` of this process is found asleep in the kernel several
    times in a row (it waits on something: a futex, a poll, a read); False if
    ``patience`` runs out first.

    One look is not enough: a thread that only wants the GIL, which the
    looking thread holds while it looks, sleeps too. Between looks the GIL is
    let go for a while, so a thread that is merely running Python is found
    running at least once.
    """
    stat = Path(f"/proc/self/task/{thread.native_id}/stat")
    deadline = time.monotonic() + patience
    in_a_row = 0
    while in_a_row < 5:
        if time.monotonic() > deadline:
            return False
        text = stat.read_text()
        in_a_row = in_a_row + 1 if text[text.rindex(")") + 2] == "S" else 0
        time.sleep(0.002)
    return True
