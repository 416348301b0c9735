"""Typed access to the OS primitives serentak is built from.

Everything that differs between kernels or needs the C extension goes through
here, with one fallback each, so the layers below never test for features.
"""

from __future__ import annotations

import errno
import math
import os
import select
import selectors
import signal
import socket
import sys
from typing import Final

from . import _native
from .waiting import spans

IS_LINUX: Final = sys.platform.startswith("linux")
HAS_PIDFD: Final = hasattr(os, "pidfd_open")
HAS_MEMFD: Final = hasattr(os, "memfd_create")

gettid = _native.gettid
pid_gone = _native.pid_gone


# For tests of a failed fork(): while the file this variable names exists,
# serentak's process creation fails with EAGAIN, as at RLIMIT_NPROC (which
# root, who may run the test suite, is exempt from). Read at each start, so a
# fork server started with the variable set honours it too.
REFUSE_FORKS_VARIABLE: Final = "SERENTAK_TEST_REFUSE_FORKS"


def check_may_fork() -> None:
    """Raise what fork() raises at a process limit, if the test hook says so."""
    refuse = os.environ.get(REFUSE_FORKS_VARIABLE)
    if refuse and os.path.exists(refuse):
        raise BlockingIOError(
            errno.EAGAIN, f"{os.strerror(errno.EAGAIN)} ({REFUSE_FORKS_VARIABLE})"
        )


def fork() -> int:
    """fork(), through the C extension (see its notes on the child's state)."""
    check_may_fork()
    return _native.fork()


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


def usable_cpu_count() -> int | None:
    """The CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota.

    A container limited to 1.5 CPUs on a 64-core host gets 2; a process pinned
    to one core gets 1. None if even the machine's count is unknown.
    """
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if count is None:
        return None
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


# os.path rather than pathlib: this module is imported by every spawned child,
# and pathlib (with urllib.parse behind it) is a noticeable part of a start.
_CGROUP_ROOT: Final = "/sys/fs/cgroup"


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the process's cgroup (or an ancestor) may use; None if unlimited."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as membership:
            lines = membership.read().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":  # cgroup v2
            limits += _quotas_v2(_CGROUP_ROOT, path)
        elif "cpu" in controllers.split(","):  # cgroup v1
            limits += _quotas_v1(controllers, path)
    return min(limits, default=None)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


def _quotas_v2(root: str, path: str) -> list[float]:
    limits = []
    folder = os.path.normpath(os.path.join(root, path.lstrip("/")))
    while True:
        try:
            quota, period = _read(os.path.join(folder, "cpu.max")).split()
            if quota != "max":
                limits.append(int(quota) / int(period))
        except (OSError, ValueError):
            pass
        if folder == root or not folder.startswith(root + "/"):
            return limits
        folder = os.path.dirname(folder)


def _quotas_v1(controllers: str, path: str) -> list[float]:
    for mount in (controllers, "cpu", "cpu,cpuacct"):
        folder = os.path.join(_CGROUP_ROOT, mount, path.lstrip("/"))
        try:
            quota = int(_read(os.path.join(folder, "cpu.cfs_quota_us")))
            period = int(_read(os.path.join(folder, "cpu.cfs_period_us")))
        except (OSError, ValueError):
            continue
        return [quota / period] if quota > 0 and period > 0 else []
    return []


def socketpair(kind: int = socket.SOCK_STREAM) -> tuple[socket.socket, socket.socket]:
    """A connected AF_UNIX socket pair in blocking mode, whatever ``socket.setdefaulttimeout``
    the program set: serentak's own sockets must not inherit a user's timeout (it
    would make their descriptors non-blocking, and every plain read on them fail)."""
    left, right = socket.socketpair(socket.AF_UNIX, kind)
    left.settimeout(None)
    right.settimeout(None)
    return left, right


def adopt_socket(fd: int) -> socket.socket:
    """A socket object for ``fd`` that leaves the
    descriptor's blocking mode alone and has no timeout.

    ``socket.socket(fileno=fd)`` makes ``fd`` non-blocking when the program set
    a default timeout; the descriptor may be shared with code that reads it
    directly, so its mode is put back.
    """
    blocking = os.get_blocking(fd)
    sock = socket.socket(fileno=fd)
    if socket.getdefaulttimeout() is not None:
        sock.settimeout(None)
        if not blocking:
            os.set_blocking(fd, False)
    return sock


def close_quietly(fd: int | None) -> None:
    """Close ``fd`` if it is one, ignoring EBADF (already closed by an error path)."""
    if fd is None or fd < 0:
        return
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


_READABLE: Final = select.POLLIN | select.POLLHUP | select.POLLERR
_WRITABLE: Final = select.POLLOUT | select.POLLHUP | select.POLLERR


def fd_readable(fd: int, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None: forever) for ``fd`` to poll readable."""
    poller = select.poll()
    poller.register(fd, _READABLE)
    return bool(poll(poller, timeout))


def fd_writable(fd: int, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None: forever) for ``fd`` to poll writable."""
    poller = select.poll()
    poller.register(fd, _WRITABLE)
    return bool(poll(poller, timeout))


def poll(poller: select.poll, timeout: float | None) -> list[tuple[int, int]]:
    """``poller.poll()`` for up to ``timeout`` seconds (None: forever); the events.

    The main thread polls in spans, so that a signal another thread took
    interrupts it (see ``_waiting``).
    """
    for span in spans(timeout):  # one poll outside the main thread, or for a short timeout
        events = poller.poll(None if span is None else _millis(span))
        if events:
            return events
    return []


def _millis(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


class Muter:
    """Stops a selector from reporting one of its descriptors for a while, then
    starts it again, while another thread may be waiting in its ``select()``
    (a muted descriptor does not wake that thread).

    With epoll each is one ``epoll_ctl(EPOLL_CTL_MOD)``, through a second handle
    on the same epoll instance (a dup of its descriptor): a quarter of the cost of
    unregistering and registering again. With other selectors, that is what they do.

    Args:
        selector: the selector; the caller closes the muter before it.
    """

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self._epoll: select.epoll | None = None
        if hasattr(select, "epoll") and isinstance(selector, selectors.EpollSelector):
            self._epoll = select.epoll.fromfd(os.dup(selector.fileno()))
        self._muted: dict[int, selectors.SelectorKey] = {}

    def mute(self, fd: int) -> None:
        """Stop reporting ``fd`` (registered) until :meth:`unmute`."""
        if self._epoll is not None:
            self._epoll.modify(fd, 0)  # still registered, for no events
        else:
            self._muted[fd] = self._selector.unregister(fd)

    def unmute(self, fd: int, events: int) -> None:
        """Report ``fd`` again, for ``events`` (EVENT_READ, EVENT_WRITE), with its data."""
        if self._epoll is not None:
            data = self._selector.get_key(fd).data
            self._selector.modify(fd, events, data)  # the selector's record of it
            mask = (select.EPOLLIN if events & selectors.EVENT_READ else 0) | (
                select.EPOLLOUT if events & selectors.EVENT_WRITE else 0
            )
            self._epoll.modify(fd, mask)
        else:
            key = self._muted.pop(fd)
            self._selector.register(fd, events, key.data)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
