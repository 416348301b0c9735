"""Peak memory of a server that unauthenticated clients send huge frame headers to.

    python benchmarks/hostile_frames.py [--clients N] [--announce BYTES] [--hold SECONDS]

Two servers, each in a forked child of this process: a ``Listener(authkey=...)``
whose loop accepts (and refuses) clients, and a manager's server
(``BaseManager(authkey=...).get_server().serve_forever()``). N clients that do not
hold the key connect to each at once, send only a frame header announcing
``--announce`` bytes (2 GiB by default) in place of the answer to the challenge,
keep the connection open until the server closes it (or ``--hold`` seconds
pass), then close it.

Printed for each server: its peak resident memory (``VmHWM`` of
``/proc/PID/status``) before the clients came and after they left, and how long
the clients took to be dealt with. A server that checks the announced length
before it allocates stays within a few MiB of where it started; one that
allocates what a stranger announced grows by the announced size per client it
serves at the same time.

A client the server does not close holds its connection for ``--hold``
seconds: the time taken says whether the server refused the clients at once.
"""

from __future__ import annotations

import argparse
import ast
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import serentak
from serentak.connection import Listener
from serentak.managers import BaseManager

KEY = b"the key the clients do not have"
MIB = 1024 * 1024


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of ``pid`` in KiB, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def _header(announce: int) -> bytes:
    """A frame header announcing ``announce`` payload bytes, in serentak's wire format."""
    if announce < 0x7FFF_FFFF:
        return struct.pack("<I", announce)
    return struct.pack("<IQ", 0x7FFF_FFFF, announce)


def _listener_server(report: int) -> None:
    """Accept and refuse clients forever (the parent kills this process)."""
    listener = Listener(authkey=KEY)
    os.write(report, repr(listener.address).encode() + b"\n")
    while True:
        try:
            listener.accept().close()
        except Exception as exc:
            print(f"  listener refused a client: {type(exc).__name__}: {exc}", file=sys.stderr)
        os.write(report, b".")  # one client dealt with


def _manager_server(report: int) -> None:
    server = BaseManager(authkey=KEY).get_server()
    os.write(report, repr(server.address).encode() + b"\n")
    server.serve_forever()


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class _Server:
    """A forked child running ``serve``: its pid, address, and the pipe it reports on."""

    def __init__(self, serve: Callable[[int], None]) -> None:
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(read_end)
            try:
                serve(write_end)
            finally:
                os._exit(0)
        os.close(write_end)
        self.reports = os.fdopen(read_end, "rb")
        self.address: Any = ast.literal_eval(self.reports.readline().decode())

    def wait_for_listener(self, clients: int) -> None:
        """Until the Listener's loop has dealt with ``clients`` clients."""
        self.reports.read(clients)

    def wait_for_manager(self, threads: int) -> None:
        """Until the manager's server is back to ``threads`` threads: one per client
        runs the handshake and ends when it refuses that client."""
        deadline = time.monotonic() + 60
        while _threads(self.pid) > threads and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.reports.close()


def _hostile_client(address: Any, announce: int, hold: float) -> None:
    """Connect, announce a frame of ``announce`` bytes, and keep the connection open
    until the server closes it or ``hold`` seconds have passed."""
    family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.connect(address)
        deadline = time.monotonic() + hold
        try:
            sock.sendall(_header(announce))
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(4096):
                    return  # the server closed the connection
        except OSError:
            return  # refused (or timed out)


def _measure(name: str, serve: Callable[[int], None], args: argparse.Namespace) -> None:
    server = _Server(serve)
    try:
        before = _vm_hwm_kib(server.pid)
        threads = _threads(server.pid)
        start = time.perf_counter()
        clients = [
            threading.Thread(
                target=_hostile_client, args=(server.address, args.announce, args.hold)
            )
            for _ in range(args.clients)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        if serve is _listener_server:
            server.wait_for_listener(args.clients)
        else:
            server.wait_for_manager(threads)
        elapsed = time.perf_counter() - start
        after = _vm_hwm_kib(server.pid)
        print(
            f"{name:<9} peak RSS before {before / 1024:7.1f} MiB, after {after / 1024:7.1f} MiB:"
            f" growth {(after - before) / 1024:7.1f} MiB; clients dealt with in {elapsed:4.1f} s",
            flush=True,
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--announce", type=int, default=2 * 1024 * MIB)
    parser.add_argument("--hold", type=float, default=10.0)
    args = parser.parse_args()
    print(
        f"serentak {serentak.__version__}: {args.clients} clients without the key, each"
        f" announcing a {args.announce / MIB:.0f} MiB frame, holding it up to {args.hold} s"
    )
    _measure("Listener", _listener_server, args)
    _measure("manager", _manager_server, args)


if __name__ == "__main__":
    main()
