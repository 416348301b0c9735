"""ctypes objects in shared memory, as ``multiprocessing.sharedctypes``.

``Value`` and ``Array`` wrap the object with a lock (:class:`Synchronized`,
:class:`SynchronizedArray`, :class:`SynchronizedString`); ``RawValue`` and
``RawArray`` return it bare. See :mod:`serentak._shared.sharedctypes` for how the
objects reach a child.
"""

from __future__ import annotations

from ._public import publish
from ._shared.sharedctypes import Array as Array
from ._shared.sharedctypes import RawArray as RawArray
from ._shared.sharedctypes import RawValue as RawValue
from ._shared.sharedctypes import Synchronized as Synchronized
from ._shared.sharedctypes import SynchronizedArray as SynchronizedArray
from ._shared.sharedctypes import SynchronizedBase as SynchronizedBase
from ._shared.sharedctypes import SynchronizedString as SynchronizedString
from ._shared.sharedctypes import Value as Value
from ._shared.sharedctypes import copy as copy
from ._shared.sharedctypes import synchronized as synchronized

__all__ = ["Array", "RawArray", "RawValue", "Value", "copy", "synchronized"]


publish(__name__, globals())
