"""Worker functions for the tests of connections.

A spawned or forkserver child imports them from here by name.

Append; each test module keeps its functions in a section of its own.
"""

from __future__ import annotations

from typing import Any

# ---- test_connection ------------------------------------------------------------


class ConnPoint:
    """A user-defined class that children import from here."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConnPoint) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


def conn_hello(conn: Any) -> None:
    """The seed's example 7.2."""
    conn.send("Hello from child process")
    conn.close()


def conn_echo(conn: Any, count: int) -> None:
    """Send back ``count`` objects, each as received."""
    for _ in range(count):
        conn.send(conn.recv())
    conn.close()


def conn_echo_bytes(conn: Any, count: int) -> None:
    """Send back ``count`` byte messages, each as received."""
    for _ in range(count):
        conn.send_bytes(conn.recv_bytes())
    conn.close()


def conn_echo_bytes_then_object(conn: Any) -> None:
    """Send back one byte message, then one object."""
    conn.send_bytes(conn.recv_bytes())
    conn.send(conn.recv())
    conn.close()


def conn_send_many(conn: Any, count: int) -> None:
    """Send the integers 0 .. count-1 in order, then close."""
    for number in range(count):
        conn.send(number)
    conn.close()


def conn_send_with_connections(conn: Any, count: int, every: int) -> None:
    """Send ``(number, bytes)`` for 0 .. count-1, and after every ``every``-th one the
    reading end of a new Pipe whose writing end has sent ``("through", number)``."""
    import serentak

    for number in range(count):
        conn.send((number, b"x" * (number % 300)))
        if number % every == 0:
            reader, writer = serentak.Pipe(duplex=False)
            writer.send(("through", number))
            writer.close()
            conn.send(reader)
            reader.close()
    conn.close()


def conn_send_sizes(conn: Any, sizes: list[int]) -> None:
    """Send one byte message of each size, filled with its index."""
    for index, size in enumerate(sizes):
        conn.send_bytes(bytes([index % 256]) * size)
    conn.close()


def conn_send_when_told(go: Any, out: Any, message: Any) -> None:
    """Wait for a message on ``go``, then send ``message`` on ``out``."""
    go.recv()
    out.send(message)
    go.close()
    out.close()


def conn_drain_when_told(go: Any, conn: Any, other_end: Any) -> None:
    """Wait for a message on ``go``, then read ``conn``'s bytes, whole frames or not,
    until the other end closes (``other_end``, which a forked child holds too: closed here)."""
    import os

    other_end.close()
    go.recv()
    while os.read(conn.fileno(), 1 << 20):
        pass
    go.close()
    conn.close()


def conn_relay_received(conn: Any) -> None:
    """Receive a Connection over ``conn`` and send "relayed" through the received one."""
    received = conn.recv()
    received.send("relayed")
    received.close()
    conn.close()
