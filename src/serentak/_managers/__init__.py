"""Managers: objects that live in a server process, used through proxies.

``manager`` is ``BaseManager``/``SyncManager``, ``server`` the process that
holds the objects, ``client`` the connections to it, ``proxy`` the proxies,
``protocol`` the messages between them.

May import: ``_pool`` (a manager's ``Pool``), ``_shared``, ``_process``,
``_ipc``, ``_os`` and the base modules.
"""
