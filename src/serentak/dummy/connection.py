"""Connections between threads: the stdlib's ``multiprocessing.dummy.connection``."""

from __future__ import annotations

import queue
from typing import Any

__all__ = ["Client", "Listener", "Pipe"]

_families: dict[Any, queue.Queue[Any]] = {}


class Connection:
    """One end of a thread connection: objects go through queues, unpickled."""

    def __init__(self, inbox: queue.Queue[Any], outbox: queue.Queue[Any]) -> None:
        self._inbox = inbox
        self._outbox = outbox

    def send(self, obj: Any) -> None:
        """Send an object."""
        self._outbox.put(obj)

    send_bytes = send

    def recv(self) -> Any:
        """Receive an object, waiting for one."""
        return self._inbox.get()

    recv_bytes = recv

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether an object is waiting, waiting up to ``timeout`` seconds."""
        if self._inbox.qsize() > 0:
            return True
        if timeout is not None and timeout <= 0.0:
            return False
        with self._inbox.not_empty:
            self._inbox.not_empty.wait(timeout)
        return self._inbox.qsize() > 0

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """Two connected thread Connections."""
    a: queue.Queue[Any] = queue.Queue()
    b: queue.Queue[Any] = queue.Queue()
    return Connection(a, b), Connection(b, a)


class Listener:
    """Accepts Client connections made to the same address, between threads."""

    def __init__(self, address: Any = None, family: Any = None, backlog: int = 1) -> None:
        self._backlog_queue: queue.Queue[tuple[queue.Queue[Any], queue.Queue[Any]]] = queue.Queue(
            backlog
        )
        self.address = address if address is not None else id(self)
        _families[self.address] = self._backlog_queue

    def accept(self) -> Connection:
        """Wait for a Client and return the connection to it."""
        inbox, outbox = self._backlog_queue.get()
        return Connection(inbox, outbox)

    def close(self) -> None:
        """Stop accepting."""
        _families.pop(self.address, None)

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def Client(address: Any) -> Connection:
    """Connect to the Listener at ``address``."""
    a: queue.Queue[Any] = queue.Queue()
    b: queue.Queue[Any] = queue.Queue()
    _families[address].put((b, a))
    return Connection(a, b)
