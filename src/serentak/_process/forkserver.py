"""The fork server: a small process that forks children on request.

::

    owner (the process that started us)        this server                 a child
    ------------------------------------       -----------                 -------
    control socket --"fork" + [boot, status]-> fork() -------------------> close the server's fds
                                                status <- pid (or -errno)  SIGKILL when we die
    boot socket -------- ChildStart + fds ----------------------------->  run_from_socket(boot)
                                                SIGCHLD: waitpid
                                                status <- exit code, close
    control socket closes (owner died) ------>  exit; the kernel kills our children

The server is single-threaded and imports serentak (and the modules named by
``set_forkserver_preload``) once, so each child starts with them loaded and no
interpreter start-up to pay. It ignores SIGINT: a Ctrl-C in the terminal
reaches the whole process group, and it is for the owner to decide what
happens to the children. Children get the default SIGINT handler back.
"""

from __future__ import annotations

import errno
import importlib
import os
import select
import signal
import sys
import traceback

from serentak._ipc.connection import Connection
from serentak._os import posix as _posix

from .child import Preparation, flush_standard_streams
from .launch import (
    EXIT_STATUS,
    apply_preparation,
    run_exit_handlers,
    run_from_socket,
    start_exit_handlers,
)


class _Server:
    """The server's state: one control connection, a wake-up pipe, the children."""

    def __init__(self, control: Connection) -> None:
        self.control = control
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_w, False)
        # pid -> the socket the child's exit code goes to
        self.children: dict[int, int] = {}

    def serve_forever(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # SIGCHLD only needs to interrupt poll(): the C-level handler writes
        # to the wake-up fd, the Python-level handler has nothing to do.
        signal.signal(signal.SIGCHLD, _ignore)
        signal.set_wakeup_fd(self.wakeup_w)
        poller = select.poll()
        poller.register(self.control.fileno(), select.POLLIN)
        poller.register(self.wakeup_r, select.POLLIN)
        while True:
            # Frames read ahead with an earlier one wait in the connection's
            # buffer, where poll() cannot see them: serve those first.
            while self.control.has_buffered_data():
                if not self.serve_request():
                    return
            for fd, _event in poller.poll():
                if fd == self.wakeup_r:
                    os.read(self.wakeup_r, 4096)
                    self.reap()
                elif not self.serve_request():
                    return

    def serve_request(self) -> bool:
        """Fork a child for the next request; False when the owner has gone."""
        try:
            _payload, fds = self.control.recv_frame()
        except (EOFError, OSError):
            return False
        boot_fd, status_fd = fds
        try:
            pid = _posix.fork()
        except OSError as exc:
            # EAGAIN at a process limit, ENOMEM: that one start fails, with the
            # errno for the owner to raise; the server and its children go on.
            os.close(boot_fd)
            self._report(status_fd, -(exc.errno or errno.EAGAIN), close=True)
            return True
        if pid == 0:
            self.become_child(boot_fd, status_fd)
        os.close(boot_fd)
        self.children[pid] = status_fd
        self._report(status_fd, pid, close=False)
        return True

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status_fd = self.children.pop(pid, None)
            if status_fd is not None:
                self._report(status_fd, os.waitstatus_to_exitcode(status), close=True)

    @staticmethod
    def _report(fd: int, value: int, *, close: bool) -> None:
        try:
            os.write(fd, EXIT_STATUS.pack(value))
        except OSError:
            pass  # the owner stopped listening for this child: nothing to tell
        if close:
            os.close(fd)

    def become_child(self, boot_fd: int, status_fd: int) -> None:
        """In the freshly forked child: shed the server's state, then run. Never returns."""
        code = 1
        try:
            server_pid = os.getppid()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (self.wakeup_r, self.wakeup_w, status_fd, *self.children.values()):
                os.close(fd)
            self.children.clear()
            self.control.close()
            start_exit_handlers()
            code = run_from_socket(boot_fd, server_pid=server_pid, restore_sigint=True)
        except BaseException:
            traceback.print_exc()
        finally:
            run_exit_handlers()
            flush_standard_streams()
            os._exit(code)


def _ignore(signum: int, frame: object) -> None:
    """A handler that only exists so the signal wakes poll() through the wake-up fd."""


def serve(control_fd: int) -> None:
    """Entry point of the fork-server interpreter."""
    control = Connection(control_fd)
    prep = control.recv()
    if not isinstance(prep, Preparation):
        raise TypeError(f"expected a Preparation, got {type(prep).__name__}")
    apply_preparation(prep)
    for name in prep.forkserver_preload:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # as the stdlib: a module that cannot be preloaded is imported by each child
    # Import what every child runs, once, here.
    importlib.import_module("serentak")
    try:
        sys.stdin.close()
    except (AttributeError, OSError, ValueError):
        pass
    _Server(control).serve_forever()
