"""Listener and Client with an authkey, as in the documentation: the server sends
objects and bytes, the client reads them; a wrong key is refused."""

from __future__ import annotations

import multiprocessing
from array import array
from multiprocessing.connection import Client, Listener


def client(address: tuple[str, int], key: bytes, out: multiprocessing.Queue[object]) -> None:
    try:
        with Client(address, authkey=key) as conn:
            got = [conn.recv(), conn.recv_bytes()]
            buffer = array("i", [0] * 10)
            got.append(conn.recv_bytes_into(buffer))
            got.append(buffer.tolist())
            out.put(got)
    except multiprocessing.AuthenticationError:
        out.put("refused")


def main() -> None:
    out: multiprocessing.Queue[object] = multiprocessing.Queue()
    with Listener(("localhost", 0), authkey=b"secret password") as listener:
        good = multiprocessing.Process(
            target=client, args=(listener.address, b"secret password", out)
        )
        good.start()
        with listener.accept() as conn:
            conn.send([2.25, None, "junk", float])
            conn.send_bytes(b"hello")
            conn.send_bytes(array("i", [42, 1729]))
        print("client got:", out.get())
        good.join()
        bad = multiprocessing.Process(target=client, args=(listener.address, b"wrong", out))
        bad.start()
        try:
            listener.accept()
        except multiprocessing.AuthenticationError:
            print("server refused a wrong key")
        print("client:", out.get())
        bad.join()


if __name__ == "__main__":
    main()
