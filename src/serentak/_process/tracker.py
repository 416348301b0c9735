"""The resource tracker: unlinks the named shared memory a process tree leaves behind.

A named POSIX segment (:class:`serentak.shared_memory.SharedMemory`) stays in
``/dev/shm`` until someone calls ``unlink()``, whatever happened to the
processes that used it. The tracker is a small process that remembers the
names created by one process tree and unlinks those still there when the
whole tree has ended, warning about them as the stdlib's tracker does::

    any process of the tree                         the tracker
    -----------------------                         -----------
    SharedMemory(create=True)
      register(name)    ── write(pipe) ──────────▶  names.add(name)
    shm.unlink()
      unregister(name)  ── write(pipe) ──────────▶  names.discard(name)

    each process exits, is SIGKILLed, ...: the kernel closes its copy of the
    pipe's write end
                        last write end closed ───▶  EOF: shm_unlink every name
                                                    left, warn, exit

Why one pipe whose write end the whole tree shares, rather than a connection
per process:

* EOF comes exactly when the last process holding a copy of the write end has
  gone, however it went: nothing to accept, count or lose.
* Writes of at most ``PIPE_BUF`` bytes are atomic, so frames written at the
  same time by several processes never interleave; and the pipe is one FIFO,
  so a creator's ``register`` (sent before the name could reach anyone else)
  is always read before another process's ``unregister`` of that name.

Who holds the write end (this process's *link* to its tracker):

* the process that started the tracker, on its first ``SharedMemory(create=True)``;
* fork: a child inherits it, as it inherits every fd;
* spawn and forkserver: a SharedMemory or ShareableList pickled for a child (as
  an argument of the Process, or later through a Connection or Queue) carries
  the fd along (:func:`child_link`); a process without a link keeps a copy;
* a process with no link when it creates a segment starts a tracker of its
  own, which then serves it and the children it starts afterwards: its
  segments go when that subtree has ended.

The fd is close-on-exec, so programs started with ``subprocess`` (and the fork
server, itself a fresh interpreter) do not keep the tracker waiting.

The tracker process is started with :func:`serentak._process.launch.spawn_interpreter`
and detaches at once: it forks, the intermediate exits, and the grandchild
starts a new session. So it is nobody's child (no zombie, nothing for a
user's ``os.wait()`` to steal, not counted among anyone's children), and the
signals a terminal sends to a process group (Ctrl-C, hang-up) do not reach it.
It ignores SIGINT, SIGTERM and SIGHUP besides, as the stdlib's ignores SIGINT
and SIGTERM: unlinking while the tree still runs would pull the memory from
under it, so its only way out is EOF (or SIGKILL).

Only creators register: a process that attaches by name, possibly of another
program, must not have the segment removed when *its* tree ends.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import select
import signal
import struct
import sys
import threading
import warnings
from typing import Any, Final

from serentak._ipc.connection import Connection
from serentak._ipc.serialize import fd_received, fd_to_send
from serentak._os import posix as _posix

_HEADER: Final = struct.Struct("<BH")
_READ_SIZE: Final = 64 * 1024
_IGNORED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Action(enum.Enum):
    """What a notice asks the tracker to do with a name."""

    REGISTER = 1
    UNREGISTER = 2


@dataclasses.dataclass(frozen=True)
class Notice:
    """One message to the tracker: a frame of ``<action: u8><length: u16><name>``.

    Attributes:
        action: add the name to the registry, or remove it.
        name: the segment's name as given to ``shm_open`` (with its slash).
    """

    action: Action
    name: str

    def encode(self) -> bytes:
        """The frame, which must fit in one atomic pipe write.

        Raises:
            ValueError: the name is too long (longer than any ``shm_open`` accepts).
        """
        raw = os.fsencode(self.name)
        frame = _HEADER.pack(self.action.value, len(raw)) + raw
        if len(frame) > select.PIPE_BUF:
            raise ValueError(f"shared memory name too long for the tracker: {self.name!r}")
        return frame


def decode(data: bytes) -> tuple[list[Notice], bytes]:
    """The whole frames at the start of ``data``, and the bytes of an incomplete one."""
    notices: list[Notice] = []
    position = 0
    while len(data) - position >= _HEADER.size:
        action, length = _HEADER.unpack_from(data, position)
        end = position + _HEADER.size + length
        if end > len(data):
            break
        name = os.fsdecode(data[position + _HEADER.size : end])
        notices.append(Notice(Action(action), name))
        position = end
    return notices, data[position:]


# ---- the link: this process's write end of its tracker's pipe ---------------------------


class _Link:
    """This process's link to its tracker. Several threads may create segments at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fd: int | None = None

    def reset_lock(self) -> None:
        """In a forked child: the parent's lock may have been held by a thread that is gone."""
        self.lock = threading.Lock()


_link: Final = _Link()
os.register_at_fork(after_in_child=_link.reset_lock)


def register(name: str) -> None:
    """Have this tree's tracker unlink ``name`` at the end unless it is unregistered first.

    Starts the tracker if this process has none.

    Raises:
        OSError: the tracker could not be started.
    """
    frame = Notice(Action.REGISTER, name).encode()
    with _link.lock:
        if _link.fd is None:
            _link.fd = _start()
        try:
            os.write(_link.fd, frame)
        except BrokenPipeError:
            # The tracker was killed: what it held is lost, but what comes next
            # is tracked by a new one.
            _posix.close_quietly(_link.fd)
            _link.fd = None
            _link.fd = _start()
            os.write(_link.fd, frame)


def unregister(name: str) -> None:
    """Tell this tree's tracker that ``name`` was unlinked (nothing to do without a tracker)."""
    frame = Notice(Action.UNREGISTER, name).encode()
    with _link.lock:
        if _link.fd is None:
            return
        try:
            os.write(_link.fd, frame)
        except BrokenPipeError:
            _posix.close_quietly(_link.fd)
            _link.fd = None


def ensure_running() -> None:
    """Start this process's tracker now if it has none (``register`` does so on demand)."""
    with _link.lock:
        if _link.fd is None:
            _link.fd = _start()


def is_linked() -> bool:
    """True if this process holds a link to a tracker."""
    return _link.fd is not None


class ChildLink:
    """This process's link, pickled for another process: the receiver adopts it if it has none."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return _adopt, (fd_to_send(self._fd, type(self).__name__, inheritance_only=False),)


def child_link() -> ChildLink | None:
    """A :class:`ChildLink` to pickle beside a handle, or None if it cannot travel.

    It travels wherever fds do: to a child being started, and through a
    Connection. A plain ``pickle.dumps`` has no fd channel; the handle then
    goes by name alone, as the stdlib's does.
    """
    fd = _link.fd
    if fd is None:
        return None
    try:
        # Registering the fd is the only way to learn whether a channel for fds
        # is open; it lands on one index however many handles register it.
        fd_to_send(fd, ChildLink.__name__, inheritance_only=False)
    except RuntimeError:
        return None
    return ChildLink(fd)


def _adopt(index: int) -> None:
    fd = fd_received(index)
    with _link.lock:
        if _link.fd is None:
            _link.fd = os.dup(fd)


# ---- starting the tracker ------------------------------------------------------------------


def _code() -> str:
    """The tracker's ``python -c`` code; it finds serentak where this process found it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # spawn_interpreter formats {fd} into the code: keep other braces literal.
    path = repr(root).replace("{", "{{").replace("}", "}}")
    return (
        f"import sys; sys.path.append({path}); "
        "from serentak._process.tracker import main; main({fd})"
    )


def _start() -> int:
    """Start a tracker; return the write end of its pipe."""
    from .launch import spawn_interpreter

    reader, writer = os.pipe()
    try:
        pid, channel = spawn_interpreter(_code())
        try:
            with channel:
                channel.send_frame(b"", [reader])
                # The tracker's pid, sent once it has detached and ignores signals.
                channel.recv()
        except (EOFError, OSError) as exc:
            raise OSError("the serentak resource tracker did not start") from exc
        finally:
            _reap(pid)
    except BaseException:
        os.close(writer)
        raise
    finally:
        os.close(reader)
    return writer


def _reap(pid: int) -> None:
    """Wait for the interpreter we started: it exits as soon as the tracker has forked off."""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # a SIGCHLD handler of the user's reaped it first


# ---- the tracker process -------------------------------------------------------------------


def main(fd: int) -> None:
    """Entry point of the tracker interpreter: detach, collect names until EOF, clean up."""
    for signum in _IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    channel = Connection(fd)
    _payload, fds = channel.recv_frame()
    (reader,) = fds
    _close_inherited(keep={fd, reader})
    _quiet_standard_streams()
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    try:
        channel.send(os.getpid())
    except OSError:
        pass  # the starter died meanwhile: whoever else holds the pipe is still served
    channel.close()
    os.chdir("/")  # hold no directory busy for as long as the tree runs
    clean_up(collect(reader))


def _close_inherited(keep: set[int]) -> None:
    """Close every fd above stderr but ``keep``.

    The interpreter inherits any fd its starter left inheritable; one that is
    the write end of some pipe would keep that pipe's reader waiting for as
    long as the tracker lives.
    """
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _quiet_standard_streams() -> None:
    """Keep stderr for the warning; stdin and stdout go to /dev/null.

    Holding the program's stdout would keep a reader of it (``$(program)``,
    a pipe) waiting for as long as the tracker lives.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)


def collect(reader: int) -> set[str]:
    """Read notices from ``reader`` until EOF; the names registered and not unregistered."""
    names: set[str] = set()
    pending = b""
    while True:
        data = os.read(reader, _READ_SIZE)
        if not data:
            return names
        notices, pending = decode(pending + data)
        for notice in notices:
            if notice.action is Action.REGISTER:
                names.add(notice.name)
            else:
                names.discard(notice.name)


def clean_up(names: set[str]) -> list[str]:
    """Unlink ``names``; warn about those that were still there. Returns them."""
    leaked: list[str] = []
    for name in sorted(names):
        try:
            _posix.shm_unlink(name)
        except FileNotFoundError:
            continue  # unlinked by a process outside this tree
        except OSError as exc:
            _warn(f"resource_tracker: {name!r}: {exc}")
            continue
        leaked.append(name)
    if leaked:
        _warn(
            f"resource_tracker: There appear to be {len(leaked)} leaked shared_memory "
            f"objects to clean up at shutdown: {leaked}"
        )
    return leaked


def _warn(message: str) -> None:
    try:
        warnings.warn(message, UserWarning, stacklevel=1)
    except UserWarning:
        # Run with -W error (the tracker gets its parent's -W options): still
        # say it, there is nobody to catch the exception here.
        sys.stderr.write(f"UserWarning: {message}\n")
    sys.stderr.flush()
