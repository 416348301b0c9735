"""Processes: the ``Process`` class and how a child starts and ends.

``process`` is the stdlib's ``Process`` API, ``launch`` starts a child by
fork, spawn or through the ``forkserver``, ``child`` is what a new child runs
before its target, ``tracker`` unlinks named resources its owners left behind,
and ``listener`` is ``Listener``/``Client`` (addresses, HMAC authentication with
the process's authkey).

May import: ``_ipc``, ``_os`` and the base modules.
"""
