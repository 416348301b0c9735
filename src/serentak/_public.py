"""Public names show their public home.

Every class and function that a public module (``serentak``,
``serentak.connection``, ``serentak.pool``, ...) re-exports from a private one
gets that public module as its ``__module__``: reprs, docs and tracebacks name
``serentak.pool.Pool`` rather than ``serentak._pool.api.Pool``, and pickles of
public objects by reference name the public path, which stays valid when the
private layout changes. The first public module to export a name is its home
(``serentak`` itself, imported first, wins over the submodules).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping


def publish(module_name: str, namespace: Mapping[str, object], names: Iterable[str] = ()) -> None:
    """Give ``module_name`` as ``__module__`` to the classes and functions it re-exports.

    Args:
        module_name: the public module, e.g. ``"serentak.pool"``.
        namespace: its globals.
        names: only these names (default: every public name in ``namespace``).
    """
    for name in names or list(namespace):
        obj = namespace.get(name)
        if name.startswith("_") or not isinstance(obj, (type, types.FunctionType)):
            continue
        # Only objects still at their private home, and only under their own name, so
        # that ``module_name.<qualname>`` finds the very object when a pickle names it.
        if obj.__module__.startswith("serentak._") and obj.__qualname__ == name:
            obj.__module__ = module_name
