"""Contexts: the whole API bound to a start method, as ``multiprocessing.get_context`` returns.

``serentak.Lock``, ``serentak.Queue``, ... are the methods of the default
context, whose start method is fixed the first time something needs it (the
stdlib's rule: after that, ``set_start_method`` needs ``force=True``).
``get_context("spawn")`` gives a context whose Process always spawns.

Each factory imports its module on first use, so ``import serentak`` (which
every spawned child pays for) loads only the process layer.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from . import _exceptions
from ._ipc.connection import Connection
from ._ipc.connection import Pipe as _Pipe
from ._os import posix as _posix
from ._process import process as _process
from ._process.launch import (
    ALL_START_METHODS,
    DEFAULT_START_METHOD,
    StartMethod,
    parse_start_method,
    settings,
)
from ._process.process import BaseProcess

if TYPE_CHECKING:
    import logging
    import types

    from . import managers
    from ._pool import api as _pool
    from ._shared import queues as _queues
    from ._shared import sync as _sync


def fixed_start_method() -> StartMethod:
    """The default start method, fixing it to the platform default if it was not set."""
    if settings.start_method is None:
        settings.start_method = DEFAULT_START_METHOD
    return settings.start_method


class Process(BaseProcess):
    """A process started with the default context's start method."""

    @property
    def _start_method(self) -> StartMethod:  # type: ignore[override]
        return fixed_start_method()


class ForkProcess(BaseProcess):
    """A process started by ``fork()``: a copy of the parent, nothing pickled."""

    _start_method = StartMethod.FORK


class SpawnProcess(BaseProcess):
    """A process started as a fresh interpreter, its target and arguments pickled."""

    _start_method = StartMethod.SPAWN


class ForkServerProcess(BaseProcess):
    """A process forked by this process's fork server, its target and arguments pickled."""

    _start_method = StartMethod.FORKSERVER


class BaseContext:
    """The API shared by every context."""

    ProcessError = _exceptions.ProcessError
    BufferTooShort = _exceptions.BufferTooShort
    TimeoutError = _exceptions.TimeoutError
    AuthenticationError = _exceptions.AuthenticationError

    Process: ClassVar[type[BaseProcess]]

    @staticmethod
    def current_process() -> BaseProcess:
        """The Process object of the calling process."""
        return _process.current_process()

    @staticmethod
    def parent_process() -> BaseProcess | None:
        """The Process object of the parent, None in the main process."""
        return _process.parent_process()

    @staticmethod
    def active_children() -> list[BaseProcess]:
        """The live children of the calling process."""
        return _process.active_children()

    @staticmethod
    def cpu_count() -> int:
        """The number of CPUs this process can use.

        Unlike the stdlib's (the machine's count), this respects the CPU
        affinity mask and the cgroup CPU quota: a container limited to one
        CPU gets 1, and so does a Pool's default size there.

        Raises:
            NotImplementedError: the number cannot be determined.
        """
        count = _posix.usable_cpu_count()
        if count is None:
            raise NotImplementedError("cannot determine number of cpus")
        return count

    @staticmethod
    def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
        """A pair of connected Connections; see :func:`serentak.connection.Pipe`."""
        return _Pipe(duplex)

    # ---- synchronisation ----------------------------------------------------------

    def Lock(self) -> _sync.Lock:
        """A non-recursive lock shared between processes."""
        from ._shared.sync import Lock

        return Lock(ctx=self.get_context())

    def RLock(self) -> _sync.RLock:
        """A recursive lock shared between processes."""
        from ._shared.sync import RLock

        return RLock(ctx=self.get_context())

    def Condition(self, lock: _sync.Lock | _sync.RLock | None = None) -> _sync.Condition:
        """A condition variable shared between processes."""
        from ._shared.sync import Condition

        return Condition(lock, ctx=self.get_context())

    def Semaphore(self, value: int = 1) -> _sync.Semaphore:
        """A semaphore shared between processes."""
        from ._shared.sync import Semaphore

        return Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value: int = 1) -> _sync.BoundedSemaphore:
        """A bounded semaphore shared between processes."""
        from ._shared.sync import BoundedSemaphore

        return BoundedSemaphore(value, ctx=self.get_context())

    def Event(self) -> _sync.Event:
        """An event shared between processes."""
        from ._shared.sync import Event

        return Event(ctx=self.get_context())

    def Barrier(
        self,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
    ) -> _sync.Barrier:
        """A barrier shared between processes."""
        from ._shared.sync import Barrier

        return Barrier(parties, action, timeout, ctx=self.get_context())

    # ---- shared memory ------------------------------------------------------------------

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:
        """A ctypes object in shared memory, synchronized by a lock unless ``lock=False``."""
        from .sharedctypes import Value

        return Value(typecode_or_type, *args, lock=lock, ctx=self.get_context())

    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:
        """A ctypes array in shared memory, synchronized by a lock unless ``lock=False``."""
        from .sharedctypes import Array

        return Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self.get_context())

    @staticmethod
    def RawValue(typecode_or_type: Any, *args: Any) -> Any:
        """A ctypes object in shared memory, without a lock."""
        from .sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    @staticmethod
    def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:
        """A ctypes array in shared memory, without a lock."""
        from .sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    # ---- queues ---------------------------------------------------------------------------

    def Queue(self, maxsize: int = 0) -> _queues.Queue:
        """A process-shared FIFO queue."""
        from ._shared.queues import Queue

        return Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize: int = 0) -> _queues.JoinableQueue:
        """A Queue with task_done() and join()."""
        from ._shared.queues import JoinableQueue

        return JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self) -> _queues.SimpleQueue:
        """A simplified queue: put, get, empty, close."""
        from ._shared.queues import SimpleQueue

        return SimpleQueue(ctx=self.get_context())

    # ---- pools -----------------------------------------------------------------------------

    def Pool(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        maxtasksperchild: int | None = None,
        *,
        max_memory_per_child: float | None = None,
        retries: int = 0,
        retry_on: Any = None,
        backoff: float = 0.0,
        memory_limit: int | str | None = None,
        seed: int | None = None,
    ) -> _pool.Pool:
        """A pool of worker processes started with this context's start method."""
        from .pool import Pool

        return Pool(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context=self.get_context(),
            max_memory_per_child=max_memory_per_child,
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            memory_limit=memory_limit,
            seed=seed,
        )

    # ---- managers ----------------------------------------------------------------------

    def Manager(self) -> managers.SyncManager:
        """A started SyncManager whose server process is started with this context.

        Shut it down with ``shutdown()`` (or use it in ``with``); it is shut
        down anyway when this process exits, and its server dies with this process.
        """
        from .managers import SyncManager

        manager = SyncManager(ctx=self.get_context())
        manager.start()
        return manager

    # ---- logging and pickling ---------------------------------------------------------

    @staticmethod
    def get_logger() -> logging.Logger:
        """The logger serentak writes to: ``"multiprocessing"``, the stdlib's name."""
        from ._logging import get_logger

        return get_logger()

    @staticmethod
    def log_to_stderr(level: int | str | None = None) -> logging.Logger:
        """Make the logger print to stderr (at ``level``, if given); return it."""
        from ._logging import log_to_stderr

        return log_to_stderr(level)

    @staticmethod
    def allow_connection_pickling() -> None:
        """Nothing to do: Connections always pickle (their fd travels beside the pickle)."""

    @property
    def reducer(self) -> types.ModuleType:
        """The module that pickles for serentak: :mod:`serentak.reduction`."""
        from . import reduction

        return reduction

    @reducer.setter
    def reducer(self, reduction: types.ModuleType) -> None:
        from . import reduction as ours

        if reduction is not ours:
            raise ValueError(
                "serentak pickles with serentak.reduction: no other reducer can be set"
            )

    # ---- start methods --------------------------------------------------------------

    def get_context(self, method: str | None = None) -> BaseContext:
        """The context for ``method``, or this one.

        Raises:
            ValueError: ``method`` names no start method.
        """
        if method is None:
            return self
        return _CONTEXTS[parse_start_method(method)]

    def get_start_method(self, allow_none: bool = False) -> str | None:
        """The name of this context's start method."""
        raise NotImplementedError

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """Only the default context's start method can be set.

        Raises:
            ValueError: always, for a concrete context.
        """
        raise ValueError("cannot set start method of concrete context")

    @staticmethod
    def get_all_start_methods() -> list[str]:
        """The start methods this platform supports, the default first."""
        return [method.value for method in ALL_START_METHODS]

    @staticmethod
    def set_forkserver_preload(module_names: Sequence[str]) -> None:
        """Modules the fork server imports once, so that its children start with them loaded.

        Raises:
            TypeError: ``module_names`` is not a list of strings.
        """
        names = list(module_names)
        if not all(type(name) is str for name in names):
            raise TypeError("module_names must be a list of strings")
        settings.forkserver_preload = tuple(names)

    @staticmethod
    def set_executable(executable: str | os.PathLike[str]) -> None:
        """The Python interpreter that spawn and the fork server start."""
        settings.executable = os.fsdecode(executable)

    @staticmethod
    def freeze_support() -> None:
        """Nothing to do: frozen Windows executables are not a target of serentak."""

    @property
    def _name(self) -> str:
        return str(self.get_start_method())

    def __repr__(self) -> str:
        return f"<serentak context {self._name!r}>"


class DefaultContext(BaseContext):
    """The context of the ``serentak`` module: its start method can be set once."""

    Process = Process

    def get_context(self, method: str | None = None) -> BaseContext:
        if method is None:
            return _CONTEXTS[fixed_start_method()]
        return super().get_context(method)

    def get_start_method(self, allow_none: bool = False) -> str | None:
        """The default start method's name (fixing it unless ``allow_none``)."""
        _refuse_the_stdlib_executor(self)
        if settings.start_method is None and allow_none:
            return None
        return fixed_start_method().value

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """Set the default start method, once (or again with ``force=True``).

        Raises:
            RuntimeError: it was already set (or fixed by use) and ``force`` is False.
            ValueError: ``method`` names no start method.
        """
        if settings.start_method is not None and not force:
            raise RuntimeError("context has already been set")
        if method is None and force:
            settings.start_method = None
            return
        if method is None:
            raise ValueError("method must be a start method name, or None with force=True")
        settings.start_method = parse_start_method(method)


class _ConcreteContext(BaseContext):
    _method: ClassVar[StartMethod]

    def get_start_method(self, allow_none: bool = False) -> str:
        _refuse_the_stdlib_executor(self)
        return self._method.value


# The module of the stdlib's ProcessPoolExecutor, whose constructor asks its
# mp_context for the start method before it makes anything.
_STDLIB_EXECUTOR_MODULE = "concurrent.futures.process"


def _refuse_the_stdlib_executor(context: BaseContext) -> None:
    """Raise if the caller of ``get_start_method`` is the stdlib's ProcessPoolExecutor.

    It builds the stdlib's own queues and locks on its mp_context and reads
    their private state from a thread of its own, where a serentak context
    would fail out of the caller's sight, leaving its calls waiting for ever.
    Refused in its constructor, before it has started anything.

    Raises:
        TypeError: naming serentak.ProcessPoolExecutor, the same interface.
    """
    caller = sys._getframe(2)
    if caller.f_globals.get("__name__") == _STDLIB_EXECUTOR_MODULE:
        raise TypeError(
            "concurrent.futures.ProcessPoolExecutor cannot run on a serentak context: "
            "use serentak.ProcessPoolExecutor(max_workers, "
            f"mp_context=serentak.get_context({context._name!r})), which has the same "
            "interface, or give the stdlib's executor a multiprocessing context"
        )


class ForkContext(_ConcreteContext):
    """Everything started with ``fork``."""

    _method = StartMethod.FORK
    Process = ForkProcess


class SpawnContext(_ConcreteContext):
    """Everything started with ``spawn``."""

    _method = StartMethod.SPAWN
    Process = SpawnProcess


class ForkServerContext(_ConcreteContext):
    """Everything started with ``forkserver``."""

    _method = StartMethod.FORKSERVER
    Process = ForkServerProcess


_CONTEXTS: dict[StartMethod, BaseContext] = {
    StartMethod.FORK: ForkContext(),
    StartMethod.SPAWN: SpawnContext(),
    StartMethod.FORKSERVER: ForkServerContext(),
}

default_context = DefaultContext()
