"""Connections between processes: the stdlib's ``multiprocessing.connection``.

``Pipe`` gives a connected pair; ``Listener`` and ``Client`` connect processes
that find each other by address (see ``serentak._process.listener``), with an HMAC
challenge when they share an authkey.
"""

from __future__ import annotations

from ._exceptions import AuthenticationError as AuthenticationError
from ._exceptions import BufferTooShort as BufferTooShort
from ._ipc.connection import Connection as Connection
from ._ipc.connection import Pipe as Pipe
from ._ipc.connection import wait as wait
from ._process.listener import FAMILIES as _FAMILIES
from ._process.listener import MESSAGE_LENGTH as MESSAGE_LENGTH
from ._process.listener import Client as Client
from ._process.listener import Listener as Listener
from ._process.listener import address_type as address_type
from ._process.listener import answer_challenge as answer_challenge
from ._process.listener import arbitrary_address as arbitrary_address
from ._process.listener import deliver_challenge as deliver_challenge
from ._public import publish

# The stdlib's __all__; the other names imported here are public as in the stdlib, unstarred.
__all__ = ["Client", "Listener", "Pipe", "wait"]

families = list(_FAMILIES)


publish(__name__, globals())
