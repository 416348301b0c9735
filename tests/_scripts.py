"""Whole programs under test: run a script, read its output line by line, in bounded time."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _watch import PATIENCE, asleep_in_futex, until


def script_env() -> dict[str, str]:
    """This process's environment, less the test suite's choice of start method."""
    env = dict(os.environ)
    env.pop("SERENTAK_START_METHOD", None)  # the scripts choose their start method
    return env


def run_script(
    path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python path args`` to its end (within PATIENCE), its output captured as text."""
    return subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=script_env() if env is None else env,
        check=False,
    )


@contextlib.contextmanager
def running_script(path: Path, *args: str, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python path args``: stdout and stderr are pipes, killed if still running at the end."""
    popen.setdefault("env", script_env())
    process = subprocess.Popen(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        **popen,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def read_line(process: subprocess.Popen[bytes], patience: float = PATIENCE) -> str:
    """One line of the script's stdout, without waiting longer than ``patience``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + patience
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"no whole line from the script in time; got {line!r}")
        byte = os.read(fd, 1)
        if not byte:
            raise AssertionError(f"the script's output ended; got {line!r}")
        line += byte
    return line.decode().rstrip("\n")


def rest_of_output(process: subprocess.Popen[bytes]) -> tuple[str, str]:
    """What the script still writes until every holder of its stdout and stderr has exited."""
    stdout, stderr = process.communicate(timeout=PATIENCE)
    return stdout.decode(), stderr.decode()


def interrupted_in_futex(path: Path, *args: str) -> tuple[list[str], str, float, int]:
    """Run ``python path args``, which prints "blocking" and then blocks; once its
    main thread sleeps on a futex, send it SIGINT. Its stdout lines, its stderr,
    when the signal went (time.monotonic) and its exit status."""
    process = subprocess.Popen(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=script_env(),
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "blocking\n"
        # Asleep in the kernel, on a futex: only then is the interrupt sent.
        assert until(lambda: asleep_in_futex(process.pid))
        sent = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=PATIENCE)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return stdout.splitlines(), stderr, sent, process.returncode
