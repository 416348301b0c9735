"""Typed access to the OS primitives serentak is built from.

Everything that differs between kernels or needs the C extension goes through
here, with one fallback each, so the layers below never test for features.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
from typing import Final

from . import _native

IS_LINUX: Final = sys.platform.startswith("linux")
HAS_PIDFD: Final = hasattr(os, "pidfd_open")
HAS_MEMFD: Final = hasattr(os, "memfd_create")

fork = _native.fork
gettid = _native.gettid
pid_gone = _native.pid_gone


def pidfd_open(pid: int) -> int | None:
    """A pidfd for ``pid``, or None where the kernel has none (the caller then uses a pipe).

    The pidfd polls readable once the process has exited, zombie or not.
    """
    if not HAS_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return None
        raise


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` when the parent thread dies; False if unsupported."""
    return bool(_native.set_pdeathsig(sig))


def memfd(name: str, size: int) -> int:
    """An anonymous shared-memory file of ``size`` bytes (close-on-exec).

    memfd where the kernel has it: freed when the last process closes it, so it
    cannot outlive its users. Elsewhere a POSIX shm object unlinked at once,
    which has the same lifetime.
    """
    if HAS_MEMFD:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    else:
        shm_name = f"/serentak-{os.getpid()}-{os.urandom(8).hex()}"
        fd = _native.shm_open(shm_name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        _native.shm_unlink(shm_name)
    try:
        if size:
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def shm_open(name: str, flags: int, mode: int = 0o600) -> int:
    """``shm_open(3)``: a named POSIX shared-memory object (close-on-exec)."""
    return int(_native.shm_open(name, flags, mode))


def shm_unlink(name: str) -> None:
    """``shm_unlink(3)``."""
    _native.shm_unlink(name)


def close_quietly(fd: int | None) -> None:
    """Close ``fd`` if it is one, ignoring EBADF (already closed by an error path)."""
    if fd is None or fd < 0:
        return
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


def fd_readable(fd: int, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None: forever) for ``fd`` to poll readable."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    millis = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return bool(poller.poll(millis))
