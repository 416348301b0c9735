"""State shared between processes: locks, queues, shared values and arrays.

``sync`` has Lock ... Barrier on futex words in shared memory, ``queues`` the
Queue family on a shared ring, ``sharedctypes`` Value/Array and their raw
forms, ``arrays`` the typed shared buffers they stand on.

May import: ``_process``, ``_ipc``, ``_os`` and the base modules.
"""
