"""The pool: ``Pool``, ``ThreadPool``, ``ProcessPoolExecutor`` and their engines.

``interfaces`` draws a ``Pool.map`` call from the caller's thread through the
feeder thread, the supervisor thread and a worker process back to the
caller, and defines the interfaces those parts share (``Engine``,
``ResultSink``, ``MapSink``). ``api`` is the stdlib's Pool API, ``feeder``
cuts and encodes chunks, ``results`` holds what callers wait on, ``tasks``
is the wire format and the worker's loop, ``executor`` the
``concurrent.futures`` face; ``engines/`` runs the tasks in processes,
threads or on a Dask cluster.

May import: ``_shared``, ``_process``, ``_ipc``, ``_os`` and the base modules.
"""
