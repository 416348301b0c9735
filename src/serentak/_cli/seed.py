"""The tutorial serentak answers to: its examples, verbatim, and what it says they print.

The tutorial (in Indonesian) teaches ``multiprocessing``; each example here is
its code with one change, ``import multiprocessing`` becoming ``import serentak
as multiprocessing``. ``serentak demo`` runs them live and the tests run them
under every start method: each runs as a script of its own in a fresh
interpreter, as a reader would run it, with the start method chosen through
``SERENTAK_START_METHOD`` so that the code itself stays untouched.
"""

from __future__ import annotations

import dataclasses
import os
import pty
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

IMPORT_LINE: Final = "import serentak as multiprocessing"


@dataclasses.dataclass(frozen=True)
class Example:
    """One example of the tutorial.

    Attributes:
        section: the tutorial's section number.
        title: the section's title, as the tutorial words it.
        code: the example, verbatim but for the import line.
        expected: the lines the tutorial says it prints.
        ordered: False where the tutorial's processes run in parallel, so the
            lines may come in any order.
        explanation: the point of the example, in English.
    """

    section: str
    title: str
    code: str
    expected: tuple[str, ...]
    ordered: bool
    explanation: str

    def matches(self, lines: list[str]) -> bool:
        """Does this output say what the tutorial says?"""
        if self.ordered:
            return tuple(lines) == self.expected
        return sorted(lines) == sorted(self.expected)


EXAMPLES: Final = (
    Example(
        section="3.1",
        title="Contoh Dasar multiprocessing.Process",
        code=f"""{IMPORT_LINE}

def print_hello():
    print("Hello from process!")

if __name__ == "__main__":
    process = multiprocessing.Process(target=print_hello)
    process.start()
    process.join()  # Menunggu proses selesai
""",
        expected=("Hello from process!",),
        ordered=True,
        explanation="Process(target=...) creates a process, start() runs it, join() waits.",
    ),
    Example(
        section="4",
        title="Menggunakan Banyak Proses (Parallel Processing)",
        code=f"""{IMPORT_LINE}

def worker(num):
    print(f"Proses {{num}} berjalan")

if __name__ == "__main__":
    processes = []
    for i in range(4):  # Jalankan 4 proses
        p = multiprocessing.Process(target=worker, args=(i,))
        processes.append(p)
        p.start()

    for p in processes:
        p.join()
""",
        expected=tuple(f"Proses {i} berjalan" for i in range(4)),
        ordered=False,
        explanation="Four processes run at once; they finish in whatever order they finish.",
    ),
    Example(
        section="5.1",
        title="Menggunakan Pool.map()",
        code=f"""{IMPORT_LINE}

def square(n):
    return n * n

if __name__ == "__main__":
    with multiprocessing.Pool(processes=4) as pool:
        results = pool.map(square, [1, 2, 3, 4, 5])
    print(results)  # Output: [1, 4, 9, 16, 25]
""",
        expected=("[1, 4, 9, 16, 25]",),
        ordered=True,
        explanation="Pool.map splits the work across worker processes, results in order.",
    ),
    Example(
        section="6.1",
        title="Menggunakan Value untuk Berbagi Data",
        code=f"""{IMPORT_LINE}

def worker(val):
    val.value += 1  # Memodifikasi nilai di dalam proses

if __name__ == "__main__":
    shared_val = multiprocessing.Value('i', 0)  # 'i' = integer
    process = multiprocessing.Process(target=worker, args=(shared_val,))
    process.start()
    process.join()
    print(shared_val.value)  # Output: 1
""",
        expected=("1",),
        ordered=True,
        explanation="A Value lives in shared memory: the child's change is seen by the parent.",
    ),
    Example(
        section="6.2",
        title="Menggunakan Array untuk Berbagi Data",
        code=f"""{IMPORT_LINE}

def worker(arr):
    arr[0] += 1

if __name__ == "__main__":
    shared_arr = multiprocessing.Array('i', [1, 2, 3])
    process = multiprocessing.Process(target=worker, args=(shared_arr,))
    process.start()
    process.join()
    print(shared_arr[:])  # Output: [2, 2, 3]
""",
        expected=("[2, 2, 3]",),
        ordered=True,
        explanation="An Array in shared memory, changed in place by the child.",
    ),
    Example(
        section="7.1",
        title="Menggunakan Queue",
        code=f"""{IMPORT_LINE}

def worker(queue):
    queue.put("Data dari proses!")

if __name__ == "__main__":
    queue = multiprocessing.Queue()
    process = multiprocessing.Process(target=worker, args=(queue,))
    process.start()
    process.join()
    print(queue.get())  # Output: "Data dari proses!"
""",
        expected=("Data dari proses!",),
        ordered=True,
        explanation="A Queue carries objects between processes.",
    ),
    Example(
        section="7.2",
        title="Menggunakan Pipe",
        code=f"""{IMPORT_LINE}

def worker(conn):
    conn.send("Hello from child process")
    conn.close()

if __name__ == "__main__":
    parent_conn, child_conn = multiprocessing.Pipe()
    process = multiprocessing.Process(target=worker, args=(child_conn,))
    process.start()
    process.join()
    print(parent_conn.recv())  # Output: "Hello from child process"
""",
        expected=("Hello from child process",),
        ordered=True,
        explanation="A Pipe is a two-way connection; each end can send and receive.",
    ),
    Example(
        section="8.1",
        title="Menggunakan Lock untuk Mencegah Race Condition",
        code=f"""{IMPORT_LINE}
import time

def worker(lock):
    with lock:
        print("Proses sedang berjalan")
        time.sleep(1)

if __name__ == "__main__":
    lock = multiprocessing.Lock()
    processes = [multiprocessing.Process(target=worker, args=(lock,)) for _ in range(3)]
    
    for p in processes:
        p.start()
    
    for p in processes:
        p.join()
""",  # noqa: W293 (the tutorial's blank lines carry spaces; verbatim means verbatim)
        expected=("Proses sedang berjalan",) * 3,
        ordered=True,
        explanation="The Lock lets one process at a time in: the three lines come a second apart.",
    ),
    Example(
        section="9",
        title="Menjalankan Fungsi Secara Background (daemon)",
        code=f"""{IMPORT_LINE}
import time

def background_task():
    while True:
        print("Daemon process running...")
        time.sleep(2)

if __name__ == "__main__":
    process = multiprocessing.Process(target=background_task, daemon=True)
    process.start()
    time.sleep(5)
    print("Main process selesai")
""",
        expected=("Daemon process running...",) * 3 + ("Main process selesai",),
        ordered=True,
        explanation="A daemon process is stopped when the main process finishes.",
    ),
)

BY_SECTION: Final = {example.section: example for example in EXAMPLES}


@dataclasses.dataclass(frozen=True)
class Run:
    """What one run of an example did.

    Attributes:
        lines: what it printed (stdout), line by line.
        stderr: what it printed on stderr.
        returncode: its exit code.
        seconds: how long it took, start to exit.
    """

    lines: list[str]
    stderr: str
    returncode: int
    seconds: float


def run_example(
    example: Example,
    start_method: str | None = None,
    on_line: Callable[[str], None] | None = None,
    timeout: float = 60.0,
) -> Run:
    """Run ``example`` as a script in a fresh interpreter.

    Args:
        example: the example to run.
        start_method: the start method to run it under; None for the default.
        on_line: called with each line of output as it arrives (the demo
            shows them live).
        timeout: seconds before the run is killed and reported as failed.

    Returns:
        What the run printed, its exit code and its duration.
    """
    env = dict(os.environ)
    # Unbuffered output writes print()'s text and newline separately, and
    # parallel processes would interleave mid-line; see the terminal below.
    env.pop("PYTHONUNBUFFERED", None)
    if start_method is not None:
        env["SERENTAK_START_METHOD"] = start_method
    with tempfile.TemporaryDirectory(prefix="serentak-seed-") as folder:
        script = os.path.join(folder, f"seed_{example.section.replace('.', '_')}.py")
        with open(script, "w", encoding="utf-8") as handle:
            handle.write(example.code)
        # stdout is a pseudo-terminal, as when a reader runs the example: Python
        # line-buffers it, so lines arrive live and whole (a pipe would buffer
        # until exit; unbuffered output splits print() into two writes, and
        # parallel processes would interleave mid-line).
        terminal, child_side = pty.openpty()
        _raw_terminal(child_side)
        started = time.monotonic()
        with subprocess.Popen(
            [sys.executable, script],
            stdin=subprocess.DEVNULL,
            stdout=child_side,
            stderr=subprocess.PIPE,
            env=env,
            cwd=folder,
        ) as child:
            os.close(child_side)
            # A hung example is killed at the deadline, wherever it hangs.
            watchdog = threading.Timer(timeout, child.kill)
            watchdog.start()
            try:
                lines = list(_lines(terminal, on_line))
                stderr = child.communicate()[1].decode(errors="replace")
            finally:
                watchdog.cancel()
                os.close(terminal)
            if child.returncode == -signal.SIGKILL and time.monotonic() - started >= timeout:
                stderr += f"\n(killed after {timeout:.0f} s)"
        return Run(lines, stderr, child.returncode, time.monotonic() - started)


def _raw_terminal(fd: int) -> None:
    """No newline translation: the lines read back are the lines printed."""
    attributes = termios.tcgetattr(fd)
    attributes[1] &= ~termios.OPOST
    termios.tcsetattr(fd, termios.TCSANOW, attributes)


def _lines(terminal: int, on_line: Callable[[str], None] | None) -> Iterator[str]:
    pending = b""
    while True:
        try:
            chunk = os.read(terminal, 65536)
        except OSError:  # EIO: every process holding the terminal has exited
            chunk = b""
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace")
            if on_line is not None:
                on_line(line)
            yield line
    if pending:
        yield pending.decode(errors="replace")
