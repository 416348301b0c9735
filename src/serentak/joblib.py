"""A joblib backend that runs ``Parallel`` (and scikit-learn's ``n_jobs=``) on serentak.

Importing this module registers the backend under the name ``"serentak"``::

    import joblib
    import serentak.joblib  # registers "serentak"

    with joblib.parallel_config(backend="serentak", n_jobs=2):
        results = joblib.Parallel()(joblib.delayed(f)(i) for i in range(1000))

joblib batches the calls (its auto-batching); each batch runs as one call of a
:class:`serentak.ProcessPoolExecutor`, kept between ``Parallel`` calls of the
same size and start method (as joblib's loky backend keeps its workers), and
stopped by :func:`shutdown` or at exit. A worker that dies fails its batch with
:class:`serentak.WorkerLostError`, raised by ``Parallel``; a failing call stops
the rest (the workers are killed and replaced, as loky does).

Backend options (``parallel_config(backend="serentak", ..., max_workers=4)``):
``max_workers`` caps ``n_jobs`` (asking for more is an error, not a silent
cap); ``context`` is a start method name or context (default: serentak's).

``import serentak`` does not import this module: joblib is an optional
dependency (``pip install serentak[joblib]``).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

import joblib
from joblib.parallel import ParallelBackendBase, SequentialBackend
from joblib.parallel import register_parallel_backend as _register

import serentak
from serentak._pool.executor import ProcessPoolExecutor

try:  # joblib >= 1.3 keeps its batching helper here
    from joblib._parallel_backends import AutoBatchingMixin, FallbackToBackend
except ImportError as exc:  # pragma: no cover - the extra pins joblib >= 1.3
    raise ImportError(f"serentak.joblib needs joblib >= 1.3 (found {joblib.__version__})") from exc

__all__ = ["SerentakBackend", "kept_workers", "shutdown"]

# Executors kept between Parallel calls, by (workers, start method).
_executors: dict[tuple[int, str], ProcessPoolExecutor] = {}
_executors_lock = threading.Lock()


def shutdown() -> None:
    """Stop the workers kept between Parallel calls (done at exit anyway)."""
    with _executors_lock:
        executors = list(_executors.values())
        _executors.clear()
    for executor in executors:
        executor.shutdown(wait=True, cancel_futures=True)


def kept_workers() -> int:
    """How many workers the backend keeps between Parallel calls (all executors)."""
    with _executors_lock:
        return sum(workers for workers, _ in _executors)


atexit.register(shutdown)


def _executor(workers: int, context: Any) -> ProcessPoolExecutor:
    key = (workers, context.get_start_method())
    with _executors_lock:
        executor = _executors.get(key)
        if executor is None:
            executor = ProcessPoolExecutor(workers, mp_context=context)
            _executors[key] = executor
        return executor


def _call(batch: Any) -> Any:
    """Run one of joblib's batches (in a worker)."""
    return batch()


class SerentakBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``ParallelBackendBase`` on a serentak process pool.

    Args:
        max_workers: the most workers a ``Parallel`` may ask for (None: no cap).
        context: a start method name (``"spawn"``...) or a serentak context.
        **kwargs: joblib's own (``nesting_level``, ``inner_max_num_threads``).
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, max_workers: int | None = None, context: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"max_workers must be a positive int or None, not {max_workers!r}")
        self.max_workers = max_workers
        if context is None or isinstance(context, str):
            context = serentak.get_context(context)
        self.context = context
        self._workers: ProcessPoolExecutor | None = None
        self.parallel: Any = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The workers a ``Parallel(n_jobs=...)`` gets: -1 all cores, -2 all but one...

        Raises:
            ValueError: ``n_jobs`` is 0, or more than ``max_workers``.
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if serentak.current_process().daemon:
            return 1  # a pool worker may not start processes: run the calls in place
        if n_jobs < 0:
            n_jobs = max(self.context.cpu_count() + 1 + n_jobs, 1)
        if self.max_workers is not None and n_jobs > self.max_workers:
            raise ValueError(
                f"n_jobs={n_jobs} asks for more workers than the serentak backend allows "
                f"(max_workers={self.max_workers}); lower n_jobs or raise max_workers"
            )
        return n_jobs

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Get the workers for a Parallel call; the number of them."""
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._workers = _executor(n_jobs, self.context)
        return n_jobs

    def submit(self, func: Any, callback: Any = None) -> Any:
        """Run one of joblib's batches; ``callback`` gets its future when done."""
        if self._workers is None:
            raise RuntimeError("the serentak joblib backend was not configured")
        # The batch goes as an argument, not as the callable: arguments travel with
        # their big buffers (arrays) out of band, through shared memory, and are
        # not kept in the pool's cache of pickled callables.
        future = self._workers.submit(_call, func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: Any) -> Any:
        """The batch's results, or its exception raised."""
        return out.result()

    def terminate(self) -> None:
        """End of a Parallel call: the workers stay for the next one."""
        self._workers = None
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call failed: stop the running batches and drop the queued ones. The
        executor stays usable (fresh workers), so it is kept either way."""
        if self._workers is not None:
            self._workers.kill_workers()
        if not ensure_ready:
            self._workers = None


_register("serentak", SerentakBackend)
