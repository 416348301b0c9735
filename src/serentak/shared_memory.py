"""Named shared memory: the stdlib's ``multiprocessing.shared_memory``.

``SharedMemory`` and ``ShareableList`` (see ``serentak._shared.named``), and
serentak's arrays born in shared memory. ``SharedMemoryManager`` (the stdlib
keeps it in ``multiprocessing.managers``, and so does ``serentak.managers``) is
loaded on first use here too: the manager machinery is not every user's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._public import publish
from ._shared.arrays import copy_of as copy_of
from ._shared.arrays import empty as empty
from ._shared.arrays import full as full
from ._shared.arrays import zeros as zeros
from ._shared.named import ShareableList as ShareableList
from ._shared.named import SharedMemory as SharedMemory

if TYPE_CHECKING:
    from ._managers.shared_memory import SharedMemoryManager as SharedMemoryManager

__all__ = ["ShareableList", "SharedMemory"]


def __getattr__(name: str) -> object:
    if name == "SharedMemoryManager":
        from . import managers

        return managers.SharedMemoryManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


publish(__name__, globals())
