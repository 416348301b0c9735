"""Pools of workers: the stdlib's ``multiprocessing.pool``."""

from __future__ import annotations

from ._exceptions import MaybeEncodingError as MaybeEncodingError
from ._exceptions import RemoteTraceback as RemoteTraceback
from ._pool.api import Pool as Pool
from ._pool.engines.process import PoolStats as PoolStats
from ._pool.engines.process import WorkerStats as WorkerStats
from ._pool.engines.thread import ThreadPool as ThreadPool
from ._pool.results import ApplyResult as ApplyResult
from ._pool.results import AsyncResult as AsyncResult
from ._pool.results import IMapIterator as IMapIterator
from ._pool.results import IMapUnorderedIterator as IMapUnorderedIterator
from ._pool.results import MapResult as MapResult
from ._pool.tasks import worker_state as worker_state
from ._public import publish

__all__ = ["Pool", "ThreadPool"]


publish(__name__, globals())
