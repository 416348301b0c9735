"""What a child takes from its parent, and what it does at its end, as the stdlib's children.

Parent death: a plain process outlives its parent (so a grandchild can watch
``parent_process()``); the daemonic ones die with it (test_process.py). A child
knows the start method it was started with, its own main thread, the
``multiprocessing`` logger's level and stderr handler; it runs its ``atexit``
handlers (not the parent's) and the stdlib's life-cycle log lines appear with
the child's name. serentak's own sockets ignore ``socket.setdefaulttimeout``.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _process_targets
import serentak
from _scripts import run_script

PATIENCE = 20.0


@pytest.fixture
def restore_logger() -> Iterator[logging.Logger]:
    logger = serentak.get_logger()
    root = logging.getLogger()
    saved, saved_root = logger.level, root.level
    yield logger
    logger.setLevel(saved)
    root.setLevel(saved_root)


def _report(ctx: Any) -> dict[str, Any]:
    here, there = ctx.Pipe()
    process = ctx.Process(target=_process_targets.child_report_state, args=(there,))
    process.start()
    there.close()
    try:
        report: dict[str, Any] = here.recv()
    finally:
        here.close()
        process.join(PATIENCE)
    assert process.exitcode == 0
    report["pid"] = process.pid
    process.close()
    return report


def test_a_grandchild_sees_its_terminated_parent_end(ctx: Any) -> None:
    """A plain child outlives its parent, as the stdlib's: a grandchild whose parent is
    terminated is still there to report it through ``parent_process()``."""
    here, there = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_process_targets.child_start_watcher_then_wait, args=(there, ctx.get_start_method())
    )
    child.start()
    there.close()
    try:
        assert here.poll(PATIENCE)
        assert here.recv() is True
        child.terminate()
        child.join(PATIENCE)
        assert here.poll(PATIENCE)
        assert here.recv() is False  # the grandchild lived on to see it
        assert here.poll(PATIENCE)
        with pytest.raises(EOFError):  # and then ended by itself
            here.recv()
    finally:
        here.close()
        child.kill()
        child.join(PATIENCE)
        child.close()


@pytest.mark.parametrize("default", ["fork", "spawn", "forkserver"])
def test_the_child_reports_the_start_method_it_was_started_with(ctx: Any, default: str) -> None:
    saved = serentak.get_start_method(allow_none=True)
    serentak.set_start_method(default, force=True)
    try:
        assert _report(ctx)["start_method"] == ctx.get_start_method()
    finally:
        serentak.set_start_method(saved, force=True)


def test_the_main_thread_of_a_child_is_its_own(ctx: Any) -> None:
    report = _report(ctx)
    assert report["main_native_id"] == report["pid"]


@pytest.mark.parametrize("where", ["multiprocessing", "root"])
def test_the_logger_level_reaches_the_child(
    ctx: Any, where: str, restore_logger: logging.Logger
) -> None:
    if where == "root":
        restore_logger.setLevel(logging.NOTSET)
        logging.getLogger().setLevel(37)
        expected = 37
    else:
        restore_logger.setLevel(32)
        expected = 32
    assert _report(ctx)["log_level"] == expected


def test_atexit_handlers_of_the_child_run_and_the_parents_do_not(ctx: Any, tmp_path: Path) -> None:
    ours = tmp_path / "parent.txt"
    theirs = tmp_path / "child.txt"

    def parent_handler() -> None:
        ours.write_text(str(os.getpid()))

    atexit.register(parent_handler)
    try:
        process = ctx.Process(target=_process_targets.child_register_atexit, args=(str(theirs),))
        process.start()
        process.join(PATIENCE)
    finally:
        atexit.unregister(parent_handler)
    assert process.exitcode == 0
    assert theirs.read_text() == f"{process.pid}\n"
    assert not ours.exists()
    process.close()


def test_a_default_socket_timeout_does_not_reach_serentaks_sockets(ctx: Any) -> None:
    """The program's default timeout is for its own sockets: with one set, a start (the
    fork server's status read), a Pipe and a Queue still block as they should."""
    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.01)
    try:
        here, there = ctx.Pipe()
        queue = ctx.Queue()
        process = ctx.Process(target=_process_targets.child_echo_after_go, args=(there,))
        process.start()
        there.close()
        here.send("echo")
        assert here.recv() == "echo"
        here.close()
        process.join(PATIENCE)
        assert process.exitcode == 0
        process.close()
        process = ctx.Process(target=_process_targets.child_queue_put, args=(queue, "queued"))
        process.start()
        assert queue.get(timeout=PATIENCE) == "queued"
        process.join(PATIENCE)
        process.close()
        queue.close()
        queue.join_thread()
    finally:
        socket.setdefaulttimeout(saved)


LOGGING_SCRIPT = """
import logging
import sys

import serentak


def app_logger():
    app = logging.getLogger("app")
    if not app.handlers:  # a forked child has the parent's; a spawned one makes its own
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(processName)s: %(message)s"))
        app.addHandler(handler)
        app.propagate = False
    return app


def work():
    serentak.get_logger().warning("hello from the child")
    app_logger().warning("app record")
    sys.stdout.flush()


if __name__ == "__main__":
    app_logger()
    serentak.log_to_stderr(logging.INFO)
    ctx = serentak.get_context(sys.argv[1])
    process = ctx.Process(target=work, name="Worker-7")
    process.start()
    process.join()
    logging.getLogger("app").warning("app record")
"""


LATE_LOGGING_SCRIPT = """
import sys

import serentak


def work():
    started_with_logging = "logging" in sys.modules
    import logging

    record = logging.getLogger("app").makeRecord("app", logging.INFO, "f", 1, "m", None, None)
    print(started_with_logging, record.processName, type(logging.__loader__).__name__)
    sys.stdout.flush()


if __name__ == "__main__":
    ctx = serentak.get_context(sys.argv[1])
    process = ctx.Process(target=work, name="Worker-8")
    process.start()
    process.join()
"""


def test_a_child_that_imports_logging_late_still_names_its_records(
    start_method: str, tmp_path: Path
) -> None:
    # Starting a child does not import logging (a few ms per start); the
    # record factory is put in place when the child's own code imports it.
    script = tmp_path / "late_logging_script.py"
    script.write_text(LATE_LOGGING_SCRIPT)
    result = run_script(script, start_method)
    assert result.returncode == 0, result.stderr
    started_with_logging, name, loader = result.stdout.split()
    assert name == "Worker-8"
    assert loader == "SourceFileLoader"
    if start_method == "fork":
        assert started_with_logging == "False"


def test_log_to_stderr_record_names_and_life_cycle_lines_reach_the_child(
    start_method: str, tmp_path: Path
) -> None:
    script = tmp_path / "logging_script.py"
    script.write_text(LOGGING_SCRIPT)
    result = run_script(script, start_method)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["Worker-7: app record", "MainProcess: app record"]
    err = result.stderr.splitlines()
    for line in (
        "[INFO/Worker-7] child process calling self.run()",
        "[WARNING/Worker-7] hello from the child",
        "[INFO/Worker-7] process shutting down",
        "[INFO/Worker-7] process exiting with exitcode 0",
        "[INFO/MainProcess] process shutting down",
    ):
        assert line in err, result.stderr
