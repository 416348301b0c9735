"""The engines behind the pool API: ``process`` (worker processes, the default),
``thread`` (``ThreadPool`` and ``serentak.dummy``), ``dask`` (``serentak.distributed``).

Each takes tasks from the feeder and reports outcomes to the result sinks
defined in ``serentak._pool`` (see the diagram there).
"""
