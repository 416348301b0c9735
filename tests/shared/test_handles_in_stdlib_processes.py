"""serentak's queues and locks given to processes of the stdlib's multiprocessing.

A program may mix the two. Under fork a stdlib child inherits serentak's
handles and they work; spawn and forkserver would have to pickle them with the
stdlib's machinery, which cannot carry them: a TypeError then says what to use
instead (never the stdlib's misleading RuntimeError, never a hang). Each case
runs as a script, since the stdlib starts helper processes of its own (its
resource tracker, its fork server) that outlive a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _scripts import run_script

SCRIPT = """
import multiprocessing
import sys

import serentak


def use(queue, lock):
    with lock:
        queue.put("from the stdlib's child")


if __name__ == "__main__":
    method = sys.argv[1]
    queue, lock = serentak.Queue(), serentak.Lock()
    child = multiprocessing.get_context(method).Process(target=use, args=(queue, lock))
    try:
        child.start()
    except TypeError as exc:
        print("TypeError:", exc)
    else:
        print(queue.get(timeout=20))
        child.join()
        print("exit code", child.exitcode)
"""


def test_serentak_queue_and_lock_in_a_stdlib_process(start_method: str, tmp_path: Path) -> None:
    script = tmp_path / "stdlib_child.py"
    script.write_text(SCRIPT)
    finished = run_script(script, start_method)
    assert finished.returncode == 0, finished.stderr
    if start_method == "fork":
        assert finished.stdout.splitlines() == ["from the stdlib's child", "exit code 0"]
        return
    [line] = finished.stdout.splitlines()
    assert line.startswith("TypeError: serentak's ")
    assert "start that process with serentak (serentak.get_context(method).Process)" in line
    assert "RuntimeError" not in finished.stderr


@pytest.mark.parametrize("what", ["Queue", "Lock", "Value"])
def test_each_handle_names_itself(start_method: str, tmp_path: Path, what: str) -> None:
    script = tmp_path / "stdlib_child_one.py"
    script.write_text(
        "import multiprocessing, sys, serentak\n"
        "def noop(obj): pass\n"
        "if __name__ == '__main__':\n"
        f"    obj = serentak.{what}(*(('i', 0) if {what!r} == 'Value' else ()))\n"
        "    child = multiprocessing.get_context(sys.argv[1]).Process(target=noop, args=(obj,))\n"
        "    try:\n"
        "        child.start()\n"
        "    except TypeError as exc:\n"
        "        print(exc)\n"
        "    else:\n"
        "        child.join()\n"
        "        print('exit code', child.exitcode)\n"
    )
    finished = run_script(script, start_method)
    assert finished.returncode == 0, finished.stderr
    if start_method == "fork":
        assert finished.stdout.strip() == "exit code 0"
    else:
        assert finished.stdout.startswith("serentak's "), finished.stdout
        assert "cannot be given to a process that the stdlib's multiprocessing" in finished.stdout
