"""Every exception and warning serentak raises, in one place.

::

    Exception
     └── ProcessError                  base of serentak's own errors (the stdlib's name)
          ├── BufferTooShort           recv_bytes_into: the message is in args[0]
          ├── AuthenticationError      a peer failed the authkey challenge
          ├── TimeoutError             also a builtin TimeoutError
          └── WorkerLostError          a pool worker died holding its task
    Warning
     └── RuntimeWarning
          └── LockOwnerDiedWarning     a lock was taken over from a process that died holding it

The first four are the stdlib's ``multiprocessing`` exceptions with the same
names and meaning; ``WorkerLostError`` and ``LockOwnerDiedWarning`` are ours.
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


class LockOwnerDiedWarning(RuntimeWarning):
    """A lock was acquired from a process that died while holding it.

    The lock is yours, but whatever it protected may be half-updated: the dead
    process was inside its critical section. Make ``warnings.simplefilter(
    "error", LockOwnerDiedWarning)`` to turn this into an exception; the lock is
    then released before the exception propagates, so it stays usable.
    """


for _cls in (
    ProcessError,
    BufferTooShort,
    AuthenticationError,
    TimeoutError,
    WorkerLostError,
    LockOwnerDiedWarning,
):
    _cls.__module__ = "serentak"
del _cls
