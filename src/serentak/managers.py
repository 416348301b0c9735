"""Managers and proxies: the stdlib's ``multiprocessing.managers``.

A manager runs a server process that holds objects (dicts, lists, queues,
locks, pools, or any registered type); other processes use them through
proxies, which forward method calls to the server. See ``serentak._managers.manager``
for the lifecycle, ``_managers_proxy`` for proxies, ``_managers_server`` for
the server, and ``_managers_client`` for connections and references.
"""

from __future__ import annotations

from ._exceptions import ProcessError as ProcessError
from ._managers.manager import Array as Array
from ._managers.manager import BaseManager as BaseManager
from ._managers.manager import Namespace as Namespace
from ._managers.manager import SyncManager as SyncManager
from ._managers.manager import Value as Value
from ._managers.protocol import ManagerState as State  # noqa: F401 (the stdlib name)
from ._managers.protocol import RemoteError as RemoteError
from ._managers.protocol import Token as Token
from ._managers.protocol import all_methods as all_methods
from ._managers.protocol import public_methods as public_methods
from ._managers.proxy import AcquirerProxy as AcquirerProxy
from ._managers.proxy import ArrayProxy as ArrayProxy
from ._managers.proxy import AutoProxy as AutoProxy
from ._managers.proxy import BarrierProxy as BarrierProxy
from ._managers.proxy import BaseListProxy as BaseListProxy
from ._managers.proxy import BasePoolProxy as BasePoolProxy
from ._managers.proxy import BaseProxy as BaseProxy
from ._managers.proxy import ConditionProxy as ConditionProxy
from ._managers.proxy import DictProxy as DictProxy
from ._managers.proxy import EventProxy as EventProxy
from ._managers.proxy import IteratorProxy as IteratorProxy
from ._managers.proxy import ListProxy as ListProxy
from ._managers.proxy import MakeProxyType as MakeProxyType
from ._managers.proxy import NamespaceProxy as NamespaceProxy
from ._managers.proxy import PoolProxy as PoolProxy
from ._managers.proxy import ValueProxy as ValueProxy
from ._managers.server import Server as Server
from ._managers.shared_memory import SharedMemoryManager as SharedMemoryManager
from ._managers.shared_memory import SharedMemoryServer as SharedMemoryServer
from ._public import publish

# The stdlib's __all__; the other names above are public too, as in the stdlib.
__all__ = ["BaseManager", "BaseProxy", "SharedMemoryManager", "SyncManager", "Token"]


publish(__name__, globals())
