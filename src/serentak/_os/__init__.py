"""OS primitives: the layer every other one stands on.

``posix`` wraps the system calls Python does not offer as it needs them (pidfd,
poll with a deadline, close-on-exec fds), ``waiting`` holds the wait slice and
the loops that keep a blocked main thread answering Ctrl-C, and ``_native`` is
the C extension built from ``src/native/`` (futex locks, the shared ring, the
death signal).

May import: the standard library and ``serentak._exceptions`` only.
"""
