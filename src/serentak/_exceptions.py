"""Every exception and warning serentak raises, in one place.

::

    Exception
     └── ProcessError                  base of serentak's own errors (the stdlib's name)
          ├── BufferTooShort           recv_bytes_into: the message is in args[0]
          ├── AuthenticationError      a peer failed the authkey challenge
          ├── TimeoutError             also a builtin TimeoutError
          ├── WorkerLostError          a pool worker died holding its task
          ├── MemoryLimitError         a task's worker passed its memory_limit (a MemoryError)
          └── PoolTerminatedError      the pool was terminated before the task finished
     └── RemoteTraceback               a worker's traceback, chained as __cause__
     └── MaybeEncodingError            a task's result could not be pickled (serentak.pool)
    Warning
     └── RuntimeWarning
          └── LockOwnerDiedWarning     a lock was taken over from a process that died holding it

The first four are the stdlib's ``multiprocessing`` exceptions with the same
names and meaning, ``RemoteTraceback`` and ``MaybeEncodingError`` are the
stdlib pool's; the rest are ours.
"""

from __future__ import annotations

import builtins


class ProcessError(Exception):
    """Base class of serentak's errors."""


class BufferTooShort(ProcessError):
    """The buffer given to ``recv_bytes_into`` was too small; ``args[0]`` holds the message."""


class AuthenticationError(ProcessError):
    """A connection failed the authentication challenge."""


class TimeoutError(ProcessError, builtins.TimeoutError):
    """A result was not ready in time, or a task ran past its ``timeout``."""


class WorkerLostError(ProcessError):
    """The worker process running a task died before returning its result.

    The message names the exit code or the signal. SIGKILL, when nobody sent it
    on purpose, is most often the kernel's out-of-memory killer.
    """


class MemoryLimitError(ProcessError, MemoryError):
    """A task's worker process grew past the task's ``memory_limit``: the worker was
    stopped while it ran the task, and replaced. The message names the limit and
    the resident size the worker had reached."""


class PoolTerminatedError(ProcessError):
    """The pool was terminated (``terminate()``, or leaving its ``with``) before the task ran."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text.

    A task's exception is re-raised in the caller with this as its
    ``__cause__``, so the worker's file and line show in the caller's traceback.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class MaybeEncodingError(Exception):
    """A task's result could not be pickled in the worker to travel back.

    The stdlib pool's exception, with its attributes and message; the worker's
    traceback of the pickling error is chained as ``__cause__``.

    Attributes:
        exc: ``repr()`` of the error that pickling raised.
        value: ``repr()`` of the result.
    """

    def __init__(self, exc: object, value: object) -> None:
        self.exc = repr(exc)
        self.value = repr(value)
        super().__init__(self.exc, self.value)

    def __str__(self) -> str:
        return f"Error sending result: '{self.value}'. Reason: '{self.exc}'"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self}>"


class LockOwnerDiedWarning(RuntimeWarning):
    """A lock was acquired from a process that died while holding it.

    The lock is yours, but whatever it protected may be half-updated: the dead
    process was inside its critical section. Make ``warnings.simplefilter(
    "error", LockOwnerDiedWarning)`` to turn this into an exception; the lock is
    then released before the exception propagates, so it stays usable.
    """
