"""Hostile peers for the framing, handshake and manager tests: malformed frames, and the
servers (run in children, under every start method) that must refuse them.

The wire format under test is serentak's (serentak._ipc.connection): a u32
little-endian word, bit 31 saying SCM_RIGHTS fds came with the frame, bits 0-30
the payload length or 0x7FFFFFFF when a u64 length follows.

Announced lengths are chosen so that a reader that allocates what it is told
fails fast instead of filling the machine: up to 2 GiB (what a test measures),
or at least 2**40 bytes (more than any machine here has: malloc refuses it).
"""

from __future__ import annotations

import os
import random
import socket
import struct
from typing import Any, Final

LONG_FOLLOWS: Final = 0x7FFF_FFFF
HAS_FDS: Final = 0x8000_0000
# Announced lengths a reader must not allocate before the bytes arrive.
HUGE_LENGTHS: Final = (
    1 << 30,
    (1 << 31) - 2,
    1 << 31,
    1 << 40,
    1 << 62,
    (1 << 63) - 1,
    1 << 63,  # negative as a signed 64-bit length
    (1 << 64) - 1,  # -1 as a signed 64-bit length
)
# A handshake message is at most a few hundred bytes; a server may read no more.
HANDSHAKE_BOUND: Final = 1024


def header(length: int, has_fds: bool = False) -> bytes:
    """A frame header announcing ``length`` payload bytes (long form from 0x7FFFFFFF on)."""
    flag = HAS_FDS if has_fds else 0
    if length < LONG_FOLLOWS:
        return struct.pack("<I", length | flag)
    return struct.pack("<IQ", LONG_FOLLOWS | flag, length)


def frame(payload: bytes, has_fds: bool = False) -> bytes:
    return header(len(payload), has_fds) + payload


def hostile_inputs(rng: random.Random, count: int) -> list[bytes]:
    """``count`` byte strings a peer might send instead of frames: random bytes, truncated
    frames, huge lengths, frames flagged with fds that never come. Each input is
    followed by the end of the stream."""
    inputs = [
        b"\xff" * 12,  # fds flagged, none sent, a u64 length of 2**64-1
        header(5, has_fds=True) + b"hello",
        header(1 << 30),
        struct.pack("<I", LONG_FOLLOWS),  # a long length that never comes
        struct.pack("<I", LONG_FOLLOWS) + b"\x01\x02\x03",
    ]
    inputs += [header(length) + b"x" * 64 for length in HUGE_LENGTHS]
    inputs += [header(length, has_fds=True) for length in HUGE_LENGTHS]
    while len(inputs) < count:
        kind = rng.randrange(4)
        if kind == 0:  # random bytes
            inputs.append(rng.randbytes(rng.randrange(1, 64)))
        elif kind == 1:  # a truncated frame
            whole = frame(rng.randbytes(rng.randrange(1, 600)), has_fds=rng.random() < 0.2)
            inputs.append(whole[: rng.randrange(1, len(whole))])
        elif kind == 2:  # a huge or random announced length, a few bytes of payload
            length = rng.choice([*HUGE_LENGTHS, rng.randrange(1 << 31), rng.randrange(1 << 64)])
            if (1 << 31) < length < (1 << 40):
                length = 1 << 40  # see the module docstring
            inputs.append(header(length, has_fds=rng.random() < 0.2) + rng.randbytes(8))
        else:  # a random 4-byte word, then random bytes
            inputs.append(rng.randbytes(4) + rng.randbytes(rng.randrange(0, 32)))
    return inputs[:count]


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of ``pid`` in KiB (Linux: VmHWM in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def send_and_hang_up(address: Any, data: bytes, patience: float, hang_up: bool = True) -> None:
    """Connect to ``address``, send ``data``, end the stream (unless ``hang_up`` is
    False), and read until the server closes its end (a server that refused us at
    once may already have).

    Raises:
        TimeoutError: the server kept the connection open for ``patience`` seconds.
    """
    family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(patience)
        sock.connect(address)
        try:
            sock.sendall(data)
            if hang_up:
                sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first


def is_complete_frame(data: bytes) -> bool:
    """Whether ``data`` starts with a whole frame that a reader would unpickle: a
    readable header, not flagged with fds (none come), and all of its payload."""
    if len(data) < 4:
        return False
    word: int = struct.unpack_from("<I", data)[0]
    if word & HAS_FDS:
        return False
    length, start = word & LONG_FOLLOWS, 4
    if length == LONG_FOLLOWS:
        if len(data) < 12:
            return False
        length, start = int(struct.unpack_from("<Q", data, 4)[0]), 12
    return len(data) >= start + length


# ---- in the children ------------------------------------------------------------------


def listener_server(conn: Any, authkey: bytes | None, clients: int) -> None:
    """Listen; send the parent our pid and address; for each of ``clients`` clients,
    accept it, read frames with recv_bytes until one fails, and send the parent what
    ended it (the exception's type name, or ``"served"`` with what arrived)."""
    from serentak.connection import Listener

    with Listener(authkey=authkey) as listener:
        conn.send((os.getpid(), listener.address))
        for _ in range(clients):
            try:
                client = listener.accept()
            except Exception as exc:
                conn.send(type(exc).__name__)
                continue
            received = []
            with client:
                try:
                    while True:
                        received.append(client.recv_bytes())
                except Exception as exc:
                    conn.send(("served", received, type(exc).__name__))
    conn.close()


def report_pid(conn: Any) -> None:
    """A manager's initializer: tell the parent the server's pid."""
    conn.send(os.getpid())
    conn.close()
