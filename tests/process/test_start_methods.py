"""Start methods and contexts, and shipping code to children under each of them.

Contexts and the default start method (serentak._context), the launch
settings (set_forkserver_preload, set_executable), then what a child can be
given to run: functions, lambdas, closures and classes from a script's
``__main__`` (with or without an ``if __name__ == "__main__":`` guard), from
``python -c`` and from an interactive session, local functions, and arguments
that cannot be pickled.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import _ipc_targets
import _process_targets
import serentak
from _scripts import script_env

# Waits for something that must happen: long enough never to fire on a slow
# machine, short of the per-test timeout so a failure reads as an assertion.
PATIENCE = 20.0
METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture
def restore_start_method() -> Iterator[None]:
    """Put the default start method back as it was once the test is over."""
    saved = serentak.get_start_method(allow_none=True)
    yield
    serentak.set_start_method(saved, force=True)


def run_python(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run this interpreter; return once it and everything holding its output have exited."""
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=script_env(),
        check=False,
    )


def run_script(path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    path.write_text(source)
    return run_python(str(path), *args)


def report_of(ctx: Any) -> dict[str, Any]:
    """Start a child with ``ctx`` and return what it says of how it started."""
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(target=_process_targets.start_report, args=(there,))
        process.start()
        there.close()
        report: dict[str, Any] = here.recv()
        process.join(PATIENCE)
    assert process.exitcode == 0
    return report


# ---- contexts ------------------------------------------------------------------------------


def test_get_context(ctx: Any) -> None:
    method = ctx.get_start_method()
    assert method in METHODS
    assert serentak.get_context(method) is ctx
    assert ctx.get_context() is ctx
    assert ctx.get_context("spawn") is serentak.get_context("spawn")
    assert ctx.get_all_start_methods() == ["forkserver", "fork", "spawn"]
    for name in ("Process", "Pipe", "Lock", "Queue", "current_process", "active_children"):
        assert hasattr(ctx, name), name
    assert ctx.current_process() is serentak.current_process()


def test_get_context_of_an_unknown_method() -> None:
    with pytest.raises(ValueError):
        serentak.get_context("threads")


def test_get_all_start_methods() -> None:
    assert serentak.get_all_start_methods() == ["forkserver", "fork", "spawn"]


def test_concrete_contexts_refuse_set_start_method(ctx: Any) -> None:
    method = ctx.get_start_method()
    for other in METHODS:
        with pytest.raises(ValueError, match="cannot set start method of concrete context"):
            ctx.set_start_method(other)
    assert ctx.get_start_method() == method


def test_set_start_method_rules(restore_start_method: None) -> None:
    serentak.set_start_method(None, force=True)
    assert serentak.get_start_method(allow_none=True) is None

    serentak.set_start_method("spawn")
    assert serentak.get_start_method() == "spawn"
    assert serentak.get_context() is serentak.get_context("spawn")
    with pytest.raises(RuntimeError, match="context has already been set"):
        serentak.set_start_method("fork")
    assert serentak.get_start_method() == "spawn"

    serentak.set_start_method("fork", force=True)
    assert serentak.get_start_method() == "fork"
    with pytest.raises(ValueError):
        serentak.set_start_method("threads", force=True)
    assert serentak.get_start_method() == "fork"

    serentak.set_start_method(None, force=True)
    with pytest.raises(ValueError):
        serentak.set_start_method("threads")
    assert serentak.get_start_method(allow_none=True) is None


def test_set_start_method_decides_how_processes_start(
    start_method: str, restore_start_method: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    serentak.set_start_method(start_method, force=True)
    # Module state set at run time: a forked child has it, a fresh interpreter not.
    monkeypatch.setattr(_process_targets, "START_MARK", "set in the parent", raising=False)
    report = report_of(serentak)
    assert report["parent_pid"] == os.getpid()
    assert report["default_method"] == start_method  # the child starts its own the same way
    if start_method == "forkserver":
        assert report["ppid"] != os.getpid()  # the fork server's child
    else:
        assert report["ppid"] == os.getpid()
    assert report["mark"] == ("set in the parent" if start_method == "fork" else None)


def test_each_context_starts_its_own_way(ctx: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    method = ctx.get_start_method()
    monkeypatch.setattr(_process_targets, "START_MARK", "set in the parent", raising=False)
    report = report_of(ctx)
    assert report["parent_pid"] == os.getpid()
    assert (report["ppid"] == os.getpid()) == (method != "forkserver")
    assert report["mark"] == ("set in the parent" if method == "fork" else None)


DEFAULT_SCRIPT = """
import json
import os

import serentak


def where(conn):
    conn.send((os.getppid(), serentak.parent_process().pid))


facts = {"unset": serentak.get_start_method(allow_none=True)}
facts["default"] = serentak.get_start_method()
facts["fixed by use"] = serentak.get_start_method(allow_none=True)
try:
    serentak.set_start_method("spawn")
except RuntimeError as exc:
    facts["set again"] = str(exc)
facts["context"] = serentak.get_context().get_start_method()
here, there = serentak.Pipe()
process = serentak.Process(target=where, args=(there,))
process.start()
ppid, parent = here.recv()
process.join()
facts["child of a fork server"] = ppid != os.getpid() and parent == os.getpid()
facts["name"] = process.name
print(json.dumps(facts))
"""


def test_default_start_method_is_forkserver() -> None:
    result = run_python("-c", DEFAULT_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "unset": None,
        "default": "forkserver",
        "fixed by use": "forkserver",
        "set again": "context has already been set",
        "context": "forkserver",
        "child of a fork server": True,
        "name": "Process-1",
    }
    assert result.stderr == ""


# ---- set_forkserver_preload, set_executable ------------------------------------------------------


@pytest.mark.parametrize("names", [[1], ["os", None], [b"os"]])
def test_set_forkserver_preload_wants_strings(names: list[Any]) -> None:
    with pytest.raises(TypeError, match="module_names must be a list of strings"):
        serentak.set_forkserver_preload(names)


PRELOAD_MODULE = """
import os

LOADED_IN = os.getpid()
"""

PRELOAD_SCRIPT = """
import os
import sys

import serentak


def where(conn):
    import preload_marker

    conn.send("server" if preload_marker.LOADED_IN != os.getpid() else "child")


if __name__ == "__main__":
    serentak.set_forkserver_preload(["preload_marker", "no_such_module_for_serentak"])
    ctx = serentak.get_context(sys.argv[1])
    here, there = ctx.Pipe()
    process = ctx.Process(target=where, args=(there,))
    process.start()
    print(here.recv())
    process.join()
    print(process.exitcode)
"""


def test_set_forkserver_preload(start_method: str, tmp_path: Path) -> None:
    """The fork server imports the modules once; a module it cannot import is skipped."""
    (tmp_path / "preload_marker.py").write_text(PRELOAD_MODULE)
    result = run_script(tmp_path / "preload.py", PRELOAD_SCRIPT, start_method)
    imported_in = "server" if start_method == "forkserver" else "child"
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{imported_in}\n0\n", "")


EXECUTABLE_SCRIPT = """
import pathlib
import sys

import serentak

if __name__ == "__main__":
    serentak.set_executable(pathlib.Path(sys.argv[2]))
    process = serentak.get_context(sys.argv[1]).Process(target=print, args=("child ran",))
    process.start()
    process.join()
    print(process.exitcode)
"""


def test_set_executable(start_method: str, tmp_path: Path) -> None:
    """spawn starts children with it, forkserver its server; fork starts no interpreter."""
    log = tmp_path / "started"
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    result = run_script(tmp_path / "executable.py", EXECUTABLE_SCRIPT, start_method, str(wrapper))
    assert (result.returncode, result.stdout, result.stderr) == (0, "child ran\n0\n", "")
    started = log.read_text().splitlines() if log.exists() else []
    assert len(started) == {"fork": 0, "spawn": 1, "forkserver": 1}[start_method], started


# ---- shipping code to children ----------------------------------------------------------------


MAIN_SCRIPT = """
import sys

import serentak


def function(x):
    return ("function", x * 2)


def make_closure(k):
    def closure(x):
        return ("closure", x + k)

    return closure


class Shape:
    def __init__(self, sides):
        self.sides = sides

    def describe(self):
        return ("class", type(self).__name__, self.sides)


def call(conn, fn, arg):
    conn.send(fn(arg))
    conn.close()


def check_shape(conn):
    shape = conn.recv()  # sent after the start: its class must be the child's own
    conn.send((isinstance(shape, Shape), shape.sides))
    conn.close()


if __name__ == "__main__":
    ctx = serentak.get_context(sys.argv[1])
    cases = [
        (function, 21),
        (make_closure(10), 5),
        (lambda x: ("lambda", x**2), 7),
        (Shape.describe, Shape(3)),
        (Shape, 4),
    ]
    for fn, arg in cases:
        here, there = ctx.Pipe()
        process = ctx.Process(target=call, args=(there, fn, arg))
        process.start()
        there.close()
        result = here.recv()
        process.join()
        here.close()
        if isinstance(result, Shape):  # made in the child: its class must be ours
            result = ("a Shape", result.sides)
        print(result, process.exitcode)
    here, there = ctx.Pipe()
    process = ctx.Process(target=check_shape, args=(there,))
    process.start()
    there.close()
    here.send(Shape(5))
    print("the child's Shape", here.recv())
    process.join()
"""


def test_functions_lambdas_closures_and_classes_of_main(start_method: str, tmp_path: Path) -> None:
    result = run_script(tmp_path / "main_defs.py", MAIN_SCRIPT, start_method)
    assert result.stderr == ""
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        "('function', 42) 0",
        "('closure', 15) 0",
        "('lambda', 49) 0",
        "('class', 'Shape', 3) 0",
        "('a Shape', 4) 0",
        "the child's Shape (True, 5)",
    ]


UNGUARDED = """\
import atexit

import serentak

print("top level runs once")  # not flushed: a forked child must not print it again
_ = atexit.register(print, "the main module's atexit")  # the parent's, not the child's


def square(conn, x):
    print("child running")  # not flushed: the child's exit must do it
    conn.send(x * x)
    conn.close()


ctx = serentak.get_context({method!r})
here, there = ctx.Pipe()
process = ctx.Process(target=square, args=(there, 7))
process.start()
there.close()
print(here.recv())
process.join()
print(process.exitcode)
"""


def test_script_without_main_guard(start_method: str, tmp_path: Path) -> None:
    """No ``if __name__ == "__main__":``: the child must not run the script's top level again."""
    source = UNGUARDED.format(method=start_method)
    result = run_script(tmp_path / "unguarded.py", source)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "top level runs once\nchild running\n49\n0\nthe main module's atexit\n",
        "",
    )


def test_code_given_with_python_c(start_method: str) -> None:
    result = run_python("-c", UNGUARDED.format(method=start_method))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "top level runs once\nchild running\n49\n0\nthe main module's atexit\n",
        "",
    )


def test_function_defined_in_an_interactive_session(start_method: str) -> None:
    """Statements typed at the ``>>>`` prompt, one by one (``python -i`` reading stdin)."""
    # The interactive loop needs a blank line to end a block.
    session = UNGUARDED.format(method=start_method).replace(
        "    conn.close()\n", "    conn.close()\n\n"
    )
    result = run_python("-q", "-i", stdin=session)
    assert result.returncode == 0, result.stderr
    # The interactive loop flushes stdout after each statement: the child's line may come later.
    lines = result.stdout.splitlines()
    assert lines[0] == "top level runs once"
    assert sorted(lines[1:]) == sorted(["child running", "49", "0", "the main module's atexit"])
    assert "Traceback" not in result.stderr, result.stderr
    assert "Error" not in result.stderr, result.stderr


def module_function(x: int) -> int:
    """A function of this module: found again by import."""
    return x - 1


def test_local_functions_lambdas_closures_and_classes(ctx: Any) -> None:
    offset = 100

    def local(x: int) -> int:
        return x + offset

    class Local:
        def __init__(self, value: int) -> None:
            self.value = value

        def doubled(self) -> int:
            return self.value * 2

    calls: list[tuple[Callable[[Any], Any], Any]] = [
        (local, 1),
        (lambda x: x * 3, 2),
        (Local.doubled, Local(21)),
        (lambda cls: cls(5).doubled(), Local),
        (functools.partial(pow, 2), 10),
        (module_function, 1),
        (functools.partial(_ipc_targets.ConnPoint, 1), 2),
    ]
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(target=_process_targets.start_call_all, args=(there, calls))
        process.start()
        there.close()
        results = here.recv()
        process.join(PATIENCE)
    assert process.exitcode == 0
    assert results == [101, 6, 42, 10, 1024, 0, _ipc_targets.ConnPoint(1, 2)]


def test_target_that_is_a_lambda_or_a_closure(ctx: Any) -> None:
    greeting = "from a closure"

    def closure(conn: Any) -> None:
        conn.send(greeting)

    for target, expected in [(closure, greeting), (lambda conn: conn.send("from a lambda"), None)]:
        here, there = ctx.Pipe()
        with here, there:
            process = ctx.Process(target=target, args=(there,))
            process.start()
            there.close()
            assert here.recv() == (expected or "from a lambda")
            process.join(PATIENCE)
        assert process.exitcode == 0


def make_generator() -> Iterator[int]:
    return iter(x for x in range(3))


UNPICKLABLE: list[tuple[Callable[[], Any], str]] = [
    (threading.Lock, "_thread.lock"),
    (make_generator, "generator"),
]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize(("make", "type_name"), UNPICKLABLE, ids=["lock", "generator"])
def test_unpicklable_argument_fails_start(
    method: str, make: Callable[[], Any], type_name: str
) -> None:
    """Under spawn and forkserver the arguments are pickled: start() raises, no child is left."""
    ctx = serentak.get_context(method)
    process = ctx.Process(target=_process_targets.proc_send_args, args=(make(),))
    with pytest.raises(TypeError, match=type_name):
        process.start()
    assert not process.is_alive()
    assert process.exitcode is None
    assert process.pid is None
    assert process not in serentak.active_children()


def test_fork_pickles_nothing() -> None:
    """Under fork the child gets a copy of the arguments: unpicklable ones work."""
    ctx = serentak.get_context("fork")
    here, there = ctx.Pipe()
    with here, there:
        process = ctx.Process(
            target=_process_targets.proc_use_unpicklable,
            args=(there, threading.Lock(), make_generator()),
        )
        process.start()
        there.close()
        assert here.recv() == 0
        process.join(PATIENCE)
    assert process.exitcode == 0
