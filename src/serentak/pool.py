"""Pools of workers: the stdlib's ``multiprocessing.pool``."""

from __future__ import annotations

from ._exceptions import RemoteTraceback as RemoteTraceback
from ._manager import PoolStats as PoolStats
from ._manager import WorkerStats as WorkerStats
from ._pool import Pool as Pool
from ._results import ApplyResult as ApplyResult
from ._results import AsyncResult as AsyncResult
from ._results import IMapIterator as IMapIterator
from ._results import IMapUnorderedIterator as IMapUnorderedIterator
from ._results import MapResult as MapResult
from ._tasks import worker_state as worker_state
from ._threadpool import ThreadPool as ThreadPool

__all__ = ["Pool", "ThreadPool"]
