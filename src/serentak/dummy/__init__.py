"""The multiprocessing API on threads: the stdlib's ``multiprocessing.dummy``.

For code written against the multiprocessing API that wants threads instead
(I/O-bound work): ``Process`` is a thread, ``Pool`` is a ThreadPool, queues
and locks are the ``threading``/``queue`` ones.
"""

from __future__ import annotations

import array
import builtins
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from queue import Queue as Queue
from threading import Barrier as Barrier
from threading import BoundedSemaphore as BoundedSemaphore
from threading import Condition as Condition
from threading import Event as Event
from threading import Lock as Lock
from threading import RLock as RLock
from threading import Semaphore as Semaphore
from typing import Any

from serentak._pool.engines.thread import ThreadPool
from serentak._public import publish

from .connection import Pipe as Pipe

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Pipe",
    "Pool",
    "Process",
    "Queue",
    "RLock",
    "Semaphore",
    "active_children",
    "current_process",
    "freeze_support",
]

JoinableQueue = Queue


class DummyProcess(threading.Thread):
    """A thread with the Process API (start, join, is_alive, exitcode, daemon, name)."""

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
    ) -> None:
        super().__init__(group, target, name, tuple(args), dict(kwargs or {}), daemon=daemon)
        self._start_called = False
        self._parent = current_process()

    def start(self) -> None:
        """Start the thread, and record it as a child of the calling thread."""
        if self._parent is not current_process():
            raise RuntimeError(
                f"Parent is {self._parent!r} but current_process is {current_process()!r}"
            )
        self._start_called = True
        _children_of(self._parent)[self] = None
        super().start()

    @property
    def exitcode(self) -> int | None:
        """0 once the thread has finished, None before."""
        if self._start_called and not self.is_alive():
            return 0
        return None


Process = DummyProcess
current_process = threading.current_thread
# Each thread's started DummyProcesses, by thread (threads are weak-referenceable).
_children: weakref.WeakKeyDictionary[threading.Thread, weakref.WeakKeyDictionary[Any, None]] = (
    weakref.WeakKeyDictionary()
)


def _children_of(thread: threading.Thread) -> weakref.WeakKeyDictionary[Any, None]:
    return _children.setdefault(thread, weakref.WeakKeyDictionary())


def active_children() -> list[DummyProcess]:
    """The calling thread's children that are still running."""
    children = _children_of(current_process())
    for child in list(children):
        if not child.is_alive():
            children.pop(child, None)
    return list(children)


def freeze_support() -> None:
    """Nothing to do."""


class Namespace(types.SimpleNamespace):
    """An attribute bag, as ``Manager().Namespace()`` gives."""


class Value:
    """A value shared by threads, as ``Value(typecode, value)`` gives between processes.

    Threads share memory, so it holds the object itself: ``typecode`` is kept for
    repr() only, and there is no lock (``lock`` is accepted for the signature).
    """

    def __init__(self, typecode: Any, value: Any, lock: Any = True) -> None:
        self._typecode = typecode
        self._value = value

    @property
    def value(self) -> Any:
        """The value."""
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        self._value = value

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._typecode!r}, {self._value!r})>"


def Array(typecode: str, sequence: Iterable[Any], lock: Any = True) -> array.array[Any]:
    """An ``array.array`` of ``sequence`` (threads share it as it is; ``lock`` is ignored)."""
    return array.array(typecode, sequence)


# Manager().dict() and Manager().list() are the plain ones: threads share them.
dict = builtins.dict
list = builtins.list


def Manager() -> types.ModuleType:
    """This module: its Queue, Lock, ... are already shared by all threads."""
    return sys.modules[__name__]


def Pool(
    processes: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
) -> ThreadPool:
    """A ThreadPool."""
    return ThreadPool(processes, initializer, tuple(initargs))


publish(__name__, globals())
