"""serentak: process-based parallelism with the ``multiprocessing`` API.

``import serentak as multiprocessing`` and the stdlib's programs run
unchanged. The functions here are bound to the default context, as the
stdlib's are; ``get_context(method)`` gives the same API bound to a start
method.

General layout (each layer imports only from the layers above it here; the
package docstring of each says what it holds; ``tests/test_layering.py``
enforces the order)::

    _exceptions, _logging   the one exception tree; the stdlib-style logger
    _os/        system calls, the wait slice, the C extension (src/native/)
    _ipc/       pickling, connections and frames, big buffers, memfd segments
    _process/   Process, fork / spawn / fork server, the child's start, Listener
    _shared/    locks, the Queue family, Value/Array, shared arrays
    _pool/      Pool, ThreadPool, ProcessPoolExecutor; engines/ behind them
    _managers/  managers, their server, proxies and protocol
    _context    the API bound to a start method (what this module exports)
    _cli/       ``serentak demo | bench | info``: not imported by the runtime

``import serentak`` loads what ``Process``, ``Pipe``, ``Queue``, ``Lock`` and
``Value`` need, and nothing of the pool or the managers until they are used: a
spawned child pays for every import.
"""

from __future__ import annotations

import importlib
import types as _types
from typing import TYPE_CHECKING

from ._context import Process as Process
from ._context import default_context as _default
from ._exceptions import AuthenticationError as AuthenticationError
from ._exceptions import BufferTooShort as BufferTooShort
from ._exceptions import LockOwnerDiedWarning as LockOwnerDiedWarning
from ._exceptions import MemoryLimitError as MemoryLimitError
from ._exceptions import PoolTerminatedError as PoolTerminatedError
from ._exceptions import ProcessError as ProcessError
from ._exceptions import TimeoutError as TimeoutError
from ._exceptions import WorkerLostError as WorkerLostError
from ._logging import SUBDEBUG as SUBDEBUG
from ._logging import SUBWARNING as SUBWARNING
from ._public import publish as _publish

if TYPE_CHECKING:
    from ._pool.aio import AsyncPool as AsyncPool
    from ._pool.executor import ProcessPoolExecutor as ProcessPoolExecutor
    from ._pool.seeding import task_rng as task_rng
    from ._pool.tasks import worker_state as worker_state

__version__ = "0.1.0"

Array = _default.Array
Barrier = _default.Barrier
BoundedSemaphore = _default.BoundedSemaphore
Condition = _default.Condition
Event = _default.Event
JoinableQueue = _default.JoinableQueue
Lock = _default.Lock
Manager = _default.Manager
Pipe = _default.Pipe
Pool = _default.Pool
Queue = _default.Queue
RLock = _default.RLock
RawArray = _default.RawArray
RawValue = _default.RawValue
Semaphore = _default.Semaphore
SimpleQueue = _default.SimpleQueue
Value = _default.Value
active_children = _default.active_children
allow_connection_pickling = _default.allow_connection_pickling
cpu_count = _default.cpu_count
current_process = _default.current_process
freeze_support = _default.freeze_support
get_all_start_methods = _default.get_all_start_methods
get_context = _default.get_context
get_logger = _default.get_logger
get_start_method = _default.get_start_method
log_to_stderr = _default.log_to_stderr
parent_process = _default.parent_process
set_executable = _default.set_executable
set_forkserver_preload = _default.set_forkserver_preload
set_start_method = _default.set_start_method

__all__ = [
    "Array",
    "AsyncPool",
    "AuthenticationError",
    "Barrier",
    "BoundedSemaphore",
    "BufferTooShort",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "LockOwnerDiedWarning",
    "Manager",
    "MemoryLimitError",
    "Pipe",
    "Pool",
    "PoolTerminatedError",
    "Process",
    "ProcessError",
    "ProcessPoolExecutor",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "TimeoutError",
    "Value",
    "WorkerLostError",
    "active_children",
    "allow_connection_pickling",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_logger",
    "get_start_method",
    "log_to_stderr",
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
    "task_rng",
    "worker_state",
]


# Loaded on first use: ``import serentak``, which every spawned child pays for, stays
# light. Name -> (module, attribute).
_LAZY: dict[str, tuple[str, str]] = {
    "AsyncPool": ("serentak._pool.aio", "AsyncPool"),
    "ProcessPoolExecutor": ("serentak._pool.executor", "ProcessPoolExecutor"),
    "worker_state": ("serentak._pool.tasks", "worker_state"),
    "task_rng": ("serentak._pool.seeding", "task_rng"),
}


def __getattr__(name: str) -> object:
    if name == "reducer":  # the stdlib's name for its reduction module
        reducer: _types.ModuleType = _default.reducer
        return reducer
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        _publish(__name__, globals(), [name])
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "reducer"})


_publish(__name__, globals())
