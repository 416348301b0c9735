"""The pool: ``Pool``, ``ThreadPool``, ``ProcessPoolExecutor`` and their engines.

May import: ``_shared``, ``_process``, ``_ipc``, ``_os`` and the base modules.
"""
