"""Living beside the stdlib's ``multiprocessing`` in one program, without importing it.

A program may hand stdlib objects (a ``multiprocessing.Queue``, a Pipe end)
to serentak's processes. The stdlib keeps per-process state that its own
child start-up resets and its own exit runs: the after-fork hooks (a Queue
forgets its parent's feeder thread) and the exit finalizers (a Queue's feeder
flushes what it buffers). A serentak child does the same for whatever of the
stdlib the program loaded; nothing here imports it.

Only ``multiprocessing.util``'s two runners are used, the same ones the
stdlib's ``Process._bootstrap`` and exit function call.
"""

from __future__ import annotations

import sys
import traceback
from types import ModuleType

_UTIL = "multiprocessing.util"


def _util() -> ModuleType | None:
    return sys.modules.get(_UTIL)


def after_fork_in_child() -> None:
    """In a forked child: run the stdlib's after-fork hooks, as its own fork child does."""
    util = _util()
    if util is not None:
        try:
            util._run_after_forkers()
        except Exception:
            traceback.print_exc()


def run_exit_finalizers() -> None:
    """At a child's exit: run the stdlib's exit finalizers (a Queue's feeder flushes).

    Each finalizer belongs to the process that made it and runs once, so this
    is safe in any process, and the stdlib's own exit function finds nothing
    left to do.
    """
    util = _util()
    if util is not None:
        try:
            util._run_finalizers(0)
            util._run_finalizers()
        except Exception:
            traceback.print_exc()
