"""Connections between processes: the stdlib's ``multiprocessing.connection``."""

from __future__ import annotations

from ._transport import Connection as Connection
from ._transport import Pipe as Pipe
from ._transport import wait as wait

__all__ = ["Connection", "Pipe", "wait"]
