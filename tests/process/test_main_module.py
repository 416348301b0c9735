"""What code of a script's ``__main__`` finds in the children it is shipped to.

Whole programs, under each start method: the functions are really defined in
``__main__`` of a script, so they travel by value. Functions shipped to one
process share one ``__main__`` namespace there (a Pool or executor initializer
sets a global that the tasks read, a signal handler sees it too); tracebacks
name the script's file and line, with the source; ctypes structures defined in
``__main__`` travel, as classes and as instances.
"""

from __future__ import annotations

import re
from pathlib import Path

from _scripts import run_script

INITIALIZER_SCRIPT = """
import os
import signal
import sys

import serentak

state = None
calls = []
seen = None


def init(value):
    global state
    state = value


def read(_):
    return state


def count(_):
    calls.append(1)  # a module-level cache: it lasts as long as the worker
    return len(calls)


def on_signal(signum, frame):
    global seen
    seen = ("handler saw", state)


def install(_):
    signal.signal(signal.SIGUSR1, on_signal)
    signal.raise_signal(signal.SIGUSR1)  # runs the handler before returning (main thread)
    return seen


def helper():
    return "first helper"


def task():
    return helper()


if __name__ == "__main__":
    method = sys.argv[1]
    ctx = serentak.get_context(method)
    with ctx.Pool(2, initializer=init, initargs=(41,)) as pool:
        print("pool", pool.map(read, range(8)))
        print("signal", pool.apply(install, (None,)))
    with ctx.Pool(1) as pool:
        print("cache", [pool.apply(count, (None,)) for _ in range(3)])
        print("redefined", pool.apply(task))
        exec(
            "def helper():\\n    return 'second helper'\\n"
            "def task():\\n    return helper()\\n"
        )  # a notebook cell run again
        print("redefined", pool.apply(task))
        current = helper
        back = pool.apply(lambda: helper)  # the parent's own definitions stay its own
        print("back", back(), helper is current, back is not helper)
    with serentak.ProcessPoolExecutor(
        2, mp_context=ctx, initializer=init, initargs=(42,)
    ) as executor:
        print("executor", list(executor.map(read, range(8))))
"""


def test_initializer_sets_a_global_the_tasks_read(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "initializer.py"
    script.write_text(INITIALIZER_SCRIPT)
    result = run_script(script, start_method)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "pool [41, 41, 41, 41, 41, 41, 41, 41]",
        "signal ('handler saw', 41)",
        "cache [1, 2, 3]",
        "redefined first helper",
        "redefined second helper",
        "back second helper True True",
        "executor [42, 42, 42, 42, 42, 42, 42, 42]",
    ]


PROCESS_SCRIPT = """
import sys

import serentak

setting = "default"


def set_then_call(conn, reader):
    global setting
    setting = "set by the target"
    conn.send((reader(), report()))
    conn.close()


def read_setting():
    return ("reader", setting)


def report():
    return ("report", setting)


if __name__ == "__main__":
    ctx = serentak.get_context(sys.argv[1])
    here, there = ctx.Pipe()
    # The reader travels apart from the target (an argument): still one module there.
    process = ctx.Process(target=set_then_call, args=(there, read_setting))
    process.start()
    there.close()
    print(here.recv())
    process.join()
    print(process.exitcode, setting)
"""


def test_process_target_sets_a_global_another_function_reads(
    start_method: str, tmp_path: Path
) -> None:
    script = tmp_path / "process_global.py"
    script.write_text(PROCESS_SCRIPT)
    result = run_script(script, start_method)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "(('reader', 'set by the target'), ('report', 'set by the target'))",
        "0 default",
    ]


TRACEBACK_SCRIPT = """
import linecache
import sys

import serentak


def fail(x):
    raise ValueError(f"failed on {x}")


# What a notebook does with a cell: its source is in linecache only, under a made-up name.
CELL = "def fail_in_cell(x):\\n    y = x + 1\\n    raise KeyError(y)\\n"
linecache.cache["<cell-7>"] = (len(CELL), None, CELL.splitlines(True), "<cell-7>")
exec(compile(CELL, "<cell-7>", "exec"))


if __name__ == "__main__":
    ctx = serentak.get_context(sys.argv[1])
    with ctx.Pool(1) as pool:
        for function in (fail, fail_in_cell):
            try:
                pool.apply(function, (1,))
            except Exception as exc:
                print(exc.__cause__)
"""


def test_traceback_names_the_file_and_line_with_the_source(
    start_method: str, tmp_path: Path
) -> None:
    script = tmp_path / "tracebacks.py"
    script.write_text(TRACEBACK_SCRIPT)
    result = run_script(script, start_method)
    assert (result.returncode, result.stderr) == (0, "")
    assert "<dynamic-code>" not in result.stdout
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n +(.*)\n', result.stdout)
    assert (str(script), "9", "fail", 'raise ValueError(f"failed on {x}")') in frames
    assert ("<cell-7>", "3", "fail_in_cell", "raise KeyError(y)") in frames


CTYPES_SCRIPT = """
import ctypes
import sys

import serentak


class Inner(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("tag", ctypes.c_char), ("count", ctypes.c_int)]


class Record(ctypes.Structure):
    _fields_ = [("value", ctypes.c_int), ("inner", Inner), ("samples", ctypes.c_double * 3)]


class Linked(ctypes.Structure):
    pass


Linked._fields_ = [("value", ctypes.c_int), ("next", ctypes.POINTER(Linked))]


class Number(ctypes.Union):
    _fields_ = [("bits", ctypes.c_uint32), ("real", ctypes.c_float)]


def describe(record):
    inner = record.inner
    return (record.value, inner.tag, inner.count, list(record.samples), isinstance(record, Record))


def layout(cls):
    return (cls.__name__, ctypes.sizeof(cls), ctypes.sizeof(Inner))


def child(conn, record):
    conn.send(describe(record))
    conn.send(Record(7))  # and back: an instance of the parent's own class
    conn.send(layout(Linked))
    conn.close()


if __name__ == "__main__":
    ctx = serentak.get_context(sys.argv[1])
    record = Record(5, Inner(b"x", 9), (ctypes.c_double * 3)(1, 2, 3))
    with ctx.Pool(1) as pool:
        print(pool.apply(describe, (record,)))
        print(pool.apply(layout, (Record,)), ctypes.sizeof(Record))
        print(pool.apply(layout, (Linked,)), ctypes.sizeof(Linked))
        print(pool.apply(lambda n: (n.bits, isinstance(n, Number)), (Number(real=1.0),)))
    here, there = ctx.Pipe()
    process = ctx.Process(target=child, args=(there, record))
    process.start()
    there.close()
    print(here.recv())
    back = here.recv()
    print(type(back) is Record, back.value)
    print(here.recv())
    process.join()
    print(process.exitcode)
"""


def test_ctypes_structures_of_main_travel(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "structures.py"
    script.write_text(CTYPES_SCRIPT)
    result = run_script(script, start_method)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "(5, b'x', 9, [1.0, 2.0, 3.0], True)",
        "('Record', 40, 5) 40",
        "('Linked', 16, 5) 16",
        "(1065353216, True)",
        "(5, b'x', 9, [1.0, 2.0, 3.0], True)",
        "True 7",
        "('Linked', 16, 5)",
        "0",
    ]
