"""Process objects, and what each process knows of itself, its parent and its children.

::

    parent                                      child
    ------                                      -----
    p = Process(target, args)                   (a copy of p: inherited, or unpickled)
    p.start() -> launch(p, method) ----------->  p._bootstrap():
      _children.add(p)                             current_process() is p
                                                   parent_process() names the parent
    p.join() / p.is_alive() / p.exitcode           run(), exit code from how it ended
      wait on p.sentinel, read the exit code       join children; daemonic ones terminated
    at exit: terminate daemonic children,        os._exit(code)  (spawn: a normal exit)
             join the others

Everything here is per process: a child starts with an empty ``_children`` and
a fresh counter for its own children's names.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Final

from serentak._ipc.serialize import is_spawning
from serentak._os import posix as _posix

from .child import flush_standard_streams, replace_stdin
from .launch import DEFAULT_START_METHOD, ChildHandle, StartMethod, launch, settings

_SIGNAL_NAMES: Final = {-sig: f"-{sig.name}" for sig in signal.Signals}


class AuthenticationString(bytes):
    """An authkey: bytes that refuse to be pickled except to start a child."""

    def __reduce__(self) -> tuple[Any, ...]:
        if not is_spawning():
            raise TypeError(
                "Pickling an AuthenticationString object is disallowed for security reasons"
            )
        return AuthenticationString, (bytes(self),)


class BaseProcess:
    """A process: the stdlib's ``multiprocessing.Process`` API.

    Args:
        group: must be None (kept for compatibility with ``threading.Thread``).
        target: the callable that :meth:`run` invokes.
        name: the process's name; by default ``"<Class>-N"``.
        args: positional arguments for ``target``.
        kwargs: keyword arguments for ``target``.
        daemon: whether the process is daemonic; by default inherited from
            the creating process.

    Raises:
        TypeError: ``target`` is given but is not callable.
    """

    _start_method: ClassVar[StartMethod | None] = None
    # Set in the child's environment at start-up (the pool's thread limits).
    _environ: Mapping[str, str] = {}
    _ignores_sigint: bool = False  # a pool worker: Ctrl-C is the parent's to handle
    # Part of serentak's machinery (a manager's server): it must not outlive its
    # parent even though it is not daemonic.
    _machinery: bool = False

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
        if group is not None:
            raise ValueError("group argument must be None for now")
        if target is not None and not callable(target):
            raise TypeError(f"target must be callable, not {type(target).__name__}")
        parent = _current_process
        self._identity: tuple[int, ...] = (*parent._identity, next(_state.counter))
        self._config: dict[str, Any] = dict(parent._config)
        self._parent_pid: int | None = os.getpid()
        self._parent_name = parent.name
        self._popen: ChildHandle | None = None
        self._closed = False
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._name = (
            name
            if name is not None
            else f"{type(self).__name__}-{':'.join(str(i) for i in self._identity)}"
        )
        if daemon is not None:
            self.daemon = daemon

    # ---- what the child runs ---------------------------------------------------

    def run(self) -> None:
        """The child's activity: call ``target(*args, **kwargs)``. Override in a subclass."""
        if self._target is not None:
            self._target(*self._args, **self._kwargs)

    # ---- control from the parent -------------------------------------------------

    def start(self) -> None:
        """Start the child process.

        Raises:
            AssertionError: started twice, started from another process than
                the one that created it, or started by a daemonic process (the
                stdlib's errors).
            ValueError: the process object is closed.
            Exception: whatever pickling raises for the target or arguments
                under spawn and forkserver (no child is started then).
        """
        self._check_closed()
        if self._popen is not None:
            raise AssertionError("cannot start a process twice")
        if self._parent_pid != os.getpid():
            raise AssertionError("can only start a process object created by current process")
        if _current_process._config.get("daemon"):
            raise AssertionError("daemonic processes are not allowed to have children")
        _cleanup()
        method = self._start_method or settings.start_method or DEFAULT_START_METHOD
        try:
            self._popen = launch(self, method)
        except Exception as exc:
            if sys.version_info >= (3, 11):
                exc.add_note(f"while starting {self!r} with the {method.value!r} start method")
            raise
        _state.children.add(self)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process ends, or ``timeout`` seconds pass.

        Raises:
            AssertionError: the process was not started, or is not our child.
        """
        self._check_closed()
        if self._parent_pid != os.getpid():
            raise AssertionError("can only join a child process")
        if self._popen is None:
            raise AssertionError("can only join a started process")
        if self._popen.wait(timeout) is not None:
            self._ended()

    def is_alive(self) -> bool:
        """Whether the process is running."""
        self._check_closed()
        if self is _current_process:
            return True
        if self._parent_pid != os.getpid():
            raise AssertionError("can only test a child process")
        if self._popen is None:
            return False
        if self._popen.poll() is None:
            return True
        self._ended()
        return False

    def terminate(self) -> None:
        """Send SIGTERM to the process."""
        self._check_closed()
        if self._popen is not None:
            self._popen.send_signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """Send SIGINT to the process: Python raises KeyboardInterrupt there, so its
        ``finally`` blocks and ``atexit`` handlers run (new in Python 3.14's API)."""
        self._check_closed()
        if self._popen is not None:
            self._popen.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """Send SIGKILL to the process."""
        self._check_closed()
        if self._popen is not None:
            self._popen.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Release the resources held for the process.

        Raises:
            ValueError: the process is still running.
        """
        if self._closed:
            return
        if self._popen is not None:
            if self._popen.poll() is None:
                raise ValueError(
                    "Cannot close a process while it is still running. "
                    "You should first call join() or terminate()."
                )
            self._popen.close()
            self._popen = None
        self._ended()
        self._closed = True

    def _ended(self) -> None:
        """The child is gone: forget it, and release the arguments it was lent."""
        _state.children.discard(self)
        self._target = None
        self._args = ()
        self._kwargs = {}

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("process object is closed")

    # ---- attributes ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """The process's name (not unique; for display)."""
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        self._name = name

    @property
    def daemon(self) -> bool:
        """Whether the process is daemonic (terminated at its parent's exit; no children)."""
        return bool(self._config.get("daemon", False))

    @daemon.setter
    def daemon(self, daemonic: bool) -> None:
        if self._popen is not None:
            raise AssertionError("process has already started")
        self._config["daemon"] = daemonic

    @property
    def authkey(self) -> bytes:
        """The authentication key (inherited from the parent; random in the main process)."""
        key: bytes = self._config["authkey"]
        return key

    @authkey.setter
    def authkey(self, authkey: bytes) -> None:
        self._config["authkey"] = AuthenticationString(authkey)

    @property
    def exitcode(self) -> int | None:
        """The exit code, None while running; ``-N`` when killed by signal N."""
        self._check_closed()
        if self._popen is None:
            return None
        return self._popen.poll()

    @property
    def ident(self) -> int | None:
        """The process id (None before start)."""
        self._check_closed()
        if self is _current_process:
            return os.getpid()
        return None if self._popen is None else self._popen.pid

    pid = ident

    @property
    def sentinel(self) -> int:
        """A file descriptor that becomes readable when the process ends.

        Raises:
            ValueError: the process has not been started.
        """
        self._check_closed()
        if self._popen is None:
            raise ValueError("process not started")
        return self._popen.sentinel

    def __repr__(self) -> str:
        exitcode = None
        if self is _current_process:
            status = "started"
        elif self._closed:
            status = "closed"
        elif self._parent_pid != os.getpid():
            status = "unknown"
        elif self._popen is None:
            status = "initial"
        else:
            exitcode = self._popen.poll()
            status = "started" if exitcode is None else "stopped"
        info = [type(self).__name__, f"name={self._name!r}"]
        if self._popen is not None:
            info.append(f"pid={self._popen.pid}")
        info += [f"parent={self._parent_pid}", status]
        if exitcode is not None:
            info.append(f"exitcode={_SIGNAL_NAMES.get(exitcode, exitcode)}")
        if self.daemon:
            info.append("daemon")
        return f"<{' '.join(info)}>"

    # ---- travelling to the child ------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_popen"] = None
        return state

    # ---- in the child ------------------------------------------------------------------

    def _bootstrap(self) -> int:
        """Run in the new child: become the current process, run, return the exit code."""
        global _current_process, _parent_process
        try:
            _state.reset()
            replace_stdin()
            _parent_process = ParentProcess(self._parent_name, self._parent_pid or os.getppid())
            _current_process = self
            _run_after_start_hooks()
            try:
                self.run()
                exitcode = 0
            finally:
                _exit_children()
        except SystemExit as exc:
            exitcode = _exit_code_of(exc)
        except BaseException:
            exitcode = 1
            sys.stderr.write(f"Process {self.name}:\n")
            traceback.print_exc()
        finally:
            _join_threads()
            flush_standard_streams()
        return exitcode


def _exit_code_of(exc: SystemExit) -> int:
    """The exit code ``sys.exit(code)`` means, printing a message code as Python does."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    sys.stderr.write(f"{exc.code}\n")
    return 1


def _join_threads() -> None:
    """Wait for the child's non-daemon threads, as a normal interpreter exit would."""
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon and thread.is_alive():
            thread.join()


class _MainProcess(BaseProcess):
    """The process the program started as."""

    def __init__(self) -> None:
        self._identity = ()
        self._name = "MainProcess"
        self._parent_pid = None
        self._popen = None
        self._closed = False
        self._config = {
            "authkey": AuthenticationString(os.urandom(32)),
            "semprefix": "/sn",
        }

    def close(self) -> None:
        """The main process cannot be closed."""


class ParentProcess(BaseProcess):
    """The process that started this one, as ``parent_process()`` reports it."""

    def __init__(self, name: str, pid: int) -> None:
        self._identity = ()
        self._name = name
        self._pid = pid
        self._parent_pid = None
        self._popen = None
        self._closed = False
        self._config = {}
        self._pidfd: int | None = None

    @property
    def sentinel(self) -> int:
        """A file descriptor that becomes readable when the parent ends."""
        if self._pidfd is None:
            self._pidfd = _posix.pidfd_open(self._pid)
            if self._pidfd is None:
                raise OSError("no pidfd on this system: the parent has no sentinel")
            weakref.finalize(self, _posix.close_quietly, self._pidfd)
        return self._pidfd

    @property
    def ident(self) -> int | None:
        return self._pid

    pid = ident

    def is_alive(self) -> bool:
        """Whether the parent is still running."""
        return not _posix.pid_gone(self._pid)

    def join(self, timeout: float | None = None) -> None:
        """Wait until the parent ends, or ``timeout`` seconds pass."""
        _posix.fd_readable(self.sentinel, timeout)


class _Children:
    """This process's children and the counter that numbers them."""

    def __init__(self) -> None:
        self.children: set[BaseProcess] = set()
        self.counter = itertools.count(1)

    def reset(self) -> None:
        self.children = set()
        self.counter = itertools.count(1)
        _before_exit_hooks.clear()  # the parent's hooks are the parent's business


_state: Final = _Children()
_current_process: BaseProcess = _MainProcess()
_parent_process: BaseProcess | None = None
_after_start_hooks: list[Callable[[], None]] = []


def register_after_start(hook: Callable[[], None]) -> None:
    """Run ``hook()`` in every child, before its target (used by upper layers to reset state)."""
    _after_start_hooks.append(hook)


def _run_after_start_hooks() -> None:
    for hook in _after_start_hooks:
        hook()


def current_process() -> BaseProcess:
    """The Process object of the calling process."""
    return _current_process


def parent_process() -> BaseProcess | None:
    """The Process object of the parent, or None in the main process."""
    return _parent_process


def _cleanup() -> None:
    """Forget children that have ended, so they do not linger as zombies."""
    for process in list(_state.children):
        popen = process._popen
        if popen is not None and popen.poll() is not None:
            process._ended()


def active_children() -> list[BaseProcess]:
    """The live children of the calling process (joining any that have ended)."""
    _cleanup()
    return list(_state.children)


_before_exit_hooks: list[Callable[[], None]] = []


def register_before_exit(hook: Callable[[], None]) -> None:
    """Run ``hook()`` when this process exits normally: after its target (in a child) or at
    interpreter exit (in the main process), before the children are joined.

    Used by upper layers, e.g. to flush what a Queue still buffers. Hooks run
    last-registered first; an exception in one is printed and the rest still run.
    """
    _before_exit_hooks.append(hook)


def _exit_children() -> None:
    """At exit: run the before-exit hooks, terminate daemonic children, wait for all children."""
    while _before_exit_hooks:
        hook = _before_exit_hooks.pop()
        try:
            hook()
        except Exception:
            traceback.print_exc()
    for process in active_children():
        if process.daemon:
            process.terminate()
    for process in active_children():
        process.join()


def _at_exit() -> None:
    if _current_process._parent_pid is None:  # the main process; a child does this in _bootstrap
        _exit_children()


atexit.register(_at_exit)
