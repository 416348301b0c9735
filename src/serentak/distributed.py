"""The Pool API on a Dask cluster: when one machine is not enough, change one line.

::

    from serentak.distributed import Pool

    with Pool(address="tcp://scheduler:8786") as pool:   # a running Dask cluster
        results = pool.map(simulate, parameters, progress=True)

    with Pool() as pool:       # a LocalCluster of worker processes on this machine
        ...

How it runs::

    caller threads          feeder thread (_feeder.py)      engine (_distributed.py)      Dask
    --------------          -------------                   ------------------------      ----
    apply_async  -------------------------------------->    dispatch: client.submit ---> scheduler
    map / imap   ---------> chunks, bounded look-ahead ->   dispatch: client.submit ---> -> workers
    get() / next()  <-------------------------------------   collector thread  <-------- replies
    Ctrl-C in get() / next() ----------------------------->  cancel that call's futures

Everything above the engine is ``serentak.Pool``'s: the same chunking
(adaptive when ``chunksize`` is not given), look-ahead, ordering, callbacks,
progress bars and result objects. Only the engine differs; its module
docstring says what Dask decides about dying workers and timeouts.

Requires the ``dask`` extra: ``pip install 'serentak[dask]'``. Every worker of
a cluster needs serentak installed, and the modules your functions come from
(functions of ``__main__``, lambdas and closures travel by value, as with
``serentak.Pool``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    import distributed as _dask_distributed
except ImportError as _missing:  # pragma: no cover - the test suite installs Dask
    raise ImportError(
        "serentak.distributed runs on Dask, which is not installed: pip install 'serentak[dask]'"
    ) from _missing

from ._context import default_context
from ._pool.api import BasePool, check_pool_arguments
from ._pool.engines import dask_worker as _distributed_worker
from ._pool.engines.dask import Client, Cluster, DaskEngine
from ._public import publish

__all__ = ["Pool"]

# Dask's constructors, seen through the engine's protocols (Dask leaves them untyped).
_new_local_cluster: Callable[..., Cluster] = _dask_distributed.LocalCluster
_new_client: Callable[..., Client] = _dask_distributed.Client


class Pool(BasePool):
    """``serentak.Pool``'s API, running its tasks on a Dask cluster.

    Args:
        address: the scheduler of a running cluster, such as
            ``"tcp://scheduler:8786"``; the pool connects to it and leaves it
            running when it stops. None starts a ``LocalCluster`` of worker
            processes (one thread each) on this machine, closed with the pool.
        processes: without ``address``, the number of worker processes (by
            default the CPUs this process may use). With ``address``, how many
            tasks the pool expects to run at once (by default the cluster's
            thread count when it connects): it sizes chunks and look-ahead.
        initializer: called with ``initargs`` in each worker before the first
            task of this pool that the worker runs.
        initargs: arguments for ``initializer``.
        cluster_options: more keyword arguments for ``distributed.LocalCluster``
            (``dashboard_address=":8787"``, ``memory_limit=...``); only without
            ``address``.

    Raises:
        TypeError: ``address`` is not a string (``Pool(4)``: the worker count
            is ``processes=4`` here), or ``initializer`` is not callable.
        ValueError: ``processes`` < 1, or ``cluster_options`` with ``address``.
        OSError: the scheduler at ``address`` cannot be reached.

    Where Dask decides, it does as follows:

    - A task's exception is re-raised with the worker's traceback chained as
      ``__cause__`` (a :class:`serentak.pool.RemoteTraceback`), as with
      ``serentak.Pool``; so is a result that cannot be pickled.
    - A worker that dies (SIGKILL, segfault, out of memory) does not fail the
      tasks queued on it: Dask runs them on other workers. The task that was
      running is run again too, up to the scheduler's
      ``distributed.scheduler.allowed-failures`` (3 by default; for the
      LocalCluster set it with ``dask.config.set`` before making the pool)
      and then fails with :class:`serentak.WorkerLostError`. A task may thus
      run more than once, which ``serentak.Pool`` never does.
    - ``timeout=`` bounds how long one task (one chunk) may run on its
      worker, counted there from when it starts. Past it the task fails with
      :class:`serentak.TimeoutError` and the worker moves on; Dask cannot stop
      a running call, so the overdue one runs out on a thread of its own and
      its result is dropped.
    - Ctrl-C while waiting in ``map``, ``get()``, ``wait()`` or an ``imap``'s
      ``next()`` cancels that call's tasks and raises KeyboardInterrupt at
      once (after the few milliseconds it takes the scheduler and the workers
      to drop the tasks not started yet, so that none of them starts after
      it); the tasks running then run to their end. The pool stays usable.
      The LocalCluster's workers ignore SIGINT, so a Ctrl-C in a terminal,
      which reaches them too, leaves them running. Leaving the ``with`` block (or
      ``terminate()``) fails everything unfinished with
      :class:`serentak.PoolTerminatedError` and closes the client (and the
      LocalCluster).
    - Arguments that are big buffers (bytes, bytearray, numpy arrays: 1 MiB
      or more), and big pickled functions (a ``functools.partial`` holding an
      array), travel with the first task that uses them and are scattered to
      every worker for the ones after, instead of going with each task.
    - ``maxtasksperchild`` and ``context`` do not apply to Dask workers.
    """

    def __init__(
        self,
        address: str | None = None,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
        *,
        cluster_options: Mapping[str, Any] | None = None,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(
                f"address must be a scheduler address such as 'tcp://host:8786', not "
                f"{address!r} (the number of workers is processes=)"
            )
        cluster: Cluster | None = None
        if address is None:
            count = check_pool_arguments(processes, initializer, None, default_context.cpu_count)
            options: dict[str, Any] = {
                "n_workers": count,
                "threads_per_worker": 1,
                "processes": True,
                # No dashboard unless asked for: it needs bokeh, and a fixed port
                # clashes with the next pool's.
                "dashboard_address": None,
            }
            options.update(cluster_options or {})
            # Its workers ignore SIGINT (_distributed_worker.dask_setup): Ctrl-C in a
            # terminal is the caller's, not theirs, though it reaches their process group.
            preload = options.get("preload") or []
            preload = [preload] if isinstance(preload, str) else list(preload)
            options["preload"] = [*preload, _distributed_worker.__name__]
            cluster = _new_local_cluster(**options)
            try:
                client = _new_client(cluster, set_as_default=False, direct_to_workers=True)
            except BaseException:
                cluster.close()
                raise
        else:
            if cluster_options:
                raise ValueError("cluster_options is for a Pool without address (a LocalCluster)")
            # A pool's client is its own, and not the process's default: the
            # program's other Dask work keeps the client it had.
            client = _new_client(address, set_as_default=False)
            try:
                threads = max(1, sum(client.nthreads().values()))
                count = check_pool_arguments(processes, initializer, None, lambda: threads)
            except BaseException:
                client.close()
                raise
        self._dask = DaskEngine(client, cluster, initializer, initargs)
        super().__init__(self._dask, count)
        self._cancel_hook = self._dask.cancel  # Ctrl-C in a wait cancels that call's tasks
        self._cluster = cluster

    @property
    def client(self) -> Any:
        """The pool's Dask client (for its dashboard link, or Dask's own API); closed with
        the pool, so do not close it yourself."""
        return self._dask.client

    @property
    def cluster(self) -> Any:
        """The LocalCluster the pool started, or None when it connected to ``address``."""
        return self._cluster

    @property
    def scattered(self) -> int:
        """How many inputs (big buffers, big functions) were scattered to the cluster so far."""
        return self._dask.scattered


publish(__name__, globals())
