"""Connections between processes: the stdlib's ``multiprocessing.connection``.

``Pipe`` gives a connected pair; ``Listener`` and ``Client`` connect processes
that find each other by address (see ``serentak._listener``), with an HMAC
challenge when they share an authkey.
"""

from __future__ import annotations

from ._exceptions import AuthenticationError as AuthenticationError
from ._exceptions import BufferTooShort as BufferTooShort
from ._listener import FAMILIES as _FAMILIES
from ._listener import MESSAGE_LENGTH as MESSAGE_LENGTH
from ._listener import Client as Client
from ._listener import Listener as Listener
from ._listener import address_type as address_type
from ._listener import answer_challenge as answer_challenge
from ._listener import arbitrary_address as arbitrary_address
from ._listener import deliver_challenge as deliver_challenge
from ._transport import Connection as Connection
from ._transport import Pipe as Pipe
from ._transport import wait as wait

# The stdlib's __all__; the other names imported here are public as in the stdlib, unstarred.
__all__ = ["Client", "Listener", "Pipe", "wait"]

families = list(_FAMILIES)
