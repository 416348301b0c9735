"""The child's side of a start: from a fresh process to the target running.

::

    parent                                       child
    ------                                       -----
    payload = dumps(process)   (fails here if    fork:        inherits everything
      the arguments cannot be pickled: no        spawn:       python -c "...spawn_main(fd)"
      child is started)                          forkserver:  forked by the server
    start the child with one end of a socket ->
    send ChildStart + fds over the other end  -> receive ChildStart, apply Preparation
                                                 watch the parent (pdeathsig or a thread)
                                                 unpickle the process object with its fds
                                                 exit code = process._bootstrap()

``ChildStart`` travels in two layers: the outer one (plain data) is applied
before the inner one (the process object, with its target and arguments) is
unpickled, because unpickling imports the target's module and needs the
parent's ``sys.path`` and working directory first.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Protocol

from serentak._os import posix as _posix


class Bootstrappable(Protocol):
    """What a launcher starts: the child calls ``_bootstrap()`` and exits with its result.

    ``_environ`` holds variables the child's environment gets before anything
    of the parent's is unpickled in it (thread limits for numerical libraries
    must be set before those are imported).
    """

    _environ: Mapping[str, str]
    _ignores_sigint: bool

    @property
    def _dies_with_parent(self) -> bool: ...

    def _bootstrap(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class Preparation:
    """The parent's state a child needs before it can unpickle its process object.

    Attributes:
        sys_path: the parent's ``sys.path``.
        cwd: the parent's working directory.
        argv: the parent's ``sys.argv``.
        parent_pid: the pid of the process that asked for the child.
        watch_parent: True if the child cannot rely on the parent-death signal
            (it was started from a thread other than the main thread, whose
            exit would fire the signal early) and must watch the parent itself.
        start_method: the parent's default start method, if set, so the child
            starts its own children the same way.
        forkserver_preload: modules a fork server started by the child preloads.
        environ: variables to set in the child's environment (unless already set).
        ignore_sigint: the child ignores SIGINT from its first instruction (a pool
            worker: a Ctrl-C reaching the process group is the parent's to handle).
        die_with_parent: the child exits when its parent dies (daemonic processes,
            pool workers, a manager's server); a plain process outlives it, as the
            stdlib's does.
        log_level: the ``multiprocessing`` logger's effective level, if the parent
            made the logger, so the child logs what the parent would.
        log_to_stderr: the parent called ``log_to_stderr()``: the child does too.
    """

    sys_path: tuple[str, ...]
    cwd: str
    argv: tuple[str, ...]
    parent_pid: int
    watch_parent: bool
    start_method: str | None
    forkserver_preload: tuple[str, ...]
    environ: tuple[tuple[str, str], ...] = ()
    ignore_sigint: bool = False
    die_with_parent: bool = True
    log_level: int | None = None
    log_to_stderr: bool = False


@dataclasses.dataclass(frozen=True)
class ChildStart:
    """Everything a spawned or fork-server child receives.

    Attributes:
        preparation: applied first.
        process: the pickled process object; its handles' fds arrive beside it.
    """

    preparation: Preparation
    process: bytes


def set_environ(environ: Iterable[tuple[str, str]]) -> None:
    """Set these variables, keeping any the environment already has."""
    for name, value in environ:
        os.environ.setdefault(name, value)


def guard_parent(parent_pid: int, *, watch: bool) -> None:
    """Exit when the parent dies.

    The kernel's parent-death signal fires when the *thread* that created the
    child exits, so it is only used when that thread was the main thread;
    otherwise a daemon thread waits on a pidfd of the parent. Either way, a
    parent already gone by now means exiting at once.
    """
    if not watch and _posix.set_parent_death_signal(signal.SIGKILL):
        if os.getppid() != parent_pid:
            os._exit(1)
        return
    pidfd = _posix.pidfd_open(parent_pid)
    if pidfd is None:
        if _posix.pid_gone(parent_pid):
            os._exit(1)
        return  # nothing to watch with: the parent's exit hooks still stop us
    threading.Thread(
        target=_die_with, args=(pidfd,), name="serentak-parent-watch", daemon=True
    ).start()


def _die_with(pidfd: int) -> None:
    _posix.fd_readable(pidfd, None)
    os.kill(os.getpid(), signal.SIGKILL)


def replace_stdin() -> None:
    """Give the child an empty stdin, as the stdlib does: it must not steal the parent's input."""
    if sys.stdin is None:
        return
    try:
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
        sys.stdin = open(fd, closefd=True, encoding="utf-8")  # noqa: SIM115 (lives as long as the process)
    except (OSError, ValueError):
        pass


def flush_standard_streams() -> None:
    """Flush stdout and stderr: before a fork, so output is not written twice; before exiting."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
