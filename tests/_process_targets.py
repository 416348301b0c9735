"""Worker functions for the tests of processes, start methods and a child's state.

A spawned or forkserver child imports them from here by name.

Append; each test module keeps its functions in a section of its own.
"""

from __future__ import annotations

from typing import Any

# ---- test_process ---------------------------------------------------------------


def proc_noop() -> None:
    """Do nothing: the child exits 0."""


def proc_send_args(conn: Any, *args: Any, **kwargs: Any) -> None:
    """Send back the arguments the child was given."""
    conn.send((args, kwargs))
    conn.close()


def proc_report(conn: Any) -> None:
    """Send what this process knows of itself and of its parent."""
    import os
    import sys

    import serentak

    me = serentak.current_process()
    parent = serentak.parent_process()
    conn.send(
        {
            "name": me.name,
            "pid": me.pid,
            "ident": me.ident,
            "getpid": os.getpid(),
            "daemon": me.daemon,
            "is_alive": me.is_alive(),
            "authkey": bytes(me.authkey),
            "parent": None if parent is None else (parent.name, parent.pid, parent.is_alive()),
            "active_children": len(serentak.active_children()),
            "start_method": serentak.get_start_method(allow_none=True),
            "ppid": os.getppid(),
            "stdin": sys.stdin.read(),
        }
    )
    conn.close()


def proc_wait_then_exit(conn: Any, code: int = 0) -> None:
    """Say "ready", wait for one message, then exit with ``code``."""
    import sys

    conn.send("ready")
    conn.recv()
    sys.exit(code)


def proc_block_forever(conn: Any) -> None:
    """Say "ready", then wait for a signal that ends the process."""
    import signal

    conn.send("ready")
    while True:
        signal.pause()


def proc_leave_a_thread(conn: Any) -> None:
    """Return at once, leaving a non-daemon thread that echoes one message."""
    import threading

    threading.Thread(target=lambda: conn.send(conn.recv())).start()


def proc_digest(conn: Any, data: bytes) -> None:
    """Send the length and SHA-256 of ``data``."""
    import hashlib

    conn.send((len(data), hashlib.sha256(data).hexdigest()))
    conn.close()


def _stderr_to(path: str) -> None:
    """Point this process's file descriptor 2 at ``path``, as a shell's ``2>path`` would."""
    import os
    import sys

    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    # A forked child inherits sys.stderr as the parent had it, which under pytest
    # is pytest's capture, not file descriptor 2: write to the descriptor again.
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115


def proc_raise(stderr_path: str, message: str) -> None:
    """Raise an uncaught ValueError, the child's stderr going to ``stderr_path``."""
    _stderr_to(stderr_path)
    raise ValueError(message)


def proc_exit(stderr_path: str, code: Any) -> None:
    """``sys.exit(code)``, the child's stderr going to ``stderr_path``."""
    import sys

    _stderr_to(stderr_path)
    sys.exit(code)


def proc_os_exit(code: int) -> None:
    import os

    os._exit(code)


def proc_try_to_have_a_child(conn: Any, method: str) -> None:
    """Try to start a child; send the AssertionError's message (or "started"), its daemon flag."""
    import serentak

    child = serentak.get_context(method).Process(target=proc_noop)
    try:
        child.start()
    except AssertionError as exc:
        outcome = str(exc)
    else:
        child.join()
        outcome = "started"
    conn.send({"outcome": outcome, "inherited_daemon": child.daemon})
    conn.close()


def proc_start_grandchild(conn: Any, method: str) -> None:
    """Start a grandchild that reports itself; send its report and what this child knows."""
    import serentak

    ctx = serentak.get_context(method)
    here, there = ctx.Pipe()
    with here, there:
        grandchild = ctx.Process(target=proc_report, args=(there,))
        grandchild.start()
        there.close()
        report = here.recv()
        grandchild.join()
    conn.send(
        {
            "me": serentak.current_process().name,
            "grandchild_name": grandchild.name,
            "grandchild": report,
            "grandchild_exitcode": grandchild.exitcode,
        }
    )
    conn.close()


def proc_use_unpicklable(conn: Any, lock: Any, numbers: Any) -> None:
    """Use a threading lock and a generator (possible only if nothing was pickled)."""
    with lock:
        conn.send(next(numbers))
    conn.close()


# ---- test_start_methods ---------------------------------------------------------


def start_report(conn: Any) -> None:
    """Send how this child came to be: its OS parent, what it inherited, its default method."""
    import os
    import sys

    import serentak

    parent = serentak.parent_process()
    conn.send(
        {
            "ppid": os.getppid(),
            "parent_pid": None if parent is None else parent.pid,
            "mark": getattr(sys.modules[__name__], "START_MARK", None),
            "default_method": serentak.get_start_method(allow_none=True),
        }
    )
    conn.close()


def start_call_all(conn: Any, calls: list[tuple[Any, Any]]) -> None:
    """Send ``[function(argument) for function, argument in calls]``."""
    conn.send([function(argument) for function, argument in calls])
    conn.close()


# ---- test_child_state ----------------------------------------------------------------


def child_watch_parent(conn: Any) -> None:
    """Report whether the parent lives, wait for it to end, report again."""
    import serentak

    parent = serentak.parent_process()
    conn.send(parent is not None and parent.is_alive())
    if parent is not None:
        parent.join(30)
    conn.send(parent is not None and parent.is_alive())
    conn.close()


def child_start_watcher_then_wait(conn: Any, method: str) -> None:
    """Start a grandchild that watches this process, then block until terminated."""
    import signal

    import serentak

    watcher = serentak.get_context(method).Process(target=child_watch_parent, args=(conn,))
    watcher.start()
    conn.close()
    while True:
        signal.pause()


def child_report_state(conn: Any) -> None:
    """Send what this child knows of itself: start method, main thread id, logger level."""
    import threading

    import serentak

    conn.send(
        {
            "start_method": serentak.get_start_method(),
            "main_native_id": threading.main_thread().native_id,
            "log_level": serentak.get_logger().getEffectiveLevel(),
        }
    )
    conn.close()


def child_register_atexit(path: str) -> None:
    """Register an atexit handler that writes ``path``, then return normally."""
    import atexit
    import os

    def write() -> None:
        with open(path, "a") as out:
            out.write(f"{os.getpid()}\n")

    atexit.register(write)


def child_echo_after_go(conn: Any) -> None:
    """Wait for a message, send it back, through a Pipe (timing is the parent's)."""
    conn.send(conn.recv())
    conn.close()


def child_queue_put(queue: Any, item: Any) -> None:
    """Put ``item`` on ``queue`` and return (the queue's buffer must be flushed at exit)."""
    queue.put(item)


def child_send_on(conn: Any, message: Any) -> None:
    """Send ``message`` on ``conn``."""
    conn.send(message)
    conn.close()


def child_pass_handles(control: Any) -> None:
    """Receive a socket over ``control`` and write on it; then send back a socket and a
    Connection made here, closing ours right after sending them."""
    import socket

    import serentak

    sock = control.recv()
    sock.sendall(b"written by the child")
    sock.close()
    mine, theirs = socket.socketpair()
    control.send(theirs)
    theirs.close()
    mine.sendall(b"through a socket made by the child")
    mine.close()
    here, there = serentak.Pipe()
    control.send(there)
    there.close()
    here.send("through a Connection made by the child")
    here.close()
    control.close()
