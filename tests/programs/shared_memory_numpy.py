"""Named shared memory as the documentation uses it: a NumPy array backed by a
SharedMemory block that another process attaches to by name, a ShareableList, and a
SharedMemoryManager that cleans up."""

from __future__ import annotations

import multiprocessing
from multiprocessing import shared_memory
from multiprocessing.managers import SharedMemoryManager
from typing import Any

import numpy as np


def double_in_place(name: str, shape: tuple[int, ...]) -> None:
    block = shared_memory.SharedMemory(name=name)
    array: np.ndarray[tuple[int, ...], np.dtype[np.int64]] = np.ndarray(
        shape, dtype=np.int64, buffer=block.buf
    )
    array *= 2
    del array
    block.close()


def edit_list(name: str) -> None:
    shared: Any = shared_memory.ShareableList(name=name)
    shared[0] = "changed"
    shared[2] = shared[2] * 10
    shared.shm.close()


def main() -> None:
    source = np.arange(6, dtype=np.int64)
    block = shared_memory.SharedMemory(create=True, size=source.nbytes)
    array: np.ndarray[tuple[int, ...], np.dtype[np.int64]] = np.ndarray(
        source.shape, dtype=source.dtype, buffer=block.buf
    )
    array[:] = source
    child = multiprocessing.Process(target=double_in_place, args=(block.name, source.shape))
    child.start()
    child.join()
    print("doubled:", array.tolist(), "exit", child.exitcode)
    del array
    block.close()
    block.unlink()

    shared: Any = shared_memory.ShareableList(["text", b"bytes", 7, 2.5, None, True])
    child = multiprocessing.Process(target=edit_list, args=(shared.shm.name,))
    child.start()
    child.join()
    print("list:", [shared[i] for i in range(len(shared))])
    shared.shm.close()
    shared.shm.unlink()

    with SharedMemoryManager() as smm:
        managed: Any = smm.ShareableList(range(5))
        raw: Any = smm.SharedMemory(size=16)
        raw.buf[:4] = b"abcd"
        print("managed:", [managed[i] for i in range(len(managed))], bytes(raw.buf[:4]))


if __name__ == "__main__":
    main()
