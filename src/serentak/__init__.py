"""serentak: process-based parallelism with the ``multiprocessing`` API.

``import serentak as multiprocessing`` and the stdlib's programs run
unchanged. The functions here are bound to the default context, as the
stdlib's are; ``get_context(method)`` gives the same API bound to a start
method.
"""

from __future__ import annotations

import types as _types

from ._context import Process as Process
from ._context import default_context as _default
from ._exceptions import AuthenticationError as AuthenticationError
from ._exceptions import BufferTooShort as BufferTooShort
from ._exceptions import LockOwnerDiedWarning as LockOwnerDiedWarning
from ._exceptions import PoolTerminatedError as PoolTerminatedError
from ._exceptions import ProcessError as ProcessError
from ._exceptions import TimeoutError as TimeoutError
from ._exceptions import WorkerLostError as WorkerLostError
from ._logging import SUBDEBUG as SUBDEBUG
from ._logging import SUBWARNING as SUBWARNING
from ._pool.executor import ProcessPoolExecutor as ProcessPoolExecutor
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
    "worker_state",
]


def __getattr__(name: str) -> _types.ModuleType:
    # ``reducer`` (the stdlib's name for its reduction module) is loaded on
    # first use: ``import serentak``, which every spawned child pays for, stays light.
    if name == "reducer":
        reducer: _types.ModuleType = _default.reducer
        return reducer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
