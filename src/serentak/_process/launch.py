"""Start methods: how a child process comes to exist, and the parent's handle on it.

::

    launch(process, method)
      fork        fork() here; the child runs process._bootstrap() on the copy
      spawn       pickle, posix_spawn a fresh interpreter, send it ChildStart
      forkserver  pickle, ask this process's fork server to fork, send ChildStart

    the parent keeps a ChildHandle:
      _DirectChild   fork and spawn: our own child, a pidfd as sentinel, waitpid
      _ServedChild   forkserver: the server's child; the server reports the exit
                     code on a per-child status socket, which is the sentinel

Pickling happens before any child exists, so arguments that cannot be pickled
raise in ``start()`` and leave nothing behind.

The fork server belongs to the process that started it and serves only that
process: it is a child of ours, talks to us over a private socket pair (so no
address to guard and nothing to authenticate), exits when that socket reports
our death, and its children then receive SIGKILL from the kernel. A forked
child forgets its parent's server and starts its own when it needs one.
"""

from __future__ import annotations

import atexit
import enum
import os
import signal
import socket
import struct
import sys
import threading
import traceback
import weakref
from collections.abc import Mapping
from typing import Final, Protocol

from serentak import _logging
from serentak._ipc.connection import Connection
from serentak._ipc.serialize import (
    dumps,
    follow_sender_definitions,
    loads,
    receiving_fds,
    sending_fds,
    track_main_classes,
)
from serentak._os import posix as _posix

from .child import (
    Bootstrappable,
    ChildStart,
    Preparation,
    flush_standard_streams,
    guard_parent,
    set_environ,
)
from .stdlib import after_fork_in_child

EXIT_STATUS: Final = struct.Struct("<i")
# What a child's exit code reads as when nobody could observe it (the fork
# server died first); the stdlib uses the same value.
UNKNOWN_EXIT_CODE: Final = 255


class StartMethod(enum.Enum):
    """How a child process is started."""

    FORK = "fork"
    SPAWN = "spawn"
    FORKSERVER = "forkserver"


# The platform default first, as the stdlib orders get_all_start_methods().
ALL_START_METHODS: Final = (StartMethod.FORKSERVER, StartMethod.FORK, StartMethod.SPAWN)


def _default_start_method() -> StartMethod:
    """forkserver (as CPython 3.14 on Linux), unless SERENTAK_START_METHOD names another.

    The variable lets an unchanged program run under any start method, which
    is how the seed's examples are run under each one.
    """
    name = os.environ.get("SERENTAK_START_METHOD", "")
    try:
        return StartMethod(name) if name else StartMethod.FORKSERVER
    except ValueError:
        raise ValueError(
            f"SERENTAK_START_METHOD={name!r} names no start method "
            f"(choose from {', '.join(m.value for m in ALL_START_METHODS)})"
        ) from None


DEFAULT_START_METHOD: Final = _default_start_method()


class _Settings:
    """Process-wide launch settings (set from the main thread at start-up, read at launch)."""

    def __init__(self) -> None:
        self.start_method: StartMethod | None = None
        self.executable: str = sys.executable
        self.forkserver_preload: tuple[str, ...] = ()


settings: Final = _Settings()


def parse_start_method(method: str) -> StartMethod:
    """The :class:`StartMethod` named ``method``.

    Raises:
        ValueError: ``method`` names no start method.
    """
    try:
        return StartMethod(method)
    except ValueError:
        names = ", ".join(repr(m.value) for m in ALL_START_METHODS)
        raise ValueError(f"cannot find context for {method!r} (start methods: {names})") from None


# ---- the parent's handle on a child -------------------------------------------


class ChildHandle(Protocol):
    """The parent's view of a started child."""

    pid: int
    sentinel: int
    returncode: int | None

    def poll(self) -> int | None:
        """The exit code if the child has ended (negative: killed by that signal), else None."""

    def wait(self, timeout: float | None) -> int | None:
        """Wait up to ``timeout`` seconds for the child to end; its exit code or None."""

    def send_signal(self, sig: int) -> None:
        """Signal the child unless it has already ended."""

    def close(self) -> None:
        """Release the sentinel and any other descriptor held for the child."""


class _HandleBase:
    """Signalling and waiting shared by both kinds of handle."""

    def __init__(self, pid: int, sentinel: int, pidfd: int | None) -> None:
        self.pid = pid
        self.sentinel = sentinel
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._reap_lock = threading.Lock()
        # A Process that is never close()d still gives its descriptors back
        # when it is collected.
        self._finalizer = weakref.finalize(self, _close_all, {sentinel, pidfd})
        # Not at interpreter exit: the exit hooks still signal and join children
        # then, and the kernel closes everything after.
        self._finalizer.atexit = False

    def _collect(self, block: bool) -> int | None:
        raise NotImplementedError

    def poll(self) -> int | None:
        if self.returncode is None:
            with self._reap_lock:
                if self.returncode is None:
                    self.returncode = self._collect(block=False)
        return self.returncode

    def wait(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            if not _posix.fd_readable(self.sentinel, timeout):
                return None
            with self._reap_lock:
                if self.returncode is None:
                    self.returncode = self._collect(block=True)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass  # it ended between poll() and the signal

    def close(self) -> None:
        self._finalizer()
        self.sentinel = -1
        self._pidfd = None


def _close_all(fds: set[int | None]) -> None:
    for fd in fds:
        _posix.close_quietly(fd)


class _DirectChild(_HandleBase):
    """A child of this process (fork, spawn): waitpid gives its exit code."""

    def _collect(self, block: bool) -> int | None:
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            # Someone else reaped it (a SIGCHLD handler of the user's): the
            # code is lost, but the child is certainly gone.
            return UNKNOWN_EXIT_CODE
        if pid == 0:
            return None
        return os.waitstatus_to_exitcode(status)


class _ServedChild(_HandleBase):
    """A child of the fork server: the server sends its exit code on the sentinel.

    The code is peeked at, not read, so the sentinel stays readable after the
    child has ended, as a sentinel must.
    """

    def _collect(self, block: bool) -> int | None:
        if not block and not _posix.fd_readable(self.sentinel, 0):
            return None
        with _posix.adopt_socket(self.sentinel) as status:
            try:
                data = status.recv(EXIT_STATUS.size, socket.MSG_PEEK | socket.MSG_WAITALL)
            finally:
                status.detach()
        if len(data) < EXIT_STATUS.size:
            # The server died before it could tell. A plain child outlives it
            # (only daemonic ones die with it), but nobody could wait for it any
            # more: end it, so that join() returning means the child is gone.
            if self._pidfd is not None:
                try:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _posix.fd_readable(self._pidfd, None)
            return UNKNOWN_EXIT_CODE
        code: int = EXIT_STATUS.unpack(data)[0]
        return code


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


# ---- launching --------------------------------------------------------------


def launch(process: Bootstrappable, method: StartMethod) -> ChildHandle:
    """Start a child that runs ``process._bootstrap()`` and exits with its result.

    Raises:
        Whatever pickling raises, for spawn and forkserver, before any child exists.
    """
    if method is StartMethod.FORK:
        return _fork(process)
    payload, fds = _start_payload(process)
    if method is StartMethod.SPAWN:
        _posix.check_may_fork()
        return _spawn(payload, fds)
    return _fork_server().launch(payload, fds)


def _launched_from_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def preparation(
    environ: Mapping[str, str] | None = None,
    *,
    ignore_sigint: bool = False,
    die_with_parent: bool = True,
) -> Preparation:
    """What a spawned or fork-server child needs to know of this process."""
    method = settings.start_method
    log_level, log_to_stderr = _logging.settings_for_child()
    return Preparation(
        sys_path=tuple(sys.path),
        cwd=os.getcwd(),
        argv=tuple(sys.argv),
        parent_pid=os.getpid(),
        watch_parent=not _launched_from_main_thread(),
        start_method=None if method is None else method.value,
        forkserver_preload=settings.forkserver_preload,
        environ=tuple((environ or {}).items()),
        ignore_sigint=ignore_sigint,
        die_with_parent=die_with_parent,
        log_level=log_level,
        log_to_stderr=log_to_stderr,
    )


def apply_preparation(prep: Preparation) -> None:
    """Make this process look like its parent where it matters for unpickling."""
    sys.path[:] = prep.sys_path
    sys.argv[:] = prep.argv
    try:
        os.chdir(prep.cwd)
    except OSError:
        pass  # the parent's directory is gone: stay where we are, as the stdlib does
    if prep.start_method is not None:
        settings.start_method = StartMethod(prep.start_method)
    settings.forkserver_preload = prep.forkserver_preload
    set_environ(prep.environ)


def _start_payload(process: Bootstrappable) -> tuple[bytes, list[int]]:
    with sending_fds(spawning=True) as fds:
        inner = dumps(process)
    prep = preparation(
        process._environ,
        ignore_sigint=process._ignores_sigint,
        die_with_parent=process._dies_with_parent,
    )
    return dumps(ChildStart(prep, inner)), fds


def _fork(process: Bootstrappable) -> ChildHandle:
    watch = not _launched_from_main_thread()
    parent_pid = os.getpid()
    track_main_classes()
    flush_standard_streams()
    liveness_r, liveness_w = (-1, -1) if _posix.HAS_PIDFD else os.pipe()
    try:
        pid = _posix.fork()
    except OSError:
        for fd in (liveness_r, liveness_w):
            if fd >= 0:
                os.close(fd)
        raise
    if pid == 0:
        code = 1
        try:
            if process._ignores_sigint:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            _posix.close_quietly(liveness_r)
            if process._dies_with_parent:
                guard_parent(parent_pid, watch=watch)
            follow_sender_definitions()
            set_environ(process._environ.items())
            start_exit_handlers()
            after_fork_in_child()
            code = process._bootstrap()
        except BaseException:
            traceback.print_exc()
        finally:
            run_exit_handlers()
            flush_standard_streams()
            os._exit(code)
    _posix.close_quietly(liveness_w)
    pidfd = _posix.pidfd_open(pid)
    return _DirectChild(pid, liveness_r if pidfd is None else pidfd, pidfd)


def start_exit_handlers() -> None:
    """In a forked child: drop the parent's ``atexit`` handlers (they are the parent's
    business), so that the child's own run at its exit (:func:`run_exit_handlers`),
    as in the stdlib's fork and forkserver children since Python 3.13 and as a
    spawned child's do through its normal interpreter exit."""
    atexit._clear()


def run_exit_handlers() -> None:
    """In a forked child about to ``os._exit``: run the ``atexit`` handlers it registered."""
    try:
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()


def _interpreter_flags() -> list[str]:
    """The command-line flags that make a new interpreter behave like this one."""
    flags = sys.flags
    args: list[str] = []
    if flags.optimize:
        args.append("-" + "O" * flags.optimize)
    for flag, letter in (
        (flags.dont_write_bytecode, "B"),
        (flags.no_user_site, "s"),
        (flags.ignore_environment, "E"),
        (getattr(flags, "safe_path", False), "P"),
    ):
        if flag:
            args.append("-" + letter)
    for option in sys.warnoptions:
        args += ["-W", option]
    for key, value in sys._xoptions.items():
        args += ["-X", key if value is True else f"{key}={value}"]
    return args


def spawn_interpreter(code: str, *, block_sigint: bool = False) -> tuple[int, Connection]:
    """Start ``python -c code`` with a socket to it; return its pid and our end.

    ``code`` finds its end of the socket as the file descriptor ``{fd}``. With
    ``block_sigint`` the interpreter starts with SIGINT blocked, so that a
    Ctrl-C during its start-up waits until it knows what to do with one
    (``run_from_socket`` decides, then unblocks it).
    """
    ours, theirs = _posix.socketpair()
    with ours, theirs:
        fd = theirs.fileno()
        args = [settings.executable, *_interpreter_flags(), "-c", code.format(fd=fd)]
        # dup2 of an fd onto itself clears close-on-exec (POSIX.1-2024), which
        # makes exactly this one descriptor survive into the new program.
        actions = [(os.POSIX_SPAWN_DUP2, fd, fd)]
        flush_standard_streams()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        if block_sigint:
            mask = mask | {signal.SIGINT}
        pid = os.posix_spawn(
            settings.executable, args, os.environ, file_actions=actions, setsigmask=mask
        )
        return pid, Connection(ours.detach())


def _spawn(payload: bytes, fds: list[int]) -> ChildHandle:
    pid, channel = spawn_interpreter(
        "from serentak._process.launch import spawn_main; spawn_main({fd})", block_sigint=True
    )
    pidfd = _posix.pidfd_open(pid)
    _send_start(channel, payload, fds)
    if pidfd is None:
        # No pidfd: the child keeps its end of the start-up socket open until
        # it exits, so ours reading EOF is the sentinel.
        return _DirectChild(pid, channel.detach(), None)
    channel.close()
    return _DirectChild(pid, pidfd, pidfd)


def _send_start(channel: Connection, payload: bytes, fds: list[int]) -> None:
    try:
        channel.send_frame(payload, fds)
    except BrokenPipeError:
        pass  # the child died before reading: its exit code says so


def run_from_socket(fd: int, *, server_pid: int | None = None, restore_sigint: bool = False) -> int:
    """In a new child: receive the ChildStart on ``fd``, prepare, run; return the exit code.

    A child that must die with its parent is guarded against the death of the
    parent (spawn), or of the fork server that forked it (``server_pid``): the
    server exits when its owner does.

    SIGINT is blocked or ignored until here (a spawned interpreter starts with
    it blocked, the fork server ignores it): a child that must ignore it does
    so before it is unblocked; others get Python's handler back
    (``restore_sigint``) and a Ctrl-C sent meanwhile arrives now.
    """
    follow_sender_definitions()
    channel = Connection(fd)
    payload, fds = channel.recv_frame()
    if _posix.HAS_PIDFD:
        channel.close()
    else:
        os.set_inheritable(fd, False)
        _keep_alive.append(channel)  # its EOF tells the parent we have exited
    start = loads(payload)
    if not isinstance(start, ChildStart):
        raise TypeError(f"expected a ChildStart, got {type(start).__name__}")
    prep = start.preparation
    if prep.ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    elif restore_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if prep.die_with_parent:
        if server_pid is None:
            guard_parent(prep.parent_pid, watch=prep.watch_parent)
        else:
            guard_parent(server_pid, watch=False)
    apply_preparation(prep)
    _logging.apply_parent_settings(prep.log_level, prep.log_to_stderr)
    with receiving_fds(fds):
        process: Bootstrappable = loads(start.process)
    return process._bootstrap()


_keep_alive: list[Connection] = []


def spawn_main(fd: int) -> None:
    """Entry point of a spawned interpreter: run, then exit through the normal interpreter exit."""
    try:
        code = run_from_socket(fd)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.exit(code)


# ---- the fork server, client side ------------------------------------------------


class _ForkServerClient:
    """This process's fork server: started on first use, restarted if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: Connection | None = None
        self._handle: _DirectChild | None = None

    def launch(self, payload: bytes, fds: list[int]) -> ChildHandle:
        ours, theirs = _posix.socketpair()
        status_ours, status_theirs = _posix.socketpair()
        with ours, theirs, status_ours, status_theirs:
            with self._lock:
                control = self._ensure_running()
                # One frame per child: the server forks and hands `theirs` to the
                # child, keeps `status_theirs` to report the exit code on.
                try:
                    control.send_frame(b"fork", [theirs.fileno(), status_theirs.fileno()])
                except OSError:
                    # The server died but is not waitable yet (its children can
                    # be gone before it is a zombie): start a new one, once.
                    self._stop()
                    control = self._ensure_running()
                    control.send_frame(b"fork", [theirs.fileno(), status_theirs.fileno()])
            theirs.close()
            status_theirs.close()
            data = _read_exactly(status_ours.fileno(), EXIT_STATUS.size)
            if data is None:
                raise OSError("the fork server died while starting a child")
            pid: int = EXIT_STATUS.unpack(data)[0]
            if pid < 0:  # the server's fork() failed: it says why
                raise OSError(-pid, f"the fork server could not fork: {os.strerror(-pid)}")
            pidfd = _posix.pidfd_open(pid)
            channel = Connection(ours.detach())
            _send_start(channel, payload, fds)
            channel.close()
            return _ServedChild(pid, status_ours.detach(), pidfd)

    def ensure_running(self) -> None:
        """Start the server now if it is not running (launch() does so on demand)."""
        with self._lock:
            self._ensure_running()

    def _ensure_running(self) -> Connection:
        if self._control is not None and self._handle is not None:
            if self._handle.poll() is None:
                return self._control
            self._stop()
        pid, control = spawn_interpreter(
            "from serentak._process.forkserver import serve; serve({fd})"
        )
        pidfd = _posix.pidfd_open(pid)
        self._handle = _DirectChild(pid, -1 if pidfd is None else pidfd, pidfd)
        self._control = control
        control.send(preparation())
        return control

    def _stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._handle is not None:
            self._handle.wait(None)  # the server exits when its control socket closes
            self._handle.close()
            self._handle = None

    def forget(self) -> None:
        """In a forked child: drop the parent's server without touching it."""
        self._lock = threading.Lock()
        if self._control is not None:
            self._control.close()
        self._control = None
        if self._handle is not None:
            self._handle.close()
        self._handle = None

    @property
    def pid(self) -> int | None:
        return None if self._handle is None else self._handle.pid


_server: _ForkServerClient | None = None
_server_lock: Final = threading.Lock()


def _fork_server() -> _ForkServerClient:
    global _server
    with _server_lock:
        if _server is None:
            _server = _ForkServerClient()
        return _server


def ensure_fork_server() -> int:
    """Start this process's fork server if it is not running; return its pid."""
    server = _fork_server()
    server.ensure_running()
    pid = server.pid
    if pid is None:
        raise OSError("the fork server did not start")
    return pid


def fork_server_pid() -> int | None:
    """The pid of this process's fork server, if one is running."""
    return None if _server is None else _server.pid


def _forget_fork_server() -> None:
    if _server is not None:
        _server.forget()


os.register_at_fork(after_in_child=_forget_fork_server)
