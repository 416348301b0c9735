"""Process, current_process, parent_process, active_children (serentak._process.process).

The first part drives Process objects in this process under every start
method (the ``ctx`` fixture); children's targets live in ``_process_targets``. The
second part runs small scripts with subprocess, for what only a whole program
shows: daemonic children at exit, children dying with their parent, Ctrl-C.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import _ipc_targets
import _pool_targets
import _process_targets
import serentak
from _scripts import read_line, rest_of_output, running_script
from _signals import interrupted_by_a_signal_to_another_thread
from _watch import descendants_of, running, still_running_after
from serentak.connection import wait

# How late a timed wait may return: generous, CI machines are slow and busy.
LATE = 1.0
# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0

CLASS_NAMES = {"fork": "ForkProcess", "spawn": "SpawnProcess", "forkserver": "ForkServerProcess"}


class Children:
    """The processes a test started: killed and joined at teardown if the test did not."""

    def __init__(self) -> None:
        self.started: list[Any] = []

    def start(self, process: Any) -> Any:
        process.start()
        self.started.append(process)
        return process

    def reap(self) -> None:
        for process in self.started:
            try:
                if process.is_alive():
                    process.kill()
                process.join(PATIENCE)
            except ValueError:
                pass  # closed by the test: it was joined before
            else:
                process.close()  # gives back its sentinel now, not when it is collected
        self.started.clear()


@pytest.fixture
def children() -> Iterator[Children]:
    started = Children()
    yield started
    started.reap()


@pytest.fixture
def default_method(start_method: str) -> Iterator[str]:
    """Make ``start_method`` the default one (what ``serentak.Process`` uses), then restore."""
    saved = serentak.get_start_method(allow_none=True)
    serentak.set_start_method(start_method, force=True)
    yield start_method
    serentak.set_start_method(saved, force=True)


def wait_ready(conn: Any) -> None:
    assert conn.poll(PATIENCE), "the child never said it was ready"
    assert conn.recv() == "ready"


# ---- target, args, kwargs, run ------------------------------------------------------


def test_target_gets_args_and_kwargs(ctx: Any, children: Children) -> None:
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(
            target=_process_targets.proc_send_args,
            args=[there, 1, "two", (3.0, None)],
            kwargs={"four": [4], "five": {"x": b"5"}},
        )
        children.start(process)
        there.close()
        assert here.recv() == ((1, "two", (3.0, None)), {"four": [4], "five": {"x": b"5"}})
        process.join(PATIENCE)
    assert process.exitcode == 0


def test_process_without_target_runs_nothing_and_exits_0(ctx: Any, children: Children) -> None:
    process = children.start(ctx.Process())
    process.join(PATIENCE)
    assert process.exitcode == 0


def test_run_calls_target_in_the_calling_process(ctx: Any) -> None:
    box: list[int] = []
    process = ctx.Process(target=box.append, args=(1,))
    process.run()
    assert box == [1]
    assert process.pid is None  # no child was started
    assert not process.is_alive()


class Recorder(serentak.Process):
    """A subclass as users write them: its own __init__ with extra attributes, run() overridden."""

    def __init__(self, conn: Any, label: str, *, scale: int = 1) -> None:
        super().__init__()
        self.conn = conn
        self.label = label
        self.scale = scale
        self.history = [1, 2, 3]

    def run(self) -> None:
        me = serentak.current_process()
        self.conn.send(
            {
                "label": self.label,
                "scaled": [item * self.scale for item in self.history],
                "same_object": me is self,
                "class": type(me).__name__,
                "name": me.name,
            }
        )
        self.conn.close()


def test_subclass_defined_in_a_module_with_extra_attributes(
    default_method: str, children: Children
) -> None:
    here, there = serentak.Pipe()
    with here, there:
        process = Recorder(there, "recorded", scale=10)
        assert re.fullmatch(r"Recorder-\d+", process.name)
        children.start(process)
        there.close()
        report = here.recv()
        process.join(PATIENCE)
    assert report == {
        "label": "recorded",
        "scaled": [10, 20, 30],
        "same_object": True,
        "class": "Recorder",
        "name": process.name,
    }
    assert process.exitcode == 0


def test_subclass_defined_in_a_function_overriding_run(
    default_method: str, children: Children
) -> None:
    class Squarer(serentak.Process):
        conn: Any
        numbers: list[int]

        def run(self) -> None:
            self.conn.send([n * n for n in self.numbers])
            self.conn.close()

    here, there = serentak.Pipe()
    with here, there:
        process = Squarer()
        process.conn = there
        process.numbers = [2, 3]
        children.start(process)
        there.close()
        assert here.recv() == [4, 9]
        process.join(PATIENCE)
    assert process.exitcode == 0


# ---- start, join, is_alive, terminate, kill --------------------------------------------


def test_lifecycle_before_start_while_running_and_after(ctx: Any, children: Children) -> None:
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(target=_process_targets.proc_wait_then_exit, args=(there,))
        assert not process.is_alive()
        assert (process.pid, process.ident, process.exitcode) == (None, None, None)
        assert "initial" in repr(process)

        children.start(process)
        there.close()
        wait_ready(here)
        assert (process.is_alive(), process.exitcode) == (True, None)
        assert isinstance(process.pid, int)
        assert process.ident == process.pid
        assert "started" in repr(process)

        here.send("go")
        process.join(PATIENCE)
    assert not process.is_alive()
    assert process.exitcode == 0
    assert "stopped" in repr(process)
    process.join()  # joining an ended process again returns at once
    assert process.exitcode == 0


def test_join_with_a_timeout_returns_none_and_the_process_runs_on(
    ctx: Any, children: Children
) -> None:
    here, there = ctx.Pipe()
    with here, there:
        process = children.start(
            ctx.Process(target=_process_targets.proc_wait_then_exit, args=(there,))
        )
        wait_ready(here)
        started = time.monotonic()
        assert process.join(0.2) is None
        elapsed = time.monotonic() - started
        assert 0.19 <= elapsed < 0.2 + LATE
        assert process.is_alive()
        assert process.exitcode is None
        assert process.join(0) is None
        assert process.is_alive()

        here.send("go")
        assert process.join(PATIENCE) is None
    assert process.exitcode == 0


def test_a_signal_taken_by_another_thread_interrupts_join(ctx: Any, children: Children) -> None:
    """The kernel may hand a process's SIGINT to any thread. One taken by another thread
    must still interrupt the main thread's join(), which polls the sentinel in spans."""
    here, there = ctx.Pipe()
    with here, there:
        process = children.start(
            ctx.Process(target=_process_targets.proc_wait_then_exit, args=(there,))
        )
        wait_ready(here)
        with interrupted_by_a_signal_to_another_thread(lambda: here.send("go")):
            process.join()
        process.join(PATIENCE)
    assert process.exitcode == 0


@pytest.mark.parametrize(
    ("method", "signum"), [("terminate", signal.SIGTERM), ("kill", signal.SIGKILL)]
)
def test_terminate_and_kill(ctx: Any, children: Children, method: str, signum: int) -> None:
    here, there = ctx.Pipe()
    with here, there:
        process = children.start(
            ctx.Process(target=_process_targets.proc_block_forever, args=(there,))
        )
        wait_ready(here)
        getattr(process, method)()
        process.join(PATIENCE)
    assert process.exitcode == -signum
    assert not process.is_alive()
    assert f"exitcode=-{signal.Signals(signum).name}" in repr(process)
    getattr(process, method)()  # signalling an ended process does nothing
    assert process.exitcode == -signum


def test_interrupt_raises_keyboard_interrupt_so_finally_blocks_run(
    ctx: Any, children: Children, tmp_path: Path
) -> None:
    path = tmp_path / "cleanup"
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(
            target=_pool_targets.proc_cleanup_on_interrupt, args=(there, str(path))
        )
        children.start(process)
        wait_ready(here)
        process.interrupt()
        process.join(PATIENCE)
    assert process.exitcode == 1  # as for any uncaught exception, as CPython's
    assert path.read_text() == "finally ran"


# ---- exit codes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "exitcode", "stderr"),
    [
        (None, 0, ""),
        (0, 0, ""),
        (3, 3, ""),
        ("fatal: the message goes to stderr", 1, "fatal: the message goes to stderr\n"),
    ],
)
def test_sys_exit_sets_the_exit_code(
    ctx: Any, children: Children, tmp_path: Path, code: Any, exitcode: int, stderr: str
) -> None:
    path = tmp_path / "stderr"
    process = children.start(ctx.Process(target=_process_targets.proc_exit, args=(str(path), code)))
    process.join(PATIENCE)
    assert process.exitcode == exitcode
    assert path.read_text() == stderr


def test_uncaught_exception_exits_1_with_its_traceback_on_stderr(
    ctx: Any, children: Children, tmp_path: Path
) -> None:
    path = tmp_path / "stderr"
    process = ctx.Process(target=_process_targets.proc_raise, args=(str(path), "marker 5b1f"))
    children.start(process)
    process.join(PATIENCE)
    assert process.exitcode == 1
    stderr = path.read_text()
    assert f"Process {process.name}:\n" in stderr
    assert "Traceback (most recent call last):" in stderr
    assert "in proc_raise" in stderr
    assert stderr.rstrip().endswith("ValueError: marker 5b1f")


def test_os_exit_code_is_the_exit_code(ctx: Any, children: Children) -> None:
    process = children.start(ctx.Process(target=_process_targets.proc_os_exit, args=(7,)))
    process.join(PATIENCE)
    assert process.exitcode == 7


def test_child_waits_for_its_non_daemon_threads(ctx: Any, children: Children) -> None:
    """As an interpreter does at exit: the target has returned, the process runs on."""
    here, there = ctx.Pipe()
    with here, there:
        process = children.start(
            ctx.Process(target=_process_targets.proc_leave_a_thread, args=(there,))
        )
        there.close()
        assert process.join(0.2) is None
        assert process.is_alive()
        here.send("to the thread")
        assert here.recv() == "to the thread"
        process.join(PATIENCE)
    assert process.exitcode == 0


def test_big_arguments_reach_the_child(ctx: Any, children: Children) -> None:
    data = os.urandom(1024) * (50 * 1024)  # 50 MB
    here, there = ctx.Pipe()
    with here, there:
        process = children.start(
            ctx.Process(target=_process_targets.proc_digest, args=(there, data))
        )
        there.close()
        assert here.recv() == (len(data), hashlib.sha256(data).hexdigest())
        process.join(PATIENCE)
    assert process.exitcode == 0


# ---- close -----------------------------------------------------------------------------------


def test_close(ctx: Any, children: Children) -> None:
    here, there = ctx.Pipe()
    with here, there:
        process = children.start(
            ctx.Process(target=_process_targets.proc_wait_then_exit, args=(there,))
        )
        wait_ready(here)
        with pytest.raises(ValueError, match="still running"):
            process.close()
        assert process.is_alive()  # a refused close leaves the process usable

        here.send("go")
        process.join(PATIENCE)
    name = process.name
    process.close()
    process.close()  # closing twice is harmless

    assert process.name == name
    for method in ("start", "join", "is_alive", "terminate", "kill"):
        with pytest.raises(ValueError, match="process object is closed"):
            getattr(process, method)()
    for attribute in ("exitcode", "pid", "ident", "sentinel"):
        with pytest.raises(ValueError, match="process object is closed"):
            getattr(process, attribute)


def test_close_an_unstarted_process(ctx: Any) -> None:
    process = ctx.Process(target=_process_targets.proc_noop)
    process.close()
    with pytest.raises(ValueError, match="process object is closed"):
        process.start()


# ---- bad input -------------------------------------------------------------------------------


def test_target_that_is_not_callable_is_refused_at_construction(ctx: Any) -> None:
    with pytest.raises(TypeError, match="callable") as caught:
        ctx.Process(target=42)
    assert "int" in str(caught.value)


def test_start_twice(ctx: Any, children: Children) -> None:
    process = children.start(ctx.Process(target=_process_targets.proc_noop))
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        process.start()
    process.join(PATIENCE)
    with pytest.raises(AssertionError):
        process.start()
    assert process.exitcode == 0


def test_join_before_start(ctx: Any) -> None:
    process = ctx.Process(target=_process_targets.proc_noop)
    with pytest.raises(AssertionError, match="can only join a started process"):
        process.join()


def test_daemon_cannot_change_after_start(ctx: Any, children: Children) -> None:
    process = children.start(ctx.Process(target=_process_targets.proc_noop))
    with pytest.raises(AssertionError, match="process has already started"):
        process.daemon = True
    process.join(PATIENCE)
    assert not process.daemon


# ---- names, identities, pids ------------------------------------------------------------------


def test_default_names_number_the_processes(ctx: Any) -> None:
    first, second = ctx.Process(), ctx.Process()
    class_name = CLASS_NAMES[ctx.get_start_method()]
    assert type(first).__name__ == class_name
    found = [re.fullmatch(rf"{class_name}-(\d+)", p.name) for p in (first, second)]
    assert found[0] is not None
    assert found[1] is not None
    assert int(found[1].group(1)) == int(found[0].group(1)) + 1
    assert re.fullmatch(r"Process-\d+", serentak.Process().name)


def test_name_given_and_changed(ctx: Any, children: Children) -> None:
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(target=_process_targets.proc_report, args=(there,), name="first name")
        assert process.name == "first name"
        process.name = "worker"
        children.start(process)
        there.close()
        report = here.recv()
        process.join(PATIENCE)
    assert report["name"] == "worker"


def test_child_knows_itself_and_its_parent(ctx: Any, children: Children) -> None:
    here, there = ctx.Pipe()
    with here, there:
        process = children.start(ctx.Process(target=_process_targets.proc_report, args=(there,)))
        there.close()
        report = here.recv()
        process.join(PATIENCE)
    assert process.exitcode == 0
    assert report["name"] == process.name
    assert report["pid"] == report["ident"] == report["getpid"] == process.pid
    assert report["daemon"] is False
    assert report["is_alive"] is True
    assert report["parent"] == ("MainProcess", os.getpid(), True)
    assert report["active_children"] == 0
    assert report["stdin"] == ""  # an empty stdin: a child does not take the parent's input


def test_main_process_knows_itself() -> None:
    me = serentak.current_process()
    assert me.name == "MainProcess"
    assert me.pid == me.ident == os.getpid()
    assert me.daemon is False
    assert me.is_alive()
    assert serentak.parent_process() is None
    assert serentak.get_context("spawn").current_process() is me


def test_grandchild_names_carry_the_identity_chain(ctx: Any, children: Children) -> None:
    method = ctx.get_start_method()
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(target=_process_targets.proc_start_grandchild, args=(there, method))
        children.start(process)
        there.close()
        report = here.recv()
        process.join(PATIENCE)
    assert process.exitcode == 0
    assert report["me"] == process.name
    assert report["grandchild_name"] == f"{process.name}:1"
    assert report["grandchild_exitcode"] == 0
    grandchild = report["grandchild"]
    assert grandchild["name"] == f"{process.name}:1"
    assert grandchild["parent"] == (process.name, process.pid, True)
    assert grandchild["pid"] != process.pid


def test_authkey_is_inherited(ctx: Any, children: Children) -> None:
    mine = serentak.current_process().authkey
    assert isinstance(mine, bytes)
    assert len(mine) >= 16
    reports = []
    for authkey in (None, b"a key of our own"):
        here, there = ctx.Pipe()
        with here, there:
            process = ctx.Process(target=_process_targets.proc_report, args=(there,))
            assert process.authkey == mine
            if authkey is not None:
                process.authkey = authkey
            children.start(process)
            there.close()
            reports.append(here.recv())
            process.join(PATIENCE)
    assert reports[0]["authkey"] == mine
    assert reports[1]["authkey"] == b"a key of our own"
    with pytest.raises(TypeError, match="disallowed for security reasons"):
        pickle.dumps(serentak.current_process().authkey)


# ---- daemons ----------------------------------------------------------------------------------


def test_daemon_flag_reaches_the_child(ctx: Any, children: Children) -> None:
    assert ctx.Process().daemon is False
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(target=_process_targets.proc_report, args=(there,), daemon=True)
        assert process.daemon is True
        children.start(process)
        there.close()
        report = here.recv()
        process.join(PATIENCE)
    assert report["daemon"] is True
    assert "daemon" in repr(process)


def test_daemonic_process_may_not_have_children(ctx: Any, children: Children) -> None:
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(
            target=_process_targets.proc_try_to_have_a_child,
            args=(there, ctx.get_start_method()),
            daemon=True,
        )
        children.start(process)
        there.close()
        report = here.recv()
        process.join(PATIENCE)
    assert report == {
        "outcome": "daemonic processes are not allowed to have children",
        "inherited_daemon": True,
    }
    assert process.exitcode == 0


# ---- sentinel, active_children, cpu_count ------------------------------------------------------


def test_sentinel_becomes_ready_when_the_process_ends(ctx: Any, children: Children) -> None:
    process = ctx.Process(target=_process_targets.proc_noop)
    with pytest.raises(ValueError, match="not started"):
        process.sentinel
    here, there = ctx.Pipe()
    with here, there:
        process = children.start(
            ctx.Process(target=_process_targets.proc_wait_then_exit, args=(there,))
        )
        wait_ready(here)
        sentinel = process.sentinel
        assert isinstance(sentinel, int)
        assert wait([sentinel], timeout=0.1) == []
        assert process.is_alive()
        here.send("go")
        assert wait([sentinel], timeout=PATIENCE) == [sentinel]
    assert not process.is_alive()
    assert process.exitcode == 0


def test_active_children(ctx: Any, children: Children) -> None:
    here, there = ctx.Pipe()
    with here, there:
        process = children.start(
            ctx.Process(target=_process_targets.proc_wait_then_exit, args=(there,))
        )
        wait_ready(here)
        assert process in serentak.active_children()
        assert process in ctx.active_children()
        here.send("go")
        # Not joined: active_children() notices the end by itself.
        assert wait([process.sentinel], timeout=PATIENCE)
        assert process not in serentak.active_children()
    assert process.exitcode == 0


def test_cpu_count(ctx: Any) -> None:
    assert serentak.cpu_count() == ctx.cpu_count() == os.cpu_count()
    assert serentak.cpu_count() >= 1


def test_child_started_from_a_thread_outlives_the_thread(ctx: Any, children: Children) -> None:
    """The kernel's parent-death signal follows the creating thread; the child must not."""
    here, there = ctx.Pipe()
    with here, there:
        thread_ids: list[int] = []

        def start() -> None:
            thread_ids.append(threading.get_native_id())
            children.start(ctx.Process(target=_ipc_targets.conn_echo, args=(there, 1)))

        thread = threading.Thread(target=start)
        thread.start()
        thread.join()
        assert until_gone(Path(f"/proc/self/task/{thread_ids[0]}")), "the thread never ended"
        here.send("still there?")
        assert here.poll(PATIENCE), "the child died with the thread that started it"
        assert here.recv() == "still there?"
    process = children.started[0]
    process.join(PATIENCE)
    assert process.exitcode == 0


def test_children_started_from_many_threads_at_once(ctx: Any, children: Children) -> None:
    pipes = [ctx.Pipe() for _ in range(8)]
    try:
        barrier = threading.Barrier(4)

        def start_two(index: int) -> None:
            barrier.wait(PATIENCE)
            for _here, there in pipes[2 * index : 2 * index + 2]:
                children.start(ctx.Process(target=_process_targets.proc_report, args=(there,)))

        threads = [threading.Thread(target=start_two, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE)
        assert len(children.started) == 8
        reports = [here.recv() for here, _there in pipes]
    finally:
        for here, there in pipes:
            here.close()
            there.close()
    for process in children.started:
        process.join(PATIENCE)
        assert process.exitcode == 0
    assert len({report["pid"] for report in reports}) == 8
    assert len({report["name"] for report in reports}) == 8
    assert {report["name"] for report in reports} == {p.name for p in children.started}


def until_gone(path: Path, patience: float = PATIENCE) -> bool:
    """Poll for an OS condition nothing signals: ``path`` no longer exists."""
    deadline = time.monotonic() + patience
    while path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


# ---- whole programs --------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


AT_EXIT_SCRIPT = """
import os
import signal
import sys

import serentak


def forever(conn):
    conn.send(("daemon", os.getpid()))
    conn.close()
    while True:
        signal.pause()


def finish_on_sigusr1(conn):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    conn.send(("worker", os.getpid()))
    conn.close()
    signal.sigwait({signal.SIGUSR1})
    print("worker completed", flush=True)


if __name__ == "__main__":
    ctx = serentak.get_context(sys.argv[1])
    here, there = ctx.Pipe()
    ctx.Process(target=forever, args=(there,), daemon=True).start()
    ctx.Process(target=finish_on_sigusr1, args=(there,)).start()
    there.close()
    pids = dict([here.recv(), here.recv()])
    print(pids["daemon"], pids["worker"], flush=True)
    sys.stdin.readline()  # the test looks at the process tree meanwhile
    print("main done", flush=True)
"""


def test_at_exit_daemons_are_terminated_and_others_joined(
    start_method: str, tmp_path: Path
) -> None:
    script = tmp_path / "at_exit.py"
    script.write_text(AT_EXIT_SCRIPT)
    with running_script(script, start_method, stdin=subprocess.PIPE) as process:
        assert process.stdin is not None
        daemon, worker = map(int, read_line(process).split())
        family = descendants_of(process.pid)
        assert {daemon, worker} <= family
        process.stdin.write(b"end the main module\n")
        assert read_line(process) == "main done"
        # The main module has ended: the daemon is terminated while the worker is joined.
        assert still_running_after({daemon}, PATIENCE) == set(), "the daemon was not terminated"
        assert process.poll() is None, "the script exited without joining its worker"
        assert running(worker)

        os.kill(worker, signal.SIGUSR1)
        stdout, stderr = rest_of_output(process)
        assert process.returncode == 0
        assert stdout == "worker completed\n"
        assert stderr == ""
    # Nothing it started outlives it: children, and a fork server with its children.
    assert still_running_after(family, PATIENCE) == set()


PARENT_DEATH_SCRIPT = """
import os
import signal
import sys
import threading
import time

import serentak


def pause_forever():
    while True:
        signal.pause()


def grandchild(conn):
    conn.send(conn.recv())
    pause_forever()


def child(conn, method):
    ctx = serentak.get_context(method)
    if serentak.current_process().daemon:  # a daemon has no children
        conn.send((os.getpid(), 0))
        conn.send(conn.recv())
        pause_forever()
    here, there = ctx.Pipe()
    process = ctx.Process(target=grandchild, args=(there,), daemon=True)
    process.start()
    there.close()
    conn.send((os.getpid(), process.pid))
    here.send(conn.recv())
    conn.send(here.recv())
    serentak.parent_process().join()
    print("outlived the parent", flush=True)
    pause_forever()


def main():
    method, where, kind = sys.argv[1:]
    ctx = serentak.get_context(method)
    here, there = ctx.Pipe()
    processes = []
    thread_ids = []

    def start():
        thread_ids.append(threading.get_native_id())
        process = ctx.Process(target=child, args=(there, method), daemon=kind == "daemon")
        process.start()
        processes.append(process)

    if where == "thread":
        thread = threading.Thread(target=start)
        thread.start()
        thread.join()
        # The thread's task may outlive join() by a moment: wait until it is gone.
        deadline = time.monotonic() + 20
        while os.path.exists(f"/proc/self/task/{thread_ids[0]}"):
            if time.monotonic() > deadline:
                sys.exit("the thread never ended")
            time.sleep(0.001)
    else:
        start()
    child_pid, grandchild_pid = here.recv()
    assert child_pid == processes[0].pid
    here.send("ping")  # through the child (and the grandchild) and back: all run
    assert here.recv() == "ping"
    print(child_pid, grandchild_pid, flush=True)
    pause_forever()


main()
"""


@pytest.mark.parametrize("where", ["main", "thread"])
def test_daemonic_children_die_with_their_parent(
    start_method: str, where: str, tmp_path: Path
) -> None:
    """SIGKILL the parent: its daemonic child goes too (started from its main thread or not),
    and so do the fork servers."""
    script = tmp_path / "parent_death.py"
    script.write_text(PARENT_DEATH_SCRIPT)
    with running_script(script, start_method, where, "daemon") as process:
        child, _ = map(int, read_line(process).split())
        family = descendants_of(process.pid)
        assert child in family
        assert len(family) >= (2 if start_method == "forkserver" else 1)
        assert all(running(pid) for pid in family)

        process.kill()
        process.wait()
    alive = still_running_after(family, 2.0)
    assert alive == set(), "still running after the parent died:\n" + "\n".join(
        describe(pid) for pid in alive
    )


@pytest.mark.parametrize("where", ["main", "thread"])
def test_a_plain_child_outlives_its_killed_parent(
    start_method: str, where: str, tmp_path: Path
) -> None:
    """As the stdlib's: SIGKILL the parent and its non-daemonic child runs on (it sees the
    parent end); the child's own daemonic child and fork server go when the child does."""
    script = tmp_path / "parent_death.py"
    script.write_text(PARENT_DEATH_SCRIPT)
    with running_script(script, start_method, where, "plain") as process:
        child, grandchild = map(int, read_line(process).split())
        family = descendants_of(process.pid)
        assert {child, grandchild} <= family
        assert all(running(pid) for pid in family)

        process.kill()
        process.wait()
        # The child holds the script's stdout: it writes once it has seen the parent end.
        assert read_line(process) == "outlived the parent"
        assert running(child)
        assert running(grandchild)
        os.kill(child, signal.SIGKILL)
    alive = still_running_after(family, 2.0)
    assert alive == set(), "still running after the child died:\n" + "\n".join(
        describe(pid) for pid in alive
    )


def describe(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} {command.strip()}"


SERVER_DEATH_SCRIPT = """
import os
import signal

import serentak


def block(conn):
    conn.send(os.getppid())
    while True:
        signal.pause()


if __name__ == "__main__":
    ctx = serentak.get_context("forkserver")
    here, there = ctx.Pipe()
    process = ctx.Process(target=block, args=(there,))
    process.start()
    server = here.recv()
    os.kill(server, signal.SIGKILL)
    process.join(20)
    print(process.pid, process.exitcode, flush=True)
    process = ctx.Process(target=block, args=(there,))
    process.start()
    new_server = here.recv()
    print("new server", new_server not in (server, os.getpid()), flush=True)
    process.kill()
    process.join()
    print(process.exitcode, flush=True)
"""


def test_fork_server_death_ends_its_children_and_a_new_one_starts(tmp_path: Path) -> None:
    """Never hang on a fork server that died: its children end, join() returns, and the next
    start gets a new server."""
    script = tmp_path / "server_death.py"
    script.write_text(SERVER_DEATH_SCRIPT)
    with running_script(script) as process:
        pid, exitcode = read_line(process).split()
        assert exitcode not in ("None", "0")
        assert still_running_after({int(pid)}, 2.0) == set()
        stdout, stderr = rest_of_output(process)
    assert (process.returncode, stdout, stderr) == (0, f"new server True\n{-signal.SIGKILL}\n", "")


CTRL_C_SCRIPT = """
import signal
import sys

import serentak


def block(conn):
    conn.send("ready")
    while True:
        signal.pause()


if __name__ == "__main__":
    ctx = serentak.get_context(sys.argv[1])
    here, there = ctx.Pipe()
    process = ctx.Process(target=block, args=(there,))
    process.start()
    assert here.recv() == "ready"
    try:
        print("joining", flush=True)
        process.join()
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    if sys.argv[2] == "terminate":
        process.terminate()
    process.join()
    print(process.exitcode, flush=True)
"""


def test_ctrl_c_interrupts_join(start_method: str, tmp_path: Path) -> None:
    """SIGINT to the parent alone: join() raises KeyboardInterrupt at once."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    with running_script(script, start_method, "terminate") as process:
        assert read_line(process) == "joining"
        sent = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        assert read_line(process) == "KeyboardInterrupt"
        assert time.monotonic() - sent < LATE
        stdout, stderr = rest_of_output(process)
    assert process.returncode == 0
    assert stdout == f"{-signal.SIGTERM}\n"
    assert stderr == ""


def test_ctrl_c_in_a_terminal_stops_parent_and_child(start_method: str, tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal sends it: everyone stops."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    with running_script(script, start_method, "wait", start_new_session=True) as process:
        assert read_line(process) == "joining"
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        assert read_line(process) == "KeyboardInterrupt"
        # The child got its own KeyboardInterrupt: an uncaught exception, exit code 1.
        assert read_line(process) == "1"
        assert time.monotonic() - sent < LATE
        _stdout, stderr = rest_of_output(process)
    assert process.returncode == 0
    assert "KeyboardInterrupt" in stderr
