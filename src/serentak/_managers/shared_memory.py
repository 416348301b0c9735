"""SharedMemoryManager: a manager whose server unlinks the segments made through it."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from typing import Any

from serentak._managers.manager import BaseManager
from serentak._managers.protocol import ManagerState, Reply, Returned
from serentak._managers.serializers import register_message
from serentak._managers.server import Server
from serentak._os import posix as _posix
from serentak._process import tracker as _tracker
from serentak._shared.named import ShareableList, SharedMemory


@register_message
@dataclasses.dataclass(frozen=True)
class _TrackSegment:
    """Unlink segment ``name`` when the server shuts down."""

    name: str


@register_message
@dataclasses.dataclass(frozen=True)
class _ReleaseSegment:
    """Unlink segment ``name`` now, and stop tracking it."""

    name: str


@register_message
@dataclasses.dataclass(frozen=True)
class _ListSegments:
    """The names of the tracked segments."""


class SharedMemoryServer(Server):
    """A manager server that also tracks shared-memory segments and unlinks them at shutdown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._segments: list[str] = []
        self._segments_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def handlers(self) -> dict[type, Any]:
        """Server requests, and the segment ones."""
        return {
            **super().handlers(),
            _TrackSegment: self._track_segment,
            _ReleaseSegment: self._release_segment,
            _ListSegments: lambda request: Returned(self.list_segments()),
        }

    def _track_segment(self, request: _TrackSegment) -> Reply:
        with self._segments_lock:
            self._segments.append(request.name)
        return Returned(None)

    def _release_segment(self, request: _ReleaseSegment) -> Reply:
        with self._segments_lock:
            if request.name in self._segments:
                self._segments.remove(request.name)
        _unlink_quietly(request.name)
        return Returned(None)

    def list_segments(self) -> list[str]:
        """The names of the segments this server will unlink."""
        with self._segments_lock:
            return list(self._segments)

    def serve_forever(self) -> None:
        """Serve; then unlink every tracked segment."""
        try:
            super().serve_forever()
        finally:
            with self._segments_lock:
                names, self._segments = self._segments, []
            for name in names:
                _unlink_quietly(name)


def _unlink_quietly(name: str) -> None:
    try:
        _posix.shm_unlink("/" + name)
    except OSError:
        pass  # unlinked by its user already
    else:
        _tracker.unregister("/" + name)


_Block = SharedMemory  # the method below shadows the class's name in the class body
_List = ShareableList


class SharedMemoryManager(BaseManager):
    """A manager that makes SharedMemory blocks and ShareableLists, unlinked at its shutdown.

    Args:
        address, authkey, serializer, ctx, shutdown_timeout: as for BaseManager.
    """

    _Server = SharedMemoryServer

    def SharedMemory(self, size: int) -> _Block:
        """A new SharedMemory block of ``size`` bytes, unlinked when the manager shuts down.

        Raises:
            ValueError: the manager is not running (as the stdlib's).
        """
        self._check_running()
        block = _Block(None, create=True, size=size)
        self._track(block)
        return block

    def ShareableList(self, sequence: Iterable[Any] | None) -> _List[Any]:
        """A new ShareableList of ``sequence``, unlinked when the manager shuts down.

        Raises:
            ValueError: the manager is not running (as the stdlib's).
        """
        self._check_running()
        shareable: _List[Any] = _List(sequence)
        self._track(shareable.shm)
        return shareable

    def _check_running(self) -> None:
        # Before a segment exists: one made for a manager that cannot track it
        # would only have to be unlinked again.
        if self._state is not ManagerState.STARTED:
            raise ValueError(
                f"the SharedMemoryManager is not running ({self._state.name.lower()}): "
                "call start() first, or use it in a with block"
            )

    def _track(self, block: _Block) -> None:
        try:
            self._request(_TrackSegment(block.name), "tracking a shared memory segment")
        except BaseException:
            block.close()
            block.unlink()
            raise
